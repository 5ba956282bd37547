#!/usr/bin/env bash
# Unpacks a Docker engine from Debian's packages into a folder of its own,
# next to the system's Docker 20.10, for the tests that run on several
# engines. The packages come from the Debian mirror this machine's apt
# sources name (no mirror is written here). Prints the folder; quick when it
# is there already.
#
# Usage: e2e/engine.sh <dir> <docker.io suite> <containerd suite>
#   e2e/engine.sh ~/.cache/tartan/docker26 trixie trixie   # Docker 26.1
#   e2e/engine.sh ~/.cache/tartan/docker28 forky trixie    # Docker 28.5
# The system's runc is used (newer runc builds need a newer glibc); the
# engine's docker-init is tini-static from the containerd suite.
set -euo pipefail
dir=$1 docker_suite=$2 containerd_suite=$3
if [ -x "$dir/bin/dockerd" ] && [ -x "$dir/bin/containerd" ]; then echo "$dir"; exit 0; fi

# The machine's Debian mirror: the first non-security URI of its apt sources
# (deb822 .sources files or one-line .list files).
mirror=$({ cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources 2>/dev/null || true; } |
  sed -nE 's/^URIs:[[:space:]]*//p; s/^deb[[:space:]]+(\[[^]]*\][[:space:]]+)?//p' | awk '$1 !~ /-security/ { print $1; exit }')
[ -n "$mirror" ] || { echo "engine.sh: no Debian mirror in /etc/apt/sources.list*" >&2; exit 1; }

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
fetch() { # fetch <suite> <package>...
  local suite=$1; shift
  mkdir -p "$work/$suite/lists/partial" "$work/$suite/archives/partial"
  echo "deb $mirror $suite main" > "$work/$suite/sources.list"
  local opts=(-o Dir::Etc::SourceList="$work/$suite/sources.list" -o Dir::Etc::SourceParts=/dev/null
    -o Dir::State::Lists="$work/$suite/lists" -o Dir::Cache::Archives="$work/$suite/archives" -o APT::Get::List-Cleanup=0)
  apt-get -q "${opts[@]}" update >&2
  (cd "$work" && apt-get -q "${opts[@]}" download "$@" >&2)
}
fetch "$docker_suite" docker.io
fetch "$containerd_suite" containerd tini
rm -rf "$dir.tmp" && mkdir -p "$dir.tmp/root" "$dir.tmp/bin"
for deb in "$work"/*.deb; do dpkg -x "$deb" "$dir.tmp/root"; done
for b in usr/sbin/dockerd usr/bin/containerd usr/bin/containerd-shim-runc-v2 usr/sbin/docker-proxy usr/bin/docker-proxy usr/libexec/docker/docker-proxy; do
  [ -e "$dir.tmp/root/$b" ] && ln -sf "../root/$b" "$dir.tmp/bin/$(basename "$b")"
done
init=""
for b in usr/bin/tini-static usr/sbin/docker-init usr/bin/docker-init; do # tini-static: a docker-init link may point outside the folder
  if [ -e "$dir.tmp/root/$b" ]; then init=$b; break; fi
done
[ -n "$init" ] && ln -sf "../root/$init" "$dir.tmp/bin/docker-init"
runc=$(command -v runc) || { echo "engine.sh: no runc (apt-get install runc)" >&2; exit 1; }
ln -sf "$runc" "$dir.tmp/bin/runc"
rm -rf "$dir" && mv "$dir.tmp" "$dir"
"$dir/bin/dockerd" --version >&2
echo "$dir"

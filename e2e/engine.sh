#!/usr/bin/env bash
# Unpacks a Docker engine from Debian's packages into a folder of its own,
# next to the system's Docker 20.10, for the tests that run on several
# engines. The packages come from the Debian mirror this machine's apt
# sources name (plugin/debs.sh). Prints the folder; quick when it is there
# already.
#
# Usage: e2e/engine.sh <dir> <docker.io suite> <containerd suite>
#   e2e/engine.sh ~/.cache/tartan/docker26 trixie trixie   # Docker 26.1
#   e2e/engine.sh ~/.cache/tartan/docker28 forky trixie    # Docker 28.5
# The system's runc is used (newer runc builds need a newer glibc); the
# engine's docker-init is tini-static from the containerd suite.
set -euo pipefail
dir=$1 docker_suite=$2 containerd_suite=$3
if [ -x "$dir/bin/dockerd" ] && [ -x "$dir/bin/containerd" ]; then echo "$dir"; exit 0; fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
debs=$(dirname "$0")/../plugin/debs.sh
"$debs" "$docker_suite" "$work" docker.io
"$debs" "$containerd_suite" "$work" containerd tini
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

#!/usr/bin/env bash
# Unpacks a current Docker engine (Debian trixie's docker.io 26.x with its
# containerd) into a folder of its own, next to the system's Docker 20.10,
# for the tests that run on both engines. Bookworm's runc is kept (trixie's
# needs a newer glibc). Prints the folder; quick when it is there already.
# Usage: e2e/docker26.sh <dir>
set -euo pipefail
dir=$1
if [ -x "$dir/bin/dockerd" ] && [ -x "$dir/bin/containerd" ]; then echo "$dir"; exit 0; fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/lists/partial" "$work/archives/partial"
echo "deb http://deb.debian.org/debian trixie main" > "$work/trixie.list"
apt_opts=(-o Dir::Etc::SourceList="$work/trixie.list" -o Dir::Etc::SourceParts=/dev/null
  -o Dir::State::Lists="$work/lists" -o Dir::Cache::Archives="$work/archives" -o APT::Get::List-Cleanup=0)
apt-get -q "${apt_opts[@]}" update >&2
(cd "$work" && apt-get -q "${apt_opts[@]}" download docker.io containerd >&2)
rm -rf "$dir.tmp" && mkdir -p "$dir.tmp/root" "$dir.tmp/bin"
for deb in "$work"/*.deb; do dpkg -x "$deb" "$dir.tmp/root"; done
for b in usr/sbin/dockerd usr/bin/containerd usr/bin/containerd-shim-runc-v2 usr/sbin/docker-proxy usr/bin/docker-proxy usr/sbin/docker-init usr/bin/docker-init; do
  [ -e "$dir.tmp/root/$b" ] && ln -sf "../root/$b" "$dir.tmp/bin/$(basename "$b")"
done
runc=$(command -v runc) || { echo "docker26.sh: no runc (apt-get install runc)" >&2; exit 1; }
ln -sf "$runc" "$dir.tmp/bin/runc"
rm -rf "$dir" && mv "$dir.tmp" "$dir"
"$dir/bin/dockerd" --version >&2
echo "$dir"

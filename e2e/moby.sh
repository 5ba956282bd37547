#!/usr/bin/env bash
# Builds a Docker engine that Debian does not package yet (Docker 29, the
# github.com/moby/moby/v2 module) from the Go module proxy, as Consul is
# built, into a folder of its own, with runc built the same way: Docker 29
# asks for a time namespace that Debian bookworm's runc 1.1 does not know.
# containerd, its shim and docker-init are taken from a Debian engine's
# folder (e2e/engine.sh). Prints the folder; quick when it is there already.
#
# Usage: e2e/moby.sh <dir> <module version> <runc version> <folder of a Debian engine>
#   e2e/moby.sh ~/.cache/tartan/docker29 v2.0.0-beta.24 v1.4.4 ~/.cache/tartan/docker28
set -euo pipefail
dir=$1 version=$2 runc=$3 base=$4
if [ -x "$dir/bin/dockerd" ] && [ -x "$dir/bin/containerd" ]; then echo "$dir"; exit 0; fi
[ -x "$base/bin/containerd" ] || { echo "moby.sh: no engine folder at $base (make docker28 makes it)" >&2; exit 1; }
rm -rf "$dir.tmp" && mkdir -p "$dir.tmp/bin"
echo "building dockerd and docker-proxy from github.com/moby/moby/v2@$version (once; several minutes on 2 cores)" >&2
# The module's own version stands in for the engine's patch level: moby
# tags the module v2.0.0-beta.N for the Docker 29 releases, and which 29.y.z
# a tag is, the module does not say.
CGO_ENABLED=0 GOBIN="$dir.tmp/bin" go install -trimpath \
  -tags 'exclude_graphdriver_btrfs exclude_graphdriver_devicemapper netgo osusergo' \
  -ldflags "-X github.com/moby/moby/v2/dockerversion.Version=29.x-moby-$version -X github.com/moby/moby/v2/dockerversion.GitCommit=$version" \
  "github.com/moby/moby/v2/cmd/dockerd@$version" "github.com/moby/moby/v2/cmd/docker-proxy@$version"
echo "building runc $runc (cgo, with libseccomp)" >&2
CGO_ENABLED=1 GOBIN="$dir.tmp/bin" go install -trimpath -tags seccomp "github.com/opencontainers/runc@$runc"
for b in containerd containerd-shim-runc-v2 docker-init; do
  ln -sf "$(readlink -f "$base/bin/$b")" "$dir.tmp/bin/$b"
done
rm -rf "$dir" && mv "$dir.tmp" "$dir"
"$dir/bin/dockerd" --version >&2
echo "$dir"

#!/usr/bin/env bash
# Builds and publishes a release of the plugin: for each architecture, the
# plugin directory (make plugin-dir ARCH=…), created in the local Docker as
# <registry>/tartan:<version> (amd64) or <registry>/tartan:<version>-<arch>,
# pushed, and removed again; each plugin's record (plugin/record.sh) is kept
# in build/release/<version>/. A plugin is one architecture: Docker's plugin
# install reads no manifest list (see the README's "Releases"), so each
# architecture has a tag of its own.
# Usage: plugin/release.sh <version> <registry> <arch>...
set -euo pipefail
version=${1:-} registry=${2:-}
shift 2 || true
[[ "$version" =~ ^v(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)(-[0-9A-Za-z.-]+)?$ ]] ||
  { echo "make release: VERSION=$version is not a semantic version tag: use vMAJOR.MINOR.PATCH, such as VERSION=v1.2.3" >&2; exit 2; }
[ -n "$registry" ] || { echo "make release: REGISTRY is empty: name the registry to push to, such as REGISTRY=registry.example:5000" >&2; exit 2; }
[ $# -gt 0 ] || { echo "make release: no architecture (RELEASE_ARCHS)" >&2; exit 2; }
here=$(cd "$(dirname "$0")/.." && pwd)
cd "$here"
if tagged=$(git rev-parse -q --verify "refs/tags/$version^{commit}" 2>/dev/null); then
  [ "$tagged" = "$(git rev-parse HEAD)" ] || { echo "make release: tag $version is commit $tagged, not this tree's HEAD: check out $version to release it" >&2; exit 2; }
else
  echo "make release: warning: no git tag $version here (git tag -a $version -m $version makes it)" >&2
fi
[ -z "$(git status --porcelain 2>/dev/null)" ] || echo "make release: warning: the tree has uncommitted changes; the records say dirty" >&2
out=build/release/$version
mkdir -p "$out"
for arch in "$@"; do
  case "$arch" in
    amd64) tag=$version ;;
    arm64) tag=$version-$arch ;;
    *) echo "make release: architecture $arch: use amd64 or arm64" >&2; exit 2 ;;
  esac
  ref=$registry/tartan:$tag
  make --no-print-directory plugin-dir ARCH="$arch" BUILD="$out/$arch" VERSION="$version"
  cp "$out/$arch/plugin/release.json" "$out/release-$arch.json"
  docker plugin rm -f "$ref" >/dev/null 2>&1 || true
  docker plugin create "$ref" "$out/$arch/plugin"
  docker plugin push "$ref"
  docker plugin rm -f "$ref" >/dev/null
  echo "released $ref ($arch)"
done

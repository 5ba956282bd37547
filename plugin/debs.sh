#!/usr/bin/env bash
# Downloads Debian packages of one suite into a folder, from the Debian mirror
# this machine's apt sources name (no mirror is written here), with apt's
# state kept in the folder: the machine's own package lists and caches are
# left alone. With --deps, what the packages depend on comes too (not what
# they recommend or suggest). DEB_ARCH picks another architecture than the
# machine's (arm64 for the arm64 plugin).
#
# Usage: [DEB_ARCH=arm64] plugin/debs.sh [--deps] <suite> <folder> <package>...
set -euo pipefail
deps=0
if [ "${1:-}" = --deps ]; then deps=1; shift; fi
suite=$1 dest=$(realpath -m "$2"); shift 2
[ $# -gt 0 ] || { echo "debs.sh: no package named" >&2; exit 2; }

# The machine's Debian mirror: the first non-security URI of its apt sources
# (deb822 .sources files or one-line .list files).
mirror=$({ cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources 2>/dev/null || true; } |
  sed -nE 's/^URIs:[[:space:]]*//p; s/^deb[[:space:]]+(\[[^]]*\][[:space:]]+)?//p' | awk '$1 !~ /-security/ { print $1; exit }')
[ -n "$mirror" ] || { echo "debs.sh: no Debian mirror in /etc/apt/sources.list*" >&2; exit 1; }

arch=${DEB_ARCH:-$(dpkg --print-architecture)}
state="$dest/.apt-$suite-$arch"
mkdir -p "$state/lists/partial" "$state/archives/partial" "$state/cache"
echo "deb [arch=$arch] $mirror $suite main" > "$state/sources.list"
opts=(-o Dir::Etc::SourceList="$state/sources.list" -o Dir::Etc::SourceParts=/dev/null
  -o Dir::State::Lists="$state/lists" -o Dir::Cache="$state/cache" -o Dir::Cache::Archives="$state/archives"
  -o Dir::Cache::pkgcache= -o Dir::Cache::srcpkgcache= -o APT::Get::List-Cleanup=0 -o APT::Sandbox::User=root
  -o APT::Architecture="$arch" -o APT::Architectures="$arch")
apt-get -q "${opts[@]}" update >&2
pkgs=("$@")
if [ "$deps" = 1 ]; then
  mapfile -t pkgs < <(apt-cache "${opts[@]}" depends --recurse --no-recommends --no-suggests --no-conflicts \
    --no-breaks --no-replaces --no-enhances "$@" | grep -E '^[a-z0-9]' | sort -u)
fi
(cd "$dest" && apt-get -q "${opts[@]}" download "${pkgs[@]}" >&2)
rm -rf "$state"

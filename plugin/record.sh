#!/usr/bin/env bash
# Records what a plugin directory holds, in its rootfs (/release.json, which
# ships with the plugin) and beside it: the version and commit it was built
# from, its architecture and Go, the tartan binary's checksum, the Debian
# packages of its rootfs, and the fast path's BPF objects with the one the
# binary embeds (bpfel on amd64 and arm64 alike: BPF byte code does not
# depend on the CPU that loads it, only on its byte order).
# Usage: plugin/record.sh <plugin dir> <version> <GOARCH>
set -euo pipefail
dir=$1 version=$2 arch=$3
here=$(cd "$(dirname "$0")/.." && pwd)
commit=$(git -C "$here" rev-parse HEAD 2>/dev/null || echo unknown)
dirty=false
[ -z "$(git -C "$here" status --porcelain 2>/dev/null)" ] || dirty=true
case "$arch" in
  amd64|arm64|386|arm|riscv64|ppc64le|loong64|mipsle|mips64le) embedded=fastpath_bpfel.o ;;
  *) embedded=fastpath_bpfeb.o ;;
esac
json_str() { printf '"%s"' "$(printf '%s' "$1" | sed 's/\\/\\\\/g; s/"/\\"/g')"; }
{
  echo "{"
  echo "  \"version\": $(json_str "$version"),"
  echo "  \"commit\": $(json_str "$commit"),"
  echo "  \"dirty\": $dirty,"
  echo "  \"arch\": $(json_str "$arch"),"
  echo "  \"go\": $(json_str "$(go env GOVERSION)"),"
  echo "  \"binary\": {\"path\": \"/tartan\", \"sha256\": $(json_str "$(sha256sum "$dir/rootfs/tartan" | cut -d' ' -f1)")},"
  echo "  \"bpf\": ["
  first=1
  for o in "$here"/driver/fastpath/fastpath_bpf*.o; do
    [ $first = 1 ] || echo ","
    first=0
    b=$(basename "$o")
    printf '    {"object": %s, "sha256": %s, "embedded": %s}' "$(json_str "driver/fastpath/$b")" \
      "$(json_str "$(sha256sum "$o" | cut -d' ' -f1)")" "$([ "$b" = "$embedded" ] && echo true || echo false)"
  done
  echo
  echo "  ],"
  echo "  \"debian\": ["
  sed 's/^\([^ ]*\) \(.*\)$/    {"package": "\1", "version": "\2"},/' "$dir/packages" | sed '$ s/,$//'
  echo "  ]"
  echo "}"
} > "$dir/release.json"
cp "$dir/release.json" "$dir/rootfs/release.json"

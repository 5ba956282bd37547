#!/usr/bin/env bash
# Assembles the managed plugin's directory: config.json and a rootfs with the
# static tartan binary and the host's iptables (nft and legacy flavours, with
# the shared libraries and extensions they load).
# Usage: plugin/rootfs.sh <tartan binary> <config.json> <output dir>
set -euo pipefail
bin=$1 config=$2 out=$(realpath -m "$3")
rm -rf "$out"
root="$out/rootfs"
mkdir -p "$root"/{etc,run,tmp,host/var/lib,host/proc/sys,host/run,usr/sbin,proc,sys,dev}
# Mirror a merged /usr so that library links resolve the same way inside.
for d in lib lib64 bin sbin; do
  if [ -L "/$d" ]; then mkdir -p "$root/usr/$d"; ln -sfn "usr/$d" "$root/$d"; fi
done
cp "$config" "$out/config.json"
install -m 0755 "$bin" "$root/tartan"

copy() { # copy a file and the directories above it into the rootfs, keeping links
  local f=$1
  mkdir -p "$root$(dirname "$f")"
  cp -a "$f" "$root$f"
  if [ -L "$f" ]; then copy "$(readlink -f "$f")"; fi
}
libs() { ldd "$1" 2>/dev/null | awk '/=>/ {print $3; next} $1 ~ /^\// {print $1}' | grep '^/' || true; }

found=0
for multi in /usr/sbin/xtables-nft-multi /usr/sbin/xtables-legacy-multi; do
  [ -x "$multi" ] || continue
  found=1
  copy "$multi"
  for l in $(libs "$multi"); do copy "$l"; done
done
[ "$found" = 1 ] || { echo "rootfs.sh: no iptables on this machine (apt-get install iptables)" >&2; exit 1; }
for d in /usr/lib/x86_64-linux-gnu/xtables /usr/lib/xtables /usr/lib64/xtables; do
  if [ -d "$d" ]; then
    mkdir -p "$root$d"; cp -a "$d/." "$root$d/"
    for so in "$d"/*.so; do for l in $(libs "$so"); do [ -e "$root$l" ] || copy "$l"; done; done
  fi
done
cd "$root/usr/sbin"
if [ -e xtables-nft-multi ]; then
  for n in iptables-nft iptables-nft-restore iptables-nft-save; do ln -sf xtables-nft-multi "$n"; done
fi
if [ -e xtables-legacy-multi ]; then
  for n in iptables-legacy iptables-legacy-restore iptables-legacy-save; do ln -sf xtables-legacy-multi "$n"; done
fi
for n in iptables iptables-restore iptables-save; do
  if [ -e xtables-nft-multi ]; then ln -sf xtables-nft-multi "$n"; else ln -sf xtables-legacy-multi "$n"; fi
done
for f in /etc/protocols /etc/services /etc/ethertypes; do [ -e "$f" ] && cp "$f" "$root/etc/" || true; done
echo "plugin directory ready: $out ($(du -sh "$root" | cut -f1))"

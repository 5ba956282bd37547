#!/usr/bin/env bash
# Assembles the managed plugin's directory: config.json and a rootfs with the
# static tartan binary and iptables (its nft and legacy flavours) unpacked
# from Debian's packages with what they depend on, so that the plugin carries
# neither the build machine's iptables nor its C library. The packages are
# those of ROOTFS_SUITE, fetched once from the Debian mirror the machine's apt
# sources name (plugin/debs.sh) and kept, unpacked, in ROOTFS_CACHE. The
# default is bookworm's iptables 1.8.9: tartan's rules share the host's
# tables with Docker's iptables, and a rule written by a newer iptables-nft
# can be one an older host iptables cannot read back, so the plugin's is
# kept no newer than the hosts it is tested on. ROOTFS_ARCH (default: the
# machine's) is the Debian architecture of the packages: the binary's.
# Usage: plugin/rootfs.sh <tartan binary> <config.json> <output dir>
set -euo pipefail
bin=$1 config=$2 out=$(realpath -m "$3")
here=$(cd "$(dirname "$0")" && pwd)
suite=${ROOTFS_SUITE:-bookworm}
arch=${ROOTFS_ARCH:-$(dpkg --print-architecture)}
cache=${ROOTFS_CACHE:-$HOME/.cache/tartan/rootfs-$suite-$arch}
for cmd in apt-get apt-cache dpkg-deb flock; do
  command -v "$cmd" >/dev/null || { echo "rootfs.sh: needs $cmd (a Debian build machine: apt, dpkg, util-linux)" >&2; exit 1; }
done

# The unpacked packages, made once; builds running side by side wait for
# the first.
mkdir -p "$(dirname "$cache")"
(
  flock 9
  if [ ! -e "$cache/packages" ]; then
    rm -rf "$cache.tmp" && mkdir -p "$cache.tmp/debs" "$cache.tmp/root"
    DEB_ARCH=$arch "$here/debs.sh" --deps "$suite" "$cache.tmp/debs" iptables
    for deb in "$cache.tmp"/debs/*.deb; do
      dpkg-deb -x "$deb" "$cache.tmp/root"
      dpkg-deb --show --showformat='${Package} ${Version}\n' "$deb" >> "$cache.tmp/root/packages"
    done
    # Documentation, translations and character-set converters are not used.
    rm -rf "$cache.tmp"/root/usr/share/{doc,man,info,locale,lintian} "$cache.tmp"/root/usr/lib/*/gconv
    rm -rf "$cache.tmp/debs" "$cache"
    mv "$cache.tmp/root" "$cache"
    mv "$cache/packages" "$cache/packages.tmp" && mv "$cache/packages.tmp" "$cache/packages"
    rm -rf "$cache.tmp"
  fi
) 9>"$cache.lock"

rm -rf "$out"
root="$out/rootfs"
mkdir -p "$root"
cp -a "$cache/." "$root/"
mv "$root/packages" "$out/packages" # what the rootfs holds, for the record
# A merged /usr, as Debian's base-files would make it.
for d in lib lib64 bin sbin; do
  [ -e "$root/usr/$d" ] || mkdir -p "$root/usr/$d"
  [ -e "$root/$d" ] || ln -s "usr/$d" "$root/$d"
done
mkdir -p "$root"/{etc,run,tmp,host/var/lib,host/proc/sys,host/run,proc,sys,dev}
cp "$config" "$out/config.json"
install -m 0755 "$bin" "$root/tartan"
# update-alternatives' links, which dpkg-deb -x does not make: nft by
# default (tartan calls each flavour by its own name).
cd "$root/usr/sbin"
[ -x xtables-nft-multi ] && [ -x xtables-legacy-multi ] || { echo "rootfs.sh: the iptables package has no xtables-nft-multi or xtables-legacy-multi" >&2; exit 1; }
for f in nft legacy; do
  for n in iptables ip6tables; do
    for s in "" -restore -save; do ln -sf "xtables-$f-multi" "$n-$f$s"; done
  done
done
for n in iptables iptables-restore iptables-save ip6tables ip6tables-restore ip6tables-save; do ln -sf xtables-nft-multi "$n"; done
echo "plugin directory ready: $out ($(du -sh "$root" | cut -f1); $(wc -l < "$out/packages") Debian $suite $arch packages)"

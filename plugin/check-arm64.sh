#!/usr/bin/env bash
# Runs an arm64 plugin directory's programs on this machine under qemu-user
# (Debian's qemu-user-static), with the rootfs as their root for libraries:
# the tartan binary (bare, --help, version) and the plugin's iptables, both
# flavours, loading every match and target tartan's rules use. No rule is
# written: qemu-user forwards no NETLINK_NETFILTER socket (iptables-nft
# fails "Protocol not supported") and does not translate iptables-legacy's
# socket options, so writing rules is for an arm64 machine.
# Usage: plugin/check-arm64.sh <plugin dir>
set -euo pipefail
root=$1/rootfs
qemu=$(command -v qemu-aarch64-static) || { echo "check-arm64: no qemu-aarch64-static (apt-get install qemu-user-static)" >&2; exit 1; }
run() { "$qemu" -L "$root" "$@"; }
fail() { echo "check-arm64: $*" >&2; exit 1; }

file "$root/tartan" | grep -q 'ARM aarch64' || fail "$root/tartan is not an arm64 binary"
set +e
run "$root/tartan" >/dev/null 2>&1; rc=$?
set -e
[ $rc = 2 ] || fail "tartan with no command exited $rc, want 2"
out=$(run "$root/tartan" --help)
[[ "$out" == *"usage: tartan <command>"* ]] || fail "tartan --help does not print the commands"
out=$(run "$root/tartan" version)
echo "$out"
[[ "$out" == *linux/arm64* ]] || fail "tartan version does not say linux/arm64"

sbin=$root/usr/sbin
out=$(run "$sbin/xtables-legacy-multi" iptables -V)
[[ "$out" == *legacy* ]] || fail "iptables-legacy -V: $out"
out=$(run "$sbin/xtables-nft-multi" iptables-save -V)
[[ "$out" == *nf_tables* ]] || fail "iptables-nft-save -V: $out"
for m in addrtype conntrack rpfilter udp tcp; do
  run "$sbin/xtables-legacy-multi" iptables -m "$m" -h >/dev/null 2>&1 || fail "the arm64 iptables cannot load match $m"
done
# ip6tables: addrtype and conntrack have only revisions that iptables first
# asks the kernel about (a socket option qemu-user does not translate);
# their shared objects are the ones iptables loaded above.
for m in rpfilter udp tcp; do
  run "$sbin/xtables-legacy-multi" ip6tables -m "$m" -h >/dev/null 2>&1 || fail "the arm64 ip6tables cannot load match $m"
done
for j in DNAT MASQUERADE NOTRACK; do
  run "$sbin/xtables-legacy-multi" iptables -j "$j" -h >/dev/null 2>&1 || fail "the arm64 iptables cannot load target $j"
done
echo "check-arm64: tartan and the plugin's iptables (every extension tartan uses) run as arm64 under $(basename "$qemu")"

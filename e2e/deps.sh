#!/usr/bin/env bash
# Installs what building and testing tartan needs on a fresh Debian machine:
# Docker's engine (20.10, Debian's docker.io), busybox for the test image,
# iptables, curl, tcpdump (the encryption test captures the underlay), util-linux's nsenter/unshare, Debian's registry,
# clang and libbpf's headers (the fast path's BPF objects are checked against their source), and
# libseccomp's headers for the runc that Docker 29 is tested with, and
# qemu-user-static for the arm64 plugin's checks (make check-arm64), and
# BIRD 2 (the router of the bgp backend's tests, run in a namespace of its
# own; the package's own service is stopped and disabled). Quick when
# everything is there already.
set -euo pipefail
declare -A pkg=([dockerd]=docker.io [busybox]=busybox-static [iptables]=iptables [curl]=curl
  [nsenter]=util-linux [unshare]=util-linux [docker-registry]=docker-registry [ip]=iproute2 [iperf3]=iperf3 [ping]=iputils-ping [nft]=nftables [tcpdump]=tcpdump [clang]=clang [qemu-aarch64-static]=qemu-user-static [file]=file [bird]=bird2)
need=()
for cmd in "${!pkg[@]}"; do
  command -v "$cmd" >/dev/null 2>&1 || need+=("${pkg[$cmd]}")
done
# Docker 29's runc is built here (e2e/moby.sh), against libseccomp.
command -v pkg-config >/dev/null 2>&1 || need+=(pkg-config)
[ -e /usr/include/seccomp.h ] || need+=(libseccomp-dev)
# make check-bpf compiles the fast path's BPF programs again (clang, libbpf's headers).
[ -e /usr/include/bpf/bpf_helpers.h ] || need+=(libbpf-dev)
if [ ${#need[@]} -gt 0 ]; then
  echo "deps: installing ${need[*]}"
  apt-get update -q
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $(printf '%s\n' "${need[@]}" | sort -u)
  if printf '%s\n' "${need[@]}" | grep -qx bird2 && command -v systemctl >/dev/null 2>&1; then
    systemctl disable --now bird >/dev/null 2>&1 || true # the tests run their own, in namespaces
  fi
fi
if [ "$(id -u)" != 0 ]; then echo "deps: the tests need root (network namespaces, dockerd)" >&2; exit 1; fi

#!/usr/bin/env bash
# Checks what make plugin needs before it builds anything, and says how to
# get what is missing: Go, apt and dpkg (the plugin's iptables comes from
# Debian's packages), the Docker CLI, and a running Docker Engine 20.10 or
# later that this user may talk to.
# Usage: plugin/preflight.sh [go command]
set -uo pipefail
go=${1:-go}
fail=0
say() { echo "make plugin: $*" >&2; fail=1; }

command -v "$go" >/dev/null 2>&1 || say "no Go toolchain ($go): install Go 1.26 or later (https://go.dev/dl) and put it on PATH"
for cmd in apt-get apt-cache dpkg-deb flock; do
  command -v "$cmd" >/dev/null 2>&1 || say "no $cmd: the plugin's root filesystem is unpacked from Debian's packages; build on Debian or Ubuntu (apt, dpkg, util-linux)"
done
if ! command -v docker >/dev/null 2>&1; then
  say "no docker command: install Docker Engine 20.10 or later (Debian: apt-get install docker.io)"
elif ! server=$(timeout 20 docker version --format '{{.Server.Version}}' 2>&1); then
  host=${DOCKER_HOST:-unix:///var/run/docker.sock}
  case "$server" in
  *"permission denied"*)
    say "the Docker daemon at $host refuses this user: run as root (sudo make plugin) or as a member of the docker group" ;;
  *)
    say "no Docker daemon answers at $host: start it (systemctl start docker, or service docker start, or dockerd &), or point DOCKER_HOST at one
  (docker said: $(echo "$server" | tail -n 1))" ;;
  esac
else
  major=${server%%.*}
  if [[ "$major" =~ ^[0-9]+$ ]] && [ "$major" -lt 20 ]; then
    say "Docker Engine $server is too old: tartan needs 20.10 or later"
  fi
fi
exit $fail

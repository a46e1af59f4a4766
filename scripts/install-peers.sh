#!/usr/bin/env bash
# Installs every test peer from the package registries (Debian). Idempotent; needs root.
set -euo pipefail
pkgs=(nbdkit libnbd-bin nbd-server qemu-utils util-linux time)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing test peers: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
for b in nbdkit nbdcopy nbdinfo nbd-server qemu-nbd qemu-img losetup /usr/bin/time; do
  command -v "$b" >/dev/null || { echo "test peer missing after install: $b" >&2; exit 1; }
done

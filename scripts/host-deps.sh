#!/usr/bin/env bash
# Install the Debian packages microagent needs on this host, only those missing.
# Idempotent: does nothing (and no apt-get update) when everything is present.
set -euo pipefail
PACKAGES=(qemu-system-x86 e2fsprogs busybox-static musl-tools gcc make patch lz4 cpio passt nftables iptables iproute2 util-linux python3-venv docker-registry skopeo debootstrap
          clang libclang-rt-dev)  # clang + libFuzzer runtime: the guest parser fuzzers
missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
  SUDO=sudo
else
  SUDO=
fi
echo "installing host packages: ${missing[*]}" >&2
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2

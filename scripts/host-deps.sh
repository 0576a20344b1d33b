#!/usr/bin/env bash
# Install the Debian packages microagent needs on this host, only those missing.
# Idempotent: does nothing (and no apt-get update) when everything is present.
set -euo pipefail
PACKAGES=(qemu-system-x86 qemu-system-arm e2fsprogs busybox-static musl-tools gcc make patch lz4 cpio passt nftables iptables iproute2 util-linux python3-venv docker-registry skopeo debootstrap
          clang libclang-rt-dev  # clang + libFuzzer runtime: the guest parser fuzzers
          flex bison bc libelf-dev)  # the Firecracker slow-lane test kernel (tests/firecracker_slow/harness)
# Foreign architectures apt must know: aarch64 guests' kernel and busybox are
# Debian's arm64 packages (apt-get download only; nothing arm64 is installed).
FOREIGN_ARCHES=(arm64)
missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
new_arches=()
host_arch=$(dpkg --print-architecture)
for a in "${FOREIGN_ARCHES[@]}"; do
  [ "$a" = "$host_arch" ] || dpkg --print-foreign-architectures | grep -qx "$a" || new_arches+=("$a")
done
if [ ${#missing[@]} -eq 0 ] && [ ${#new_arches[@]} -eq 0 ]; then
  exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
  SUDO=sudo
else
  SUDO=
fi
for a in "${new_arches[@]}"; do
  echo "enabling the $a package architecture (for aarch64 guest kernels and busybox)" >&2
  $SUDO dpkg --add-architecture "$a"
done
$SUDO apt-get update -qq
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing host packages: ${missing[*]}" >&2
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
fi

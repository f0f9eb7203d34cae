#!/usr/bin/env bash
# Installs the Debian packages kiln's tests and benchmarks need. Idempotent: does
# nothing when everything is present. Run as root (CI and the dev machines are root).
set -euo pipefail

packages=(
  acpica-tools          # iasl -d checks of kiln's ACPI tables
  bc bison flex libelf-dev libssl-dev build-essential lz4   # building the test kernel
  busybox-static cpio   # the test initramfs
  linux-source-6.1      # the test kernel's source
  libarchive-tools      # bsdtar for initrd checks
  xorriso mtools dosfstools   # ISO and FAT (seed) checks
  debian-installer-12-netboot-amd64   # a real installer kernel and initrd
  passt iproute2        # user-mode networking and TAP tests
  cloud-init            # `cloud-init schema` checks of user-data
  debconf-utils         # debconf-set-selections -c checks of preseeds
  qemu-system-x86       # TCG cross-checks and the start-time benchmark
  qemu-utils            # qemu-img / qemu-io checks of qcow2
  e2fsprogs             # filefrag: unwritten (fallocated) extents of preallocated images
  mount                 # losetup: images on block devices (tests/block_device.rs)
  valgrind file         # scripts/build-release.sh: callgrind run-path profile, checks
)

# ksvalidator (PyPI pykickstart) checks kiln's kickstart answer files.
command -v ksvalidator >/dev/null || python3 -m pip install -q pykickstart

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ] && command -v qemu-img >/dev/null; then
  exit 0
fi
# Installing qemu-system-x86 alone would remove a newer qemu-utils: always ask for both.
missing+=(qemu-system-x86 qemu-utils)
mapfile -t missing < <(printf '%s\n' "${missing[@]}" | sort -u)

echo "setup-host: installing ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
# qemu-system-x86 (bookworm, 7.2) conflicts with a newer backported qemu-utils; when the
# plain install cannot be resolved, take qemu-utils from the same release as qemu-system-x86.
if ! apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null; then
  qemu_version=$(apt-cache policy qemu-system-x86 | awk '/Candidate:/ {print $2}')
  echo "setup-host: retrying with qemu-utils=$qemu_version" >&2
  apt-get install -y -qq --no-install-recommends --allow-downgrades \
    "${missing[@]/qemu-utils/qemu-utils=$qemu_version}" >/dev/null
fi

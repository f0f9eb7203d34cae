#!/usr/bin/env bash
# kiln's main job on a sensible default: boot kiln's minimal Linux kernel with its
# busybox initramfs and show the console. Builds (or reuses) everything it needs.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup-host.sh
kernel_dir=$(scripts/build-kernel.sh)
initramfs=$(scripts/build-initramfs.sh)
cargo build --release --locked -q
exec target/release/kiln run --kernel "$kernel_dir/vmlinux" --initrd "$initramfs" \
  --memory 256M --boot-timer "$@"

#!/usr/bin/env bash
# Bounded cargo-fuzz run of every target: fuzz/run.sh [SECONDS_PER_TARGET] (default 60).
# The machine has only a stable toolchain; cargo-fuzz needs nightly `-Z` flags, which
# RUSTC_BOOTSTRAP=1 unlocks. qcow2 seeds are made with qemu-img (qemu-utils).
set -euo pipefail
cd "$(dirname "$0")"
secs=${1:-60}
export RUSTC_BOOTSTRAP=1
command -v cargo-fuzz >/dev/null || { echo "run: cargo install cargo-fuzz" >&2; exit 1; }
command -v qemu-img >/dev/null || { echo "run: scripts/setup-host.sh (qemu-img)" >&2; exit 1; }

seeds=$(mktemp -d)
trap 'rm -rf "$seeds"' EXIT
for cs in 512 4096 65536; do
  qemu-img create -q -f qcow2 -o cluster_size=$cs "$seeds/c$cs.qcow2" 256K
  qemu-io -f qcow2 -c "write -P 0xab 0 8k" -c "write -z 64k 4k" "$seeds/c$cs.qcow2" >/dev/null
done
qemu-img create -q -f qcow2 -o compat=0.10,cluster_size=512 "$seeds/v2.qcow2" 128K
qemu-io -f qcow2 -c "write -P 1 0 4k" "$seeds/v2.qcow2" >/dev/null
qemu-img convert -c -O qcow2 -o cluster_size=4096 "$seeds/c512.qcow2" "$seeds/compressed.qcow2"
# Internal snapshots: the snapshot table and the L1 tables it points to.
qemu-img create -q -f qcow2 -o cluster_size=4096 "$seeds/snapshot.qcow2" 128K
qemu-io -f qcow2 -c "write -P 2 0 8k" "$seeds/snapshot.qcow2" >/dev/null
qemu-img snapshot -c first "$seeds/snapshot.qcow2"
qemu-io -f qcow2 -c "write -P 3 4k 8k" "$seeds/snapshot.qcow2" >/dev/null
# Persistent bitmaps: the bitmap directory, tables and data clusters.
qemu-img create -q -f qcow2 -o cluster_size=512 "$seeds/bitmaps.qcow2" 128K
qemu-img bitmap --add -g 512 "$seeds/bitmaps.qcow2" b0
qemu-io -f qcow2 -c "write -P 4 0 16k" "$seeds/bitmaps.qcow2" >/dev/null
for t in qcow2_metadata qcow2_open; do
  mkdir -p "corpus/$t"
  cp "$seeds"/*.qcow2 "corpus/$t/"
done
# Writes: 8 operations (kind, block u16, blocks - 1; see devices/src/fuzzing/qcow2_write.rs)
# before each image: allocate, write in place, zero, discard, write in place again.
mkdir -p corpus/qcow2_write
ops='\x08\x00\x28\x00\x01\x04\x28\x00\x00\x04\x29\x00\x00\x00\xaf\x00\x03'
ops+='\x04\xb0\x00\x02\x01\x02\x00\x00\x02\x01\x00\x00\x04\x01\x00\x00'
for img in "$seeds"/*.qcow2; do
  { printf "$ops"; cat "$img"; } > "corpus/qcow2_write/ops-$(basename "$img")"
done
mkdir -p corpus/blk_request corpus/net_chains corpus/serial_control corpus/console_tx

cargo fuzz build -O
for t in blk_request net_chains qcow2_metadata qcow2_open qcow2_write serial_control console_tx; do
  echo "== $t: ${secs}s"
  cargo fuzz run -O "$t" "corpus/$t" -- -max_total_time="$secs" -max_len=262144 2>&1 | tail -3
done

#!/usr/bin/env bash
# Records which functions `kiln run` executes, as an lld symbol-ordering file.
# Usage: scripts/record-run-order.sh KILN_BINARY BUILD_DIR ORDER_FILE
#   BUILD_DIR is cargo's profile directory holding build/kiln-vmm-*/out/guests.
# Each scenario runs under callgrind, which lists every function that ran (mangled
# names, as the linker sees them). Scenarios are the common paths first: the quiet
# run the benchmark times, the same with -v logging, virtio devices, a timeout.
set -euo pipefail
kiln=$(realpath "$1")
build_dir=$2
order=$3

guests=$(ls -td "$build_dir"/build/kiln-vmm-*/out/guests 2>/dev/null | head -1)
[ -n "$guests" ] || { echo "record-run-order: no test guests under $build_dir/build" >&2; exit 1; }
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
truncate -s 16M "$work/disk.raw"

base=(run --memory 128M --net none --debug-exit 0xf4)
n=0
record() {
  local expect=$1
  shift
  n=$((n + 1))
  local status=0
  valgrind --tool=callgrind --demangle=no --callgrind-out-file="$work/cg.$n" \
    "$@" >/dev/null 2>"$work/log.$n" || status=$?
  if [ "$status" != "$expect" ]; then
    echo "record-run-order: scenario $n ended with $status, not $expect: $*" >&2
    tail -5 "$work/log.$n" >&2
    exit 1
  fi
}
record 67 "$kiln" "${base[@]}" --serial stdio --kernel "$guests/serial_hello.elf"
export RUST_LOG=info
record 67 "$kiln" -v "${base[@]}" --serial stdio --kernel "$guests/serial_hello.elf"
unset RUST_LOG
# The probe reports the first window's device ID: 2 (block) gives status 5.
record 5 "$kiln" "${base[@]}" --serial none --kernel "$guests/virtio_probe.elf" \
  --disk "path=$work/disk.raw,format=raw" --console "virtio,file=$work/console.out"
record 124 "$kiln" "${base[@]}" --serial none --timeout 1s --kernel "$guests/hang.elf"

# callgrind names each function once, as "fn=(id) name" or "cfn=(id) name"; keep
# real symbols (not addresses or "(below main)"), first scenario first.
for i in $(seq 1 "$n"); do
  sed -nE 's/^c?fn=\([0-9]+\) (.*)$/\1/p' "$work/cg.$i"
done | grep -vE '^(0x[0-9a-f]+|\(below main\).*)$' | awk '!seen[$0]++' >"$order"
[ -s "$order" ] || { echo "record-run-order: no functions recorded" >&2; exit 1; }

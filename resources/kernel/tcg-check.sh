#!/usr/bin/env bash
# Boots kiln's test kernel under QEMU TCG (no KVM, so ordinary x86 semantics) and
# checks: the ELF vmlinux (PVH) and the LZ4 bzImage reach KILN-INIT-OK and power
# off; an appended /test.sh runs and its status is reported; the syscall-repair
# patch is inert without kiln_pvm_syscall_fixup=1 and completes a SYSCALL-style
# entry fault with it (sysjmp.S). Needs qemu-system-x86_64 and gcc. ~30 s.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
kdir=${KILN_KERNEL_DIR:-$("$repo/scripts/build-kernel.sh")}
base=$("$repo/scripts/build-initramfs.sh")
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

entry=$(awk '$3 == "entry_SYSCALL_64" { print $1 }' "$kdir/System.map")
[ -n "$entry" ] || { echo "tcg-check: no entry_SYSCALL_64 in $kdir/System.map" >&2; exit 1; }
mkdir -p "$work/root/bin"
gcc -static -nostdlib -DENTRY_SYSCALL_64="0x$entry" -o "$work/root/bin/sysjmp" \
  "$repo/resources/kernel/sysjmp.S"
gcc -static -nostdlib -o "$work/root/bin/int80" "$repo/resources/kernel/int80.S"
cat >"$work/root/test.sh" <<'T'
echo "cpus=$(nproc)"
/bin/sysjmp
echo "sysjmp-status=$?"
/bin/int80
echo "int80-status=$?"
exit 7
T
(cd "$work/root" && printf 'bin\nbin/sysjmp\nbin/int80\ntest.sh\n' | cpio --quiet -o -H newc -R 0:0) >"$work/test.cpio"
cat "$base" "$work/test.cpio" >"$work/initrd.cpio"

failures=0
boot() { # name kernel append expected-lines...
  local name=$1 kernel=$2 append=$3
  shift 3
  local out="$work/$name.log"
  local start=$(date +%s%N)
  timeout 120 qemu-system-x86_64 -accel tcg -M pc -smp 2 -m 256 -nographic -no-reboot \
    -kernel "$kernel" -initrd "$work/initrd.cpio" -append "console=ttyS0 panic=-1 quiet $append" \
    >"$out" 2>&1 || true
  local ms=$((($(date +%s%N) - start) / 1000000))
  for want in KILN-INIT-OK "cpus=2" INT80-OK int80-status=42 KILN-TEST-EXIT=7 "reboot: Power down" "$@"; do
    if ! grep -qaF -- "$want" "$out"; then
      echo "tcg-check: FAIL $name: no '$want' in the console output:" >&2
      tail -n 20 "$out" >&2
      failures=$((failures + 1))
      return
    fi
  done
  echo "tcg-check: ok $name (${ms} ms)"
}

boot vmlinux-pvh "$kdir/vmlinux" "" "sysjmp-status=139"
boot vmlinux-pvh-fixup "$kdir/vmlinux" "kiln_pvm_syscall_fixup=1" "SYSJMP-OK" "sysjmp-status=42"
boot bzImage-lz4 "$kdir/bzImage" "" "sysjmp-status=139"
boot bzImage-lz4-fixup "$kdir/bzImage" "kiln_pvm_syscall_fixup=1" "SYSJMP-OK" "sysjmp-status=42"
[ "$failures" = 0 ] || exit 1

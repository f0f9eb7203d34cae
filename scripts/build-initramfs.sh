#!/usr/bin/env bash
# Builds kiln's test initramfs: an UNCOMPRESSED newc cpio (decompressing gzip costs
# ~30 s of emulated boot on PVM hosts) holding Debian's static busybox, applet links,
# /init and a udhcpc script from resources/initramfs/, and a tiny boot-timer helper.
#
# Cached outside the repo, keyed by the hash of every input:
#   ${KILN_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/kiln}/initramfs/<hash>/initramfs.cpio
# Prints that path on stdout; progress goes to stderr.
#
# Tests add a /test.sh by appending a second newc archive to a copy of this one; /init
# runs it and prints KILN-TEST-EXIT=<status> before powering off.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
src="$repo/resources/initramfs"
busybox=${KILN_BUSYBOX:-/bin/busybox}
# The VMM's boot timer (vmm/src/layout.rs BOOT_TIMER_PORT, devices/src/legacy/boot_timer.rs
# BOOT_TIMER_MAGIC).
boot_timer_port=0x440
boot_timer_magic=123

# Applets the tests and /init use, linked into /bin. busybox sh runs applets itself
# (standalone shell), so these matter for programs that exec by path.
applets=(sh ash mount umount cat echo printf test '[' dd cmp grep sed awk head tail wc
  ls mkdir rm cp mv ln touch sync sleep usleep poweroff reboot halt nproc uname
  hexdump od xxd md5sum sha256sum udhcpc wget nc ip ifconfig route ping
  dmesg sysctl true false seq tr cut env stat mknod chmod blockdev stty)

log() { echo "build-initramfs: $*" >&2; }

fail() {
  log "error: $*"
  exit 1
}

command -v cpio >/dev/null || fail "cpio is missing; run scripts/setup-host.sh (apt package cpio)"
command -v gcc >/dev/null || fail "gcc is missing; run scripts/setup-host.sh (apt package build-essential)"
[ -x "$busybox" ] || fail "$busybox is missing; run scripts/setup-host.sh (apt package busybox-static)"
file_type=$(od -An -tx1 -N4 "$busybox" | tr -d ' \n')
[ "$file_type" = 7f454c46 ] || fail "$busybox is not an ELF binary"
available_applets=$("$busybox" --list) || fail "$busybox --list failed"
for f in init fstab udhcpc.script boot-timer.S; do
  [ -f "$src/$f" ] || fail "missing input $src/$f"
done

cache_root=${KILN_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/kiln}
hash=$(
  {
    sha256sum "${BASH_SOURCE[0]}" "$busybox" "$src/init" "$src/fstab" "$src/udhcpc.script" \
      "$src/boot-timer.S" | cut -d' ' -f1
    gcc --version | head -n1
  } | sha256sum | cut -c1-16
)
out_dir="$cache_root/initramfs/$hash"
if [ -f "$out_dir/initramfs.cpio" ]; then
  echo "$out_dir/initramfs.cpio"
  exit 0
fi

mkdir -p "$cache_root/initramfs"
work=$(mktemp -d "$cache_root/initramfs/.build.XXXXXX")
trap 'rm -rf "$work"' EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
root="$work/root"
mkdir -p "$root"/{bin,sbin,dev,proc,sys,tmp,root,run,etc/udhcpc,usr/bin,usr/sbin,usr/share/udhcpc,var}
chmod 1777 "$root/tmp"

log "busybox from $busybox"
cp "$busybox" "$root/bin/busybox"
for a in "${applets[@]}"; do
  grep -qxF -- "$a" <<<"$available_applets" ||
    fail "$busybox has no applet '$a'; install Debian's busybox-static"
  ln -s busybox "$root/bin/$a"
done

log "boot-timer helper (port $boot_timer_port, value $boot_timer_magic)"
gcc -static -nostdlib -Wl,--build-id=none -s \
  -DKILN_BOOT_TIMER_PORT="$boot_timer_port" -DKILN_BOOT_TIMER_MAGIC="$boot_timer_magic" \
  -o "$root/bin/kiln-boot-timer" "$src/boot-timer.S"

install -m 0755 "$src/init" "$root/init"
install -m 0644 "$src/fstab" "$root/etc/fstab"
install -m 0755 "$src/udhcpc.script" "$root/usr/share/udhcpc/default.script"
# Debian's busybox udhcpc looks in /etc/udhcpc/ by default.
ln -s /usr/share/udhcpc/default.script "$root/etc/udhcpc/default.script"
printf 'root:x:0:0:root:/root:/bin/sh\n' >"$root/etc/passwd"
printf 'root:x:0:\n' >"$root/etc/group"
: >"$root/etc/resolv.conf"

# Reproducible archive: fixed times, root ownership, sorted names.
find "$root" -exec touch -h -d @0 {} +
(cd "$root" && find . -mindepth 1 | LC_ALL=C sort |
  cpio --quiet -o -H newc -R 0:0 --reproducible >"$work/initramfs.cpio")

mkdir -p "$work/out"
mv "$work/initramfs.cpio" "$work/out/initramfs.cpio"
# Another build may have finished first; keep whichever landed.
mv -T "$work/out" "$out_dir" 2>/dev/null || [ -f "$out_dir/initramfs.cpio" ] ||
  fail "could not move the archive into $out_dir"
log "built $(stat -c %s "$out_dir/initramfs.cpio") bytes"
echo "$out_dir/initramfs.cpio"

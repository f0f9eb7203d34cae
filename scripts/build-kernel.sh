#!/usr/bin/env bash
# Builds kiln's minimal Linux 6.1 test kernel from Debian's linux-source-6.1, with
# resources/kernel/kiln-6.1.config (a fragment over `make tinyconfig`) and
# resources/kernel/pvm-syscall-repair.patch applied.
#
# Cached outside the repo, keyed by the hash of the config, the patch, this script,
# the linux-source package version and the compiler:
#   ${KILN_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/kiln}/kernel/<hash>/{vmlinux,bzImage}
# Prints that directory on stdout; all progress goes to stderr. A cached build is
# reused at once. About 9 minutes on 2 cores otherwise.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
config="$repo/resources/kernel/kiln-6.1.config"
patch_file="$repo/resources/kernel/pvm-syscall-repair.patch"
source_tarball=${KILN_LINUX_SOURCE:-/usr/src/linux-source-6.1.tar.xz}
# The VMM finds kiln's own kernels by this string (the patch's boot parameter).
fixup_param=kiln_pvm_syscall_fixup

log() { echo "build-kernel: $*" >&2; }

fail() {
  log "error: $*"
  exit 1
}

[ -f "$config" ] || fail "missing $config"
[ -f "$patch_file" ] || fail "missing $patch_file"

if [ ! -f "$source_tarball" ]; then
  if [ "$(id -u)" = 0 ] && [ -x "$repo/scripts/setup-host.sh" ]; then
    log "$source_tarball is missing; running scripts/setup-host.sh"
    "$repo/scripts/setup-host.sh" >&2
  fi
  [ -f "$source_tarball" ] ||
    fail "$source_tarball is missing: install the Debian packages linux-source-6.1 bc bison flex libelf-dev libssl-dev build-essential lz4 (scripts/setup-host.sh does)"
fi
for tool in make gcc bison flex bc lz4 strip readelf patch; do
  command -v "$tool" >/dev/null ||
    fail "$tool is missing: install bc bison flex libelf-dev libssl-dev build-essential lz4 (scripts/setup-host.sh does)"
done

source_version=$(dpkg-query -W -f='${Version}' linux-source-6.1 2>/dev/null ||
  sha256sum "$source_tarball" | cut -d' ' -f1)
cache_root=${KILN_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/kiln}
hash=$(
  {
    sha256sum "$config" "$patch_file" "${BASH_SOURCE[0]}" | cut -d' ' -f1
    echo "linux-source-6.1 $source_version"
    gcc --version | head -n1
  } | sha256sum | cut -c1-16
)
out_dir="$cache_root/kernel/$hash"
if [ -f "$out_dir/vmlinux" ] && [ -f "$out_dir/bzImage" ]; then
  echo "$out_dir"
  exit 0
fi

mkdir -p "$cache_root/kernel"
build=$(mktemp -d "${TMPDIR:-/tmp}/kiln-kernel-build.XXXXXX")
staging=$(mktemp -d "$cache_root/kernel/.build.XXXXXX")
chmod 755 "$staging"
cleanup() {
  rm -rf "$staging"
  if [ -n "${KILN_KEEP_KERNEL_BUILD:-}" ]; then
    log "kept the build tree $build"
  else
    rm -rf "$build"
  fi
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
start=$(date +%s)

log "extracting $source_tarball ($source_version) into $build"
tar -xJf "$source_tarball" -C "$build" --strip-components=1
src="$build"

log "applying $(basename "$patch_file")"
patch -d "$src" -p1 --forward --batch --no-backup-if-mismatch <"$patch_file" >&2 ||
  fail "$patch_file does not apply to linux-source-6.1 $source_version"

log "configuring: tinyconfig + $(basename "$config")"
make -C "$src" -s ARCH=x86_64 tinyconfig >&2
# -n: allnoconfig base, so whatever the fragment does not ask for stays off.
(cd "$src" && ARCH=x86_64 scripts/kconfig/merge_config.sh -n .config "$config" >"$build/merge.log" 2>&1) ||
  {
    cat "$build/merge.log" >&2
    fail "merge_config.sh failed"
  }
# Every symbol the fragment sets must have landed (catches typos and unmet dependencies).
while IFS= read -r line; do
  case "$line" in
  CONFIG_*=n)
    name=${line%%=*}
    if grep -q "^$name=" "$src/.config"; then
      fail "$name should be off but is $(grep "^$name=" "$src/.config")"
    fi
    ;;
  CONFIG_*=*)
    grep -qxF -- "$line" "$src/.config" ||
      fail "$line did not take effect (got: $(grep "^${line%%=*}=" "$src/.config" || echo unset))"
    ;;
  esac
done <"$config"

log "make -j$(nproc) vmlinux bzImage"
make -C "$src" -j"$(nproc)" ARCH=x86_64 KBUILD_BUILD_USER=kiln KBUILD_BUILD_HOST=kiln \
  vmlinux bzImage >"$build/make.log" 2>&1 || {
  tail -n 40 "$build/make.log" >&2
  fail "kernel build failed (log above)"
}

# Keep the symbol table and the ELF notes (the PVH entry note); drop debug info.
strip --strip-debug -o "$staging/vmlinux" "$src/vmlinux"
readelf -n "$staging/vmlinux" | grep -q "Xen.*0x00000012" ||
  readelf -n "$staging/vmlinux" | grep -q "PHYS32_ENTRY" ||
  fail "vmlinux has no PVH entry note (XEN_ELFNOTE_PHYS32_ENTRY)"
grep -qa "$fixup_param" "$staging/vmlinux" || fail "vmlinux lacks the $fixup_param parameter"
cp "$src/arch/x86/boot/bzImage" "$staging/bzImage"
grep -qa "$fixup_param" "$staging/bzImage" || fail "bzImage lacks the $fixup_param marker"
cp "$src/.config" "$staging/config"
cp "$src/System.map" "$staging/System.map"
elapsed=$(($(date +%s) - start))
echo "built in ${elapsed}s on $(nproc) CPUs from linux-source-6.1 $source_version" >"$staging/build-info"
log "built in ${elapsed}s"

# Another build may have finished first; keep whichever landed.
mv -T "$staging" "$out_dir" 2>/dev/null || [ -f "$out_dir/vmlinux" ] ||
  fail "could not move the build into $out_dir"
echo "$out_dir"

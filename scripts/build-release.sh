#!/usr/bin/env bash
# Builds the kiln binary to ship, target/kiln (about 12 MiB):
#  - statically linked (glibc, non-PIE): no dynamic loader, no shared libc and no
#    start-up relocations, so `kiln run` starts in about half the time and memory;
#  - with the functions that `kiln run` executes laid out together in .text (an lld
#    symbol-ordering file, recorded with callgrind on kiln's tiny test guests), so a
#    run faults in about 1 MiB of code instead of 3.5 MiB spread over 7 MiB.
# The ordering needs valgrind and a usable /dev/kvm; without them the binary is
# still static, only unordered. Usage: scripts/build-release.sh
set -euo pipefail
cd "$(dirname "$0")/.."

target=x86_64-unknown-linux-gnu
static_flags="-C target-feature=+crt-static -C relocation-model=static"
export RUSTFLAGS="${RUSTFLAGS:-} $static_flags"
target_dir=${CARGO_TARGET_DIR:-target}
out=$target_dir/$target/release

echo "build-release: static build" >&2
cargo build --release --locked -q --target "$target" --bin kiln

order=$out/kiln-run.order
if command -v valgrind >/dev/null && [ -r /dev/kvm ] && [ -w /dev/kvm ]; then
  echo "build-release: recording the functions kiln run executes" >&2
  scripts/record-run-order.sh "$out/kiln" "$out" "$order"
  echo "build-release: relinking with $(wc -l <"$order") functions ordered first" >&2
  cargo rustc --release --locked -q --target "$target" --bin kiln -- \
    -C link-arg=-Wl,--symbol-ordering-file="$order" \
    -C link-arg=-Wl,--no-warn-symbol-ordering
else
  echo "build-release: warning: valgrind or /dev/kvm missing; functions not ordered" >&2
fi

# Check what this script promises, loudly.
if ! file -b "$out/kiln" | grep -q "statically linked"; then
  echo "build-release: error: $out/kiln is not statically linked: $(file -b "$out/kiln")" >&2
  exit 1
fi
if [ -s "$order" ]; then
  # The ordered functions must sit together at the start of .text: the last of
  # them within their total size (plus slack for alignment and the start-up code
  # lld puts first). Unordered, they spread over the whole 7 MiB.
  python3 - "$out/kiln" "$order" <<'PY'
import subprocess, sys
binary, order = sys.argv[1], sys.argv[2]
wanted = set(open(order).read().split("\n"))
text = [l.split() for l in subprocess.run(["readelf", "-SW", binary], capture_output=True,
        text=True, check=True).stdout.splitlines() if " .text " in l][0]
text_start = int(text[text.index(".text") + 2], 16)
span = total = 0
for line in subprocess.run(["nm", "-S", binary], capture_output=True, text=True,
                           check=True).stdout.splitlines():
    f = line.split()
    if len(f) == 4 and f[2] in "tT" and f[3] in wanted:
        total += int(f[1], 16)
        span = max(span, int(f[0], 16) + int(f[1], 16) - text_start)
if total == 0 or span > 1.5 * total + (256 << 10):
    sys.exit(f"build-release: error: the symbol ordering did not take effect: ordered "
             f"functions ({total} bytes) spread over {span} bytes of .text")
print(f"build-release: {total} bytes of run-path code in the first {span} bytes of .text",
      file=sys.stderr)
PY
fi
# Ship it without the debug sections (60 MiB of them); symbols stay, so backtraces
# still name functions. The full binary stays in $out for debugging.
objcopy --strip-debug "$out/kiln" "$target_dir/kiln.tmp"
mv "$target_dir/kiln.tmp" "$target_dir/kiln"
# A file just written with write(2) sits in the page cache in large folios, which the
# kernel maps whole on a fault: until evicted, every run would map about 2 MiB more of
# kiln's text than it touches (4.2 instead of 2.2 MiB RSS measured here). Write it out
# and drop it from the cache, so it is read back like any installed binary.
sync "$target_dir/kiln"
python3 -c 'import os, sys
fd = os.open(sys.argv[1], os.O_RDONLY)
os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)' "$target_dir/kiln"
echo "$target_dir/kiln"

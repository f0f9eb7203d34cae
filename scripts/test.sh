#!/usr/bin/env bash
# kiln's whole test suite, as CI runs it (.ci/run calls exactly this).
# 1. installs the Debian/PyPI packages the tests check against (scripts/setup-host.sh);
# 2. builds, or reuses from the cache outside the repo, the minimal test kernel and
#    the busybox initramfs (keyed by the hash of their inputs);
# 3. runs a bounded fuzz pass (fuzz/run.sh), then every crate's unit tests and the
#    integration tests, which boot real guests;
# 4. builds the shipped binary (scripts/build-release.sh, which checks it) and runs
#    the start-up benchmark once with it, so both keep working.
set -euo pipefail
cd "$(dirname "$0")/.."

start=$(date +%s)
stamp() { echo "test.sh: [$(( $(date +%s) - start ))s] $*" >&2; }

stamp "host packages"
scripts/setup-host.sh

stamp "test kernel"
KILN_TEST_KERNEL_DIR=$(scripts/build-kernel.sh)
stamp "test initramfs"
KILN_TEST_INITRAMFS=$(scripts/build-initramfs.sh)
export KILN_TEST_KERNEL_DIR KILN_TEST_INITRAMFS

# Bounded fuzzing of virtio-blk requests, virtio-net chains, virtio-serial control messages,
# virtio-console output to a slow socket, and qcow2 metadata (fuzz/README.md).
# cargo-fuzz comes from crates.io; it runs on the stable toolchain through RUSTC_BOOTSTRAP.
stamp "fuzz (${KILN_FUZZ_SECONDS:-60} s per target)"
command -v cargo-fuzz >/dev/null || cargo install --locked -q cargo-fuzz
fuzz/run.sh "${KILN_FUZZ_SECONDS:-60}"

stamp "cargo test"
# Every test binary runs even after one fails, so a CI log shows all failures at once.
cargo test --workspace --locked --no-fail-fast 2>&1

stamp "release build"
release=$(scripts/build-release.sh)
stamp "start-up benchmark (3 runs, not timed as a test)"
"$release" bench start --runs 3
stamp "done"

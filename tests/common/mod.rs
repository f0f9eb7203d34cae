//! Shared helpers for kiln's integration tests: the kiln binary, the cached test
//! kernel and initramfs, and per-test init scripts appended to the initramfs.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

pub fn kiln() -> Command {
    Command::new(env!("CARGO_BIN_EXE_kiln"))
}

pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Runs a build script from scripts/ and returns the path it prints. The script
/// reuses its cache when the inputs did not change. Panics (fails the test loudly)
/// when the artefact cannot be built.
fn build_artefact(env_var: &str, script: &str) -> PathBuf {
    if let Ok(path) = std::env::var(env_var) {
        return PathBuf::from(path);
    }
    let output = Command::new(repo_root().join("scripts").join(script))
        .output()
        .unwrap_or_else(|e| panic!("cannot run scripts/{script}: {e}"));
    assert!(
        output.status.success(),
        "scripts/{script} failed:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    PathBuf::from(String::from_utf8_lossy(&output.stdout).trim())
}

/// Directory with kiln's minimal test kernel: `vmlinux` and `bzImage`.
pub fn kernel_dir() -> PathBuf {
    build_artefact("KILN_TEST_KERNEL_DIR", "build-kernel.sh")
}

/// The uncompressed busybox initramfs whose /init runs /test.sh when present.
pub fn initramfs() -> PathBuf {
    build_artefact("KILN_TEST_INITRAMFS", "build-initramfs.sh")
}

/// Writes `base initramfs + a newc archive holding /test.sh` into `dir` and returns
/// its path. Linux unpacks concatenated archives in order.
pub fn initramfs_with_test(dir: &Path, script: &str) -> PathBuf {
    let staging = dir.join("test-cpio");
    std::fs::create_dir_all(&staging).unwrap();
    let script_path = staging.join("test.sh");
    std::fs::write(&script_path, format!("#!/bin/sh\n{script}\n")).unwrap();
    std::fs::set_permissions(
        &script_path,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let mut child = Command::new("cpio")
        .args(["-o", "-H", "newc", "--quiet"])
        .current_dir(&staging)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("cpio (Debian package cpio) must be installed");
    use std::io::Write;
    child.stdin.take().unwrap().write_all(b"test.sh\n").unwrap();
    let archive = child.wait_with_output().unwrap();
    assert!(archive.status.success(), "cpio failed");
    let mut combined = std::fs::read(initramfs()).unwrap();
    combined.extend_from_slice(&archive.stdout);
    let out = dir.join("initramfs-test.cpio");
    std::fs::write(&out, combined).unwrap();
    out
}

/// A finished kiln run with its wall time, for tests that report boot times.
pub struct Run {
    pub output: Output,
    pub elapsed: Duration,
}

impl Run {
    pub fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.output.stdout).into_owned()
    }
    pub fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.output.stderr).into_owned()
    }
    pub fn code(&self) -> Option<i32> {
        self.output.status.code()
    }
}

/// Runs kiln with `args`, recording the wall time; prints it for the CI log.
pub fn run_kiln(label: &str, args: &[&str]) -> Run {
    let start = Instant::now();
    let output = kiln().args(args).output().expect("run kiln");
    let elapsed = start.elapsed();
    eprintln!(
        "[{label}] kiln exited {:?} after {:.1} s",
        output.status.code(),
        elapsed.as_secs_f64()
    );
    Run { output, elapsed }
}

/// The value of `KEY=` in a guest's output lines (the test scripts print `KEY=value`).
pub fn guest_value<'a>(stdout: &'a str, key: &str) -> Option<&'a str> {
    let prefix = format!("{key}=");
    stdout
        .lines()
        .find_map(|l| l.trim_end_matches('\r').strip_prefix(prefix.as_str()))
        .map(str::trim)
}

/// The hex digest of `data` by a coreutils digest tool (`md5sum`, `sha256sum`), to
/// compare with what the same tool printed inside the guest.
pub fn digest_hex(tool: &str, data: &[u8]) -> String {
    use std::io::Write;
    let mut child = Command::new(tool)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{tool} (coreutils): {e}"));
    child.stdin.take().unwrap().write_all(data).unwrap();
    let out = child.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let digest = text.split_whitespace().next().unwrap_or_default();
    assert!(
        out.status.success() && digest.len() >= 32,
        "{tool} printed no digest: {text}"
    );
    digest.to_string()
}

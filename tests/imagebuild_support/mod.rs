//! Helpers shared by the image build integration tests. A missing tool or package is a
//! test failure with a message saying how to get it, never a skip.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;

/// The debian-installer netboot initrd/kernel path inside the package.
pub const DI_DIR: &str = "usr/lib/debian-installer/images/12/amd64/text/debian-installer/amd64";
pub const DI_PACKAGE: &str = "debian-installer-12-netboot-amd64";

pub fn kiln() -> Command {
    Command::new(env!("CARGO_BIN_EXE_kiln"))
}

/// Runs `cmd`, panicking with its stderr when it fails.
pub fn run_ok(cmd: &mut Command) -> Output {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Runs `cmd` expecting failure; returns its stderr.
pub fn run_fail(cmd: &mut Command) -> String {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        !out.status.success(),
        "{cmd:?} unexpectedly succeeded:\nstdout: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Panics unless `tool` is on PATH, naming the Debian package that has it.
pub fn require_tool(tool: &str, package: &str) {
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .stdout(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    assert!(
        found,
        "`{tool}` is missing: install {package} (scripts/setup-host.sh does)"
    );
}

/// Directory holding the real Debian 12 installer `linux` and `initrd.gz`: the installed
/// package's files, or else the package fetched with `apt-get download` and unpacked.
pub fn debian_installer_dir() -> PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let installed = Path::new("/").join(DI_DIR);
        if installed.join("initrd.gz").is_file() && installed.join("linux").is_file() {
            return installed;
        }
        let dir = fresh_target_dir("debian-installer-package");
        run_ok(
            Command::new("apt-get")
                .args(["download", DI_PACKAGE])
                .current_dir(&dir),
        );
        let deb = std::fs::read_dir(&dir)
            .unwrap()
            .filter_map(|e| e.ok())
            .map(|e| e.path())
            .find(|p| p.extension().is_some_and(|e| e == "deb"))
            .expect("apt-get download left no .deb");
        run_ok(
            Command::new("dpkg-deb")
                .arg("-x")
                .arg(&deb)
                .arg(dir.join("root")),
        );
        dir.join("root").join(DI_DIR)
    })
    .clone()
}

/// An empty directory under Cargo's scratch space for integration tests, for files
/// that live as long as the test process (held by a `static`, whose destructor
/// never runs): a temporary directory would be left behind by every run.
pub fn fresh_target_dir(name: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(name);
    match std::fs::remove_dir_all(&dir) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            panic!("cannot empty {}: {e}", dir.display())
        }
        _ => {}
    }
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

pub fn tempdir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("kiln-test-")
        .tempdir()
        .unwrap()
}

/// `ksvalidator FILE`, with its temporary files kept beside FILE: pykickstart leaves
/// a copy of every file it checks in its temporary directory.
pub fn ksvalidator(file: &std::path::Path) -> Command {
    let mut cmd = Command::new("ksvalidator");
    cmd.arg(file)
        .env("TMPDIR", file.parent().expect("a file in a directory"));
    cmd
}

/// Makes sure `ksvalidator` (PyPI pykickstart) is there, installing it with pip if not.
pub fn require_ksvalidator() {
    let have = || {
        Command::new("ksvalidator")
            .arg("--help")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    if !have() {
        let _ = Command::new("python3")
            .args(["-m", "pip", "install", "-q", "pykickstart"])
            .status();
    }
    assert!(
        have(),
        "ksvalidator is missing and `pip install pykickstart` did not provide it"
    );
}

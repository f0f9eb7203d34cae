//! Bad input to `kiln run`: a clear error naming the file, a non-zero exit, no panic.

use std::path::PathBuf;
use std::process::{Command, Output};

fn tmp(name: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("vmm-errors");
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

fn run(kernel: &std::path::Path, extra: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args(["run", "--serial", "none", "--timeout", "5s", "--kernel"])
        .arg(kernel)
        .args(extra)
        .output()
        .expect("run kiln")
}

fn assert_clean_failure(out: &Output, mentions: &[&str]) {
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    for m in mentions {
        assert!(err.contains(m), "expected {m:?} in: {err}");
    }
}

#[test]
fn missing_kernel() {
    let path = tmp("no-such-kernel");
    let out = run(&path, &[]);
    assert_clean_failure(&out, &["no-such-kernel", "cannot open kernel"]);
}

#[test]
fn non_kernel_file() {
    let path = tmp("notes.txt");
    std::fs::write(&path, "just some text, not a kernel\n".repeat(100)).unwrap();
    assert_clean_failure(
        &run(&path, &[]),
        &["notes.txt", "neither an ELF vmlinux nor a bzImage"],
    );
    let empty = tmp("empty");
    std::fs::write(&empty, b"").unwrap();
    assert_clean_failure(&run(&empty, &[]), &["empty"]);
}

#[test]
fn truncated_elf() {
    let path = tmp("truncated.elf");
    std::fs::write(&path, &kiln_vmm::guests::DEBUG_EXIT[..100]).unwrap();
    assert_clean_failure(&run(&path, &[]), &["truncated.elf"]);
}

#[test]
fn truncated_bzimage() {
    // A bzImage header with a protected-mode part far shorter than it announces.
    let mut image = vec![0u8; 0x4000];
    image[0x1f1] = 4; // setup_sects
    image[0x1fe..0x200].copy_from_slice(&0xaa55u16.to_le_bytes());
    image[0x202..0x206].copy_from_slice(b"HdrS");
    image[0x206..0x208].copy_from_slice(&0x020fu16.to_le_bytes()); // version
    image[0x211] = 1; // loadflags: LOADED_HIGH
    image[0x214..0x218].copy_from_slice(&0x100000u32.to_le_bytes()); // code32_start
    image[0x1f4..0x1f8].copy_from_slice(&0x10000u32.to_le_bytes()); // syssize (x16 bytes)
    image[0x236..0x238].copy_from_slice(&1u16.to_le_bytes()); // xloadflags: 64-bit entry
    image[0x238..0x23c].copy_from_slice(&2048u32.to_le_bytes()); // cmdline_size
    let path = tmp("truncated-bzImage");
    std::fs::write(&path, &image).unwrap();
    assert_clean_failure(&run(&path, &[]), &["truncated-bzImage", "truncated"]);
}

#[test]
fn bad_kernel_leaves_no_serial_output_file() {
    let path = tmp("not-a-kernel");
    std::fs::write(&path, "text").unwrap();
    let log = tmp("serial-should-not-exist.log");
    let _ = std::fs::remove_file(&log);
    let out = Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args(["run", "--timeout", "5s", "--kernel"])
        .arg(&path)
        .arg("--serial")
        .arg(format!("file={}", log.display()))
        .output()
        .expect("run kiln");
    assert_clean_failure(&out, &["not-a-kernel"]);
    assert!(!log.exists(), "serial output file created for a failed run");
}

#[test]
fn missing_initrd() {
    let kernel = tmp("ok.elf");
    std::fs::write(&kernel, kiln_vmm::guests::DEBUG_EXIT).unwrap();
    let initrd = tmp("no-such-initrd");
    let out = run(&kernel, &["--initrd", initrd.to_str().unwrap()]);
    assert_clean_failure(&out, &["no-such-initrd", "initrd"]);
}

#[test]
fn bad_options_are_usage_errors() {
    let kernel = tmp("ok2.elf");
    std::fs::write(&kernel, kiln_vmm::guests::DEBUG_EXIT).unwrap();
    for bad in [
        &["--memory", "12X"][..],
        &["--memory", "0.3K"],
        &["--serial", "pty"],
        &["--timeout", "soon"],
        &["--cpus", "0"],
        &["--debug-exit", "0x10000"],
    ] {
        // Not through run(): it passes --serial and --timeout itself, and a second one
        // would be refused as a repeated option before its value is looked at.
        let out = Command::new(env!("CARGO_BIN_EXE_kiln"))
            .args(["run", "--kernel"])
            .arg(&kernel)
            .args(bad)
            .output()
            .expect("run kiln");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{bad:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
        // The message names the option and the value at fault.
        assert!(
            stderr.contains(bad[0]) && stderr.contains(&format!("'{}'", bad[1])),
            "{bad:?}: {stderr}"
        );
    }
    let out = run(&kernel, &["--memory", "1M"]);
    assert_clean_failure(&out, &["too small"]);
}

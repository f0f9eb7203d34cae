//! Image locks shared with QEMU: kiln refuses an image QEMU is writing, QEMU refuses
//! one kiln has open, and a backing file in use cannot be written.

mod common;
mod qcow2_support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use qcow2_support::QemuHolding;

use kiln_devices::block::{open_disk, DiskConfig};

fn dir(name: &str) -> PathBuf {
    let d = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("image-locks-{name}"));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn qemu_img(args: &[&str]) -> std::process::Output {
    Command::new("qemu-img")
        .args(args)
        .output()
        .expect("qemu-img (run scripts/setup-host.sh)")
}

fn config(path: &Path, readonly: bool) -> DiskConfig {
    DiskConfig {
        readonly,
        ..DiskConfig::new(path.to_owned())
    }
}

#[test]
fn kiln_refuses_an_image_qemu_is_writing() {
    let d = dir("qemu-writes");
    let image = d.join("disk.qcow2");
    assert!(qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        image.to_str().unwrap(),
        "16M"
    ])
    .status
    .success());
    let qemu = QemuHolding::start(&image);
    for readonly in [false, true] {
        let err = open_disk(&config(&image, readonly))
            .err()
            .expect("opened an image in use");
        let text = err.to_string();
        assert!(text.contains("in use by another process"), "{text}");
        assert!(text.contains(image.to_str().unwrap()), "{text}");
    }
    // The same refusal from `kiln run`, before the VM starts.
    let spec = format!("path={}", image.display());
    let run = common::run_kiln(
        "locked-disk",
        &[
            "run",
            "--kernel",
            "/nonexistent-kernel",
            "--net",
            "none",
            "--disk",
            &spec,
        ],
    );
    assert_eq!(run.code(), Some(1), "{}", run.stderr());
    assert!(
        run.stderr().contains("in use by another process"),
        "{}",
        run.stderr()
    );
    // Nor may `kiln img resize` change it under QEMU.
    let before = std::fs::metadata(&image).unwrap().len();
    let resize = common::run_kiln(
        "locked-resize",
        &["img", "resize", image.to_str().unwrap(), "+16M"],
    );
    assert_eq!(resize.code(), Some(1), "{}", resize.stderr());
    assert!(
        resize.stderr().contains("in use by another process"),
        "{}",
        resize.stderr()
    );
    assert_eq!(std::fs::metadata(&image).unwrap().len(), before);
    drop(qemu);
    open_disk(&config(&image, false)).expect("free again once QEMU is gone");
}

#[test]
fn qemu_refuses_images_kiln_has_open_including_backing_files() {
    let d = dir("kiln-writes");
    let base = d.join("base.qcow2");
    let top = d.join("top.qcow2");
    let (b, t) = (base.to_str().unwrap(), top.to_str().unwrap());
    assert!(qemu_img(&["create", "-q", "-f", "qcow2", b, "16M"])
        .status
        .success());
    assert!(
        qemu_img(&["create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", b, t])
            .status
            .success()
    );
    let disk = open_disk(&config(&top, false)).unwrap();
    let info = qemu_img(&["info", t]);
    assert!(!info.status.success());
    let stderr = String::from_utf8_lossy(&info.stderr);
    assert!(stderr.contains("lock"), "{stderr}");
    // The backing file may be read, not written, while kiln uses it.
    assert!(qemu_img(&["info", b]).status.success());
    let write = Command::new("qemu-io")
        .args(["-c", "write 0 4k", b])
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&write.stdout) + String::from_utf8_lossy(&write.stderr);
    assert!(
        out.contains("lock"),
        "qemu-io wrote a backing file in use: {out}"
    );
    // A second kiln open of the overlay is refused too.
    assert!(open_disk(&config(&top, true)).is_err());
    drop(disk);
    // A child another test thread forks in this moment holds the descriptor, and its
    // lock, until its exec: give it that long.
    let deadline = Instant::now() + Duration::from_secs(5);
    while !qemu_img(&["info", t]).status.success() {
        assert!(
            Instant::now() < deadline,
            "the overlay stayed locked after close"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn img_check_waits_for_writers_unless_forced() {
    let d = dir("check");
    let image = d.join("disk.qcow2");
    let path = image.to_str().unwrap();
    assert!(qemu_img(&["create", "-q", "-f", "qcow2", path, "16M"])
        .status
        .success());
    let _qemu = QemuHolding::start(&image);
    let kiln = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_kiln"))
            .args(args)
            .output()
            .unwrap()
    };
    let out = kiln(&["img", "check", path]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("in use by another process"));
    let out = kiln(&["img", "check", "-U", path]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    // So do compare (exit 2 for an error there), map, measure and convert.
    let copy = d.join("copy.qcow2");
    std::fs::copy(&image, &copy).unwrap();
    let c = copy.to_str().unwrap();
    let converted = d.join("converted.qcow2");
    let o = converted.to_str().unwrap();
    for (args, refused) in [
        (vec!["img", "compare", path, c], 2),
        (vec!["img", "map", path], 1),
        (vec!["img", "measure", "-O", "qcow2", path], 1),
        (vec!["img", "convert", path, o], 1),
    ] {
        let out = kiln(&args);
        assert_eq!(out.status.code(), Some(refused), "{args:?}: {out:?}");
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("in use"),
            "{out:?}"
        );
        assert!(!converted.exists(), "a refused convert left its output");
        let out = kiln(&[&args[..2], &["-U"], &args[2..]].concat());
        assert_eq!(out.status.code(), Some(0), "{args:?} -U: {out:?}");
        // -U reaches the map of what is read too: no fallback to reading every byte.
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!stderr.contains("cannot map"), "{args:?} -U: {stderr}");
    }
    assert!(qemu_img(&["compare", "-U", path, o]).status.success());
}

//! `kiln img compare` against `qemu-img compare` on the same pairs of images: the same
//! exit code (0 identical, 1 different, 2 error) and the same words, including the
//! offset of the first mismatch, with and without strict mode (`-s`).

use std::path::{Path, PathBuf};
use std::process::Output;

mod qcow2_support;

use qcow2_support::{qemu_img, qemu_overlay, run, s, tool};

/// Both tools on the same pair: equal exit codes and standard output.
fn assert_same_verdict(a: &Path, b: &Path, expect: i32) -> String {
    assert_same_verdict_with(&[], a, b, expect)
}

/// As [`assert_same_verdict`], with options (`-s`) given to both.
fn assert_same_verdict_with(options: &[&str], a: &Path, b: &Path, expect: i32) -> String {
    let theirs = run(
        "qemu-img",
        &[&["compare", "-U"], options, &[s(a), s(b)]].concat(),
    );
    let ours = run(
        env!("CARGO_BIN_EXE_kiln"),
        &[&["img", "compare"], options, &[s(a), s(b)]].concat(),
    );
    let text = |o: &Output| String::from_utf8_lossy(&o.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&ours.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_eq!(theirs.status.code(), Some(expect), "qemu-img: {theirs:?}");
    assert_eq!(ours.status.code(), Some(expect), "kiln: {stderr}");
    assert_eq!(
        text(&ours),
        text(&theirs),
        "{} vs {}",
        a.display(),
        b.display()
    );
    text(&ours)
}

#[test]
fn verdicts_and_mismatch_offsets_match_qemu_img() {
    let d = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("img-compare");
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    let base = d.join("base.qcow2");
    qemu_img(&["create", "-q", "-f", "qcow2", s(&base), "64M"]);
    tool(
        "qemu-io",
        &[
            "-c",
            "write -P 0x11 1M 3M",
            "-c",
            "write -P 0x22 60M 1M",
            s(&base),
        ],
    );
    let flat = d.join("flat.raw");
    qemu_img(&["convert", "-O", "raw", s(&base), s(&flat)]);
    let compressed = d.join("compressed.qcow2");
    qemu_img(&["convert", "-c", "-O", "qcow2", s(&base), s(&compressed)]);
    let overlay = d.join("overlay.qcow2");
    qemu_overlay("base.qcow2", "qcow2", &overlay);
    assert_same_verdict(&base, &flat, 0);
    assert_same_verdict(&compressed, &flat, 0);
    assert_same_verdict(&overlay, &flat, 0);

    // One byte changed inside the second MiB of data: reported at its sector.
    tool("qemu-io", &["-c", "write -P 0x33 2100000 1", s(&overlay)]);
    let out = assert_same_verdict(&overlay, &flat, 1);
    assert!(out.contains("offset 2099712!"), "{out}");

    // A longer image: identical while its tail reads zero, then not.
    let longer = d.join("longer.raw");
    std::fs::copy(&flat, &longer).unwrap();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&longer)
        .unwrap()
        .set_len(80 << 20)
        .unwrap();
    let out = assert_same_verdict(&flat, &longer, 0);
    assert!(out.starts_with("Warning: Image size mismatch!"), "{out}");
    tool(
        "qemu-io",
        &["-f", "raw", "-c", "write -P 0x44 70M 4k", s(&longer)],
    );
    assert_same_verdict(&longer, &flat, 1);
}

#[test]
fn strict_mode_matches_qemu_img() {
    let d = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("img-compare-strict");
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    let image = |name: &str| d.join(name);
    let base = image("base.qcow2");
    qemu_img(&["create", "-q", "-f", "qcow2", s(&base), "64M"]);
    let writes = ["write -P 0x11 1M 3M", "write -P 0x22 60M 1M"];
    tool("qemu-io", &["-c", writes[0], "-c", writes[1], s(&base)]);
    for (name, options) in [
        ("flat.raw", &["-O", "raw"][..]),
        ("copy.qcow2", &["-O", "qcow2"]),
        ("compressed.qcow2", &["-c", "-O", "qcow2"]),
    ] {
        qemu_img(&[&["convert"], options, &[s(&base), s(&image(name))]].concat());
    }
    for name in ["overlay.qcow2", "changed.qcow2", "zeroed.qcow2"] {
        qemu_overlay("base.qcow2", "qcow2", &image(name));
    }
    let (changed, zeroed) = (image("changed.qcow2"), image("zeroed.qcow2"));
    let zero = "write -z 60M 64k";
    tool(
        "qemu-io",
        &["-c", "write -P 0x33 2100000 1", "-c", zero, s(&changed)],
    );
    tool("qemu-io", &["-c", zero, s(&zeroed)]);
    let longer = image("longer.qcow2");
    qemu_img(&["create", "-q", "-f", "qcow2", s(&longer), "65M"]);

    for (a, b, expect, says) in [
        ("base.qcow2", "copy.qcow2", 0, "identical"),
        // The same chain read through an overlay: the same statuses.
        ("overlay.qcow2", "base.qcow2", 0, "identical"),
        // A raw file's holes are allocated, a qcow2 image's unallocated ranges not.
        ("base.qcow2", "flat.raw", 1, "Offset 0 block status"),
        ("flat.raw", "base.qcow2", 1, "Offset 0 block status"),
        // Compressed clusters have no host offset.
        (
            "base.qcow2",
            "compressed.qcow2",
            1,
            "Offset 1048576 block status",
        ),
        // A zero cluster over data: same bytes, different status.
        (
            "zeroed.qcow2",
            "base.qcow2",
            1,
            "Offset 62914560 block status",
        ),
        // The content differs before the status does.
        (
            "changed.qcow2",
            "base.qcow2",
            1,
            "Content mismatch at offset 2099712",
        ),
        ("base.qcow2", "longer.qcow2", 1, "Image size mismatch"),
    ] {
        let out = assert_same_verdict_with(&["-s"], &image(a), &image(b), expect);
        assert!(out.contains(says), "{a} {b}: {out}");
    }
    // Without -s, a raw copy is identical.
    assert_same_verdict(&base, &image("flat.raw"), 0);
}

#[test]
fn quiet_and_errors() {
    let d = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("img-compare-errors");
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    let a = d.join("a.qcow2");
    qemu_img(&["create", "-q", "-f", "qcow2", s(&a), "1M"]);
    let kiln = |args: &[&str]| run(env!("CARGO_BIN_EXE_kiln"), args);
    let quiet = kiln(&["img", "compare", "-q", s(&a), s(&a)]);
    assert_eq!((quiet.status.code(), quiet.stdout.len()), (Some(0), 0));
    let missing = d.join("missing.raw");
    let out = kiln(&["img", "compare", s(&a), s(&missing)]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains(s(&missing)), "{stderr}");
    assert!(!missing.exists());
    // -f and -F are honoured: the file's bytes are not the guest's.
    let out = kiln(&["img", "compare", "-f", "raw", "-F", "raw", s(&a), s(&a)]);
    assert_eq!(out.status.code(), Some(0));
    let out = kiln(&["img", "compare", "-f", "raw", "-F", "qcow2", s(&a), s(&a)]);
    assert_eq!(out.status.code(), Some(1));
    // The wrong format for an image is an error, not a difference.
    let raw = d.join("b.raw");
    std::fs::write(&raw, vec![0u8; 4096]).unwrap();
    let out = kiln(&["img", "compare", "-F", "qcow2", s(&a), s(&raw)]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains(s(&raw)) && stderr.contains("not a qcow2 image"),
        "{stderr}"
    );
}

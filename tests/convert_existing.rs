//! `kiln img convert -n`: the input written into an image that exists, in place,
//! against `qemu-img convert -n` into a copy of the same target; and what it refuses,
//! leaving the target as it was.

mod qcow2_support;

use std::path::{Path, PathBuf};

use qcow2_support::*;

const MIB: usize = 1 << 20;

/// A 6 MiB qcow2 overlay on a raw base: data (some of it zeroes), zeroes over base
/// data, and base data showing through.
fn input(dir: &Path) -> PathBuf {
    std::fs::write(dir.join("base.raw"), vec![0x11u8; 6 * MIB]).unwrap();
    let top = dir.join("top.qcow2");
    qemu_overlay("base.raw", "raw", &top);
    qemu_io(
        &top,
        &[
            "write -P 0x22 1M 1M",
            "write -P 0 1600k 128k",
            "write -z 3M 1M",
        ],
    );
    top
}

#[test]
fn written_in_place_as_qemu_img_writes_it() {
    let dir = fresh_dir("convert-existing", "written");
    let top = input(&dir);
    let expected = qemu_contents(&top, &dir);

    // A raw file longer than the input, full of 0xee: the input's 6 MiB replace what
    // was there (zeroes included), the last 2 MiB stay.
    let raw = dir.join("target.raw");
    std::fs::write(&raw, vec![0xeeu8; 8 * MIB]).unwrap();
    let qemu_raw = dir.join("qemu-target.raw");
    std::fs::copy(&raw, &qemu_raw).unwrap();
    kiln_ok(&["img", "convert", "-n", s(&top), s(&raw)]);
    qemu_img(&["convert", "-n", "-O", "raw", s(&top), s(&qemu_raw)]);
    let bytes = std::fs::read(&raw).unwrap();
    assert_eq!(bytes.len(), 8 * MIB);
    assert!(bytes[..6 * MIB] == expected[..], "the input's bytes");
    assert!(bytes[6 * MIB..].iter().all(|b| *b == 0xee), "the tail");
    assert!(
        bytes == std::fs::read(&qemu_raw).unwrap(),
        "as qemu-img writes it"
    );

    // A preallocated qcow2 image with 4 KiB clusters: it stays one, and reads the input.
    let qcow2 = dir.join("target.qcow2");
    let options = "preallocation=metadata,cluster_size=4k";
    kiln_ok(&["img", "create", "-o", options, s(&qcow2), "6M"]);
    qemu_io(&qcow2, &["write -P 0x77 0 6M"]);
    kiln_ok(&["img", "convert", "-n", s(&top), s(&qcow2)]);
    assert_check_clean(&qcow2);
    qemu_img(&["compare", "-q", s(&top), s(&qcow2)]);
    let info: serde_json::Value =
        serde_json::from_str(&qemu_img(&["info", "--output=json", s(&qcow2)])).unwrap();
    assert_eq!(info["cluster-size"], 4096);
    assert!(info.get("backing-filename").is_none(), "{info}");
}

#[test]
fn what_cannot_be_written_in_place_is_refused_and_nothing_changes() {
    let dir = fresh_dir("convert-existing", "refused");
    let top = input(&dir);
    let small = dir.join("small.raw");
    std::fs::write(&small, vec![0xeeu8; 5 * MIB]).unwrap();
    let qcow2 = dir.join("target.qcow2");
    qemu_create(&qcow2, "", "6M");
    qemu_io(&qcow2, &["write -P 0x77 0 1M"]);
    let missing = dir.join("missing.raw");
    for (target, flags, says) in [
        (
            &small,
            &["-n"][..],
            "holds 5242880 bytes, the input 6291456",
        ),
        (&missing, &["-n"], "missing.raw"),
        (&qcow2, &["-n", "-O", "raw"], "is a qcow2 image"),
        (&qcow2, &["-n", "-c"], "compression (-c)"),
        (&qcow2, &["-n", "-B", "base.raw"], "backing file"),
        (&qcow2, &["-n", "-o", "cluster_size=4k"], "-o with -n"),
    ] {
        let before = std::fs::read(target).ok();
        let out = kiln(&[&["img", "convert"], flags, &[s(&top), s(target)]].concat());
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{flags:?} accepted");
        assert!(stderr.contains(says), "{flags:?}: {stderr}");
        assert_eq!(std::fs::read(target).ok(), before, "{flags:?} changed it");
    }
    assert!(!missing.exists());
}

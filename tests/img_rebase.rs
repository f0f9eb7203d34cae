//! `kiln img rebase -u` against `qemu-img rebase -u`: after moving a backing file,
//! both point an overlay at the new one with the same backing fields, the guest sees
//! the same data, and `qemu-img check` is clean; refused rebases change nothing.

use std::path::{Path, PathBuf};
use std::process::Output;

mod common;
mod qcow2_support;

use qcow2_support::{qemu_create, qemu_img, qemu_overlay, tool};

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn kiln(args: &[&str]) -> Output {
    let out = common::kiln().args(args).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    out
}

fn backing_fields(image: &Path) -> (serde_json::Value, serde_json::Value) {
    let info: serde_json::Value =
        serde_json::from_str(&qemu_img(&["info", "--output=json", "-U", s(image)])).unwrap();
    (
        info["backing-filename"].clone(),
        info["backing-filename-format"].clone(),
    )
}

fn dir(name: &str) -> PathBuf {
    let d = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("img-rebase-{name}"));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[test]
fn a_moved_backing_file_is_followed_as_with_qemu_img() {
    let d = dir("moved");
    for (name, options) in [
        ("v3", "cluster_size=65536"),
        ("v2", "compat=0.10,cluster_size=512"),
    ] {
        let old = d.join(format!("{name}-old-base.qcow2"));
        qemu_create(&old, options, "8M");
        tool("qemu-io", &["-c", "write -P 0x11 0 4M", s(&old)]);
        let ours = d.join(format!("{name}-ours.qcow2"));
        let theirs = d.join(format!("{name}-theirs.qcow2"));
        qemu_overlay(&format!("{name}-old-base.qcow2"), "qcow2", &ours);
        tool("qemu-io", &["-c", "write -P 0x22 1M 64k", s(&ours)]);
        std::fs::copy(&ours, &theirs).unwrap();
        let flat = d.join(format!("{name}-flat.raw"));
        qemu_img(&["convert", "-O", "raw", s(&ours), s(&flat)]);

        // The base moves, as when a build ships it to a shared directory.
        let new_name = format!("shared-{name}-base.qcow2");
        std::fs::rename(&old, d.join(&new_name)).unwrap();
        let out = kiln(&["img", "rebase", "-u", "-b", &new_name, s(&ours)]);
        assert!(out.status.success(), "{name}: {out:?}");
        qemu_img(&["rebase", "-u", "-b", &new_name, "-F", "qcow2", s(&theirs)]);
        assert_eq!(backing_fields(&ours), backing_fields(&theirs), "{name}");
        assert_eq!(backing_fields(&ours).0, new_name.as_str());
        qemu_img(&["check", s(&ours)]);
        qemu_img(&["compare", "-q", s(&ours), s(&flat)]);

        // No backing file: the overlay's own data stays, the rest reads zero.
        assert!(kiln(&["img", "rebase", "-u", "-b", "", s(&ours)])
            .status
            .success());
        qemu_img(&["rebase", "-u", "-b", "", s(&theirs)]);
        assert_eq!(backing_fields(&ours).0, serde_json::Value::Null);
        qemu_img(&["compare", "-q", s(&ours), s(&theirs)]);
        qemu_img(&["check", s(&ours)]);
    }
}

#[test]
fn refused_rebases_change_nothing() {
    let d = dir("refused");
    let base = d.join("base.qcow2");
    qemu_create(&base, "", "8M");
    let small = d.join("small.qcow2");
    qemu_create(&small, "cluster_size=512", "8M");
    let raw = d.join("disk.raw");
    std::fs::write(&raw, vec![0u8; 1 << 20]).unwrap();
    let long_name = "b".repeat(600);
    let cases: [(&Path, Vec<&str>, &str); 4] = [
        (&small, vec!["-b", "base.qcow2"], "only unsafe rebases"),
        (&small, vec!["-u", "-b", "missing.qcow2"], "give it with -F"),
        (
            &small,
            vec!["-u", "-F", "qcow2", "-b", &long_name],
            "header cluster",
        ),
        (&raw, vec!["-u", "-b", "base.qcow2"], "not a qcow2 image"),
    ];
    for (image, args, why) in cases {
        let before = std::fs::read(image).unwrap();
        let mut full = vec!["img", "rebase", s(image)];
        full.extend(&args);
        let out = kiln(&full);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {stderr}");
        assert!(stderr.contains(why), "{args:?}: {stderr}");
        assert!(
            std::fs::read(image).unwrap() == before,
            "{args:?} changed the image"
        );
    }
}

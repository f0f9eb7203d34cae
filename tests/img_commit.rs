//! `kiln img commit` against `qemu-img commit`: the same overlay committed by both
//! tools leaves identical backing files (grown where the overlay is longer), overlays
//! that hold nothing of their own, and images `qemu-img check` finds clean; `-d` keeps
//! the overlay; refused commits change nothing.

use std::path::{Path, PathBuf};

mod qcow2_support;

use qcow2_support::{
    fresh_dir, kiln, own_layer, qemu_create, qemu_img, qemu_io, qemu_overlay_with, run, s,
};

fn dir(name: &str) -> PathBuf {
    fresh_dir("img-commit", name)
}

/// A base of `base_format` with data in its first 4 MiB, 8 MiB long, and a 12 MiB
/// qcow2 overlay on it (made with `options`) holding data, zeroes and data past the
/// base's end. Returns (base, overlay).
fn chain(d: &Path, name: &str, options: &str, base_format: &str) -> (PathBuf, PathBuf) {
    let base = d.join(format!("{name}-base.{base_format}"));
    qemu_img(&["create", "-q", "-f", base_format, s(&base), "8M"]);
    let fmt = ["-f", base_format];
    let write = |cmd: &str| qemu_img_io(&base, &fmt, cmd);
    write("write -P 0x11 0 4M");
    let overlay = d.join(format!("{name}-top.qcow2"));
    qemu_overlay_with(
        options,
        &format!("{name}-base.{base_format}"),
        base_format,
        &overlay,
    );
    qemu_img(&["resize", "-q", s(&overlay), "12M"]);
    qemu_io(
        &overlay,
        &[
            "write -P 0x22 1M 64k",
            "write -z 2M 128k",
            "write -P 0x33 10M 64k",
        ],
    );
    (base, overlay)
}

fn qemu_img_io(image: &Path, fmt: &[&str], command: &str) {
    let out = run("qemu-io", &[fmt, &["-c", command, s(image)]].concat());
    assert!(out.status.success(), "{out:?}");
}

#[test]
fn a_commit_leaves_the_same_backing_file_as_qemu_img_commit() {
    let d = dir("same");
    for (name, options, base_format) in [
        ("v3", "cluster_size=65536", "qcow2"),
        ("v2", "compat=0.10,cluster_size=512", "qcow2"),
        ("raw", "cluster_size=65536", "raw"),
    ] {
        let (base, overlay) = chain(&d, name, options, base_format);
        let flat = d.join(format!("{name}-flat.raw"));
        qemu_img(&["convert", "-O", "raw", s(&overlay), s(&flat)]);
        // qemu-img commits copies of both, the copy of the overlay pointed at its base.
        let their_base_name = format!("{name}-their-base.{base_format}");
        let their_base = d.join(&their_base_name);
        let their_overlay = d.join(format!("{name}-their-top.qcow2"));
        std::fs::copy(&base, &their_base).unwrap();
        std::fs::copy(&overlay, &their_overlay).unwrap();
        let rebase = ["rebase", "-u", "-b", &their_base_name, "-F", base_format];
        qemu_img(&[&rebase[..], &[s(&their_overlay)]].concat());

        let out = kiln(&["img", "commit", s(&overlay)]);
        assert!(out.status.success(), "{name}: {out:?}");
        assert_eq!(String::from_utf8_lossy(&out.stdout), "Image committed.\n");
        qemu_img(&["commit", "-q", s(&their_overlay)]);

        let info: serde_json::Value =
            serde_json::from_str(&qemu_img(&["info", "--output=json", s(&base)])).unwrap();
        assert_eq!(info["virtual-size"], 12 << 20, "{name}: base not grown");
        qemu_img(&["compare", "-q", s(&base), s(&their_base)]);
        qemu_img(&["compare", "-q", s(&base), s(&flat)]);
        qemu_img(&["compare", "-q", s(&overlay), s(&flat)]);
        let nothing: Vec<(u64, u64)> = Vec::new();
        assert_eq!(
            own_layer(&overlay).0,
            nothing,
            "{name}: the overlay still holds data"
        );
        assert_eq!(own_layer(&their_overlay).0, nothing, "{name}");
        qemu_img(&["check", s(&overlay)]);
        if base_format == "qcow2" {
            qemu_img(&["check", s(&base)]);
        }
    }
}

#[test]
fn d_keeps_the_overlay() {
    let d = dir("keep");
    let (base, overlay) = chain(&d, "keep", "cluster_size=65536", "qcow2");
    let before = std::fs::read(&overlay).unwrap();
    let flat = d.join("flat.raw");
    qemu_img(&["convert", "-O", "raw", s(&overlay), s(&flat)]);
    let out = kiln(&["img", "commit", "-d", "-q", s(&overlay)]);
    assert!(out.status.success(), "{out:?}");
    assert!(out.stdout.is_empty(), "-q printed {:?}", out.stdout);
    assert!(
        std::fs::read(&overlay).unwrap() == before,
        "-d changed the overlay"
    );
    qemu_img(&["compare", "-q", s(&base), s(&flat)]);
}

#[test]
fn refused_commits_change_nothing() {
    let d = dir("refused");
    let alone = d.join("alone.qcow2");
    qemu_create(&alone, "", "8M");
    let raw = d.join("disk.raw");
    std::fs::write(&raw, vec![0u8; 1 << 20]).unwrap();
    let (gone_base, orphan) = chain(&d, "orphan", "", "qcow2");
    std::fs::remove_file(&gone_base).unwrap();
    let (busy_base, busy) = chain(&d, "busy", "", "qcow2");
    // qemu-io holds the base open for writing while kiln tries.
    let mut holder = std::process::Command::new("qemu-io")
        .args(["-c", "sleep 3000", s(&busy_base)])
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(500));
    let busy_base_before = std::fs::read(&busy_base).unwrap();
    for (image, why) in [
        (&alone, "no backing file"),
        (&raw, "not a qcow2 image"),
        (&orphan, "orphan-base.qcow2"),
        (&busy, "in use"),
    ] {
        let before = std::fs::read(image).unwrap();
        let out = kiln(&["img", "commit", s(image)]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{image:?}: {stderr}");
        assert!(stderr.contains(why), "{image:?}: {stderr}");
        assert!(std::fs::read(image).unwrap() == before, "{image:?} changed");
    }
    let _ = holder.kill();
    let _ = holder.wait();
    assert!(std::fs::read(&busy_base).unwrap() == busy_base_before);
}

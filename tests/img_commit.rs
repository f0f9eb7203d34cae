//! `kiln img commit` against `qemu-img commit`: the same overlay committed by both
//! tools leaves identical backing files (grown where the overlay is longer), overlays
//! that hold nothing of their own, and images `qemu-img check` finds clean; `-d` keeps
//! the overlay; refused commits change nothing.

use std::path::{Path, PathBuf};

mod qcow2_support;

use qcow2_support::{
    fresh_dir, kiln, own_layer, qemu_create, qemu_img, qemu_io, qemu_overlay_with, run, s,
    QemuHolding,
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
    let holder = QemuHolding::start(&busy_base);
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
    drop(holder);
    assert!(std::fs::read(&busy_base).unwrap() == busy_base_before);
}

/// base (raw or qcow2, 8 MiB) <- mid (data, zeroes over the base's data) <- top (12
/// MiB: data over mid's data, zeroes over mid's data, data past the base's end), all
/// in `d` and named relative to each other.
fn three(d: &Path, base_format: &str) -> [PathBuf; 3] {
    let base = d.join(format!("base.{base_format}"));
    qemu_img(&["create", "-q", "-f", base_format, s(&base), "8M"]);
    qemu_img_io(&base, &["-f", base_format], "write -P 0x11 0 4M");
    let mid = d.join("mid.qcow2");
    qemu_overlay_with("", &format!("base.{base_format}"), base_format, &mid);
    qemu_io(&mid, &["write -P 0x22 1M 1M", "write -z 3M 64k"]);
    let top = d.join("top.qcow2");
    qemu_overlay_with("cluster_size=4096", "mid.qcow2", "qcow2", &top);
    qemu_img(&["resize", "-q", s(&top), "12M"]);
    qemu_io(
        &top,
        &[
            "write -P 0x33 1M 4k",
            "write -z 1536k 8k",
            "write -P 0x44 10M 64k",
        ],
    );
    [base, mid, top]
}

#[test]
fn b_commits_down_the_chain_as_qemu_img_does() {
    for base_format in ["qcow2", "raw"] {
        let (ours, theirs) = (
            dir(&format!("b-ours-{base_format}")),
            dir(&format!("b-theirs-{base_format}")),
        );
        let [base, mid, top] = three(&ours, base_format);
        let [their_base, _, their_top] = three(&theirs, base_format);
        let flat = ours.join("flat.raw");
        qemu_img(&["convert", "-O", "raw", s(&top), s(&flat)]);
        let top_before = std::fs::read(&top).unwrap();
        let mid_before = std::fs::read(&mid).unwrap();

        let out = kiln(&["img", "commit", "-b", s(&base), s(&top)]);
        assert!(out.status.success(), "{base_format}: {out:?}");
        assert_eq!(String::from_utf8_lossy(&out.stdout), "Image committed.\n");
        qemu_img(&["commit", "-q", "-b", s(&their_base), s(&their_top)]);

        // The base now holds what the top showed, grown to its size, as qemu-img's.
        qemu_img(&["compare", "-q", s(&base), s(&flat)]);
        qemu_img(&["compare", "-q", s(&base), s(&their_base)]);
        let size: serde_json::Value =
            serde_json::from_str(&qemu_img(&["info", "--output=json", s(&base)])).unwrap();
        assert_eq!(size["virtual-size"], 12 << 20, "{base_format}");
        // -b implies -d: top and mid are untouched, and the top still reads the same.
        assert!(
            std::fs::read(&top).unwrap() == top_before,
            "{base_format}: top changed"
        );
        assert!(
            std::fs::read(&mid).unwrap() == mid_before,
            "{base_format}: mid changed"
        );
        qemu_img(&["compare", "-q", s(&top), s(&flat)]);
        if base_format == "qcow2" {
            qemu_img(&["check", s(&base)]);
        }
    }
}

#[test]
fn b_outside_the_chain_is_refused_and_changes_nothing() {
    let d = dir("b-outside");
    let [base, mid, top] = three(&d, "qcow2");
    let stranger = d.join("stranger.qcow2");
    qemu_create(&stranger, "", "8M");
    let before: Vec<Vec<u8>> = [&base, &mid, &top, &stranger]
        .iter()
        .map(|p| std::fs::read(p).unwrap())
        .collect();
    for (b, named) in [(&stranger, "stranger.qcow2"), (&top, "top.qcow2")] {
        let out = kiln(&["img", "commit", "-b", s(b), s(&top)]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{stderr}");
        assert!(
            stderr.contains(named) && stderr.contains("not in its backing chain"),
            "{stderr}"
        );
    }
    let out = kiln(&["img", "commit", "-b", s(&d.join("nowhere.qcow2")), s(&top)]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("nowhere.qcow2"));
    for (p, was) in [&base, &mid, &top, &stranger].iter().zip(&before) {
        assert!(&std::fs::read(p).unwrap() == was, "{} changed", p.display());
    }
}

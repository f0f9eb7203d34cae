//! `kiln img create` and `kiln img info` through the binary, checked with `qemu-img info`.

mod qcow2_support;

use std::path::Path;
use std::process::Command;

use qcow2_support::{kiln, kiln_ok};
use serde_json::Value;

fn kiln_err(args: &[&str]) -> String {
    let out = kiln(args);
    assert!(!out.status.success(), "kiln {args:?} should fail");
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!err.contains("panicked"), "{err}");
    err
}

fn qemu_info(path: &Path) -> Value {
    let out = Command::new("qemu-img")
        .args(["info", "--output=json", path.to_str().unwrap()])
        .output()
        .expect("qemu-img not found: run scripts/setup-host.sh");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn kiln_info(path: &Path) -> Value {
    serde_json::from_str(&kiln_ok(&["img", "info", "--json", path.to_str().unwrap()])).unwrap()
}

fn p(path: &Path) -> &str {
    path.to_str().unwrap()
}

#[test]
fn create_qcow2_and_raw() {
    let dir = tempfile::tempdir().unwrap();
    let q = dir.path().join("a.qcow2");
    kiln_ok(&["img", "create", p(&q), "10M"]);
    let info = qemu_info(&q);
    assert_eq!(info["format"], "qcow2");
    assert_eq!(info["virtual-size"], 10 << 20);
    assert_eq!(info["cluster-size"], 65536);
    let check = Command::new("qemu-img")
        .args(["check", p(&q)])
        .output()
        .unwrap();
    assert!(check.status.success());

    let q4 = dir.path().join("small.qcow2");
    kiln_ok(&["img", "create", p(&q4), "1G", "--cluster-size", "4k"]);
    let info = qemu_info(&q4);
    assert_eq!(info["virtual-size"], 1u64 << 30);
    assert_eq!(info["cluster-size"], 4096);

    let r = dir.path().join("a.raw");
    kiln_ok(&["img", "create", p(&r), "3M", "--format", "raw"]);
    let info = qemu_info(&r);
    assert_eq!(info["format"], "raw");
    assert_eq!(info["virtual-size"], 3 << 20);
}

#[test]
fn create_with_backing_takes_its_size() {
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().join("base.qcow2");
    kiln_ok(&["img", "create", p(&base), "20M"]);
    let top = dir.path().join("top.qcow2");
    kiln_ok(&["img", "create", p(&top), "--backing", "base.qcow2"]);
    let info = qemu_info(&top);
    assert_eq!(info["virtual-size"], 20 << 20);
    assert_eq!(info["backing-filename"], "base.qcow2");
    assert_eq!(info["backing-filename-format"], "qcow2");
    assert_eq!(info["full-backing-filename"], p(&base));
}

#[test]
fn create_refuses_bad_input() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("exists.img");
    std::fs::write(&f, b"data").unwrap();
    let e = kiln_err(&["img", "create", p(&f), "1M"]);
    assert!(e.contains("exists"), "{e}");
    assert_eq!(std::fs::read(&f).unwrap(), b"data");

    let n = dir.path().join("new.img");
    let e = kiln_err(&["img", "create", p(&n), "12Q"]);
    assert!(e.contains("suffix"), "{e}");
    let e = kiln_err(&["img", "create", p(&n), "1M", "--format", "vmdk"]);
    assert!(e.contains("vmdk"), "{e}");
    let e = kiln_err(&[
        "img",
        "create",
        p(&n),
        "1M",
        "--format",
        "raw",
        "--backing",
        "x",
    ]);
    assert!(e.contains("backing"), "{e}");
    let e = kiln_err(&["img", "create", p(&n), "--backing", "missing.qcow2"]);
    assert!(e.contains("missing.qcow2"), "{e}");
    let e = kiln_err(&["img", "create", p(&n)]);
    assert!(e.contains("size"), "{e}");
    // qemu-img's -o options: what kiln cannot create is refused by name.
    for (options, why) in [
        ("compat=0.10", "compat=1.1"),
        ("refcount_bits=1", "refcount_bits=16"),
        (
            "preallocation=partial",
            "expected off, metadata, falloc, full",
        ),
        ("lazy_refcounts=on", "lazy_refcounts=off"),
        ("encrypt.format=luks", "unknown option"),
        ("cluster_size", "key=value"),
        ("cluster_size=3k", "3072"),
    ] {
        let e = kiln_err(&["img", "create", "-o", options, p(&n), "1M"]);
        assert!(e.contains(why), "-o {options}: {e}");
    }
    let e = kiln_err(&["img", "create", "-F", "qcow2", p(&n), "1M"]);
    assert!(e.contains("backing format without a backing file"), "{e}");
    assert!(!n.exists(), "failed create left {} behind", n.display());
}

#[test]
fn create_takes_qemu_img_options() {
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().join("base.raw");
    std::fs::write(&base, vec![0u8; 2 << 20]).unwrap();
    // The same options to both tools give the same image.
    let ours = dir.path().join("ours.qcow2");
    let theirs = dir.path().join("theirs.qcow2");
    let options = "cluster_size=4096,compat=1.1,lazy_refcounts=off,backing_file=base.raw";
    let args = |image| ["create", "-f", "qcow2", "-o", options, "-F", "raw", image];
    kiln_ok(&[&["img"][..], &args(p(&ours))].concat());
    let made = Command::new("qemu-img")
        .args(args(p(&theirs)))
        .status()
        .unwrap();
    assert!(made.success());
    let (k, q) = (qemu_info(&ours), qemu_info(&theirs));
    for field in [
        "virtual-size",
        "cluster-size",
        "backing-filename",
        "backing-filename-format",
    ] {
        assert_eq!(k[field], q[field], "{field}");
    }
    assert_eq!(k["cluster-size"], 4096);
    assert_eq!(k["backing-filename-format"], "raw");
    // backing_fmt in -o, and the later -o winning, as in qemu-img.
    let again = dir.path().join("again.qcow2");
    let o = [
        "-o",
        "backing_file=base.raw,backing_fmt=raw",
        "-o",
        "cluster_size=8k",
    ];
    kiln_ok(&[&["img", "create"], &o[..], &[p(&again)]].concat());
    let info = qemu_info(&again);
    assert_eq!(info["cluster-size"], 8192);
    assert_eq!(info["backing-filename-format"], "raw");
}

#[test]
fn info_json_matches_qemu_img() {
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().join("base.qcow2");
    let top = dir.path().join("top.qcow2");
    let st = Command::new("qemu-img")
        .args([
            "create",
            "-q",
            "-f",
            "qcow2",
            "-o",
            "compat=0.10,cluster_size=4096",
            p(&base),
            "5M",
        ])
        .status()
        .unwrap();
    assert!(st.success());
    let st = Command::new("qemu-img")
        .args([
            "create",
            "-q",
            "-f",
            "qcow2",
            "-b",
            "base.qcow2",
            "-F",
            "qcow2",
            p(&top),
        ])
        .status()
        .unwrap();
    assert!(st.success());
    let raw = dir.path().join("r.img");
    std::fs::write(&raw, vec![1u8; 8192]).unwrap();
    for img in [&base, &top, &raw] {
        let k = kiln_info(img);
        let q = qemu_info(img);
        for field in [
            "virtual-size",
            "format",
            "cluster-size",
            "backing-filename",
            "backing-filename-format",
            "full-backing-filename",
            "actual-size",
            "dirty-flag",
        ] {
            assert_eq!(k[field], q[field], "{}: {field}", img.display());
        }
        for field in [
            "compat",
            "refcount-bits",
            "corrupt",
            "lazy-refcounts",
            "compression-type",
        ] {
            assert_eq!(
                k["format-specific"]["data"][field],
                q["format-specific"]["data"][field],
                "{}: format-specific {field}",
                img.display()
            );
        }
    }
    assert_eq!(
        kiln_info(&base)["format-specific"]["data"]["compat"],
        "0.10"
    );

    let text = kiln_ok(&["img", "info", p(&top)]);
    assert!(
        text.contains("file format: qcow2") && text.contains("backing file: base.qcow2"),
        "{text}"
    );
}

#[test]
fn info_reports_dirty_image_and_missing_file() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("d.qcow2");
    kiln_ok(&["img", "create", p(&img), "1M"]);
    let mut b = std::fs::read(&img).unwrap();
    b[79] |= 1;
    std::fs::write(&img, &b).unwrap();
    assert_eq!(kiln_info(&img)["dirty-flag"], true);
    // Marked corrupt too: the text says how to repair both.
    b[79] |= 2;
    std::fs::write(&img, &b).unwrap();
    assert_eq!(kiln_info(&img)["format-specific"]["data"]["corrupt"], true);
    let text = kiln_ok(&["img", "info", p(&img)]);
    assert!(
        text.contains("corrupt: true (repair with `kiln img check -r all`)")
            && text.contains("dirty: true (repair with `kiln img check -r all`)"),
        "{text}"
    );
    let e = kiln_err(&["img", "info", p(&dir.path().join("nope.qcow2"))]);
    assert!(e.contains("nope.qcow2"), "{e}");
}

#[test]
fn info_lists_internal_snapshots_as_qemu_img_does() {
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("snaps.qcow2");
    let qemu = |args: &[&str]| {
        let out = Command::new("qemu-img").args(args).output().unwrap();
        assert!(out.status.success(), "qemu-img {args:?}: {out:?}");
        String::from_utf8(out.stdout).unwrap()
    };
    qemu(&["create", "-q", "-f", "qcow2", p(&image), "8M"]);
    assert!(kiln_info(&image).get("snapshots").is_none(), "none yet");
    qemu(&["snapshot", "-c", "before-install", p(&image)]);
    qemu(&["snapshot", "-c", "after", p(&image)]);
    let (k, q) = (kiln_info(&image), qemu_info(&image));
    assert_eq!(k["snapshots"].as_array().map(Vec::len), Some(2), "{k:#}");
    assert_eq!(k["snapshots"], q["snapshots"]);
    // The text table too: kiln prints dates in UTC, so qemu-img runs with TZ=UTC.
    let table = |text: &str| -> Vec<String> {
        text.lines()
            .skip_while(|l| !l.starts_with("Snapshot list:"))
            .take(4)
            .map(str::to_owned)
            .collect()
    };
    let kiln_text = kiln_ok(&["img", "info", p(&image)]);
    let qemu_text = Command::new("qemu-img")
        .env("TZ", "UTC")
        .args(["info", p(&image)])
        .output()
        .unwrap();
    let qemu_text = String::from_utf8(qemu_text.stdout).unwrap();
    assert_eq!(table(&kiln_text).len(), 4, "{kiln_text}");
    assert_eq!(table(&kiln_text), table(&qemu_text));
}

#[test]
fn info_lists_persistent_bitmaps_as_qemu_img_does() {
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("bitmaps.qcow2");
    let qemu = |program: &str, args: &[&str]| {
        let out = Command::new(program).args(args).output().unwrap();
        assert!(out.status.success(), "{program} {args:?}: {out:?}");
        String::from_utf8(out.stdout).unwrap()
    };
    qemu(
        "qemu-img",
        &["create", "-q", "-f", "qcow2", p(&image), "16M"],
    );
    qemu("qemu-img", &["bitmap", "--add", p(&image), "nightly"]);
    qemu(
        "qemu-img",
        &["bitmap", "--add", "-g", "1M", p(&image), "weekly"],
    );
    qemu("qemu-img", &["bitmap", "--disable", p(&image), "weekly"]);
    let bitmaps = |v: &Value| v["format-specific"]["data"]["bitmaps"].clone();
    let (k, q) = (kiln_info(&image), qemu_info(&image));
    assert_eq!(bitmaps(&k).as_array().map(Vec::len), Some(2), "{k:#}");
    assert_eq!(bitmaps(&k), bitmaps(&q));
    // The text block, from "Format specific information:" on.
    let specific = |text: &str| -> String {
        let at = text
            .find("Format specific information:")
            .unwrap_or(text.len());
        text[at..].to_owned()
    };
    let kiln_text = kiln_ok(&["img", "info", p(&image)]);
    let qemu_text = qemu("qemu-img", &["info", p(&image)]);
    assert!(kiln_text.contains("name: weekly"), "{kiln_text}");
    assert_eq!(specific(&kiln_text), specific(&qemu_text));

    // Written by a program unaware of bitmaps (the autoclear bit cleared): stale,
    // and listed by neither.
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(&image)
        .unwrap();
    std::os::unix::fs::FileExt::write_all_at(&f, &0u64.to_be_bytes(), 88).unwrap();
    drop(f);
    let (k, q) = (kiln_info(&image), qemu_info(&image));
    assert_eq!(bitmaps(&k), Value::Null, "{k:#}");
    assert_eq!(bitmaps(&k), bitmaps(&q));
}

//! `kiln img convert` with qemu-img's `-B`/`-F` and `-o` (cluster_size, compat): the
//! output is checked against `qemu-img convert` given the same options.

mod qcow2_support;

use std::path::Path;

use qcow2_support::*;
use serde_json::Value;

fn info(image: &Path) -> Value {
    serde_json::from_str(&qemu_img(&["info", "--output=json", "-U", s(image)])).unwrap()
}

/// A 6 MiB raw base and an 8 MiB qcow2 overlay on it with new data, zeroes over the
/// base's data, compressible text, and data past the base's end.
fn base_and_overlay(dir: &Path) -> std::path::PathBuf {
    let base = dir.join("base.raw");
    std::fs::write(&base, vec![0x11u8; 6 << 20]).unwrap();
    let overlay = dir.join("overlay.qcow2");
    qemu_overlay("base.raw", "raw", &overlay);
    qemu_img(&["resize", "-q", s(&overlay), "8M"]);
    qemu_io(
        &overlay,
        &[
            "write -P 0x22 1M 64k",
            "write -z 2M 128k",
            "write -P 0x33 3M 1k",
            "write -P 0x44 7M 64k",
        ],
    );
    overlay
}

#[test]
fn backing_file_and_creation_options_match_qemu_img() {
    let dir = fresh_dir("convert-backing", "options");
    let overlay = base_and_overlay(&dir);
    for (options, compress) in [
        ("cluster_size=64k", false),
        ("compat=0.10,cluster_size=512", false),
        ("compat=1.1,cluster_size=2M", false),
        ("cluster_size=4k", true),
    ] {
        let c: &[&str] = if compress { &["-c"] } else { &[] };
        let common = [
            &["-O", "qcow2", "-o", options, "-B", "base.raw", "-F", "raw"],
            c,
        ]
        .concat();
        let ours = dir.join(format!("ours-{options}-{compress}.qcow2"));
        let out = kiln(&[&["img", "convert"], &common[..], &[s(&overlay), s(&ours)]].concat());
        assert!(out.status.success(), "{options}: {out:?}");
        let theirs = dir.join(format!("theirs-{options}-{compress}.qcow2"));
        qemu_img(&[&["convert"], &common[..], &[s(&overlay), s(&theirs)]].concat());

        assert_check_clean(&ours);
        qemu_img(&["compare", s(&overlay), s(&ours)]);
        let (a, b) = (info(&ours), info(&theirs));
        for field in [
            "backing-filename",
            "backing-filename-format",
            "cluster-size",
        ] {
            assert_eq!(a[field], b[field], "{options}: {field}");
        }
        let compat = |i: &Value| i["format-specific"]["data"]["compat"].clone();
        assert_eq!(compat(&a), compat(&b), "{options}");
        // Only what differs from the base is the output's own. qemu-img copies the
        // overlay's own 64 KiB clusters; with smaller clusters kiln leaves the parts
        // that equal the base to it, so its ranges lie within qemu-img's.
        let (mine, qemus) = (own_layer(&ours).0, own_layer(&theirs).0);
        if options.contains("64k") || options.contains("2M") {
            assert_eq!(mine, qemus, "{options}");
        } else {
            assert!(mine.len() >= 4, "{options}: {mine:?}");
            for (start, len) in &mine {
                let inside = |(s, l): &(u64, u64)| s <= start && start + len <= s + l;
                assert!(qemus.iter().any(inside), "{options}: {mine:?} vs {qemus:?}");
            }
        }
        let own = |r: &[(u64, u64)]| r.iter().map(|(_, l)| l).sum::<u64>();
        assert!(
            own(&mine) <= own(&qemus),
            "{options}: {mine:?} vs {qemus:?}"
        );
        if compress {
            let check = qemu_img(&["check", s(&ours)]);
            assert!(!check.contains(" 0.00% compressed"), "{check}");
        }
    }
}

#[test]
fn only_clusters_that_differ_from_the_backing_file_are_written() {
    let dir = fresh_dir("convert-backing", "differ");
    // A flat raw input: qemu-img would copy all of it, kiln only what differs.
    let base = dir.join("base.raw");
    std::fs::write(&base, vec![0x11u8; 4 << 20]).unwrap();
    let mut input = vec![0x11u8; 4 << 20];
    input[(1 << 20) + 5] = 0x99; // one byte in cluster 16
    input[(2 << 20)..(2 << 20) + 65536].fill(0); // zeroes over the base: cluster 32
    let flat = dir.join("flat.raw");
    std::fs::write(&flat, &input).unwrap();
    for (compat, zero_is_data) in [("1.1", false), ("0.10", true)] {
        let out_path = dir.join(format!("out-{compat}.qcow2"));
        let out = kiln(&[
            "img",
            "convert",
            "-O",
            "qcow2",
            "-o",
            &format!("compat={compat}"),
            "-B",
            "base.raw",
            s(&flat),
            s(&out_path),
        ]);
        assert!(out.status.success(), "{out:?}");
        assert_check_clean(&out_path);
        qemu_img(&["compare", s(&flat), s(&out_path)]);
        let (ranges, data) = own_layer(&out_path);
        assert_eq!(ranges, [(1 << 20, 65536), (2 << 20, 65536)], "{compat}");
        // A version 3 image hides the base with a zero cluster, version 2 with data.
        assert_eq!(data, if zero_is_data { 2 * 65536 } else { 65536 });
        // The format was detected and recorded.
        assert_eq!(info(&out_path)["backing-filename-format"], "raw");
    }
}

#[test]
fn bad_options_are_refused_and_leave_nothing() {
    let dir = fresh_dir("convert-backing", "refused");
    std::fs::write(dir.join("in.raw"), vec![1u8; 1 << 20]).unwrap();
    let input = dir.join("in.raw");
    let out = dir.join("out.img");
    for (extra, named) in [
        (
            &["-O", "raw", "-B", "in.raw"][..],
            "a backing file needs qcow2 output",
        ),
        (
            &["-O", "raw", "-o", "compat=0.10"][..],
            "compat=0.10 needs qcow2 output",
        ),
        (
            &["-O", "raw", "-o", "cluster_size=4k"][..],
            "a cluster size needs qcow2",
        ),
        (&["-B", "missing.qcow2"][..], "missing.qcow2"),
        (&["-F", "raw"][..], "backing format without a backing file"),
        (&["-o", "cluster_size=3k"][..], "3072 is not a power of two"),
        (
            &["-o", "cluster_size=4M"][..],
            "4194304 is not a power of two from 512",
        ),
        (&["-o", "compat=0.9"][..], "expected 1.1 or 0.10"),
        (&["-o", "lazy_refcounts=on"][..], "lazy_refcounts=off"),
        (&["-B", "out.img"][..], "its own backing file"),
    ] {
        if extra.contains(&"out.img") {
            std::fs::write(&out, b"previous contents").unwrap();
        }
        let o = kiln(&[&["img", "convert"], extra, &[s(&input), s(&out)]].concat());
        let stderr = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success(), "{extra:?} accepted");
        assert!(stderr.contains(named), "{extra:?}: {stderr}");
        if extra.contains(&"out.img") {
            assert_eq!(std::fs::read(&out).unwrap(), b"previous contents");
            std::fs::remove_file(&out).unwrap();
        }
        assert!(!out.exists(), "{extra:?} left {}", out.display());
    }
    let left: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(left, ["in.raw"], "temporary files left behind");
}

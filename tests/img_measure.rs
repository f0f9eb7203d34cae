//! `kiln img measure` prints what `qemu-img measure` prints, for raw, qcow2, chains,
//! compressed, bitmap and preallocated images, every output option, and `--size`.

mod qcow2_support;

use std::os::unix::fs::FileExt;
use std::path::Path;

use qcow2_support::*;

/// The inputs: a sparse raw file, a qcow2 with data, zero clusters and a partly
/// written cluster, an overlay on it, a compressed copy, and one with two bitmaps.
fn inputs(dir: &Path) -> Vec<String> {
    let raw = dir.join("sparse.raw");
    let f = std::fs::File::create(&raw).unwrap();
    f.set_len((100 << 20) + 512).unwrap();
    f.write_all_at(b"data", 50_000_000).unwrap();
    f.write_all_at(&[7u8; 70000], 90 << 20).unwrap();
    let base = dir.join("base.qcow2");
    qemu_create(&base, "", "1G");
    qemu_io(&base, &["write 1M 3M", "write -z 10M 1M", "write 100M 10k"]);
    let top = dir.join("top.qcow2");
    qemu_overlay("base.qcow2", "qcow2", &top);
    qemu_io(&top, &["write 500M 64k", "write -z 1M 64k"]);
    let compressed = dir.join("compressed.qcow2");
    qemu_img(&["convert", "-c", "-O", "qcow2", s(&raw), s(&compressed)]);
    let bitmaps = dir.join("bitmaps.qcow2");
    qemu_create(&bitmaps, "cluster_size=4096", "3G");
    qemu_img(&["bitmap", "--add", s(&bitmaps), "b0"]);
    // With 512-byte clusters the directory (entries padded to 8 bytes: 32 + 488) takes
    // two clusters; unpadded (26 + 484) it would fit in one.
    let long_name = "n".repeat(460);
    qemu_img(&["bitmap", "--add", "-g", "512", s(&bitmaps), &long_name]);
    // Taken for preallocated: its data clusters that are holes of the file read zero.
    let preallocated = dir.join("preallocated.qcow2");
    qemu_create(&preallocated, "preallocation=metadata", "256M");
    qemu_io(&preallocated, &["write 1M 3M", "write -z 10M 1M"]);
    [raw, base, top, compressed, bitmaps, preallocated]
        .iter()
        .map(|p| s(p).to_owned())
        .collect()
}

#[test]
fn measures_as_qemu_img_does() {
    let dir = fresh_dir("img-measure", "same");
    let images = inputs(&dir);
    let mut cases: Vec<Vec<&str>> = Vec::new();
    for image in &images {
        for options in [
            &[][..],
            &["-O", "qcow2"],
            &["-O", "qcow2", "-o", "cluster_size=512"],
            &["-O", "qcow2", "-o", "cluster_size=2M,compat=0.10"],
            &["-O", "qcow2", "-o", "backing_file=base.qcow2"],
            &["-O", "qcow2", "--output=json"],
            &["-O", "qcow2", "-o", "preallocation=metadata"],
            &["-O", "qcow2", "-o", "preallocation=falloc"],
            &["-o", "preallocation=full"],
        ] {
            cases.push([options, &[image.as_str()]].concat());
        }
    }
    cases.push(vec!["-O", "qcow2", "-f", "raw", &images[2]]);
    for size in ["0", "1", "1G", "3000000000"] {
        cases.push(vec!["--size", size, "-O", "qcow2"]);
        cases.push(vec!["--size", size, "-O", "qcow2", "-o", "cluster_size=4k"]);
        cases.push(vec!["--size", size, "--output=json"]);
        cases.push(vec![
            "--size",
            size,
            "-O",
            "qcow2",
            "-o",
            "preallocation=full",
        ]);
    }
    for case in &cases {
        let ours = kiln(&[&["img", "measure"], &case[..]].concat());
        assert!(ours.status.success(), "{case:?}: {ours:?}");
        let theirs = qemu_img(&[&["measure"], &case[..]].concat());
        assert_eq!(String::from_utf8_lossy(&ours.stdout), theirs, "{case:?}");
    }
}

#[test]
fn what_cannot_be_measured_is_refused_by_name() {
    let dir = fresh_dir("img-measure", "refused");
    let missing = dir.join("missing.qcow2");
    for (args, named) in [
        (vec!["-O", "qcow2", s(&missing)], "missing.qcow2"),
        (
            vec!["--size", "100T", "-O", "qcow2", "-o", "cluster_size=512"],
            "too large",
        ),
        (
            vec!["--size", "1G", "-o", "cluster_size=4k"],
            "raw images take no",
        ),
        (
            vec!["--size", "1G", "-O", "qcow2", "-o", "cluster_size=3k"],
            "3072",
        ),
        (
            vec!["--size", "1G", "-O", "qcow2", "-o", "refcount_bits=8"],
            "refcount_bits=16",
        ),
        (vec!["--size", "1G", "-O", "vmdk"], "vmdk"),
        (
            vec!["--size", "1G", "-o", "preallocation=full,compat=1.1"],
            "-o compat: raw images take no",
        ),
        (
            vec!["--size", "1G", "-O", "qcow2", "-o", "preallocation=some"],
            "unknown preallocation mode 'some'",
        ),
        (vec![], "<FILE>"),
    ] {
        let out = kiln(&[&["img", "measure"], &args[..]].concat());
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} accepted");
        assert!(stderr.contains(named), "{args:?}: {stderr}");
    }
    // Both an image and --size: one or the other.
    let out = kiln(&["img", "measure", "--size", "1G", s(&missing)]);
    assert!(!out.status.success());
}

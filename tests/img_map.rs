//! `kiln img map` against `qemu-img map`: the same JSON, byte for byte, and the same
//! human table, for single images, chains of qcow2 and raw layers with holes, zero
//! and compressed clusters, and a backing file shorter than its overlay.

use std::path::Path;

mod qcow2_support;

use qcow2_support::{fresh_dir, kiln, qemu_create, qemu_img, qemu_io, qemu_overlay_with, run, s};

fn both(args: &[&str]) -> (std::process::Output, std::process::Output) {
    // qemu-img's --output=json is kiln's --output json.
    let mut ours = vec!["img", "map"];
    for &a in args {
        match a {
            "--output=json" => ours.extend(["--output", "json"]),
            other => ours.push(other),
        }
    }
    (kiln(&ours), run("qemu-img", &[&["map"][..], args].concat()))
}

fn assert_same(args: &[&str]) -> String {
    let (ours, theirs) = both(args);
    assert!(theirs.status.success(), "qemu-img map {args:?}: {theirs:?}");
    assert!(ours.status.success(), "kiln img map {args:?}: {ours:?}");
    let text = String::from_utf8(ours.stdout).unwrap();
    assert_eq!(text, String::from_utf8_lossy(&theirs.stdout), "{args:?}");
    text
}

/// A raw file of `size` with data only in `[at, at + len)`.
fn sparse_raw(path: &Path, size: u64, at: u64, len: usize) {
    let f = std::fs::File::create(path).unwrap();
    f.set_len(size).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&f, &vec![0x5a; len], at).unwrap();
}

#[test]
fn maps_match_qemu_img_map() {
    let d = fresh_dir("img-map", "chains");
    // The bottom: raw, with a hole before and after its data.
    let bottom = d.join("bottom.raw");
    sparse_raw(&bottom, 6 << 20, 1 << 20, 256 << 10);
    // The middle: 512-byte clusters, version 2, data over part of the raw data.
    let middle = d.join("middle.qcow2");
    qemu_overlay_with("compat=0.10,cluster_size=512", "bottom.raw", "raw", &middle);
    qemu_io(&middle, &["write -P 0x11 1152k 8k", "write -P 0x12 3M 4k"]);
    // The top: larger than the chain below, with data, zero clusters and past the end.
    let top = d.join("top.qcow2");
    qemu_overlay_with("cluster_size=65536", "middle.qcow2", "qcow2", &top);
    qemu_img(&["resize", "-q", s(&top), "10M"]);
    qemu_io(
        &top,
        &[
            "write -P 0x22 0 128k",
            "write -z 1M 64k",
            "write -z 4M 64k",
            "write -P 0x33 8M 64k",
        ],
    );
    // Standalone, and compressed.
    let compressed = d.join("compressed.qcow2");
    qemu_img(&["convert", "-c", "-O", "qcow2", s(&top), s(&compressed)]);
    // Zero clusters that keep their host clusters (zeroes written over data, without
    // unmapping), in runs of contiguous and scattered offsets; and a preallocated
    // image, whose data clusters are holes of the file.
    let kept = d.join("kept.qcow2");
    qemu_create(&kept, "", "4M");
    qemu_io(
        &kept,
        &[
            "write -P 1 0 1M",
            "write -P 2 2M 64k",
            "write -P 3 1M 64k",
            "write -z 64k 256k",
            "write -z 1M 64k",
            "write -z 2M 64k",
            // Two zero clusters in a row whose host clusters are not.
            "write -P 5 3M 64k",
            "write -P 6 3008k 64k",
            "write -z 3008k 128k",
        ],
    );
    let preallocated = d.join("preallocated.qcow2");
    qemu_create(&preallocated, "preallocation=metadata", "8M");
    qemu_io(&preallocated, &["write -P 4 1M 1M", "write -z 1536k 64k"]);
    // A raw file ending inside a sector: the disk is whole sectors, the tail zero.
    let odd = d.join("odd.raw");
    std::fs::write(&odd, vec![5u8; 3000]).unwrap();
    for image in [
        &bottom,
        &middle,
        &top,
        &compressed,
        &kept,
        &preallocated,
        &odd,
    ] {
        let text = assert_same(&["--output=json", s(image)]);
        assert!(text.starts_with("[{ \"start\": 0,"), "{text}");
    }
    let text = assert_same(&["--output=json", s(&kept)]);
    assert!(
        text.contains("\"zero\": true, \"data\": false, \"offset\""),
        "{text}"
    );
    let text = assert_same(&[s(&top)]);
    for file in ["bottom.raw", "middle.qcow2", "top.qcow2"] {
        assert!(text.contains(file), "{file} missing from\n{text}");
    }
    assert_same(&[s(&bottom)]);
    // A qcow2 file read as raw.
    assert_same(&["--output=json", "-f", "raw", s(&top)]);
}

#[test]
fn compressed_clusters_and_missing_files_fail_in_both() {
    let d = fresh_dir("img-map", "fail");
    let plain = d.join("plain.qcow2");
    qemu_img(&["create", "-q", "-f", "qcow2", s(&plain), "1M"]);
    qemu_io(&plain, &["write -P 1 0 64k"]);
    let compressed = d.join("compressed.qcow2");
    qemu_img(&["convert", "-c", "-O", "qcow2", s(&plain), s(&compressed)]);
    let missing = d.join("missing.qcow2");
    for (image, why) in [(&compressed, "compressed"), (&missing, "missing.qcow2")] {
        let (ours, theirs) = both(&[s(image)]);
        assert_eq!(ours.status.code(), Some(1), "{ours:?}");
        assert_eq!(theirs.status.code(), Some(1), "{theirs:?}");
        let stderr = String::from_utf8_lossy(&ours.stderr);
        assert!(stderr.contains(why), "{stderr}");
    }
}

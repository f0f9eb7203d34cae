//! Images made by qemu-img / qemu-io read back through kiln exactly as QEMU reads them;
//! damaged images fail with a clear error instead of a panic.

mod qcow2_support;

use std::path::{Path, PathBuf};

use kiln_devices::block::{open_disk, DiskConfig, ImageFormat};
use qcow2_support::*;

const PATTERNS: &[&str] = &[
    "write -P 0xa1 0 4k",
    "write -P 0xb2 4000k 100k",
    "write -P 0xc3 1M 2M",
    "write -z 1536k 512k",
    "write -P 0xd4 7M 1k",
    "discard 2M 64k",
    "write -P 0xe5 8191k 1k",
];

fn create(dir: &Path, name: &str, opts: &str, size: &str) -> PathBuf {
    let p = dir.join(name);
    qemu_create(&p, opts, size);
    p
}

fn assert_same_as_qemu(image: &Path, dir: &Path) {
    let kiln = read_all(open(image, None, true).as_ref());
    let qemu = qemu_contents(image, dir);
    assert_eq!(kiln.len(), qemu.len(), "{}: size", image.display());
    if let Some(i) = kiln.iter().zip(&qemu).position(|(a, b)| a != b) {
        panic!(
            "{}: first difference at byte {i}: kiln {:#x}, qemu {:#x}",
            image.display(),
            kiln[i],
            qemu[i]
        );
    }
    // The patterns really are there (guards against both sides reading zeroes).
    assert!(kiln.contains(&0xa1) && kiln.contains(&0xe5));
}

#[test]
fn cluster_sizes_512_to_2m() {
    for cs in ["512", "4096", "65536", "2M"] {
        let dir = tempfile::tempdir().unwrap();
        let img = create(dir.path(), "a.qcow2", &format!("cluster_size={cs}"), "8M");
        qemu_io(&img, PATTERNS);
        assert_same_as_qemu(&img, dir.path());
    }
}

#[test]
fn compat_0_10() {
    let dir = tempfile::tempdir().unwrap();
    let img = create(
        dir.path(),
        "v2.qcow2",
        "compat=0.10,cluster_size=4096",
        "8M",
    );
    qemu_io(&img, PATTERNS);
    let info = qemu_img(&["info", img.to_str().unwrap()]);
    assert!(info.contains("compat: 0.10"), "{info}");
    assert_same_as_qemu(&img, dir.path());
}

#[test]
fn backing_chain_of_three() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let base = create(d, "base.qcow2", "cluster_size=4096", "8M");
    qemu_io(&base, PATTERNS);
    let mid = d.join("mid.qcow2");
    qemu_overlay("base.qcow2", "qcow2", &mid);
    qemu_io(
        &mid,
        &[
            "write -P 0x55 0 2k",
            "write -z 1M 4k",
            "write -P 0x66 3M 64k",
        ],
    );
    let top = d.join("top.qcow2");
    qemu_overlay("mid.qcow2", "qcow2", &top);
    qemu_io(
        &top,
        &[
            "write -P 0x77 1k 2k",
            "write -z 3M 4k",
            "write -P 0x88 6M 1M",
        ],
    );
    assert_same_as_qemu(&top, d);
    // A raw base under a qcow2 overlay.
    let raw = d.join("raw-base.img");
    std::fs::write(&raw, vec![0x5au8; 1 << 20]).unwrap();
    let over = d.join("over.qcow2");
    qemu_overlay("raw-base.img", "raw", &over);
    let disk = open(&over, None, true);
    let mut b = [0u8; 4];
    disk.read_at(&mut b, 4096).unwrap();
    assert_eq!(b, [0x5a; 4]);
}

#[test]
fn compressed_clusters() {
    let dir = tempfile::tempdir().unwrap();
    let src = create(dir.path(), "src.qcow2", "cluster_size=65536", "8M");
    qemu_io(&src, PATTERNS);
    for cs in ["4096", "65536"] {
        let c = dir.path().join(format!("c{cs}.qcow2"));
        qemu_img(&[
            "convert",
            "-c",
            "-O",
            "qcow2",
            "-o",
            &format!("cluster_size={cs}"),
            src.to_str().unwrap(),
            c.to_str().unwrap(),
        ]);
        let map = qemu_img(&["map", "--output=json", c.to_str().unwrap()]);
        assert!(
            map.contains("\"compressed\": true") || map.contains("\"data\": true"),
            "{map}"
        );
        assert_same_as_qemu(&c, dir.path());
        // Writable open runs the refcount check over compressed clusters; writing over
        // compressed data must leave a consistent image.
        let disk = open(&c, None, false);
        disk.write_at(&[0x42; 4096], 4096).unwrap();
        disk.discard(1 << 20, 1 << 20).unwrap();
        drop(disk);
        assert_check_clean(&c);
    }
}

fn open_err(path: &Path) -> String {
    match open_disk(&DiskConfig {
        format: Some(ImageFormat::Qcow2),
        ..DiskConfig::new(path.to_owned())
    }) {
        Ok(_) => panic!("{} opened despite damage", path.display()),
        Err(e) => e.to_string(),
    }
}

fn be64_at(b: &[u8], at: usize) -> u64 {
    u64::from_be_bytes(b[at..at + 8].try_into().unwrap())
}

#[test]
fn bad_magic() {
    let dir = tempfile::tempdir().unwrap();
    let img = create(dir.path(), "a.qcow2", "cluster_size=65536", "1M");
    let mut b = std::fs::read(&img).unwrap();
    b[0..4].copy_from_slice(b"QFI\0");
    std::fs::write(&img, &b).unwrap();
    let e = open_err(&img);
    assert!(e.contains("bad magic") && e.contains("a.qcow2"), "{e}");
}

#[test]
fn l1_table_past_end_of_file() {
    let dir = tempfile::tempdir().unwrap();
    let img = create(dir.path(), "a.qcow2", "cluster_size=65536", "1M");
    let mut b = std::fs::read(&img).unwrap();
    b[40..48].copy_from_slice(&(1u64 << 40).to_be_bytes());
    std::fs::write(&img, &b).unwrap();
    let e = open_err(&img);
    assert!(
        e.contains("L1 table") && e.contains("past the end of the file"),
        "{e}"
    );
    // An L1 entry pointing past the end.
    let img = create(dir.path(), "b.qcow2", "cluster_size=65536", "1M");
    qemu_io(&img, &["write -P 1 0 4k"]);
    let mut b = std::fs::read(&img).unwrap();
    let l1 = be64_at(&b, 40) as usize;
    b[l1..l1 + 8].copy_from_slice(&((1u64 << 63) | (1u64 << 40)).to_be_bytes());
    std::fs::write(&img, &b).unwrap();
    let e = open_err(&img);
    assert!(
        e.contains("L2 table") && e.contains("past the end of the file"),
        "{e}"
    );
}

#[test]
fn dirty_and_corrupt_bits_refused_with_repair_hint() {
    let dir = tempfile::tempdir().unwrap();
    for (bit, word) in [(1u8, "dirty"), (2, "corrupt")] {
        let img = create(
            dir.path(),
            &format!("{word}.qcow2"),
            "cluster_size=65536",
            "1M",
        );
        let mut b = std::fs::read(&img).unwrap();
        b[79] |= bit; // incompatible_features, big-endian u64 at 72
        std::fs::write(&img, &b).unwrap();
        let e = open_err(&img);
        assert!(
            e.contains(word) && e.contains("qemu-img check -r all"),
            "{e}"
        );
    }
}

#[test]
fn extended_l2_and_zstd_refused() {
    let dir = tempfile::tempdir().unwrap();
    let img = create(dir.path(), "x.qcow2", "extended_l2=on", "1M");
    let e = open_err(&img);
    assert!(e.contains("extended L2"), "{e}");
    let img = create(dir.path(), "z.qcow2", "compression_type=zstd", "1M");
    let e = open_err(&img);
    assert!(e.contains("zstd"), "{e}");
}

/// Offsets of (L2 table, first data cluster, refcount block) of an image with data at 0.
fn metadata_offsets(b: &[u8]) -> (usize, usize, usize) {
    let l1 = be64_at(b, 40) as usize;
    let l2 = (be64_at(b, l1) & 0x00ff_ffff_ffff_fe00) as usize;
    let data = (be64_at(b, l2) & 0x00ff_ffff_ffff_fe00) as usize;
    let rt = be64_at(b, 48) as usize;
    (l2, data, be64_at(b, rt) as usize)
}

fn assert_qemu_check_fails(img: &Path) {
    let check = std::process::Command::new("qemu-img")
        .args(["check", img.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        !check.status.success(),
        "qemu-img check should see the damage"
    );
}

#[test]
fn refcount_overflow_refused_for_writing() {
    // refcount_bits=1: two L2 entries share one data cluster, which needs refcount 2.
    let dir = tempfile::tempdir().unwrap();
    let img = create(
        dir.path(),
        "o.qcow2",
        "cluster_size=65536,refcount_bits=1",
        "1M",
    );
    qemu_io(&img, &["write -P 9 0 64k"]);
    let mut b = std::fs::read(&img).unwrap();
    let (l2, _, _) = metadata_offsets(&b);
    let first = b[l2..l2 + 8].to_vec();
    b[l2 + 8..l2 + 16].copy_from_slice(&first);
    std::fs::write(&img, &b).unwrap();
    assert_qemu_check_fails(&img);
    let e = open_err(&img);
    assert!(
        e.contains("refcount overflow") && e.contains("qemu-img check -r all"),
        "{e}"
    );
    // Read-only use stays possible (nothing can be overwritten).
    let disk = open(&img, Some(ImageFormat::Qcow2), true);
    let mut buf = [0u8; 2];
    disk.read_at(&mut buf, 65536).unwrap();
    assert_eq!(buf, [9, 9]);
}

#[test]
fn refcount_too_small_refused_for_writing() {
    // A data cluster whose refcount says 0 would be handed out again by the allocator.
    let dir = tempfile::tempdir().unwrap();
    let img = create(dir.path(), "r.qcow2", "cluster_size=65536", "1M");
    qemu_io(&img, &["write -P 9 0 64k"]);
    let mut b = std::fs::read(&img).unwrap();
    let (_, data, rb) = metadata_offsets(&b);
    let idx = rb + 2 * (data >> 16);
    assert_eq!(&b[idx..idx + 2], &[0, 1], "refcount of the data cluster");
    b[idx..idx + 2].copy_from_slice(&[0, 0]);
    std::fs::write(&img, &b).unwrap();
    assert_qemu_check_fails(&img);
    let e = open_err(&img);
    assert!(e.contains("in use") && e.contains("refcount is 0"), "{e}");
}

#[test]
fn copied_flag_on_a_shared_cluster_refused_for_writing() {
    // After a snapshot the L2 table and the data cluster have refcount 2, and the
    // entries pointing at them no COPIED flag. With the flags set again, imago would
    // write both in place and change the snapshot too (it did, before the check).
    let dir = tempfile::tempdir().unwrap();
    let img = create(dir.path(), "s.qcow2", "cluster_size=65536", "1M");
    qemu_io(&img, &["write -P 9 0 64k"]);
    qemu_img(&["snapshot", "-c", "before", img.to_str().unwrap()]);
    let mut b = std::fs::read(&img).unwrap();
    let (l2, _, _) = metadata_offsets(&b);
    let l1 = be64_at(&b, 40) as usize;
    assert_eq!(b[l1] & 0x80 | b[l2] & 0x80, 0, "qemu-img cleared COPIED");
    b[l1] |= 0x80;
    b[l2] |= 0x80;
    std::fs::write(&img, &b).unwrap();
    assert_qemu_check_fails(&img);
    let e = open_err(&img);
    assert!(
        e.contains("written in place") && e.contains("refcount is 2") && e.contains("check -r all"),
        "{e}"
    );
    // Reading is safe; the repair clears the flag, and writing then works.
    let disk = open(&img, Some(ImageFormat::Qcow2), true);
    let mut buf = [0u8; 2];
    disk.read_at(&mut buf, 0).unwrap();
    assert_eq!(buf, [9, 9]);
    drop(disk);
    kiln_ok(&["img", "check", "-r", "all", img.to_str().unwrap()]);
    let disk = open(&img, Some(ImageFormat::Qcow2), false);
    disk.write_at(&[7; 512], 0).unwrap();
    drop(disk);
    assert_check_clean(&img);
    // The write was copied: the snapshot still holds what it held.
    let saved = dir.path().join("before.raw");
    let (img, saved_path) = (img.to_str().unwrap(), saved.to_str().unwrap());
    qemu_img(&["convert", "-l", "before", "-O", "raw", img, saved_path]);
    assert_eq!(std::fs::read(&saved).unwrap()[..64 << 10], [9; 64 << 10]);
}

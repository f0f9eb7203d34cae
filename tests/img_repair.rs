//! `kiln img check -r leaks|all` on images damaged by hand from qemu-img's: after the
//! repair `qemu-img check` finds nothing and `qemu-img compare` finds the guest data
//! unchanged; a dirty or corrupt-flagged image becomes usable again once no corruption
//! is left, as with qemu-img.

use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Output;

mod qcow2_support;

use qcow2_support::run;

use kiln_devices::block::{open_disk, DiskConfig};

fn kiln(args: &[&str]) -> Output {
    let out = run(env!("CARGO_BIN_EXE_kiln"), args);
    assert!(
        !String::from_utf8_lossy(&out.stderr).contains("panicked"),
        "{out:?}"
    );
    out
}

fn qemu_ok(args: &[&str]) {
    let out = run("qemu-img", args);
    assert!(out.status.success(), "qemu-img {args:?}: {out:?}");
}

fn dir(name: &str) -> PathBuf {
    let d = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("img-repair-{name}"));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// A 64 KiB-cluster image with data at three places, and a pristine copy of it.
fn image(dir: &Path, name: &str, options: &str) -> (PathBuf, PathBuf) {
    let image = dir.join(name);
    let path = image.to_str().unwrap();
    qemu_ok(&["create", "-q", "-f", "qcow2", "-o", options, path, "64M"]);
    for (pattern, at) in [(0x11, "0"), (0x22, "5M"), (0x33, "40M")] {
        let out = run(
            "qemu-io",
            &["-c", &format!("write -P {pattern} {at} 256k"), path],
        );
        assert!(out.status.success(), "{out:?}");
    }
    let copy = dir.join(format!("{name}.orig"));
    std::fs::copy(&image, &copy).unwrap();
    (image, copy)
}

fn open_rw(image: &Path) -> std::fs::File {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(image)
        .unwrap()
}

/// `kiln img check` finds corruptions, and `-r all` leaves none: its JSON.
fn check_then_repair_all(image: &Path) -> serde_json::Value {
    let path = image.to_str().unwrap();
    assert_eq!(kiln(&["img", "check", path]).status.code(), Some(2));
    let out = kiln(&["img", "check", "-r", "all", "--json", path]);
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(out.status.code(), Some(0), "{json:#}");
    json
}

fn be64_at(f: &std::fs::File, at: u64) -> u64 {
    let mut be = [0u8; 8];
    f.read_exact_at(&mut be, at).unwrap();
    u64::from_be_bytes(be)
}

/// Overwrite the refcount of the cluster at host `offset` (64 KiB clusters, the first
/// refcount block), for 16-bit or 1-bit refcounts.
fn set_refcount(image: &Path, offset: u64, refcount: u16, bits: u32) {
    let f = open_rw(image);
    let block = be64_at(&f, be64_at(&f, 48)) & 0x00ff_ffff_ffff_fe00;
    let index = offset / 65536;
    if bits == 16 {
        f.write_all_at(&refcount.to_be_bytes(), block + 2 * index)
            .unwrap();
    } else {
        // 1-bit entries, the first in the lowest bit of each byte.
        let mut byte = [0u8; 1];
        f.read_exact_at(&mut byte, block + index / 8).unwrap();
        let bit = 1u8 << (index % 8);
        byte[0] = if refcount == 0 {
            byte[0] & !bit
        } else {
            byte[0] | bit
        };
        f.write_all_at(&byte, block + index / 8).unwrap();
    }
}

/// Append one cluster that nothing uses, with refcount 1: a leak.
fn leak_a_cluster(image: &Path, bits: u32) {
    let end = std::fs::metadata(image).unwrap().len();
    let f = std::fs::OpenOptions::new().write(true).open(image).unwrap();
    f.set_len(end + 65536).unwrap();
    set_refcount(image, end, 1, bits);
}

fn first_data_cluster(image: &Path) -> u64 {
    let out = run(
        "qemu-img",
        &["map", "--output=json", image.to_str().unwrap()],
    );
    let map: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    map.as_array()
        .unwrap()
        .iter()
        .find(|e| e["data"] == true)
        .and_then(|e| e["offset"].as_u64())
        .expect("a data cluster")
}

/// qemu-img check finds nothing and the guest sees what it saw before the damage.
fn assert_repaired(image: &Path, pristine: &Path) {
    let out = run("qemu-img", &["check", image.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "qemu-img check after the repair: {out:?}"
    );
    qemu_ok(&[
        "compare",
        "-q",
        pristine.to_str().unwrap(),
        image.to_str().unwrap(),
    ]);
}

#[test]
fn leaks_are_repaired_with_16_and_1_bit_refcounts() {
    let d = dir("leaks");
    for (name, options, bits) in [
        ("rc16.qcow2", "cluster_size=65536", 16),
        ("rc1.qcow2", "cluster_size=65536,refcount_bits=1", 1),
    ] {
        let (img, pristine) = image(&d, name, options);
        leak_a_cluster(&img, bits);
        let path = img.to_str().unwrap();
        assert_eq!(
            kiln(&["img", "check", path]).status.code(),
            Some(3),
            "{name}"
        );
        let out = kiln(&["img", "check", "-r", "leaks", path]);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert_eq!(out.status.code(), Some(0), "{name}: {stdout}");
        assert!(stdout.contains("    1 leaked clusters"), "{stdout}");
        assert!(
            stdout.contains("No errors were found on the image."),
            "{stdout}"
        );
        assert_repaired(&img, &pristine);
    }
}

#[test]
fn too_small_refcounts_need_all() {
    let d = dir("all");
    let (img, pristine) = image(&d, "corrupt.qcow2", "cluster_size=65536");
    set_refcount(&img, first_data_cluster(&img), 0, 16);
    let path = img.to_str().unwrap();
    // Leaks only: the corruption stays, and says so.
    let out = kiln(&["img", "check", "-r", "leaks", path]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let out = kiln(&["img", "check", "-r", "all", "--json", path]);
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(out.status.code(), Some(0), "{json:#}");
    // The refcount; the COPIED flag agrees with it again once it is 1.
    assert_eq!(json["corruptions-fixed"], 1, "{json:#}");
    assert_eq!(json["corruptions"], 0, "{json:#}");
    assert_repaired(&img, &pristine);
    // -U cannot go with a repair.
    assert_eq!(
        kiln(&["img", "check", "-U", "-r", "all", path])
            .status
            .code(),
        Some(2)
    );
}

#[test]
fn a_dirty_lazy_refcounts_image_is_refused_then_repaired_and_usable() {
    let d = dir("dirty");
    let (img, pristine) = image(&d, "dirty.qcow2", "cluster_size=65536,lazy_refcounts=on");
    // What a crash with lazy refcounts leaves: a refcount never written, the dirty bit.
    set_refcount(&img, first_data_cluster(&img), 0, 16);
    let f = open_rw(&img);
    let features = be64_at(&f, 72) | 1;
    f.write_all_at(&features.to_be_bytes(), 72).unwrap();
    drop(f);
    let config = disk_config(&img);
    let err = open_disk(&config)
        .err()
        .expect("a dirty image opened")
        .to_string();
    assert!(err.contains("kiln img check -r all"), "{err}");

    let out = kiln(&["img", "check", "-r", "all", img.to_str().unwrap()]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}");
    assert!(stdout.contains("The dirty flag was cleared."), "{stdout}");
    assert_repaired(&img, &pristine);
    let info = kiln(&["img", "info", "--json", img.to_str().unwrap()]);
    let info: serde_json::Value = serde_json::from_slice(&info.stdout).unwrap();
    assert_eq!(info["dirty-flag"], false);
    open_disk(&config).expect("the repaired image opens");
}

#[test]
fn a_lost_copied_flag_is_restored() {
    let d = dir("copied");
    let (img, pristine) = image(&d, "copied.qcow2", "cluster_size=65536");
    // Guest cluster 0 holds data: clear the COPIED flag of its L2 entry.
    let f = open_rw(&img);
    let l2 = be64_at(&f, be64_at(&f, 40)) & 0x00ff_ffff_ffff_fe00;
    let entry = be64_at(&f, l2);
    assert_ne!(entry & (1 << 63), 0, "qemu-img left COPIED clear");
    f.write_all_at(&(entry & !(1 << 63)).to_be_bytes(), l2)
        .unwrap();
    drop(f);
    let json = check_then_repair_all(&img);
    assert_eq!(json["corruptions-fixed"], 1, "{json:#}");
    assert_repaired(&img, &pristine);
}

const DIRTY: u64 = 1;
const CORRUPT: u64 = 2;

/// The header's incompatible feature bits.
fn incompatible(image: &Path) -> u64 {
    be64_at(&std::fs::File::open(image).unwrap(), 72)
}

fn set_incompatible(image: &Path, bits: u64) {
    let f = std::fs::OpenOptions::new().write(true).open(image).unwrap();
    let features = incompatible(image) | bits;
    f.write_all_at(&features.to_be_bytes(), 72).unwrap();
}

fn disk_config(image: &Path) -> DiskConfig {
    DiskConfig::new(image.to_owned())
}

#[test]
fn a_flagged_image_with_nothing_wrong_is_cleared_by_either_repair_as_by_qemu() {
    let d = dir("flags");
    for (bit, flag, options) in [
        (CORRUPT, "corrupt", "cluster_size=65536"),
        (DIRTY, "dirty", "cluster_size=65536,lazy_refcounts=on"),
    ] {
        let (img, pristine) = image(&d, &format!("{flag}.qcow2"), options);
        set_incompatible(&img, bit);
        let by_qemu = d.join(format!("{flag}.qemu.qcow2"));
        std::fs::copy(&img, &by_qemu).unwrap();
        let err = open_disk(&disk_config(&img))
            .err()
            .unwrap_or_else(|| panic!("an image marked {flag} opened"))
            .to_string();
        assert!(err.contains(&format!("marked {flag}")), "{err}");
        assert!(err.contains("kiln img check -r all"), "{err}");

        let path = img.to_str().unwrap();
        // A check without -r changes nothing.
        assert_eq!(kiln(&["img", "check", path]).status.code(), Some(0));
        assert_eq!(incompatible(&img) & bit, bit, "{flag}: cleared without -r");

        let out = kiln(&["img", "check", "-r", "leaks", path]);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert_eq!(out.status.code(), Some(0), "{flag}: {stdout}");
        assert!(
            stdout.contains(&format!("The {flag} flag was cleared.")),
            "{stdout}"
        );
        assert!(
            !stdout.contains("Double checking"),
            "nothing was fixed: {stdout}"
        );
        assert_eq!(incompatible(&img) & bit, 0, "{flag}: still set");
        run(
            "qemu-img",
            &["check", "-r", "leaks", by_qemu.to_str().unwrap()],
        );
        assert_eq!(incompatible(&by_qemu) & bit, 0, "qemu-img kept {flag}");
        assert_repaired(&img, &pristine);
        open_disk(&disk_config(&img))
            .unwrap_or_else(|e| panic!("the image marked {flag} before: {e}"));
    }
}

#[test]
fn the_corrupt_flag_stays_while_a_corruption_does() {
    let d = dir("corrupt-flag");
    let (img, pristine) = image(&d, "bad.qcow2", "cluster_size=65536");
    set_refcount(&img, first_data_cluster(&img), 0, 16);
    set_incompatible(&img, CORRUPT);
    let by_qemu = d.join("bad.qemu.qcow2");
    std::fs::copy(&img, &by_qemu).unwrap();
    let path = img.to_str().unwrap();

    let out = kiln(&["img", "check", "-r", "leaks", "--json", path]);
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(out.status.code(), Some(2), "{json:#}");
    assert_ne!(json["corrupt-flag-cleared"], true, "{json:#}");
    assert_eq!(incompatible(&img) & CORRUPT, CORRUPT);
    // qemu-img fails this check (exit 1: it would rebuild the refcounts, which only
    // -r all may); either way the flag stays.
    let qemu = run(
        "qemu-img",
        &["check", "-r", "leaks", by_qemu.to_str().unwrap()],
    );
    assert!(!qemu.status.success(), "{qemu:?}");
    assert_eq!(
        incompatible(&by_qemu) & CORRUPT,
        CORRUPT,
        "qemu-img cleared it"
    );

    let out = kiln(&["img", "check", "-r", "all", "--json", path]);
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(out.status.code(), Some(0), "{json:#}");
    assert_eq!(json["corruptions-fixed"], 1, "{json:#}");
    assert_eq!(json["corrupt-flag-cleared"], true, "{json:#}");
    assert_eq!(incompatible(&img) & CORRUPT, 0);
    assert_repaired(&img, &pristine);
    let info = run("qemu-img", &["info", "--output=json", path]);
    let info: serde_json::Value = serde_json::from_slice(&info.stdout).unwrap();
    assert_eq!(
        info["format-specific"]["data"]["corrupt"], false,
        "{info:#}"
    );
}

#[test]
fn missing_or_broken_refcount_structures_are_rebuilt_by_all() {
    let d = dir("rebuild");
    for (name, options) in [
        ("rc16.qcow2", "cluster_size=65536"),
        ("rc1.qcow2", "cluster_size=65536,refcount_bits=1"),
        ("c512.qcow2", "cluster_size=512"),
    ] {
        // A refcount table entry lost: no block counts the header, tables or data.
        let (img, pristine) = image(&d, name, options);
        let f = open_rw(&img);
        f.write_all_at(&0u64.to_be_bytes(), be64_at(&f, 48))
            .unwrap();
        drop(f);
        let path = img.to_str().unwrap();
        let check = kiln(&["img", "check", "--json", path]);
        assert_eq!(check.status.code(), Some(2), "{name}");
        let found: serde_json::Value = serde_json::from_slice(&check.stdout).unwrap();
        let leaks_only = kiln(&["img", "check", "-r", "leaks", path]);
        assert_eq!(leaks_only.status.code(), Some(2), "{name}: {leaks_only:?}");
        let out = kiln(&["img", "check", "-r", "all", path]);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert_eq!(out.status.code(), Some(0), "{name}: {stdout}");
        assert!(
            stdout.contains("refcount structures were rebuilt"),
            "{stdout}"
        );
        // The rebuilt structures count themselves: nothing is left for a second pass.
        assert!(
            stdout.contains(&format!(
                "0 leaked clusters\n    {} corruptions",
                found["corruptions"]
            )),
            "{name}: {found:#} then {stdout}"
        );
        assert_repaired(&img, &pristine);
        assert_eq!(
            kiln(&["img", "check", path]).status.code(),
            Some(0),
            "{name}"
        );
        open_disk(&disk_config(&img)).unwrap_or_else(|e| panic!("{name}: {e}"));
    }

    // The header's refcount table offset misaligned: the table cannot be read at all.
    let (img, pristine) = image(&d, "moved.qcow2", "cluster_size=65536");
    let f = open_rw(&img);
    f.write_all_at(&(be64_at(&f, 48) + 512).to_be_bytes(), 48)
        .unwrap();
    drop(f);
    let json = check_then_repair_all(&img);
    assert_eq!(json["refcounts-rebuilt"], true, "{json:#}");
    assert_repaired(&img, &pristine);
}

#[test]
fn persistent_bitmaps_keep_their_clusters_through_both_repairs() {
    let d = dir("bitmaps");
    let (img, pristine) = image(&d, "bitmaps.qcow2", "cluster_size=512");
    let path = img.to_str().unwrap();
    for bitmap in ["b0", "b1"] {
        qemu_ok(&["bitmap", "--add", "-g", "512", path, bitmap]);
    }
    // Written while the bitmaps are enabled: their tables get data clusters.
    let out = run("qemu-io", &["-c", "write -P 0x66 8M 3M", path]);
    assert!(out.status.success(), "{out:?}");
    std::fs::copy(&img, &pristine).unwrap();
    let bitmaps = || {
        let info = run("qemu-img", &["info", "--output=json", path]);
        let info: serde_json::Value = serde_json::from_slice(&info.stdout).unwrap();
        info["format-specific"]["data"]["bitmaps"].clone()
    };
    let before = bitmaps();
    assert_eq!(before.as_array().map(Vec::len), Some(2), "{before:#}");

    // A leak is freed, and no bitmap cluster with it.
    leak_a_cluster(&img, 16);
    let out = kiln(&["img", "check", "-r", "leaks", path]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert_repaired(&img, &pristine);

    // A refcount table entry lost: the rebuilt blocks count the bitmaps too.
    let f = open_rw(&img);
    f.write_all_at(&0u64.to_be_bytes(), be64_at(&f, 48))
        .unwrap();
    drop(f);
    let found: serde_json::Value =
        serde_json::from_slice(&kiln(&["img", "check", "--json", path]).stdout).unwrap();
    let json = check_then_repair_all(&img);
    assert_eq!(json["refcounts-rebuilt"], true, "{json:#}");
    // Nothing was left for the pass after the rebuild (the bitmaps' clusters among it).
    assert_eq!(json["corruptions-fixed"], found["corruptions"], "{json:#}");
    assert_repaired(&img, &pristine);
    assert_eq!(bitmaps(), before);
}

//! `kiln img check` against `qemu-img check` on the same images: clean ones of every
//! kind kiln reads, and images with a leaked cluster, a cluster whose refcount is too
//! small, and an L2 table past the end of the file, made by editing qemu-img's images.

use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Output;

mod qcow2_support;

use qcow2_support::run;

use serde_json::Value;

const EXIT_CORRUPT: i32 = 2;
const EXIT_LEAKS: i32 = 3;

fn qemu(args: &[&str]) -> String {
    let out = run("qemu-img", args);
    assert!(out.status.success(), "qemu-img {args:?}: {out:?}");
    String::from_utf8(out.stdout).unwrap()
}

fn qemu_io(image: &Path, command: &str) {
    let out = run("qemu-io", &["-c", command, image.to_str().unwrap()]);
    assert!(out.status.success(), "qemu-io {command}: {out:?}");
}

/// (exit code, JSON) of both tools' checks.
fn checks(image: &Path) -> ((Option<i32>, Value), (Option<i32>, Value)) {
    let path = image.to_str().unwrap();
    let q = run("qemu-img", &["check", "--output=json", path]);
    let k = run(
        env!("CARGO_BIN_EXE_kiln"),
        &["img", "check", "--output=json", path],
    );
    let json = |o: &Output| {
        serde_json::from_slice(&o.stdout)
            .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&o.stdout)))
    };
    let stderr = String::from_utf8_lossy(&k.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    ((q.status.code(), json(&q)), (k.status.code(), json(&k)))
}

/// A field of qemu-img's JSON, which leaves counts of 0 out.
fn count(v: &Value, key: &str) -> u64 {
    v.get(key).and_then(Value::as_u64).unwrap_or(0)
}

fn assert_same(image: &Path) -> Value {
    let ((q_code, q), (k_code, k)) = checks(image);
    assert_eq!(
        k_code,
        q_code,
        "{}: qemu {q:#}\nkiln {k:#}",
        image.display()
    );
    for key in [
        "corruptions",
        "leaks",
        "total-clusters",
        "allocated-clusters",
        "image-end-offset",
    ] {
        assert_eq!(
            count(&k, key),
            count(&q, key),
            "{key}: qemu {q:#}\nkiln {k:#}"
        );
    }
    k
}

fn dir(name: &str) -> PathBuf {
    let d = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("img-check-{name}"));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// A qcow2 image with data written at three places.
fn image_with_data(dir: &Path, name: &str, options: &str) -> PathBuf {
    let image = dir.join(name);
    let path = image.to_str().unwrap();
    qemu(&["create", "-q", "-f", "qcow2", "-o", options, path, "64M"]);
    for (pattern, at) in [(0x11, "0"), (0x22, "5M"), (0x33, "40M")] {
        qemu_io(&image, &format!("write -P {pattern} {at} 256k"));
    }
    image
}

#[test]
fn clean_images_of_every_kind_agree_with_qemu_img() {
    let d = dir("clean");
    let mut images = vec![
        image_with_data(&d, "c512.qcow2", "cluster_size=512"),
        image_with_data(&d, "c64k.qcow2", "cluster_size=65536"),
        image_with_data(&d, "c2m.qcow2", "cluster_size=2097152"),
        image_with_data(&d, "v2.qcow2", "compat=0.10"),
        image_with_data(&d, "rc1.qcow2", "refcount_bits=1"),
    ];
    // Compressed clusters.
    let compressed = d.join("compressed.qcow2");
    let c64k = images[1].to_str().unwrap().to_owned();
    qemu(&[
        "convert",
        "-c",
        "-O",
        "qcow2",
        &c64k,
        compressed.to_str().unwrap(),
    ]);
    images.push(compressed);
    // Internal snapshots share clusters: their references must be counted, or every
    // shared cluster would look leaked.
    let snap = image_with_data(&d, "snap.qcow2", "cluster_size=65536");
    qemu(&["snapshot", "-c", "first", snap.to_str().unwrap()]);
    qemu_io(&snap, "write -P 0x44 0 128k");
    qemu(&["snapshot", "-c", "second", snap.to_str().unwrap()]);
    qemu_io(&snap, "write -P 0x55 5M 64k");
    images.push(snap);
    // Persistent bitmaps: directory, tables and data clusters are counted. With
    // 512-byte clusters and granularity one bitmap table has 32 entries.
    for (name, options, granularity) in [
        ("bitmaps.qcow2", "cluster_size=65536", "65536"),
        ("bitmaps512.qcow2", "cluster_size=512", "512"),
    ] {
        let image = image_with_data(&d, name, options);
        let path = image.to_str().unwrap();
        for bitmap in ["b0", "b1"] {
            qemu(&["bitmap", "--add", "-g", granularity, path, bitmap]);
        }
        // Written while the bitmaps are enabled: they get data clusters.
        qemu_io(&image, "write -P 0x66 8M 3M");
        qemu_io(&image, "write -P 0x77 60M 64k");
        images.push(image);
    }
    // The same with the autoclear bit cleared, as a program unaware of bitmaps
    // leaves an image: the bitmaps are stale, and both tools find their clusters leaked.
    let stale = d.join("stale-bitmaps.qcow2");
    std::fs::copy(images.last().unwrap(), &stale).unwrap();
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(&stale)
        .unwrap();
    std::os::unix::fs::FileExt::write_all_at(&f, &0u64.to_be_bytes(), 88).unwrap();
    drop(f);
    let k = assert_same(&stale);
    assert!(count(&k, "leaks") > 0, "{k:#}");
    for image in &images {
        let k = assert_same(image);
        assert_eq!(count(&k, "leaks") + count(&k, "corruptions"), 0, "{k:#}");
    }
    let text = run(
        env!("CARGO_BIN_EXE_kiln"),
        &["img", "check", images[0].to_str().unwrap()],
    );
    assert!(
        String::from_utf8_lossy(&text.stdout).contains("No errors were found on the image."),
        "{text:?}"
    );
}

/// Host offset of the first data cluster, from `qemu-img map`.
fn first_data_cluster(image: &Path) -> u64 {
    let map: Value =
        serde_json::from_str(&qemu(&["map", "--output=json", image.to_str().unwrap()])).unwrap();
    map.as_array()
        .unwrap()
        .iter()
        .find(|e| e["data"] == true && e.get("offset").is_some())
        .and_then(|e| e["offset"].as_u64())
        .expect("a data cluster")
}

/// Overwrite the 16-bit refcount of the cluster at host `offset` (64 KiB clusters,
/// the cluster covered by the first refcount block).
fn set_refcount(image: &Path, offset: u64, refcount: u16) {
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(image)
        .unwrap();
    let mut be = [0u8; 8];
    f.read_exact_at(&mut be, 48).unwrap();
    let table = u64::from_be_bytes(be);
    f.read_exact_at(&mut be, table).unwrap();
    let block = u64::from_be_bytes(be) & 0x00ff_ffff_ffff_fe00;
    let index = offset / 65536;
    assert!(index < 32768, "cluster outside the first refcount block");
    f.write_all_at(&refcount.to_be_bytes(), block + 2 * index)
        .unwrap();
}

#[test]
fn a_leaked_cluster_and_a_too_small_refcount_are_found_as_qemu_img_finds_them() {
    let d = dir("damaged");
    let kiln_check = |image: &Path| {
        run(
            env!("CARGO_BIN_EXE_kiln"),
            &["img", "check", image.to_str().unwrap()],
        )
    };
    // A cluster past the image's end, appended with refcount 1 and used by nothing.
    let leaked = image_with_data(&d, "leaked.qcow2", "cluster_size=65536");
    let end = std::fs::metadata(&leaked).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&leaked)
        .unwrap()
        .set_len(end + 65536)
        .unwrap();
    set_refcount(&leaked, end, 1);
    let k = assert_same(&leaked);
    let found = (count(&k, "leaks"), count(&k, "corruptions"));
    assert_eq!(found, (1, 0), "{k:#}");
    let text = kiln_check(&leaked);
    assert_eq!(text.status.code(), Some(EXIT_LEAKS));
    let stdout = String::from_utf8_lossy(&text.stdout);
    let line = format!("Leaked cluster {} refcount=1 reference=0", end / 65536);
    assert!(stdout.contains(&line), "{stdout}");

    // A data cluster counted twice: a leak, and its COPIED flag now lies (it says
    // "write in place", which would overwrite a shared cluster).
    let shared = image_with_data(&d, "shared.qcow2", "cluster_size=65536");
    set_refcount(&shared, first_data_cluster(&shared), 2);
    let k = assert_same(&shared);
    let found = (count(&k, "leaks"), count(&k, "corruptions"));
    assert_eq!(found, (1, 1), "{k:#}");
    let text = kiln_check(&shared);
    assert_eq!(text.status.code(), Some(EXIT_CORRUPT));
    let stdout = String::from_utf8_lossy(&text.stdout);
    assert!(
        stdout.contains("ERROR OFLAG_COPIED data cluster: l2_entry="),
        "{stdout}"
    );

    let corrupt = image_with_data(&d, "corrupt.qcow2", "cluster_size=65536");
    let data = first_data_cluster(&corrupt);
    set_refcount(&corrupt, data, 0);
    let k = assert_same(&corrupt);
    // Its refcount is too small, and its COPIED flag (refcount 1) wrong with it.
    assert_eq!(count(&k, "corruptions"), 2, "{k:#}");
    let text = kiln_check(&corrupt);
    assert_eq!(text.status.code(), Some(EXIT_CORRUPT));
    let stdout = String::from_utf8_lossy(&text.stdout);
    let line = format!("ERROR cluster {} refcount=0 reference=1", data / 65536);
    assert!(stdout.contains(&line), "{stdout}");
}

#[test]
fn metadata_past_the_end_raw_images_and_missing_files() {
    let d = dir("broken");
    let image = image_with_data(&d, "l2-past-end.qcow2", "cluster_size=65536");
    // Point the first L1 entry's L2 table far past the end of the file.
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&image)
        .unwrap();
    let mut be = [0u8; 8];
    f.read_exact_at(&mut be, 40).unwrap();
    let l1 = u64::from_be_bytes(be);
    f.write_all_at(&((1u64 << 63) | (1 << 40)).to_be_bytes(), l1)
        .unwrap();
    drop(f);
    let ((q_code, _), (k_code, k)) = checks(&image);
    assert_eq!(
        (k_code, q_code),
        (Some(EXIT_CORRUPT), Some(EXIT_CORRUPT)),
        "{k:#}"
    );
    assert!(k["error"].as_str().unwrap().contains("L2 table"), "{k:#}");

    let raw = d.join("disk.raw");
    std::fs::write(&raw, vec![0u8; 1 << 20]).unwrap();
    let out = run(
        env!("CARGO_BIN_EXE_kiln"),
        &["img", "check", raw.to_str().unwrap()],
    );
    assert_eq!(out.status.code(), Some(63), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("no metadata to check"));

    // Extended L2 entries (16 bytes each) are refused, not misread.
    let subclusters = d.join("subclusters.qcow2");
    let sub = subclusters.to_str().unwrap();
    let made = run(
        "qemu-img",
        &[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-o",
            "extended_l2=on",
            sub,
            "16M",
        ],
    );
    assert!(made.status.success(), "{made:?}");
    let out = run(env!("CARGO_BIN_EXE_kiln"), &["img", "check", sub]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("extended L2"),
        "{out:?}"
    );

    let missing = d.join("missing.qcow2");
    let out = run(
        env!("CARGO_BIN_EXE_kiln"),
        &["img", "check", missing.to_str().unwrap()],
    );
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains(missing.to_str().unwrap()));
}

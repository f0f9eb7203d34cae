//! `kiln img rebase` against `qemu-img rebase`:
//! - with `-u`, after moving a backing file both point an overlay at the new one with
//!   the same backing fields, the guest sees the same data, and `qemu-img check` is
//!   clean;
//! - in safe mode, onto a backing file with other contents (or none), the guest still
//!   sees what it saw, the old base is no longer needed, and kiln copies no more than
//!   qemu-img does;
//! - refused rebases change nothing.

use std::path::{Path, PathBuf};

mod qcow2_support;

use qcow2_support::{
    fresh_dir, kiln, own_layer, qemu_create, qemu_img, qemu_io, qemu_overlay, qemu_overlay_with, s,
    tool,
};

fn backing_fields(image: &Path) -> (serde_json::Value, serde_json::Value) {
    let info: serde_json::Value =
        serde_json::from_str(&qemu_img(&["info", "--output=json", "-U", s(image)])).unwrap();
    (
        info["backing-filename"].clone(),
        info["backing-filename-format"].clone(),
    )
}

fn dir(name: &str) -> PathBuf {
    fresh_dir("img-rebase", name)
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
        qemu_overlay_with(options, &format!("{name}-old-base.qcow2"), "qcow2", &ours);
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
fn a_safe_rebase_keeps_what_the_guest_sees_as_qemu_img_does() {
    let d = dir("safe");
    for (name, options) in [
        ("v3", "cluster_size=65536"),
        ("v2", "compat=0.10,cluster_size=512"),
    ] {
        let old = d.join(format!("{name}-old.qcow2"));
        qemu_create(&old, options, "8M");
        qemu_io(&old, &["write -P 0x11 0 4M", "write -P 0x12 7M 64k"]);
        // The new base: the old one, changed in places, and 1 MiB shorter.
        let new_name = format!("{name}-new.qcow2");
        let new = d.join(&new_name);
        qemu_img(&["convert", "-O", "qcow2", "-o", options, s(&old), s(&new)]);
        qemu_img(&["resize", "-q", "--shrink", s(&new), "7M"]);
        qemu_io(
            &new,
            &[
                "write -P 0x33 512k 128k", // differs from the old data
                "write -z 2M 64k",         // zero where the old base has data
                "write -P 0x44 5M 64k",    // data where the old base reads zero
                "write -P 0x55 1M 64k",    // under the overlay's own cluster
                "write -P 0x66 6208k 64k", // as at 5M, and just below the new end
            ],
        );
        let ours = d.join(format!("{name}-ours.qcow2"));
        let theirs = d.join(format!("{name}-theirs.qcow2"));
        let ours_flat = d.join(format!("{name}-ours-flat.qcow2"));
        qemu_overlay_with(options, &format!("{name}-old.qcow2"), "qcow2", &ours);
        qemu_io(&ours, &["write -P 0x22 1M 64k", "write -P 0x23 3M 1k"]);
        std::fs::copy(&ours, &theirs).unwrap();
        std::fs::copy(&ours, &ours_flat).unwrap();
        let flat = d.join(format!("{name}-flat.raw"));
        qemu_img(&["convert", "-O", "raw", s(&ours), s(&flat)]);

        let out = kiln(&["img", "rebase", "-p", "-b", &new_name, s(&ours)]);
        assert!(out.status.success(), "{name}: {out:?}");
        qemu_img(&["rebase", "-b", &new_name, "-F", "qcow2", s(&theirs)]);
        // Onto no backing file at all: everything the old base showed is copied.
        let out = kiln(&["img", "rebase", "-b", "", s(&ours_flat)]);
        assert!(out.status.success(), "{name}: {out:?}");
        // A standalone image onto a backing file: what read zero must stay zero.
        let standalone = d.join(format!("{name}-standalone.qcow2"));
        qemu_img(&[
            "convert",
            "-O",
            "qcow2",
            "-o",
            options,
            s(&flat),
            s(&standalone),
        ]);
        let out = kiln(&["img", "rebase", "-b", &new_name, s(&standalone)]);
        assert!(out.status.success(), "{name}: {out:?}");

        // The old base is gone: nothing may still depend on it.
        std::fs::remove_file(&old).unwrap();
        assert_eq!(backing_fields(&ours), backing_fields(&theirs), "{name}");
        assert_eq!(backing_fields(&ours_flat).0, serde_json::Value::Null);
        assert_eq!(backing_fields(&standalone).0, new_name.as_str());
        for image in [&ours, &ours_flat, &standalone] {
            qemu_img(&["check", s(image)]);
            qemu_img(&["compare", "-q", s(image), s(&flat)]);
        }
        // Only what differs was copied, where qemu-img copies it. Where only the new
        // base has data, qemu-img writes zeroes as data, kiln a zero cluster (v3).
        let ((our_ranges, our_data), (their_ranges, their_data)) =
            (own_layer(&ours), own_layer(&theirs));
        assert_eq!(our_ranges, their_ranges, "{name}");
        let zero_clusters = if name == "v3" { 2 * (64 << 10) } else { 0 };
        assert_eq!(our_data + zero_clusters, their_data, "{name}");
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
    let orphan = d.join("orphan.qcow2");
    qemu_create(&d.join("gone.qcow2"), "", "8M");
    qemu_overlay("gone.qcow2", "qcow2", &orphan);
    std::fs::remove_file(d.join("gone.qcow2")).unwrap();
    let cases: [(&Path, Vec<&str>, &str); 6] = [
        // Safe mode needs the old chain and the new file.
        (&orphan, vec!["-b", "base.qcow2"], "gone.qcow2"),
        (
            &small,
            vec!["-F", "qcow2", "-b", "missing.qcow2"],
            "missing.qcow2",
        ),
        (&small, vec!["-u", "-b", "missing.qcow2"], "give it with -F"),
        (
            &small,
            vec!["-u", "-F", "qcow2", "-b", &long_name],
            "header cluster",
        ),
        (&raw, vec!["-u", "-b", "base.qcow2"], "not a qcow2 image"),
        (&raw, vec!["-b", "base.qcow2"], "not a qcow2 image"),
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

#[test]
fn a_new_base_ending_inside_a_chunk_reads_zero_past_its_end() {
    // The old base holds 0x11 everywhere; the new one holds the same bytes but ends
    // 512 KiB into a 1 MiB chunk. Past its end it reads zero, so that half chunk must
    // be copied into the overlay, whatever the chunk before left in kiln's buffers.
    let d = dir("short-new-base");
    let old = d.join("old.raw");
    std::fs::write(&old, vec![0x11u8; 8 << 20]).unwrap();
    let new = d.join("new.raw");
    std::fs::write(&new, vec![0x11u8; (6 << 20) + (512 << 10)]).unwrap();
    let overlay = d.join("top.qcow2");
    qemu_overlay("old.raw", "raw", &overlay);
    let flat = d.join("flat.raw");
    qemu_img(&["convert", "-O", "raw", s(&overlay), s(&flat)]);
    let out = kiln(&["img", "rebase", "-F", "raw", "-b", "new.raw", s(&overlay)]);
    assert!(out.status.success(), "{out:?}");
    std::fs::remove_file(&old).unwrap();
    qemu_img(&["compare", "-q", s(&overlay), s(&flat)]);
    // Only the part past the new base's end became the overlay's own.
    assert_eq!(
        own_layer(&overlay).0,
        [((6 << 20) + (512 << 10), (1 << 20) + (512 << 10))]
    );
}

//! `kiln img resize` against `qemu-img resize`: copies of the same image grown and
//! shrunk the same way by both compare equal and pass `qemu-img check`; a grown
//! overlay does not show its longer backing file; preallocated growth is what
//! qemu-img makes, of overlays too; refused resizes name the problem and leave the image byte for byte
//! unchanged.

use std::path::{Path, PathBuf};

mod common;
mod qcow2_support;

use common::Run;
use qcow2_support::{allocated, assert_same_unwritten_extents, fresh_dir, qemu_img, s, tool};

fn kiln(args: &[&str]) -> Run {
    let run = common::run_kiln("img resize", args);
    assert!(!run.stderr().contains("panicked"), "{}", run.stderr());
    run
}

fn dir(name: &str) -> PathBuf {
    fresh_dir("img-resize", name)
}

fn virtual_size(image: &Path) -> u64 {
    let info = qemu_img(&["info", "--output=json", "-U", s(image)]);
    let info: serde_json::Value = serde_json::from_str(&info).unwrap();
    info["virtual-size"].as_u64().unwrap()
}

/// `qemu-img create -f FORMAT [-o OPTIONS] [-b BACKING -F qcow2] PATH SIZE`.
fn create(format: &str, options: &str, backing: Option<&Path>, path: &Path, size: &str) {
    let mut args = vec!["create", "-q", "-f", format];
    if !options.is_empty() {
        args.extend(["-o", options]);
    }
    if let Some(b) = backing {
        args.extend(["-b", s(b), "-F", "qcow2"]);
    }
    args.extend([s(path), size]);
    qemu_img(&args);
}

/// `qemu-img compare` of two images of `format`: fails unless they read the same.
fn same_contents(format: &str, a: &Path, b: &Path) {
    qemu_img(&["compare", "-q", "-f", format, "-F", format, s(a), s(b)]);
}

/// A 64 MiB image of `format` with data at the start, the middle and the end.
fn image(dir: &Path, name: &str, format: &str, options: &str) -> PathBuf {
    let path = dir.join(name);
    create(format, options, None, &path, "64M");
    for (pattern, at) in [(0x11, "0"), (0x22, "40M"), (0x33, "63M")] {
        let cmd = format!("write -P {pattern} {at} 1M");
        tool("qemu-io", &["-f", format, "-c", &cmd, s(&path)]);
    }
    path
}

#[test]
fn grows_and_shrinks_as_qemu_img_does() {
    let d = dir("steps");
    for (name, format, options) in [
        ("v3.qcow2", "qcow2", "cluster_size=65536"),
        ("v2.qcow2", "qcow2", "compat=0.10,cluster_size=4096"),
        ("disk.raw", "raw", ""),
    ] {
        let ours = image(&d, name, format, options);
        let theirs = d.join(format!("qemu-{name}"));
        std::fs::copy(&ours, &theirs).unwrap();
        for step in ["+64M", "200M", "-100M", "48M", "+1G"] {
            let shrink = step.starts_with('-') || step == "48M";
            let flags: &[&str] = if shrink { &["--shrink"] } else { &[] };
            let args = [
                &["img", "resize", "--format", format],
                flags,
                &[s(&ours), step],
            ];
            let out = kiln(&args.concat());
            assert_eq!(out.code(), Some(0), "{name} {step}: {}", out.stderr());
            assert_eq!(out.stdout(), "Image resized.\n");
            let qemu = [&["resize", "-q", "-f", format], flags, &[s(&theirs), step]];
            qemu_img(&qemu.concat());
            assert_eq!(virtual_size(&ours), virtual_size(&theirs), "{name} {step}");
            same_contents(format, &ours, &theirs);
            if format == "qcow2" {
                qemu_img(&["check", s(&ours)]);
            }
        }
    }
}

#[test]
fn a_raw_file_of_partial_sectors_grows_from_its_whole_sectors() {
    let d = dir("odd");
    let ours = d.join("odd.raw");
    std::fs::write(&ours, vec![7u8; 1000]).unwrap();
    let theirs = d.join("qemu-odd.raw");
    std::fs::copy(&ours, &theirs).unwrap();
    let out = kiln(&["img", "resize", s(&ours), "+1M"]);
    assert_eq!(out.code(), Some(0), "{}", out.stderr());
    qemu_img(&["resize", "-q", "-f", "raw", s(&theirs), "+1M"]);
    assert_eq!(virtual_size(&ours), 1024 + (1 << 20));
    assert_eq!(virtual_size(&ours), virtual_size(&theirs));
    same_contents("raw", &ours, &theirs);
}

#[test]
fn a_grown_overlay_does_not_show_its_longer_backing_file() {
    let d = dir("overlay");
    let base = d.join("base.qcow2");
    create("qcow2", "", None, &base, "128M");
    tool("qemu-io", &["-c", "write -P 0x55 0 128M", s(&base)]);
    for cluster in ["65536", "2M"] {
        let overlay = d.join(format!("overlay-{cluster}.qcow2"));
        let options = format!("cluster_size={cluster}");
        create("qcow2", &options, Some(&base), &overlay, "63M");
        let theirs = d.join(format!("qemu-overlay-{cluster}.qcow2"));
        std::fs::copy(&overlay, &theirs).unwrap();
        assert_eq!(
            kiln(&["img", "resize", s(&overlay), "200M"]).code(),
            Some(0)
        );
        qemu_img(&["resize", "-q", s(&theirs), "200M"]);
        // The old data still shows the base; everything after the old end reads zero,
        // also inside the last cluster the old size used only partly.
        let reads = [
            "read -P 0x55 0 63M",
            "read -P 0 63M 65M",
            "read -P 0 128M 72M",
        ];
        tool(
            "qemu-io",
            &[
                "-r",
                "-c",
                reads[0],
                "-c",
                reads[1],
                "-c",
                reads[2],
                s(&overlay),
            ],
        );
        qemu_img(&["compare", "-q", s(&overlay), s(&theirs)]);
        qemu_img(&["check", s(&overlay)]);
    }
}

#[test]
fn the_regrown_tail_of_a_partly_used_cluster_reads_zero() {
    // Shrinking to 63M keeps the 2M cluster at 62M, with 1M of old data past the new
    // end. Growing again must not bring that data back (qemu-img resize 10.0 does).
    let d = dir("tail");
    let img = d.join("tail.qcow2");
    create("qcow2", "cluster_size=2M", None, &img, "64M");
    tool("qemu-io", &["-c", "write -P 0x44 62M 2M", s(&img)]);
    assert_eq!(
        kiln(&["img", "resize", "--shrink", s(&img), "63M"]).code(),
        Some(0)
    );
    let quiet = kiln(&["img", "resize", "-q", s(&img), "+1M"]);
    assert_eq!((quiet.code(), quiet.stdout()), (Some(0), String::new()));
    let reads = ["read -P 0x44 62M 1M", "read -P 0 63M 1M"];
    tool("qemu-io", &["-r", "-c", reads[0], "-c", reads[1], s(&img)]);
    qemu_img(&["check", s(&img)]);
}

#[test]
fn preallocated_growth_is_what_qemu_img_makes() {
    let d = dir("prealloc");
    for (format, mode) in [
        ("qcow2", "metadata"),
        ("qcow2", "falloc"),
        ("qcow2", "full"),
        ("raw", "falloc"),
        ("raw", "full"),
    ] {
        let case = format!("{format} {mode}");
        let name = format!("{mode}.{format}");
        let ours = image(&d, &name, format, "");
        let theirs = d.join(format!("qemu-{name}"));
        std::fs::copy(&ours, &theirs).unwrap();
        let before = allocated(&ours);
        let flag = format!("--preallocation={mode}");
        let out = kiln(&["img", "resize", &flag, s(&ours), "+64M"]);
        assert_eq!(out.code(), Some(0), "{case}: {}", out.stderr());
        qemu_img(&["resize", "-q", "-f", format, &flag, s(&theirs), "+64M"]);
        assert_eq!(virtual_size(&ours), 128 << 20, "{case}");
        same_contents(format, &ours, &theirs);
        // falloc and full set the 64 MiB aside; metadata only tables.
        let grown = allocated(&ours) - before;
        match mode {
            "metadata" => assert!(grown < 1 << 20, "{case}: {grown}"),
            _ => assert!(grown >= 64 << 20, "{case}: {grown}"),
        }
        // falloc reserves the range, full writes it, as in qemu-img's copy.
        assert_same_unwritten_extents(&ours, &theirs, &case);
        if format == "qcow2" {
            // The grown range is allocated, as in qemu-img's copy.
            let allocation = |image: &Path| {
                let check = qemu_img(&["check", s(image)]);
                let line = check.lines().find(|l| l.contains("allocated")).unwrap();
                line.split(" = ").next().unwrap().to_owned()
            };
            assert_eq!(allocation(&ours), "1072/2048", "{case}");
            assert_eq!(allocation(&ours), allocation(&theirs), "{case}");
            let kiln_map = common::run_kiln("img map", &["img", "map", s(&ours)]);
            assert_eq!(kiln_map.stdout(), qemu_img(&["map", s(&ours)]), "{case}");
        }
    }
}

#[test]
fn preallocated_growth_of_an_overlay_is_what_qemu_img_makes() {
    let d = dir("prealloc-overlay");
    let base = d.join("base.qcow2");
    create("qcow2", "", None, &base, "128M");
    tool("qemu-io", &["-c", "write -P 0x55 0 128M", s(&base)]);
    // Old sizes that end inside a cluster, so the last one is partly the backing
    // file's; grown past the end of the longer backing file.
    for (cluster, old) in [("65536", "3000K"), ("2M", "63M")] {
        for mode in ["metadata", "falloc", "full"] {
            let case = format!("{cluster} {mode}");
            let ours = d.join(format!("overlay-{cluster}-{mode}.qcow2"));
            create(
                "qcow2",
                &format!("cluster_size={cluster}"),
                Some(&base),
                &ours,
                old,
            );
            tool("qemu-io", &["-c", "write -P 0x66 1M 64k", s(&ours)]);
            let theirs = d.join(format!("qemu-overlay-{cluster}-{mode}.qcow2"));
            std::fs::copy(&ours, &theirs).unwrap();
            let flag = format!("--preallocation={mode}");
            let out = kiln(&["img", "resize", &flag, s(&ours), "200M"]);
            assert_eq!(out.code(), Some(0), "{case}: {}", out.stderr());
            qemu_img(&["resize", "-q", &flag, s(&theirs), "200M"]);
            // The base still shows before the old end; everything after it reads zero.
            let after_old_end = format!("read -P 0 {old} {}K", (200 << 10) - kib(old));
            tool(
                "qemu-io",
                &[
                    "-r",
                    "-c",
                    "read -P 0x55 0 1M",
                    "-c",
                    "read -P 0x66 1M 64k",
                    "-c",
                    &after_old_end,
                    s(&ours),
                ],
            );
            same_contents("qcow2", &ours, &theirs);
            qemu_img(&["check", s(&ours)]);
            // The grown range is the overlay's own, allocated as in qemu-img's copy.
            let allocation = |image: &Path| {
                let check = qemu_img(&["check", s(image)]);
                let line = check.lines().find(|l| l.contains("allocated")).unwrap();
                line.split(" = ").next().unwrap().to_owned()
            };
            assert_eq!(allocation(&ours), allocation(&theirs), "{case}");
            let map = qemu_img(&["map", "--output=json", s(&ours)]);
            let map: serde_json::Value = serde_json::from_str(&map).unwrap();
            let grown_from = kib(old) << 10;
            for e in map.as_array().unwrap() {
                let end = e["start"].as_u64().unwrap() + e["length"].as_u64().unwrap();
                if end > grown_from {
                    assert_eq!(e["depth"], 0, "{case}: the backing file shows: {e}");
                    assert_eq!(e["present"], true, "{case}: not allocated: {e}");
                }
            }
        }
    }
}

/// "3000K" or "63M" in KiB.
fn kib(size: &str) -> u64 {
    let (n, unit) = size.split_at(size.len() - 1);
    n.parse::<u64>().unwrap() * if unit == "M" { 1024 } else { 1 }
}

#[test]
fn refused_resizes_name_the_problem_and_change_nothing() {
    let d = dir("refused");
    let img = image(&d, "disk.qcow2", "qcow2", "cluster_size=65536");
    let snap = image(&d, "snap.qcow2", "qcow2", "cluster_size=65536");
    qemu_img(&["snapshot", "-c", "first", s(&snap)]);
    let raw = image(&d, "disk.raw", "raw", "");
    let overlay = d.join("overlay.qcow2");
    create("qcow2", "", Some(&img), &overlay, "64M");
    for (image, args, why) in [
        (&img, vec!["32M"], "--shrink"),
        (&img, vec!["--shrink", "-128M"], "out of range"),
        (&img, vec!["+1000"], "multiple of 512"),
        (&snap, vec!["+1M"], "snapshots"),
        (
            &img,
            vec!["--shrink", "--preallocation=full", "-1M"],
            "only be used for growing",
        ),
        (
            &raw,
            vec!["--preallocation=metadata", "+1M"],
            "raw images take",
        ),
    ] {
        let before = std::fs::read(image).unwrap();
        let mut full = vec!["img", "resize", s(image)];
        full.extend(&args);
        let out = kiln(&full);
        let stderr = out.stderr();
        assert_eq!(out.code(), Some(1), "{args:?}: {stderr}");
        assert!(stderr.contains(s(image)), "{args:?}: {stderr}");
        assert!(stderr.contains(why), "{args:?}: {stderr}");
        assert!(
            std::fs::read(image).unwrap() == before,
            "{args:?} changed the image"
        );
    }
    let missing = d.join("missing.qcow2");
    let out = kiln(&["img", "resize", s(&missing), "1G"]);
    assert_eq!(out.code(), Some(1));
    assert!(out.stderr().contains(s(&missing)), "{}", out.stderr());
    assert!(!missing.exists(), "a missing image was created");
}

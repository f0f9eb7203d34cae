//! `kiln img info` prints what `qemu-img info` prints: the same text line for line,
//! for single images and with `--backing-chain`, and the same JSON fields.

mod qcow2_support;

use std::path::Path;

use qcow2_support::*;
use serde_json::Value;

/// A chain raw <- v2 qcow2 (4 KiB clusters) <- v3 qcow2 with a bitmap, all named
/// relative to each other, a lone raw file, and an overlay naming its backing file by
/// its absolute path.
fn images(dir: &Path) -> Vec<std::path::PathBuf> {
    let raw = dir.join("bottom.raw");
    std::fs::write(&raw, vec![3u8; 3 << 20]).unwrap();
    let middle = dir.join("middle.qcow2");
    qemu_overlay_with(
        "compat=0.10,cluster_size=4096",
        "bottom.raw",
        "raw",
        &middle,
    );
    qemu_io(&middle, &["write -P 0x22 0 1M"]);
    let top = dir.join("top.qcow2");
    qemu_overlay("middle.qcow2", "qcow2", &top);
    qemu_io(&top, &["write -P 0x33 2M 100k"]);
    qemu_img(&["bitmap", "--add", s(&top), "daily"]);
    let lone = dir.join("lone.img");
    std::fs::write(&lone, vec![0u8; 1000 * 1024]).unwrap();
    // Named by its full path: qemu-img prints no "actual path" then.
    let absolute = dir.join("absolute.qcow2");
    qemu_overlay(s(&raw), "raw", &absolute);
    vec![top, middle, raw, lone, absolute]
}

fn kiln_stdout(args: &[&str]) -> String {
    let out = kiln(&[&["img", "info"], args].concat());
    assert!(out.status.success(), "{args:?}: {out:?}");
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn text_and_json_match_qemu_img_down_the_chain() {
    let dir = fresh_dir("img-info", "chain");
    let images = images(&dir);
    for image in &images {
        for extra in [&[][..], &["--backing-chain"], &["-f", "raw"], &["-U"]] {
            let args = [extra, &[s(image)]].concat();
            let theirs = qemu_img(&[&["info"], &args[..]].concat());
            assert_eq!(kiln_stdout(&args), theirs, "{args:?}");
        }
    }
    // JSON: an array down the chain, one object per image.
    let top = s(&images[0]);
    let ours: Value =
        serde_json::from_str(&kiln_stdout(&["--output", "json", "--backing-chain", top])).unwrap();
    let theirs: Value = serde_json::from_str(&qemu_img(&[
        "info",
        "--output=json",
        "--backing-chain",
        top,
    ]))
    .unwrap();
    let (ours, theirs) = (ours.as_array().unwrap(), theirs.as_array().unwrap());
    assert_eq!(ours.len(), 3);
    assert_eq!(ours.len(), theirs.len());
    for (k, q) in ours.iter().zip(theirs) {
        for field in [
            "filename",
            "format",
            "virtual-size",
            "actual-size",
            "cluster-size",
            "backing-filename",
            "full-backing-filename",
            "backing-filename-format",
        ] {
            assert_eq!(k[field], q[field], "{field} of {}", q["filename"]);
        }
    }
    // --json is --output json.
    assert_eq!(
        kiln_stdout(&["--json", top]),
        kiln_stdout(&["--output", "json", top])
    );
}

#[test]
fn a_chain_that_loops_or_breaks_is_refused_by_name() {
    let dir = fresh_dir("img-info", "loop");
    let (a, b) = (dir.join("a.qcow2"), dir.join("b.qcow2"));
    qemu_create(&a, "", "1M");
    qemu_overlay("a.qcow2", "qcow2", &b);
    // a now names b: a loop.
    qemu_img(&["rebase", "-u", "-b", "b.qcow2", "-F", "qcow2", s(&a)]);
    let out = kiln(&["img", "info", "--backing-chain", s(&b)]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("loops back") && stderr.contains("b.qcow2"),
        "{stderr}"
    );
    // A missing backing file: named with --backing-chain; without it the image
    // itself is still shown, as qemu-img shows it.
    let c = dir.join("c.qcow2");
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-u",
        "-b",
        "missing.qcow2",
        "-F",
        "qcow2",
        s(&c),
        "1M",
    ]);
    assert!(kiln(&["img", "info", s(&c)]).status.success());
    let refused = |image: &Path, named: &[&str]| {
        let out = kiln(&["img", "info", "--backing-chain", s(image)]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{stderr}");
        for name in named {
            assert!(stderr.contains(name), "{name}: {stderr}");
        }
        // Nothing half printed: no image of the chain before the error.
        assert!(
            out.stdout.is_empty(),
            "{}",
            String::from_utf8_lossy(&out.stdout)
        );
    };
    refused(&c, &["missing.qcow2"]);

    // A backing file of a format kiln does not read: shown alone, refused in a chain.
    qemu_img(&["create", "-q", "-f", "vmdk", s(&dir.join("d.vmdk")), "1M"]);
    let e = dir.join("e.qcow2");
    qemu_overlay("d.vmdk", "vmdk", &e);
    let alone = kiln(&["img", "info", s(&e)]);
    assert!(alone.status.success());
    let text = String::from_utf8_lossy(&alone.stdout);
    assert!(text.contains("backing file format: vmdk"), "{text}");
    refused(
        &e,
        &[
            "e.qcow2",
            "d.vmdk",
            "recorded as vmdk",
            "only qcow2 and raw",
        ],
    );

    // A backing format of "file" (QEMU's protocol driver, which reads the file as
    // raw) is followed as raw, as `kiln run` follows it, and reported as "file", as
    // qemu-img reports it.
    std::fs::write(dir.join("f.raw"), vec![7u8; 1 << 20]).unwrap();
    let g = dir.join("g.qcow2");
    qemu_overlay("f.raw", "file", &g);
    let out = kiln(&["img", "info", "--backing-chain", "--output", "json", s(&g)]);
    assert!(out.status.success(), "{out:?}");
    let chain: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let theirs: serde_json::Value = serde_json::from_str(&qemu_img(&[
        "info",
        "--output=json",
        "--backing-chain",
        s(&g),
    ]))
    .unwrap();
    assert_eq!(chain[0]["backing-filename-format"], "file");
    assert_eq!(chain[1]["filename"], s(&dir.join("f.raw")));
    for field in ["format", "virtual-size", "actual-size"] {
        assert_eq!(chain[1][field], theirs[1][field], "{field}");
    }
    let text = kiln_stdout(&["--backing-chain", s(&g)]);
    assert!(text.contains("backing file format: file\n"), "{text}");
    let base_entry = format!("image: {}\nfile format: file\n", s(&dir.join("f.raw")));
    assert!(text.contains(&base_entry), "{text}");
    // The same file on its own is raw, as qemu-img detects it.
    let alone = kiln_stdout(&[s(&dir.join("f.raw"))]);
    assert!(alone.contains("file format: raw\n"), "{alone}");

    // 33 backing files: one past kiln's limit, refused by name (a loop would never
    // end); 32 are shown.
    qemu_create(&dir.join("l0.qcow2"), "", "1M");
    for i in 1..=33 {
        let below = format!("l{}.qcow2", i - 1);
        qemu_overlay(&below, "qcow2", &dir.join(format!("l{i}.qcow2")));
    }
    refused(&dir.join("l33.qcow2"), &["l33.qcow2", "deeper than 32"]);
    assert!(
        kiln(&["img", "info", "--backing-chain", s(&dir.join("l32.qcow2"))])
            .status
            .success()
    );
}

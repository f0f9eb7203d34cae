//! `kiln img convert -S SIZE` (qemu-img's sparse size): raw output with the holes
//! qemu-img leaves for each size, and fully allocated output with -S 0.

mod qcow2_support;

use std::path::{Path, PathBuf};

use qcow2_support::*;

/// A 5 MiB sparse raw input: data with zero runs of several lengths inside it, an
/// extent that starts with zeroes, one that ends with them, and an empty last MiB.
fn input(dir: &Path) -> PathBuf {
    let input = dir.join("input.raw");
    qemu_img(&["create", "-q", "-f", "raw", s(&input), "5M"]);
    let writes = [
        "write -P 9 0 4k",
        "write -P 0x11 1M 4k",
        "write -P 0 1028k 8k",
        "write -P 0x22 1036k 4k",
        "write -P 0 1040k 128k",
        "write -P 0x33 1168k 4k",
        "write -P 0 2M 64k",
        "write -P 0x44 3M 4k",
        "write -P 0 3076k 24k",
    ];
    qemu_io_as("raw", &input, &writes);
    input
}

#[test]
fn raw_output_has_the_holes_qemu_img_leaves() {
    let dir = fresh_dir("convert-sparse", "raw");
    let input = input(&dir);
    for sparse in ["4k", "512", "1536", "16k", "64k", "1M", "0"] {
        let ours = dir.join(format!("kiln-{sparse}.raw"));
        let theirs = dir.join(format!("qemu-{sparse}.raw"));
        let args = ["convert", "-f", "raw", "-O", "raw", "-S", sparse];
        kiln_ok(&[&["img"], &args[..], &[s(&input), s(&ours)]].concat());
        qemu_img(&[&args[..], &[s(&input), s(&theirs)]].concat());
        qemu_img(&["compare", "-q", s(&input), s(&ours)]);
        // The file's holes (SEEK_HOLE), as qemu-img map reports them. Block counts are
        // not compared: ext4 counts an extent tree block once its extents are placed.
        assert_eq!(
            map_without_offsets(&ours),
            map_without_offsets(&theirs),
            "-S {sparse}"
        );
    }
    // -S 0 allocates everything.
    assert!(allocated(&dir.join("kiln-0.raw")) >= 5 << 20);
}

/// Above qemu-img's 2 MiB buffer, a run of zeroes becomes a hole only if it is at least
/// the sparse size long, and then from and to multiples of it.
#[test]
fn sparse_sizes_above_a_copy_chunk_leave_only_runs_that_long() {
    let dir = fresh_dir("convert-sparse", "large");
    let input = dir.join("input.raw");
    qemu_img(&["create", "-q", "-f", "raw", s(&input), "24M"]);
    let writes = [
        "write -P 1 0 64k",
        "write -P 0 64k 9M",
        "write -P 2 9280k 64k",
        "write -P 0 9344k 3M",
        "write -P 3 12416k 64k",
    ];
    qemu_io_as("raw", &input, &writes);
    let kib = |k: u64| k << 10;
    for (sparse, holes) in [
        ("2M", vec![(kib(2048), kib(6144)), (kib(10240), kib(2048))]),
        ("4M", vec![(kib(4096), kib(4096))]),
        ("16M", vec![]),
    ] {
        let out = dir.join(format!("out-{sparse}.raw"));
        let args = ["img", "convert", "-f", "raw", "-O", "raw", "-S", sparse];
        kiln_ok(&[&args[..], &[s(&input), s(&out)]].concat());
        qemu_img(&["compare", "-q", s(&input), s(&out)]);
        // Every hole before the input's own (which starts after its last data).
        let found: Vec<(u64, u64)> = holes_of(&out)
            .into_iter()
            .filter(|&(start, _)| start < kib(12480))
            .collect();
        assert_eq!(found, holes, "-S {sparse}");
    }
}

#[test]
fn qcow2_output_with_sparse_size_0_is_fully_allocated() {
    let dir = fresh_dir("convert-sparse", "qcow2");
    let input = input(&dir);
    let ours = dir.join("kiln.qcow2");
    let theirs = dir.join("qemu.qcow2");
    let args = ["convert", "-f", "raw", "-O", "qcow2", "-S", "0"];
    kiln_ok(&[&["img"], &args[..], &[s(&input), s(&ours)]].concat());
    qemu_img(&[&args[..], &[s(&input), s(&theirs)]].concat());
    qemu_img(&["compare", "-q", s(&input), s(&ours)]);
    assert_check_clean(&ours);
    let check = qemu_img(&["check", s(&ours)]);
    assert!(check.contains("80/80 = 100.00% allocated"), "{check}");
    assert_eq!(map_without_offsets(&ours), map_without_offsets(&theirs));
    // The default leaves clusters of zeroes out.
    let sparse = dir.join("sparse.qcow2");
    kiln_ok(&["img", "convert", "-f", "raw", s(&input), s(&sparse)]);
    let check = qemu_img(&["check", s(&sparse)]);
    assert!(!check.contains("100.00% allocated"), "{check}");
}

#[test]
fn sparse_sizes_kiln_cannot_honour_are_refused_by_name() {
    let dir = fresh_dir("convert-sparse", "refused");
    let input = input(&dir);
    let base = dir.join("base.qcow2");
    qemu_create(&base, "", "5M");
    let out = dir.join("out.qcow2");
    for (args, named) in [
        (
            vec!["-S", "1000"],
            "-S 1000: the sparse size must be a multiple of 512",
        ),
        (vec!["-S", "32M"], "up to 16777216"),
        (
            vec!["-S", "0", "-B", "base.qcow2"],
            "cannot be combined with a backing file",
        ),
        (
            vec!["-S", "8k", "-o", "preallocation=metadata"],
            "cannot be combined with preallocation",
        ),
    ] {
        let argv = [
            &["img", "convert", "-f", "raw"],
            &args[..],
            &[s(&input), s(&out)],
        ]
        .concat();
        let result = kiln(&argv);
        let stderr = String::from_utf8_lossy(&result.stderr);
        assert!(!result.status.success(), "{args:?} accepted");
        assert!(stderr.contains(named), "{args:?}: {stderr}");
        assert!(!out.exists(), "{args:?} left {}", out.display());
    }
    // -n writes an existing image's zeroes its own way.
    qemu_create(&out, "", "5M");
    let result = kiln(&[
        "img",
        "convert",
        "-n",
        "-S",
        "64k",
        "-f",
        "raw",
        s(&input),
        s(&out),
    ]);
    assert!(!result.status.success());
    let stderr = String::from_utf8_lossy(&result.stderr);
    assert!(stderr.contains("cannot be combined with -n"), "{stderr}");
}

//! `kiln img convert`: qcow2 (optionally deflate-compressed) and sparse raw output,
//! checked with qemu-img; raw→qcow2→raw is byte-identical; failures leave nothing.

mod imagebuild_support;

use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::Path;
use std::process::Command;

use imagebuild_support::*;

/// A raw image with a mix of compressible, incompressible, zero and unaligned data.
fn make_input(path: &Path, size: u64) {
    let f = std::fs::File::create(path).unwrap();
    f.set_len(size).unwrap();
    let kernel = std::fs::read(debian_installer_dir().join("linux")).unwrap();
    f.write_all_at(&kernel[..kernel.len().min(6 << 20)], 3 << 20)
        .unwrap();
    let text: Vec<u8> = b"compressible text line\n"
        .iter()
        .copied()
        .cycle()
        .take(3 << 20)
        .collect();
    f.write_all_at(&text, 20 << 20).unwrap();
    // Not cluster-aligned, crossing a cluster boundary.
    f.write_all_at(b"crossing a boundary", (30 << 20) - 7)
        .unwrap();
    // The very last bytes (the size is not a multiple of the cluster size).
    f.write_all_at(b"tail", size - 4).unwrap();
}

fn qemu_img(args: &[&str], paths: &[&Path]) -> String {
    require_tool("qemu-img", "qemu-utils");
    let out = run_ok(Command::new("qemu-img").args(args).args(paths));
    String::from_utf8(out.stdout).unwrap()
}

fn convert(args: &[&str], input: &Path, output: &Path) {
    run_ok(
        kiln()
            .args(["img", "convert"])
            .args(args)
            .arg(input)
            .arg(output),
    );
}

#[test]
fn compressed_qcow2_passes_qemu_img_check_and_compare() {
    let dir = tempdir();
    let input = dir.path().join("in.raw");
    let size = (64 << 20) + 3 * 512;
    make_input(&input, size);
    let out = dir.path().join("out.qcow2");
    convert(&["-O", "qcow2", "-c"], &input, &out);
    let check = qemu_img(&["check"], &[&out]);
    assert!(check.contains("No errors were found"), "{check}");
    assert!(
        !check.contains(" 0.00% compressed"),
        "nothing was compressed: {check}"
    );
    let info = qemu_img(&["info", "--output=json"], &[&out]);
    assert!(info.contains("\"virtual-size\": 67110400"), "{info}");
    qemu_img(&["compare", "-f", "raw", "-F", "qcow2"], &[&input, &out]);
    // Compressed and sparse: much smaller than the input's virtual size.
    assert!(std::fs::metadata(&out).unwrap().len() < size / 4);

    // qemu-img compare's exit status is the test: make sure a difference fails it.
    let other = dir.path().join("other.raw");
    std::fs::copy(&input, &other).unwrap();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&other)
        .unwrap()
        .write_all_at(b"X", 21 << 20)
        .unwrap();
    run_fail(
        Command::new("qemu-img")
            .args(["compare", "-f", "raw", "-F", "qcow2"])
            .arg(&other)
            .arg(&out),
    );
}

#[test]
fn raw_qcow2_raw_round_trip_is_byte_identical_and_sparse() {
    let dir = tempdir();
    let input = dir.path().join("in.raw");
    let size = (48 << 20) + 4096 + 17;
    make_input(&input, size);
    for compress in [false, true] {
        let q = dir.path().join(format!("mid-{compress}.qcow2"));
        let flags: &[&str] = if compress { &["-c"] } else { &[] };
        convert(flags, &input, &q);
        assert!(qemu_img(&["check"], &[&q]).contains("No errors were found"));
        // The input ends 17 bytes into a sector: as for QEMU, the disk is whole
        // sectors, the rest of the last one zeroes, and QEMU reads the same bytes.
        let rounded = size.next_multiple_of(512);
        let info = qemu_img(&["info", "--output=json"], &[&q]);
        assert!(
            info.contains(&format!("\"virtual-size\": {rounded},")),
            "{info}"
        );
        qemu_img(&["compare", "-q"], &[&input, &q]);
        let back = dir.path().join(format!("back-{compress}.raw"));
        convert(&["-O", "raw"], &q, &back);
        let mut padded = std::fs::read(&input).unwrap();
        padded.resize(rounded as usize, 0);
        assert!(
            std::fs::read(&back).unwrap() == padded,
            "round trip differs (compress={compress})"
        );
        let meta = std::fs::metadata(&back).unwrap();
        assert_eq!(meta.len(), rounded);
        assert!(
            meta.blocks() * 512 < size / 2,
            "raw output is not sparse: {} blocks",
            meta.blocks()
        );
    }
}

#[test]
fn reads_qemu_compressed_qcow2_and_backing_chains() {
    let dir = tempdir();
    let input = dir.path().join("in.raw");
    make_input(&input, 40 << 20);
    let base = dir.path().join("base.qcow2");
    qemu_img(&["convert", "-c", "-O", "qcow2"], &[&input, &base]);
    let overlay = dir.path().join("overlay.qcow2");
    qemu_img(
        &["create", "-f", "qcow2", "-F", "qcow2", "-b"],
        &[&base, &overlay],
    );
    run_ok(
        Command::new("qemu-io")
            .args(["-c", "write -P 0x5a 1M 64k"])
            .arg(&overlay),
    );
    let flat = dir.path().join("flat.raw");
    convert(&["-O", "raw"], &overlay, &flat);
    qemu_img(&["compare", "-f", "raw", "-F", "qcow2"], &[&flat, &overlay]);
    let data = std::fs::read(&flat).unwrap();
    assert!(data[1 << 20..(1 << 20) + 65536].iter().all(|b| *b == 0x5a));
}

#[test]
fn failures_leave_nothing_at_the_output() {
    let dir = tempdir();
    let out = dir.path().join("out.qcow2");
    let err = run_fail(
        kiln()
            .args(["img", "convert"])
            .arg(dir.path().join("missing.raw"))
            .arg(&out),
    );
    assert!(err.contains("missing.raw"), "{err}");
    assert!(!out.exists());

    // A qcow2 whose L2 table points past the end of the file fails mid-way.
    let input = dir.path().join("in.raw");
    make_input(&input, 8 << 20);
    let q = dir.path().join("good.qcow2");
    convert(&[], &input, &q);
    let mut bytes = std::fs::read(&q).unwrap();
    bytes.truncate(bytes.len() / 2);
    let broken = dir.path().join("broken.qcow2");
    std::fs::write(&broken, &bytes).unwrap();
    std::fs::write(&out, b"previous contents").unwrap();
    run_fail(
        kiln()
            .args(["img", "convert", "-O", "raw"])
            .arg(&broken)
            .arg(&out),
    );
    assert_eq!(
        std::fs::read(&out).unwrap(),
        b"previous contents",
        "output replaced on failure"
    );
    let names: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        !names.iter().any(|n| n.starts_with(".kiln-tmp")),
        "temporary file left: {names:?}"
    );

    let err = run_fail(
        kiln()
            .args(["img", "convert", "-O", "raw", "-c"])
            .arg(&input)
            .arg(dir.path().join("x.raw")),
    );
    assert!(err.contains("qcow2"), "{err}");
}

#[test]
fn images_spanning_several_l2_tables_convert_correctly() {
    // One L2 table maps 512 MiB with 64 KiB clusters; put data in three of them.
    let dir = tempdir();
    let input = dir.path().join("big.raw");
    let size: u64 = (1300 << 20) + 512;
    let f = std::fs::File::create(&input).unwrap();
    f.set_len(size).unwrap();
    for (i, at) in [0u64, (512 << 20) - 3, 1100 << 20, size - 9]
        .into_iter()
        .enumerate()
    {
        f.write_all_at(format!("marker {i}").as_bytes(), at)
            .unwrap();
    }
    let out = dir.path().join("big.qcow2");
    convert(&["-c"], &input, &out);
    assert!(qemu_img(&["check"], &[&out]).contains("No errors were found"));
    qemu_img(&["compare", "-f", "raw", "-F", "qcow2"], &[&input, &out]);
}

#[test]
fn input_format_and_progress() {
    let dir = tempdir();
    let input = dir.path().join("in.raw");
    let size = (32 << 20) + 512;
    make_input(&input, size);
    let q = dir.path().join("in.qcow2");
    convert(&["-O", "qcow2"], &input, &q);

    // -f raw reads the qcow2 file's own bytes, as `qemu-img convert -f raw` does.
    let ours = dir.path().join("file-bytes.raw");
    convert(&["-f", "raw", "-O", "raw", "-p"], &q, &ours);
    let theirs = dir.path().join("file-bytes.qemu.raw");
    qemu_img(&["convert", "-f", "raw", "-O", "raw"], &[&q, &theirs]);
    assert_eq!(
        std::fs::read(&ours).unwrap(),
        std::fs::read(&theirs).unwrap()
    );
    let guest = dir.path().join("guest.raw");
    convert(&["-O", "raw"], &q, &guest);
    assert_eq!(
        std::fs::read(&guest).unwrap(),
        std::fs::read(&input).unwrap()
    );

    // Progress: every mebibyte, never backwards, ending at the whole size.
    let mut seen = Vec::new();
    let mut record = |done: u64, total: u64| seen.push((done, total));
    kiln_imagebuild::convert::convert(
        &input,
        &dir.path().join("progress.qcow2"),
        &mut kiln_imagebuild::convert::ConvertOptions {
            progress: Some(&mut record),
            ..kiln_imagebuild::convert::ConvertOptions::new(kiln_devices::block::ImageFormat::Qcow2)
        },
    )
    .unwrap();
    assert_eq!(seen.len(), 33, "{seen:?}");
    assert!(seen.windows(2).all(|w| w[0].0 < w[1].0), "{seen:?}");
    assert!(seen.iter().all(|&(_, total)| total == size));
    assert_eq!(seen.last(), Some(&(size, size)));
}

//! Raw files kiln makes from nothing have their first block written, as qemu-img's
//! have (QEMU probes O_DIRECT alignment there): `kiln img create -f raw`, `kiln img
//! resize` of an empty raw file, and `kiln img convert -O raw`. Each is checked against
//! the same command's qemu-img output with `qemu-img map`, host offsets included.

mod qcow2_support;

use std::path::Path;

use qcow2_support::*;

/// `qemu-img map --output=json` of a raw file.
fn map(path: &Path) -> String {
    qemu_img(&["map", "--output=json", "-f", "raw", s(path)])
}

#[test]
fn created_raw_images_map_as_qemu_img_s() {
    let dir = fresh_dir("raw-first-block", "create");
    // 4 KiB written from 4 KiB up, 512 bytes below; nothing in an empty file.
    for size in ["1M", "4k", "3584", "512", "0"] {
        let ours = dir.join(format!("kiln-{size}.raw"));
        let theirs = dir.join(format!("qemu-{size}.raw"));
        kiln_ok(&["img", "create", "-f", "raw", s(&ours), size]);
        qemu_img(&["create", "-q", "-f", "raw", s(&theirs), size]);
        assert_eq!(map(&ours), map(&theirs), "size {size}");
        let len = |p: &Path| std::fs::metadata(p).unwrap().len();
        assert_eq!(len(&ours), len(&theirs), "size {size}");
    }
    assert!(map(&dir.join("kiln-1M.raw"))
        .contains(r#""length": 4096, "depth": 0, "present": true, "zero": false, "data": true"#));
}

#[test]
fn resized_raw_images_map_as_qemu_img_s() {
    let dir = fresh_dir("raw-first-block", "resize");
    // From empty the first block is written; a file that had a size keeps its holes.
    for (from, to) in [("0", "2M"), ("0", "1k"), ("1M", "2M")] {
        let ours = dir.join(format!("kiln-{from}-{to}.raw"));
        let theirs = dir.join(format!("qemu-{from}-{to}.raw"));
        for path in [&ours, &theirs] {
            std::fs::File::create(path)
                .unwrap()
                .set_len(if from == "0" { 0 } else { 1 << 20 })
                .unwrap();
        }
        kiln_ok(&["img", "resize", "-f", "raw", s(&ours), to]);
        qemu_img(&["resize", "-q", "-f", "raw", s(&theirs), to]);
        assert_eq!(map(&ours), map(&theirs), "{from} to {to}");
    }
}

#[test]
fn converted_raw_images_map_as_qemu_img_s() {
    let dir = fresh_dir("raw-first-block", "convert");
    // An empty input, one with zeroes written at its start, and one with data there:
    // the data is kept, not overwritten by the first block's zeroes.
    let empty = dir.join("empty.qcow2");
    qemu_create(&empty, "", "3M");
    let zeroes = dir.join("zeroes.qcow2");
    qemu_create(&zeroes, "", "3M");
    qemu_io(&zeroes, &["write -P 0 0 64k", "write -P 7 1M 4k"]);
    let data = dir.join("data.qcow2");
    qemu_create(&data, "", "3M");
    qemu_io(&data, &["write -P 9 0 1k", "write -P 7 1M 4k"]);
    for input in [&empty, &zeroes, &data] {
        let name = input.file_stem().unwrap().to_str().unwrap();
        let ours = dir.join(format!("kiln-{name}.raw"));
        let theirs = dir.join(format!("qemu-{name}.raw"));
        kiln_ok(&["img", "convert", "-O", "raw", s(input), s(&ours)]);
        qemu_img(&["convert", "-O", "raw", s(input), s(&theirs)]);
        assert_eq!(map(&ours), map(&theirs), "{name}");
        qemu_img(&["compare", "-q", s(input), s(&ours)]);
    }
}

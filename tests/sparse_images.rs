//! `kiln img convert`, `compare` and `rebase` read only what images hold: a 16 GiB
//! chain (a qcow2 overlay on a sparse raw file) with a few MiB of data converts,
//! compares and rebases reading about that much, and the results are still exact where
//! zero clusters hide backing data; a preallocated image converts reading its data
//! only. Alone in its test binary, so the process's read counter (/proc/self/io
//! rchar) counts only this conversion.

mod qcow2_support;

use std::os::unix::fs::FileExt;

use kiln_devices::block::compare::compare_disks;
use kiln_devices::block::rebase::{rebase_safe, NewBacking};
use kiln_devices::block::ImageFormat;
use kiln_imagebuild::convert::{convert, ConvertOptions};
use qcow2_support::*;

fn bytes_read() -> u64 {
    let io = std::fs::read_to_string("/proc/self/io").unwrap();
    let line = io.lines().find(|l| l.starts_with("rchar:")).unwrap();
    line["rchar:".len()..].trim().parse().unwrap()
}

#[test]
fn sparse_chains_convert_compare_and_rebase_reading_only_their_data() {
    let dir = fresh_dir("convert-sparse", "chain");
    // Raw, so that reading its holes would be read(2) calls the counter sees (imago
    // answers unallocated qcow2 ranges without any).
    let sparse = |name: &str, data: &[(u8, usize, u64)]| {
        let file = std::fs::File::create(dir.join(name)).unwrap();
        file.set_len(16 << 30).unwrap();
        for &(byte, len, at) in data {
            file.write_all_at(&vec![byte; len], at).unwrap();
        }
    };
    sparse(
        "base.raw",
        &[(0x11, 2 << 20, 1 << 30), (0x22, 1 << 20, 15 << 30)],
    );
    let top = dir.join("top.qcow2");
    qemu_overlay("base.raw", "raw", &top);
    // Zeroes over half the base's data, and new data elsewhere.
    qemu_io(&top, &["write -z 1G 1M", "write -P 0x33 8G 64k"]);

    for (format, name) in [
        (ImageFormat::Raw, "out.raw"),
        (ImageFormat::Qcow2, "out.qcow2"),
    ] {
        let out = dir.join(name);
        let before = bytes_read();
        convert(&top, &out, &mut ConvertOptions::new(format)).unwrap();
        let read = bytes_read() - before;
        // The data is 4 MiB, read in chunks of 1 MiB, plus metadata; reading the zeroes
        // would be 16 GiB.
        assert!(read < 64 << 20, "{name}: read {read} bytes");
        qemu_img(&["compare", "-q", s(&top), s(&out)]);

        let (a, b) = (open(&top, None, true), open(&out, None, true));
        let before = bytes_read();
        let same = compare_disks((&top, a.as_ref()), (&out, b.as_ref()), false).unwrap();
        let read = bytes_read() - before;
        assert_eq!(same.mismatch, None, "{name}");
        assert!(read < 64 << 20, "compare {name}: read {read} bytes");
    }

    // Onto a new base that differs from the old one in one place: what the overlay
    // showed from the old base is copied in, and nothing else is read.
    sparse("new.raw", &[(0x44, 1 << 20, 15 << 30)]);
    let new = NewBacking {
        name: "new.raw",
        format: ImageFormat::Raw,
    };
    let before = bytes_read();
    let stats = rebase_safe(&top, Some(&new), &mut |_, _| {}).unwrap();
    let read = bytes_read() - before;
    assert!(read < 64 << 20, "rebase: read {read} bytes");
    assert!(stats.copied_clusters > 0, "{stats:?}");
    qemu_img(&["compare", "-q", s(&top), s(&dir.join("out.raw"))]);

    // A preallocated qcow2 (every cluster allocated, the data clusters holes of the
    // file): the holes read zero, as qemu-img's map says, and are not read either.
    let preallocated = dir.join("preallocated.qcow2");
    kiln_devices::block::create::create_image(
        &preallocated,
        &kiln_devices::block::create::CreateOptions {
            preallocation: kiln_devices::block::create::Preallocation::Metadata,
            ..kiln_devices::block::create::CreateOptions::new(ImageFormat::Qcow2, Some(4 << 30))
        },
    )
    .unwrap();
    qemu_io(&preallocated, &["write -P 0x55 3G 2M"]);
    let out = dir.join("preallocated.raw");
    let before = bytes_read();
    convert(
        &preallocated,
        &out,
        &mut ConvertOptions::new(ImageFormat::Raw),
    )
    .unwrap();
    let read = bytes_read() - before;
    assert!(read < 64 << 20, "preallocated: read {read} bytes");
    qemu_img(&["compare", "-q", s(&preallocated), s(&out)]);
}

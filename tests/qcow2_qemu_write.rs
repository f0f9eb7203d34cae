//! Random writes, discards and write-zeroes through kiln's qcow2 backend, mirrored to
//! a raw file: `qemu-img check` must be clean and `qemu-img compare` must match.

mod qcow2_support;

use std::path::Path;

use kiln_devices::block::config::Cache;
use kiln_devices::block::create::{create_image, CreateOptions};
use kiln_devices::block::{open_disk, DiskConfig, ImageFormat};
use qcow2_support::*;

const SIZE: u64 = 16 << 20;

/// Apply `ops` random operations to `image` and to the raw `mirror`.
fn random_ops(image: &Path, mirror: &Path, seed: u64, ops: usize) {
    random_ops_cached(image, mirror, seed, ops, Cache::Writeback);
}

/// [`random_ops`] with both files open in `cache` mode.
fn random_ops_cached(image: &Path, mirror: &Path, seed: u64, ops: usize, cache: Cache) {
    let open = |path: &Path, format| {
        open_disk(&DiskConfig {
            format: Some(format),
            cache,
            ..DiskConfig::new(path)
        })
        .unwrap_or_else(|e| panic!("kiln cannot open {}: {e}", path.display()))
    };
    let disk = open(image, ImageFormat::Qcow2);
    let raw = open(mirror, ImageFormat::Raw);
    assert_eq!(disk.size(), raw.size());
    let size = disk.size();
    let mut rng = Rng::new(seed);
    for i in 0..ops {
        let sectors = size / 512;
        let start = rng.below(sectors);
        // Mostly small requests, some spanning several clusters.
        let max_len = if rng.below(4) == 0 { 2048 } else { 64 };
        let len = (1 + rng.below(max_len)).min(sectors - start);
        let (off, len) = (start * 512, len * 512);
        match rng.below(10) {
            0..=5 => {
                let byte = (i % 255) as u8 + 1;
                let data: Vec<u8> = (0..len).map(|j| byte ^ (j as u8)).collect();
                disk.write_at(&data, off).unwrap();
                raw.write_at(&data, off).unwrap();
            }
            6 | 7 => {
                disk.discard(off, len).unwrap();
                raw.write_zeroes(off, len, false).unwrap();
            }
            8 => {
                let unmap = rng.below(2) == 0;
                disk.write_zeroes(off, len, unmap).unwrap();
                raw.write_zeroes(off, len, false).unwrap();
            }
            _ => disk.flush().unwrap(),
        }
    }
    // kiln's own view must match before QEMU looks.
    assert!(
        read_all(disk.as_ref()) == read_all(raw.as_ref()),
        "kiln reads differ from the mirror"
    );
    disk.flush().unwrap();
    raw.flush().unwrap();
}

fn compare(image: &Path, mirror: &Path) {
    let out = qemu_img(&[
        "compare",
        "-f",
        "qcow2",
        "-F",
        "raw",
        image.to_str().unwrap(),
        mirror.to_str().unwrap(),
    ]);
    assert!(out.contains("Images are identical"), "{out}");
}

fn raw_mirror(path: &Path, content: Option<&[u8]>) {
    match content {
        Some(c) => std::fs::write(path, c).unwrap(),
        None => std::fs::File::create(path).unwrap().set_len(SIZE).unwrap(),
    }
}

#[test]
fn kiln_created_image_survives_random_ops() {
    for cluster in [512u64, 4096, 65536, 2 << 20] {
        let dir = tempfile::tempdir().unwrap();
        let image = dir.path().join("img.qcow2");
        let mirror = dir.path().join("mirror.raw");
        create_image(
            &image,
            &CreateOptions {
                cluster_size: Some(cluster),
                ..CreateOptions::new(ImageFormat::Qcow2, Some(SIZE))
            },
        )
        .unwrap();
        raw_mirror(&mirror, None);
        random_ops(&image, &mirror, cluster, 400);
        assert_check_clean(&image);
        compare(&image, &mirror);
    }
}

#[test]
fn qemu_created_images_survive_random_ops() {
    for opts in [
        "compat=0.10",
        "compat=1.1,cluster_size=4096",
        "compat=1.1,refcount_bits=1",
    ] {
        let dir = tempfile::tempdir().unwrap();
        let image = dir.path().join("img.qcow2");
        let mirror = dir.path().join("mirror.raw");
        qemu_create(&image, opts, &SIZE.to_string());
        qemu_io(
            &image,
            &[
                "write -P 0x11 0 1M",
                "write -z 2M 1M",
                "write -P 0x22 5M 300k",
            ],
        );
        raw_mirror(&mirror, Some(&qemu_contents(&image, dir.path())));
        random_ops(&image, &mirror, 7, 300);
        assert_check_clean(&image);
        compare(&image, &mirror);
    }
}

#[test]
fn direct_io_images_survive_random_ops() {
    // cache=none: imago's transfers and kiln's reads around it go to O_DIRECT files,
    // mostly from unaligned buffers and at sector offsets.
    for cluster in [512u64, 65536] {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().join("base.qcow2");
        let image = dir.path().join("img.qcow2");
        let mirror = dir.path().join("mirror.raw");
        qemu_create(&base, &format!("cluster_size={cluster}"), &SIZE.to_string());
        qemu_io(&base, &["write -P 0xaa 1M 6M"]);
        let overlay = CreateOptions {
            backing: Some("base.qcow2".into()),
            backing_format: Some(ImageFormat::Qcow2),
            cluster_size: Some(cluster),
            ..CreateOptions::new(ImageFormat::Qcow2, None)
        };
        create_image(&image, &overlay).unwrap();
        raw_mirror(&mirror, Some(&qemu_contents(&image, dir.path())));
        random_ops_cached(&image, &mirror, cluster + 7, 400, Cache::None);
        assert_check_clean(&image);
        compare(&image, &mirror);
    }
}

#[test]
fn overlay_on_backing_chain_survives_random_ops() {
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().join("base.qcow2");
    let mid = dir.path().join("mid.qcow2");
    let top = dir.path().join("top.qcow2");
    let mirror = dir.path().join("mirror.raw");
    let size = SIZE.to_string();
    qemu_img(&["create", "-q", "-f", "qcow2", base.to_str().unwrap(), &size]);
    qemu_io(&base, &["write -P 0xaa 0 8M"]);
    qemu_overlay("base.qcow2", "qcow2", &mid);
    qemu_io(&mid, &["write -P 0xbb 1M 2M"]);
    qemu_overlay("mid.qcow2", "qcow2", &top);
    let base_before = std::fs::read(&base).unwrap();
    raw_mirror(&mirror, Some(&qemu_contents(&top, dir.path())));
    random_ops(&top, &mirror, 99, 300);
    assert_check_clean(&top);
    compare(&top, &mirror);
    assert_eq!(
        std::fs::read(&base).unwrap(),
        base_before,
        "backing file was written"
    );
}

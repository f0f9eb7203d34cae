use std::path::Path;

use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend};

use super::create::{create_image, CreateOptions};
use super::*;

fn create(path: &Path, format: ImageFormat, size: u64) {
    create_image(path, &CreateOptions::new(format, Some(size))).unwrap();
}

fn open(path: &Path, readonly: bool) -> Arc<dyn DiskBackend> {
    open_disk(&DiskConfig {
        readonly,
        ..DiskConfig::new(path.to_owned())
    })
    .unwrap()
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

fn roundtrip(format: ImageFormat) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("disk");
    create(&path, format, 4 << 20);
    assert_eq!(probe_format(&path).unwrap(), format);
    let disk = open(&path, false);
    assert_eq!(disk.format(), format);
    assert_eq!(disk.size(), 4 << 20);

    let data = pattern(10_000, 7);
    disk.write_at(&data, 70_000).unwrap();
    let mut back = vec![0u8; 10_000];
    disk.read_at(&mut back, 70_000).unwrap();
    assert_eq!(back, data);

    // Guest-memory I/O split over two regions with a gap.
    let mem = crate::GuestMemory::from_ranges(&[
        (GuestAddress(0), 0x1000),
        (GuestAddress(0x10000), 0x1000),
    ])
    .unwrap();
    mem.write_slice(&pattern(0x1000, 1), GuestAddress(0))
        .unwrap();
    mem.write_slice(&pattern(0x800, 2), GuestAddress(0x10000))
        .unwrap();
    let s1 = mem.get_slice(GuestAddress(0), 0x1000).unwrap();
    let s2 = mem.get_slice(GuestAddress(0x10000), 0x800).unwrap();
    disk.write_vectored(&[s1, s2], 3 << 20).unwrap();
    let mut expect = pattern(0x1000, 1);
    expect.extend(pattern(0x800, 2));
    let mut back = vec![0u8; 0x1800];
    disk.read_at(&mut back, 3 << 20).unwrap();
    assert_eq!(back, expect);
    let d = mem.get_slice(GuestAddress(0x10000), 0x1000).unwrap();
    disk.read_vectored(&[d], (3 << 20) + 0x800).unwrap();
    let mut g = vec![0u8; 0x1000];
    mem.read_slice(&mut g, GuestAddress(0x10000)).unwrap();
    assert_eq!(g, expect[0x800..]);

    // write-zeroes with and without unmap, discard.
    disk.write_zeroes(70_000, 1000, false).unwrap();
    disk.write_zeroes(71_000, 1000, true).unwrap();
    let mut back = vec![0xffu8; 10_000];
    disk.read_at(&mut back, 70_000).unwrap();
    assert!(back[..2000].iter().all(|&b| b == 0));
    assert_eq!(back[2000..], data[2000..]);
    disk.discard(0, 4 << 20).unwrap();
    disk.flush().unwrap();

    // Beyond the end.
    let mut b = [0u8; 512];
    assert!(matches!(
        disk.read_at(&mut b, (4 << 20) - 511),
        Err(DiskError::OutOfRange { .. })
    ));
    assert!(matches!(
        disk.write_at(&b, u64::MAX - 10),
        Err(DiskError::OutOfRange { .. })
    ));
    assert!(matches!(
        disk.write_zeroes(4 << 20, 1, false),
        Err(DiskError::OutOfRange { .. })
    ));
    drop(disk);

    let ro = open(&path, true);
    assert!(ro.is_read_only());
    assert!(matches!(ro.write_at(&b, 0), Err(DiskError::ReadOnly)));
    assert!(matches!(ro.discard(0, 512), Err(DiskError::ReadOnly)));
    assert!(matches!(
        ro.write_zeroes(0, 512, false),
        Err(DiskError::ReadOnly)
    ));
    ro.flush().unwrap();
}

#[test]
fn raw_roundtrip() {
    roundtrip(ImageFormat::Raw);
}

#[test]
fn qcow2_roundtrip() {
    roundtrip(ImageFormat::Qcow2);
}

#[test]
fn raw_discard_punches_holes() {
    use std::os::unix::fs::MetadataExt;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("disk.raw");
    create(&path, ImageFormat::Raw, 8 << 20);
    let disk = open(&path, false);
    disk.write_at(&vec![0xaa; 8 << 20], 0).unwrap();
    disk.flush().unwrap();
    let before = std::fs::metadata(&path).unwrap().blocks();
    disk.discard(0, 4 << 20).unwrap();
    let after = std::fs::metadata(&path).unwrap().blocks();
    assert!(after < before, "blocks {before} -> {after}");
}

#[test]
fn qcow2_discard_punches_holes() {
    use std::os::unix::fs::MetadataExt;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("disk.qcow2");
    create(&path, ImageFormat::Qcow2, 8 << 20);
    let disk = open(&path, false);
    disk.write_at(&vec![0xaa; 8 << 20], 0).unwrap();
    disk.flush().unwrap();
    let before = std::fs::metadata(&path).unwrap().blocks() * 512;
    disk.discard(0, 8 << 20).unwrap();
    disk.flush().unwrap();
    let after = std::fs::metadata(&path).unwrap().blocks() * 512;
    assert!(
        after + (7 << 20) < before,
        "allocated bytes {before} -> {after}: discard freed no host space"
    );
    let mut b = vec![0xffu8; 8 << 20];
    disk.read_at(&mut b, 0).unwrap();
    assert!(b.iter().all(|&x| x == 0));
}

#[test]
fn create_refuses_existing_file_and_bad_options() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("disk");
    std::fs::write(&path, b"keep me").unwrap();
    let opts = CreateOptions::new(ImageFormat::Qcow2, Some(1 << 20));
    assert!(create_image(&path, &opts).is_err());
    assert_eq!(std::fs::read(&path).unwrap(), b"keep me");
    let other = dir.path().join("other");
    let bad = CreateOptions {
        size: Some(1000),
        ..opts.clone()
    };
    assert!(create_image(&other, &bad).is_err());
    assert!(!other.exists(), "failed create left a file behind");
    let bad = CreateOptions {
        cluster_size: Some(3000),
        ..opts
    };
    assert!(create_image(&other, &bad).is_err());
    assert!(!other.exists(), "failed create left a file behind");
}

#[test]
fn qcow2_backing_chain_and_info() {
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().join("base.raw");
    create(&base, ImageFormat::Raw, 2 << 20);
    {
        let d = open(&base, false);
        d.write_at(&pattern(4096, 9), 8192).unwrap();
    }
    let top = dir.path().join("top.qcow2");
    create_image(
        &top,
        &CreateOptions {
            backing: Some("base.raw".into()),
            cluster_size: Some(4096),
            ..CreateOptions::new(ImageFormat::Qcow2, None)
        },
    )
    .unwrap();
    let d = open(&top, false);
    assert_eq!(d.size(), 2 << 20);
    let mut b = vec![0u8; 4096];
    d.read_at(&mut b, 8192).unwrap();
    assert_eq!(b, pattern(4096, 9));
    d.write_at(&[1, 2, 3], 8192).unwrap();
    drop(d);
    let mut raw = vec![0u8; 3];
    open(&base, true).read_at(&mut raw, 8192).unwrap();
    assert_eq!(raw, pattern(3, 9), "backing file was modified");

    let info = info::image_info(&top).unwrap();
    assert_eq!(info.format, ImageFormat::Qcow2);
    assert_eq!(info.virtual_size, 2 << 20);
    assert_eq!(info.cluster_size, Some(4096));
    assert_eq!(info.backing_filename.as_deref(), Some("base.raw"));
    assert_eq!(info.backing_format.as_deref(), Some("raw"));
    assert_eq!(
        info.full_backing_filename,
        Some(dir.path().join("base.raw"))
    );
}

#[test]
fn force_share_needs_read_only_and_reads_under_a_writer() {
    let dir = tempfile::tempdir().unwrap();
    for (name, format) in [("a.raw", ImageFormat::Raw), ("a.qcow2", ImageFormat::Qcow2)] {
        let path = dir.path().join(name);
        create(&path, format, 1 << 20);
        let writer = open(&path, false);
        writer.write_at(&[7u8; 512], 0).unwrap();
        writer.flush().unwrap();
        let shared = DiskConfig {
            readonly: true,
            force_share: true,
            ..DiskConfig::new(&path)
        };
        let reader = open_disk(&shared).unwrap();
        let mut got = [0u8; 512];
        reader.read_at(&mut got, 0).unwrap();
        assert_eq!(got, [7u8; 512], "{name}");
        drop((reader, writer));
        let err = open_disk(&DiskConfig {
            readonly: false,
            ..shared
        })
        .err()
        .expect("force-share with write access accepted");
        assert!(err.to_string().contains("read-only"), "{name}: {err}");
    }
}

#[test]
fn a_raw_file_of_partial_sectors_is_a_disk_of_whole_ones() {
    use vm_memory::VolatileSlice;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("odd.raw");
    std::fs::write(&path, [7u8; 1000]).unwrap();
    let disk = open(&path, false);
    assert_eq!(disk.size(), 1024);
    // Past the file's end: zeroes, through both read paths.
    let mut buf = [0xffu8; 1024];
    disk.read_at(&mut buf, 0).unwrap();
    assert!(buf[..1000].iter().all(|b| *b == 7) && buf[1000..].iter().all(|b| *b == 0));
    let (mut a, mut b) = ([0xffu8; 700], [0xffu8; 324]);
    // SAFETY: both arrays outlive the slices, which are used only within this scope.
    let slices = unsafe {
        [
            VolatileSlice::new(a.as_mut_ptr(), a.len()),
            VolatileSlice::new(b.as_mut_ptr(), b.len()),
        ]
    };
    disk.read_vectored(&slices, 0).unwrap();
    assert!(a.iter().all(|x| *x == 7));
    assert!(b[..300].iter().all(|x| *x == 7) && b[300..].iter().all(|x| *x == 0));
    // Beyond the rounded size is still beyond the disk.
    assert!(disk.read_at(&mut [0u8; 512], 1024).is_err());
    // A write into the last sector's tail extends the file.
    disk.write_at(&[9u8; 24], 1000).unwrap();
    drop(disk);
    assert_eq!(std::fs::metadata(&path).unwrap().len(), 1024);
}

#[test]
fn reading_a_qcow2_header_reads_only_its_first_cluster() {
    use crate::test_support::{cached_pages, evict};
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("d.qcow2");
    create(&path, ImageFormat::Qcow2, 8 << 20);
    open(&path, false)
        .write_at(&pattern(8 << 20, 1), 0)
        .unwrap();
    evict(&path);
    let (h, _) = qcow2::read_header(&path).unwrap();
    assert_eq!(h.cluster_size(), 65536);
    // Read-ahead may take a few clusters after the first; the data beyond 1 MiB is
    // never needed to open the image.
    assert_eq!(cached_pages(&path, 1 << 20, 1 << 20), 0);
}

//! `cache=none`: images opened with O_DIRECT, driven through `DiskBackend`.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::config::Cache;
use super::dio::AlignedBuf;
use super::lock::Access;
use super::raw::RawDisk;
use super::{open_disk, DiskBackend, DiskConfig, ImageFormat};
use crate::test_support::cached_pages;

const MIB: u64 = 1 << 20;

fn pattern(seed: u8, len: usize) -> Vec<u8> {
    (0..len).map(|i| (i % 251) as u8 ^ seed).collect()
}

fn direct_config(path: &Path, format: ImageFormat) -> DiskConfig {
    DiskConfig {
        format: Some(format),
        cache: Cache::None,
        ..DiskConfig::new(path)
    }
}

/// A sparse 4 MiB raw file in `dir`, open with cache=none.
fn sparse_direct_raw(dir: &Path) -> (PathBuf, Arc<dyn DiskBackend>) {
    let path = dir.join("d.raw");
    std::fs::File::create(&path)
        .unwrap()
        .set_len(4 * MIB)
        .unwrap();
    let disk = open_disk(&direct_config(&path, ImageFormat::Raw)).unwrap();
    (path, disk)
}

#[test]
fn aligned_transfers_bypass_the_page_cache() {
    let dir = tempfile::tempdir().unwrap();
    let (path, disk) = sparse_direct_raw(dir.path());
    let mut buf = AlignedBuf::new(256 << 10, 0);
    buf.copy_from_slice(&pattern(1, 256 << 10));
    disk.write_at(&buf, MIB).unwrap();
    let mut back = AlignedBuf::new(256 << 10, 0);
    disk.read_at(&mut back, MIB).unwrap();
    assert!(back[..] == buf[..]);
    assert_eq!(cached_pages(&path, MIB, 256 << 10), 0);

    // The same through the page cache leaves the pages there: the check can see them.
    drop(disk);
    let cached = RawDisk::open_with(&path, Access::ReadWrite, false).unwrap();
    cached.write_at(&buf, 2 * MIB).unwrap();
    assert_eq!(cached_pages(&path, 2 * MIB, 256 << 10), 64);
}

#[test]
fn unaligned_transfers_go_through_the_page_cache() {
    let dir = tempfile::tempdir().unwrap();
    let (_, disk) = sparse_direct_raw(dir.path());
    // Memory off by a byte, then an offset and length of single sectors: no file
    // system's direct I/O takes the first, and 4Kn disks not the second.
    let mut odd = AlignedBuf::new(8192, 1);
    odd.copy_from_slice(&pattern(2, 8192));
    disk.write_at(&odd, 4096).unwrap();
    let sector = pattern(3, 512);
    disk.write_at(&sector, 3 * 512).unwrap();
    let mut back = AlignedBuf::new(16384, 1);
    disk.read_at(&mut back, 0).unwrap();
    let mut want = vec![0u8; 16384];
    want[4096..12288].copy_from_slice(&odd);
    want[1536..2048].copy_from_slice(&sector);
    assert!(back[..] == want[..]);
    // An aligned read sees what the unaligned writes left in the page cache.
    let mut aligned = AlignedBuf::new(16384, 0);
    disk.read_at(&mut aligned, 0).unwrap();
    assert!(aligned[..] == want[..]);
}

#[test]
fn the_unaligned_end_of_a_file_reads_and_writes() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("d.raw");
    let content = pattern(4, 8192 + 1000);
    std::fs::write(&path, &content).unwrap();
    let disk = open_disk(&direct_config(&path, ImageFormat::Raw)).unwrap();
    assert_eq!(disk.size(), 8192 + 1024);
    // The last aligned block and the partial sector after it, in one aligned read.
    let mut back = AlignedBuf::new(4096 + 1024, 0);
    disk.read_at(&mut back, 4096).unwrap();
    assert!(back[..4096 + 1000] == content[4096..]);
    assert!(back[4096 + 1000..].iter().all(|&b| b == 0));
    let mut last = AlignedBuf::new(1024, 0);
    last.copy_from_slice(&pattern(5, 1024));
    disk.write_at(&last, 8192).unwrap();
    let mut again = AlignedBuf::new(1024, 0);
    disk.read_at(&mut again, 8192).unwrap();
    assert!(again[..] == last[..]);
}

#[test]
fn qcow2_chains_read_and_write_with_direct_io() {
    use super::create::{create_image, CreateOptions};
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().join("base.qcow2");
    let top = dir.path().join("top.qcow2");
    create_image(
        &base,
        &CreateOptions::new(ImageFormat::Qcow2, Some(4 * MIB)),
    )
    .unwrap();
    {
        let b = open_disk(&direct_config(&base, ImageFormat::Qcow2)).unwrap();
        b.write_at(&pattern(6, 3 * 65536), 0).unwrap();
        b.flush().unwrap();
    }
    let opts = CreateOptions {
        backing: Some(base.clone()),
        backing_format: Some(ImageFormat::Qcow2),
        ..CreateOptions::new(ImageFormat::Qcow2, None)
    };
    create_image(&top, &opts).unwrap();
    let disk = open_disk(&direct_config(&top, ImageFormat::Qcow2)).unwrap();
    assert_eq!(disk.io_align().block % 512, 0, "{:?}", disk.io_align());
    // A partial cluster over the backing file's data, from unaligned memory.
    let mut odd = AlignedBuf::new(1536, 3);
    odd.copy_from_slice(&pattern(7, 1536));
    disk.write_at(&odd, 65536 + 512).unwrap();
    disk.flush().unwrap();
    let mut back = AlignedBuf::new(3 * 65536, 0);
    disk.read_at(&mut back, 0).unwrap();
    let mut want = pattern(6, 3 * 65536);
    want[65536 + 512..65536 + 2048].copy_from_slice(&odd);
    assert!(back[..] == want[..]);
}

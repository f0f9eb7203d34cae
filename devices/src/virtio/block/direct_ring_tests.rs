//! `cache=none` through the device: aligned requests go to the ring on the O_DIRECT
//! file, the rest to the I/O threads, and the data is right either way.

use std::path::Path;
use std::time::Duration;

use super::harness::{Done, Harness, Op, QueueDriver};
use super::*;
use crate::block::config::Cache;
use crate::block::{open_disk, DiskConfig, ImageFormat};
use crate::test_support::{cached_pages, evict};

const DISK_SIZE: u64 = 4 << 20;
const OK: u8 = VIRTIO_BLK_S_OK as u8;

fn pattern(offset: u64) -> u8 {
    (offset % 253) as u8
}

/// A raw image of `pattern`, none of it in the page cache.
fn cold_raw_image(path: &Path) {
    let content: Vec<u8> = (0..DISK_SIZE).map(pattern).collect();
    std::fs::write(path, content).unwrap();
    evict(path);
    assert_eq!(cached_pages(path, 0, DISK_SIZE), 0);
}

fn direct_harness(path: &Path, slot_bytes: usize) -> Harness {
    direct_harness_for(path, ImageFormat::Raw, slot_bytes)
}

fn direct_harness_for(path: &Path, format: ImageFormat, slot_bytes: usize) -> Harness {
    let disk = open_disk(&DiskConfig {
        format: Some(format),
        cache: Cache::None,
        ..DiskConfig::new(path)
    })
    .unwrap();
    let mut h = Harness::new(Block::new(disk, None).unwrap(), 16, slot_bytes).unwrap();
    assert!(h.device().uses_io_uring());
    h
}

fn run_all(h: &mut Harness, requests: &[(Op, u64)], len: usize) -> Vec<(Done, u64)> {
    let mut at = std::collections::HashMap::new();
    for (i, &(op, offset)) in requests.iter().enumerate() {
        let slot = h.submit(op, offset, len).unwrap().unwrap();
        if op == Op::Write {
            h.write_slot(slot, &[i as u8 + 1; 4096][..len]).unwrap();
        }
        at.insert(slot, offset);
    }
    h.kick().unwrap();
    let mut done = Vec::new();
    while done.len() < requests.len() {
        for d in h.wait(Duration::from_secs(10)).unwrap() {
            let offset = at[&d.slot];
            done.push((d, offset));
        }
    }
    done
}

/// 4 KiB writes at `offsets`, the i-th of bytes i + 1, all successful.
fn run_writes(h: &mut Harness, offsets: &[u64]) {
    let writes: Vec<_> = offsets.iter().map(|&o| (Op::Write, o)).collect();
    let done = run_all(h, &writes, 4096);
    assert!(done.iter().all(|(d, _)| d.status == OK), "{done:?}");
}

/// The file holds what [`run_writes`] wrote at `offsets`.
fn assert_written(path: &Path, offsets: &[u64]) {
    let file = std::fs::read(path).unwrap();
    for (i, &at) in offsets.iter().enumerate() {
        let at = at as usize;
        assert!(
            file[at..at + 4096].iter().all(|&b| b == i as u8 + 1),
            "write {i} at {at}"
        );
    }
}

fn check_reads(h: &Harness, done: &[(Done, u64)], len: usize) {
    for (d, offset) in done {
        assert_eq!(d.status, OK, "read at {offset}");
        let mut got = vec![0u8; len];
        h.read_slot(d.slot, &mut got).unwrap();
        assert!(
            got.iter().zip(*offset..).all(|(b, at)| *b == pattern(at)),
            "read at {offset}"
        );
    }
}

#[test]
fn aligned_requests_reach_the_file_around_the_page_cache() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("d.raw");
    cold_raw_image(&path);
    let mut h = direct_harness(&path, 4096);
    let reads: Vec<_> = (0..16u64).map(|i| (Op::Read, i * 131072)).collect();
    let done = run_all(&mut h, &reads, 4096);
    check_reads(&h, &done, 4096);
    let writes: Vec<_> = (0..16u64).map(|i| i * 131072 + 65536).collect();
    run_writes(&mut h, &writes);
    assert_eq!(h.device().io_threads(), 0, "requests left the ring");
    assert_eq!(cached_pages(&path, 0, DISK_SIZE), 0);
    drop(h);
    assert_written(&path, &writes);
}

#[test]
fn unaligned_guest_buffers_go_to_the_io_threads() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("d.raw");
    cold_raw_image(&path);
    // Buffers 8 bytes into their slots: off any alignment that direct I/O takes.
    let mut h = direct_harness(&path, 8192);
    h.driver_mut().set_data_skew(8).unwrap();
    let reads: Vec<_> = (0..16u64).map(|i| (Op::Read, i * 65536 + 512)).collect();
    let done = run_all(&mut h, &reads, 4096);
    check_reads(&h, &done, 4096);
    let writes: Vec<_> = (0..16u64).map(|i| i * 65536 + 8192).collect();
    run_writes(&mut h, &writes);
    assert!(
        h.device().io_threads() > 0,
        "nothing went to the I/O threads"
    );
    drop(h);
    assert_written(&path, &writes);
}

#[test]
fn a_disk_shared_with_the_ring_stays_coherent() {
    // Unaligned writes land in the page cache, aligned reads of the same bytes go
    // around it: the reads must still see them.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("d.raw");
    cold_raw_image(&path);
    let mut h = direct_harness(&path, 8192);
    h.driver_mut().set_data_skew(8).unwrap();
    let writes: Vec<_> = (0..15u64).map(|i| (i + 1) * 8192).collect();
    run_writes(&mut h, &writes);
    drop(h);
    let mut h = direct_harness(&path, 4096);
    let reads: Vec<_> = (1..16u64).map(|i| (Op::Read, i * 8192)).collect();
    for (d, offset) in run_all(&mut h, &reads, 4096) {
        let mut got = vec![0u8; 4096];
        h.read_slot(d.slot, &mut got).unwrap();
        let i = (offset / 8192) as u8;
        assert_eq!(
            (d.status, got[0], got[4095]),
            (OK, i, i),
            "read at {offset}"
        );
    }
    assert_eq!(h.device().io_threads(), 0, "the reads left the ring");
}

#[test]
fn qcow2_reads_bypass_the_page_cache_aligned_or_not() {
    use crate::block::create::{create_image, CreateOptions};
    const QCOW2_SIZE: u64 = 16 << 20;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("d.qcow2");
    create_image(
        &path,
        &CreateOptions::new(ImageFormat::Qcow2, Some(QCOW2_SIZE)),
    )
    .unwrap();
    {
        let disk = open_disk(&DiskConfig::new(&path)).unwrap();
        let content: Vec<u8> = (0..QCOW2_SIZE).map(pattern).collect();
        disk.write_at(&content, 0).unwrap();
        disk.flush().unwrap();
    }
    // Written in order, so the disk's second half lies in the file's second half,
    // past the header, tables and what opening the image reads through the page cache.
    let file_len = std::fs::metadata(&path).unwrap().len();
    let tail = |p: &Path| cached_pages(p, file_len / 2, file_len - file_len / 2);
    for skew in [0, 8] {
        evict(&path);
        let mut h = direct_harness_for(&path, ImageFormat::Qcow2, 8192);
        h.driver_mut().set_data_skew(skew).unwrap();
        let before = tail(&path);
        // Twice over the range: the second pass finds imago's L2 tables loaded, so
        // aligned reads take the ring.
        for _ in 0..2 {
            for chunk in (QCOW2_SIZE * 5 / 8..QCOW2_SIZE * 7 / 8).step_by(16 * 4096) {
                let reads: Vec<_> = (0..16u64).map(|i| (Op::Read, chunk + i * 4096)).collect();
                let done = run_all(&mut h, &reads, 4096);
                check_reads(&h, &done, 4096);
            }
        }
        drop(h);
        let added = tail(&path).saturating_sub(before);
        assert!(
            added <= 4,
            "skew {skew}: {added} pages of 1024 read came into the page cache"
        );
    }
}

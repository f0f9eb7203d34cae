//! The io_uring path of raw images, driven through the in-process harness.

use std::fs::File;
use std::os::unix::io::{AsRawFd, RawFd};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::harness::{Done, Harness, Op, QueueDriver};
use super::*;
use crate::block::config::Cache;
use crate::block::delegate::delegate_disk;
use crate::block::raw::RawDisk;
use crate::block::{DiskError, ImageFormat};
use crate::test_support::deny_io_uring_on_this_thread;

const DISK_SIZE: u64 = 4 << 20;
const OK: u8 = VIRTIO_BLK_S_OK as u8;
const IOERR: u8 = VIRTIO_BLK_S_IOERR as u8;
const WAIT: Duration = Duration::from_secs(10);

fn pattern(offset: u64) -> u8 {
    (offset % 253) as u8
}

pub(super) fn raw_image(dir: &tempfile::TempDir) -> PathBuf {
    let path = dir.path().join("disk.raw");
    let content: Vec<u8> = (0..DISK_SIZE).map(pattern).collect();
    std::fs::write(&path, content).unwrap();
    path
}

fn raw_disk(path: &Path) -> Arc<RawDisk> {
    Arc::new(RawDisk::open(path, false).unwrap())
}

/// Wait until `n` requests came back.
fn wait_for(h: &mut Harness, n: usize) -> Vec<Done> {
    let mut done = Vec::new();
    while done.len() < n {
        done.extend(h.wait(WAIT).unwrap());
    }
    done
}

fn ring_harness(disk: Arc<dyn DiskBackend>, depth: usize, slot_bytes: usize) -> Harness {
    let mut h = Harness::new(Block::new(disk, None).unwrap(), depth, slot_bytes).unwrap();
    assert!(h.device().uses_io_uring(), "raw image without a ring");
    h
}

#[test]
fn ring_reads_and_writes_land_in_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = raw_image(&dir);
    let mut h = ring_harness(raw_disk(&path), 64, 8192);
    // Reads at 64 scattered offsets, all in one batch.
    let offsets: Vec<u64> = (0..64u64)
        .map(|i| (i * 7919 * 512) % (DISK_SIZE - 8192))
        .collect();
    let mut slot_offset = std::collections::HashMap::new();
    for &o in &offsets {
        let slot = h.submit(Op::Read, o, 8192).unwrap().unwrap();
        slot_offset.insert(slot, o);
    }
    h.kick().unwrap();
    for d in wait_for(&mut h, 64) {
        assert_eq!((d.status, d.len), (OK, 8193), "{d:?}");
        let mut got = vec![0u8; 8192];
        h.read_slot(d.slot, &mut got).unwrap();
        let o = slot_offset[&d.slot];
        assert!(
            got.iter().zip(o..).all(|(b, at)| *b == pattern(at)),
            "read at {o}"
        );
    }
    // Writes of distinct bytes to distinct places.
    for i in 0..64u64 {
        let slot = h.submit(Op::Write, i * 16384, 8192).unwrap().unwrap();
        h.write_slot(slot, &[i as u8 + 1; 8192]).unwrap();
    }
    h.kick().unwrap();
    let done = wait_for(&mut h, 64);
    assert!(
        done.iter().all(|d| (d.status, d.len) == (OK, 1)),
        "{done:?}"
    );
    assert_eq!(
        h.device().io_threads(),
        0,
        "requests went to the I/O threads"
    );
    let file = std::fs::read(&path).unwrap();
    for i in 0..64u64 {
        let at = (i * 16384) as usize;
        assert!(
            file[at..at + 8192].iter().all(|b| *b == i as u8 + 1),
            "write {i}"
        );
        assert_eq!(
            file[at + 8192],
            pattern(at as u64 + 8192),
            "write {i} overran"
        );
    }
}

#[test]
fn a_full_queue_stays_in_flight_for_thousands_of_requests() {
    let dir = tempfile::tempdir().unwrap();
    let path = raw_image(&dir);
    let mut h = ring_harness(raw_disk(&path), 64, 4096);
    let mut slot_offset = vec![0u64; 64];
    let (mut started, mut finished, mut rng) = (0u32, 0u32, 0x9e37_79b9u64);
    while finished < 3000 {
        while started < 3000 {
            rng = rng.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
            let offset = (rng >> 33) % (DISK_SIZE / 4096) * 4096;
            let Some(slot) = h.submit(Op::Read, offset, 4096).unwrap() else {
                break;
            };
            slot_offset[slot] = offset;
            started += 1;
        }
        h.kick().unwrap();
        for d in h.wait(WAIT).unwrap() {
            assert_eq!(d.status, OK);
            let mut got = vec![0u8; 4096];
            h.read_slot(d.slot, &mut got).unwrap();
            let o = slot_offset[d.slot];
            assert!(got.iter().zip(o..).all(|(b, at)| *b == pattern(at)));
            finished += 1;
        }
    }
    assert_eq!(h.device().in_flight(), 0);
    assert_eq!(h.device().io_threads(), 0);
}

/// A raw disk whose passthrough fd is `fd` (not necessarily the file it reads through),
/// recording what the file held when a flush came.
pub(super) struct ProbeDisk {
    raw: RawDisk,
    fd: File,
    pub(super) at_flush: Mutex<Vec<Vec<u8>>>,
}

impl ProbeDisk {
    pub(super) fn new(path: &Path, fd: File) -> Arc<Self> {
        Arc::new(ProbeDisk {
            raw: RawDisk::open(path, false).unwrap(),
            fd,
            at_flush: Mutex::default(),
        })
    }
}

impl DiskBackend for ProbeDisk {
    delegate_disk!(
        raw: size, read_at, write_at, read_vectored, write_vectored, discard, write_zeroes
    );
    fn format(&self) -> ImageFormat {
        ImageFormat::Raw
    }
    fn is_read_only(&self) -> bool {
        false
    }
    fn flush(&self) -> Result<(), DiskError> {
        let mut whole = vec![0u8; self.raw.size() as usize];
        self.raw.read_at(&mut whole, 0)?;
        self.at_flush.lock().unwrap().push(whole);
        self.raw.flush()
    }
    fn passthrough_fd(&self) -> Option<RawFd> {
        Some(self.fd.as_raw_fd())
    }
}

#[test]
fn a_write_through_a_failing_fd_gets_ioerr() {
    let dir = tempfile::tempdir().unwrap();
    let path = raw_image(&dir);
    // The ring writes through a read-only fd: the kernel answers EBADF.
    let disk = ProbeDisk::new(&path, File::open(&path).unwrap());
    let mut h = ring_harness(disk, 8, 4096);
    for i in 0..4u64 {
        h.submit(Op::Write, i * 4096, 4096).unwrap().unwrap();
        h.submit(Op::Read, i * 4096, 4096).unwrap().unwrap();
    }
    h.kick().unwrap();
    let done = wait_for(&mut h, 8);
    let ok = done
        .iter()
        .filter(|d| (d.status, d.len) == (OK, 4097))
        .count();
    let failed = done
        .iter()
        .filter(|d| (d.status, d.len) == (IOERR, 1))
        .count();
    assert_eq!((ok, failed), (4, 4), "{done:?}");
    assert_eq!(h.device().io_threads(), 0);
    assert_eq!(std::fs::read(&path).unwrap()[0], pattern(0));
}

/// The disk is the file rounded up to sectors, and QEMU reads whatever lies past a
/// file's end as zeroes: a file shrunk behind the device's back, and the last partial
/// sector of a file whose size is not whole sectors.
#[test]
fn reads_past_the_end_of_the_file_read_zeroes() {
    let dir = tempfile::tempdir().unwrap();
    let path = raw_image(&dir);
    let mut h = ring_harness(raw_disk(&path), 8, 8192);
    // One read ends half-way (a short read, then end of file), the others start past
    // the end.
    File::options()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(4096)
        .unwrap();
    let slots: Vec<usize> = (0..4u64)
        .map(|i| h.submit(Op::Read, i * 8192, 8192).unwrap().unwrap())
        .collect();
    h.kick().unwrap();
    let done = wait_for(&mut h, 4);
    assert!(
        done.iter().all(|d| (d.status, d.len) == (OK, 8193)),
        "{done:?}"
    );
    for (i, slot) in slots.into_iter().enumerate() {
        let mut got = vec![0xffu8; 8192];
        h.read_slot(slot, &mut got).unwrap();
        let expect: Vec<u8> = (0..8192u64)
            .map(|o| if i == 0 && o < 4096 { pattern(o) } else { 0 })
            .collect();
        assert!(got == expect, "read {i}");
    }
    assert_eq!(h.device().io_threads(), 0, "not through the ring");
    drop(h);

    // 1000 bytes: a disk of two sectors, the second partly past the end.
    std::fs::write(&path, (0..1000).map(pattern).collect::<Vec<u8>>()).unwrap();
    let disk = raw_disk(&path);
    assert_eq!(disk.size(), 1024);
    let mut h = ring_harness(disk, 8, 8192);
    let slot = h.submit(Op::Read, 512, 512).unwrap().unwrap();
    h.kick().unwrap();
    assert_eq!(wait_for(&mut h, 1)[0].status, OK);
    let mut got = vec![0xffu8; 512];
    h.read_slot(slot, &mut got).unwrap();
    let expect: Vec<u8> = (512..1024u64)
        .map(|o| if o < 1000 { pattern(o) } else { 0 })
        .collect();
    assert!(got == expect);
}

#[test]
fn requests_beyond_the_disk_get_ioerr_without_reaching_the_ring_or_the_threads() {
    let dir = tempfile::tempdir().unwrap();
    let path = raw_image(&dir);
    let mut h = ring_harness(raw_disk(&path), 4, 8192);
    // Together, so neither runs inline: one past the end, one straddling it, one valid.
    let beyond = h.submit(Op::Read, DISK_SIZE, 4096).unwrap().unwrap();
    let straddling = h
        .submit(Op::Write, DISK_SIZE - 4096, 8192)
        .unwrap()
        .unwrap();
    let valid = h.submit(Op::Read, 0, 4096).unwrap().unwrap();
    h.kick().unwrap();
    let done = wait_for(&mut h, 3);
    let status = |slot| {
        done.iter()
            .find(|d| d.slot == slot)
            .map(|d| (d.status, d.len))
    };
    assert_eq!(status(beyond), Some((IOERR, 1)), "{done:?}");
    assert_eq!(status(straddling), Some((IOERR, 1)), "{done:?}");
    assert_eq!(status(valid), Some((OK, 4097)), "{done:?}");
    assert_eq!(h.device().io_threads(), 0, "answered on an I/O thread");
}

#[test]
fn flush_after_ring_writes_waits_for_them() {
    let dir = tempfile::tempdir().unwrap();
    let path = raw_image(&dir);
    let fd = File::options().read(true).write(true).open(&path).unwrap();
    let disk = ProbeDisk::new(&path, fd);
    let mut h = ring_harness(disk.clone(), 24, 128 << 10);
    for round in 0..3u8 {
        for i in 0..16u64 {
            let slot = h
                .submit(Op::Write, i * (128 << 10), 128 << 10)
                .unwrap()
                .unwrap();
            h.write_slot(slot, &vec![round + 0x10 + i as u8; 128 << 10])
                .unwrap();
        }
        h.submit(Op::Flush, 0, 0).unwrap().unwrap();
        h.kick().unwrap();
        let done = wait_for(&mut h, 17);
        assert!(done.iter().all(|d| d.status == OK), "{done:?}");
        let seen = disk.at_flush.lock().unwrap().pop().unwrap();
        for i in 0..16usize {
            let at = i * (128 << 10);
            assert!(
                seen[at..at + (128 << 10)]
                    .iter()
                    .all(|b| *b == round + 0x10 + i as u8),
                "round {round}: the flush ran before write {i} completed"
            );
        }
    }
}

#[test]
fn reset_and_drop_with_ring_requests_in_flight() {
    let dir = tempfile::tempdir().unwrap();
    let path = raw_image(&dir);
    for reset in [true, false] {
        // The ring reads a pipe that has no data yet: the reads stay in flight.
        let (rx, tx) = super::extent_tests::pipe();
        let mut h = ring_harness(ProbeDisk::new(&path, rx), 8, 4096);
        for i in 0..8u64 {
            h.submit(Op::Read, i * 4096, 4096).unwrap().unwrap();
            h.write_slot(i as usize, &[0xee; 4096]).unwrap();
        }
        h.kick().unwrap();
        assert!(h.reap().unwrap().is_empty());
        assert_eq!(h.device().in_flight(), 8);
        if reset {
            assert!(h.device().reset());
            assert!(!h.device().uses_io_uring());
            assert_eq!(h.device().in_flight(), 0);
        } else {
            // Must cancel and wait for the reads, not hang (the pipe never gets data)
            // nor free guest memory under them.
            drop(h);
            continue;
        }
        // Data arriving now reaches no buffer, and nothing is returned.
        std::io::Write::write_all(&mut &tx, &[0x55; 8 * 4096]).unwrap();
        std::thread::sleep(Duration::from_millis(50));
        h.device().process_completions();
        for slot in 0..8 {
            let mut got = vec![0u8; 4096];
            h.read_slot(slot, &mut got).unwrap();
            assert!(
                got.iter().all(|b| *b == 0xee),
                "slot {slot} written after reset"
            );
        }
        assert!(
            h.reap().unwrap().is_empty(),
            "requests returned after reset"
        );
    }
}

#[test]
fn without_io_uring_the_device_falls_back_to_io_threads() {
    let dir = tempfile::tempdir().unwrap();
    let path = raw_image(&dir);
    let disk = raw_disk(&path);
    let denied = disk.clone();
    std::thread::spawn(move || {
        deny_io_uring_on_this_thread();
        let mut h = Harness::new(Block::new(denied, None).unwrap(), 8, 4096).unwrap();
        assert!(!h.device().uses_io_uring());
        for i in 0..8u64 {
            h.submit(Op::Read, i * 4096, 4096).unwrap().unwrap();
        }
        h.kick().unwrap();
        let done = wait_for(&mut h, 8);
        assert!(done.iter().all(|d| d.status == OK), "{done:?}");
        assert!(h.device().io_threads() >= 1, "not on the I/O threads");
    })
    .join()
    .unwrap();
    // Switched off by the VMM, and with no I/O threads (synchronous): no ring either.
    let mut dev = Block::new(disk.clone(), None).unwrap();
    dev.set_io_uring(false);
    let mut h = Harness::new(dev, 8, 4096).unwrap();
    assert!(!h.device().uses_io_uring());
    let mut h = Harness::new(Block::with_workers(disk, None, 0).unwrap(), 8, 4096).unwrap();
    assert!(!h.device().uses_io_uring());
}

#[test]
fn with_cache_unsafe_a_flush_succeeds_without_reaching_the_disk() {
    let dir = tempfile::tempdir().unwrap();
    let path = raw_image(&dir);
    let fd = File::options().read(true).write(true).open(&path).unwrap();
    let disk = ProbeDisk::new(&path, fd);
    let mut dev = Block::new(disk.clone(), None).unwrap();
    dev.set_cache(Cache::Unsafe);
    let mut h = Harness::new(dev, 4, 4096).unwrap();
    let slot = h.submit_write(0, &[0x5a; 4096]).unwrap().unwrap();
    h.submit(Op::Flush, 0, 0).unwrap().unwrap();
    h.kick().unwrap();
    let done = wait_for(&mut h, 2);
    assert!(done.iter().all(|d| d.status == OK), "{done:?}");
    assert!(done.iter().any(|d| d.slot == slot));
    assert!(
        disk.at_flush.lock().unwrap().is_empty(),
        "the flush reached the disk"
    );
    // The write itself did.
    assert_eq!(&std::fs::read(&path).unwrap()[..4096], &[0x5a; 4096]);
}

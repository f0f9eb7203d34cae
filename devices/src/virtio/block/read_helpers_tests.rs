//! Which reads the read helpers take from the ring, and that theirs come back right.
//!
//! The ring reads a pipe with no data (`ProbeDisk`), so its reads stay unfinished for
//! as long as a test needs; the helpers read the raw file itself.

use std::fs::File;
use std::time::Duration;

use super::extent_tests::pipe;
use super::harness::{Harness, Op, QueueDriver};
use super::read_helpers::{READ_HELPERS, RING_READS_ALONE};
use super::uring_tests::{raw_image, ProbeDisk};
use super::*;
use crate::block::delegate::delegate_disk;
use crate::block::raw::RawDisk;
use crate::block::{DiskError, ImageFormat};

const OK: u8 = VIRTIO_BLK_S_OK as u8;
const DEPTH: usize = 64;

/// A device whose ring reads never finish, with `depth` slots of `slot_bytes`.
fn stalled_ring(dir: &tempfile::TempDir, slot_bytes: usize) -> (Harness, File) {
    let (rx, tx) = pipe();
    let disk = ProbeDisk::new(&raw_image(dir), rx);
    let h = Harness::new(Block::new(disk, None).unwrap(), DEPTH, slot_bytes).unwrap();
    (h, tx)
}

/// Submit `n` reads of `len` bytes, the i-th at byte `i * len`, then kick; returns
/// each read's slot and offset.
fn read_batch(h: &mut Harness, n: usize, len: usize) -> Vec<(usize, u64)> {
    let reads: Vec<_> = (0..n as u64)
        .map(|i| {
            let offset = i * len as u64;
            (h.submit(Op::Read, offset, len).unwrap().unwrap(), offset)
        })
        .collect();
    h.kick().unwrap();
    reads
}

#[test]
fn a_deep_batch_of_unfinished_reads_is_shared_and_the_helpers_read_the_right_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let (mut h, _tx) = stalled_ring(&dir, 4096);
    let reads = read_batch(&mut h, DEPTH, 4096);
    // The ring took the first 16; the helpers the next 24, two per thread; the ring
    // the rest.
    let shared = 2 * READ_HELPERS;
    assert_eq!(h.device().reads_shared(), shared as u64);
    let mut done = Vec::new();
    while done.len() < shared {
        done.extend(h.wait(Duration::from_secs(10)).unwrap());
    }
    assert_eq!(done.len(), shared, "a ring read finished");
    assert!(h.device().io_threads() <= READ_HELPERS);
    let by_slot: std::collections::HashMap<_, _> = reads.into_iter().collect();
    let image = std::fs::read(dir.path().join("disk.raw")).unwrap();
    let mut positions = Vec::new();
    for d in done {
        assert_eq!((d.status, d.len), (OK, 4097), "{d:?}");
        let at = by_slot[&d.slot] as usize;
        let mut got = vec![0u8; 4096];
        h.read_slot(d.slot, &mut got).unwrap();
        assert!(got == image[at..at + 4096], "helper read at {at}");
        positions.push(at / 4096);
    }
    positions.sort_unstable();
    let expected: Vec<_> = (RING_READS_ALONE..RING_READS_ALONE + shared).collect();
    assert_eq!(
        positions, expected,
        "the helpers took other reads of the batch"
    );
    // Their reads finished, so the helpers take as many of the next batch.
    read_batch(&mut h, shared, 4096);
    assert_eq!(h.device().reads_shared(), 2 * shared as u64);
}

#[test]
fn shallow_batches_and_large_reads_stay_on_the_ring() {
    let dir = tempfile::tempdir().unwrap();
    // 39 reads: the ring's 16 and a full backlog for the helpers would need 40.
    let (mut h, _tx) = stalled_ring(&dir, 4096);
    read_batch(&mut h, RING_READS_ALONE + 2 * READ_HELPERS - 1, 4096);
    assert_eq!(h.device().reads_shared(), 0);
    assert_eq!(h.device().in_flight(), 39);
    // One more read makes the ring's unfinished reads and the batch deep enough.
    read_batch(&mut h, 1, 4096);
    assert_eq!(h.device().reads_shared(), 1);
    drop(h);

    // Reads above 16 KiB cost the disk more than their submission: in a deep batch
    // of small ones, the large reads stay on the ring.
    let (mut h, _tx) = stalled_ring(&dir, 64 << 10);
    let sizes = [4096; RING_READS_ALONE]
        .into_iter()
        .chain([64 << 10; 8])
        .chain([4096; 2 * READ_HELPERS]);
    for (i, len) in sizes.enumerate() {
        h.submit(Op::Read, i as u64 * (64 << 10), len)
            .unwrap()
            .unwrap();
    }
    h.kick().unwrap();
    let mut done = Vec::new();
    while done.len() < 2 * READ_HELPERS {
        done.extend(h.wait(Duration::from_secs(10)).unwrap());
    }
    assert!(done.iter().all(|d| d.len == 4097), "{done:?}");
    assert_eq!(h.device().reads_shared(), 2 * READ_HELPERS as u64);
}

#[test]
fn reads_the_page_cache_answers_are_never_shared() {
    let dir = tempfile::tempdir().unwrap();
    let path = raw_image(&dir); // just written: in the page cache
    let disk = std::sync::Arc::new(RawDisk::open(&path, false).unwrap());
    let mut h = Harness::new(Block::new(disk, None).unwrap(), DEPTH, 4096).unwrap();
    assert!(h.device().uses_io_uring());
    for _ in 0..4 {
        read_batch(&mut h, DEPTH, 4096);
        let mut done = 0;
        while done < DEPTH {
            done += h.wait(Duration::from_secs(10)).unwrap().len();
        }
    }
    // Each read finished during its own submission, so the ring never held 16.
    assert_eq!(h.device().reads_shared(), 0);
}

/// A raw disk whose ring reads never finish (a pipe) and whose other reads, the
/// helpers', take `READ_DELAY` each.
struct SlowHelperReads {
    raw: RawDisk,
    pipe: File,
}

const READ_DELAY: Duration = Duration::from_millis(100);

impl DiskBackend for SlowHelperReads {
    delegate_disk!(raw: size, read_at, write_at, write_vectored, flush, discard, write_zeroes);
    fn read_vectored(
        &self,
        bufs: &[vm_memory::VolatileSlice<'_>],
        offset: u64,
    ) -> Result<(), DiskError> {
        std::thread::sleep(READ_DELAY);
        self.raw.read_vectored(bufs, offset)
    }
    fn format(&self) -> ImageFormat {
        ImageFormat::Raw
    }
    fn is_read_only(&self) -> bool {
        false
    }
    fn passthrough_fd(&self) -> Option<std::os::unix::io::RawFd> {
        Some(std::os::unix::io::AsRawFd::as_raw_fd(&self.pipe))
    }
}

#[test]
fn reset_waits_for_the_helpers_and_drops_their_backlog() {
    let dir = tempfile::tempdir().unwrap();
    let (rx, _tx) = pipe();
    let disk = std::sync::Arc::new(SlowHelperReads {
        raw: RawDisk::open(&raw_image(&dir), false).unwrap(),
        pipe: rx,
    });
    let mut h = Harness::new(Block::new(disk, None).unwrap(), DEPTH, 4096).unwrap();
    for slot in 0..DEPTH {
        h.write_slot(slot, &[0xee; 4096]).unwrap();
    }
    read_batch(&mut h, DEPTH, 4096);
    assert_eq!(h.device().reads_shared(), 2 * READ_HELPERS as u64);
    assert!(h.device().reset());
    let snapshot: Vec<Vec<u8>> = (0..DEPTH)
        .map(|slot| {
            let mut got = vec![0u8; 4096];
            h.read_slot(slot, &mut got).unwrap();
            got
        })
        .collect();
    // The running reads finished before the reset returned; the queued ones never
    // run, and nothing reaches guest memory afterwards.
    let untouched = snapshot
        .iter()
        .filter(|b| b.iter().all(|x| *x == 0xee))
        .count();
    assert!(
        untouched >= DEPTH - READ_HELPERS,
        "{untouched} buffers untouched"
    );
    std::thread::sleep(3 * READ_DELAY);
    for (slot, before) in snapshot.iter().enumerate() {
        let mut now = vec![0u8; 4096];
        h.read_slot(slot, &mut now).unwrap();
        assert!(&now == before, "slot {slot} written after the reset");
    }
    assert!(
        h.reap().unwrap().is_empty(),
        "requests returned after reset"
    );
}

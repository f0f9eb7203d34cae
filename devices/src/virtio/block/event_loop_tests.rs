//! The device on its own event-loop thread (`event_manager`, as `kiln run` runs it)
//! with a driver on another thread, as a vCPU: kicks and interrupts cross threads
//! through EventFds, so a lost notification (a driver that misses the device's
//! re-enabled notifications, or a device that misses the driver's new requests)
//! stalls the queue and fails the test by timeout.

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use virtio_bindings::bindings::virtio_ring::VIRTIO_RING_F_EVENT_IDX;

use super::harness::{EventLoopHarness, Op, QueueDriver};
use super::*;
use crate::block::create::{create_image, CreateOptions};
use crate::block::{open_disk, DiskConfig, ImageFormat};
use crate::virtio::VirtioDevice;

const BLOCK: u64 = 4096;
const BLOCKS: u64 = 1024;
const DEPTH: usize = 16;
/// Far longer than any request here takes: reaching it means a lost notification.
const STALL: Duration = Duration::from_secs(20);
/// Stands for a flush among the block numbers in flight.
const FLUSH: u64 = u64::MAX;

/// What block `n` holds after the write phase: every byte names the block.
fn content(n: u64) -> Vec<u8> {
    (0..BLOCK).map(|i| (n * 31 + i / 512) as u8).collect()
}

fn open(path: &Path, format: ImageFormat) -> Arc<dyn DiskBackend> {
    create_image(path, &CreateOptions::new(format, Some(BLOCK * BLOCKS))).unwrap();
    open_disk(&DiskConfig {
        format: Some(format),
        ..DiskConfig::new(path.to_owned())
    })
    .unwrap()
}

/// Write every block, then read every block back in a scattered order, `DEPTH`
/// requests in flight; refills are kicked one request at a time, as independent
/// guest threads would, so kicks race the device's notification suppression.
fn write_then_read_back(format: ImageFormat, event_idx: bool) {
    let dir = tempfile::tempdir().unwrap();
    let disk = open(&dir.path().join("disk"), format);
    let dev = Block::new(disk.clone(), None).unwrap();
    let mut features = dev.device_features();
    if !event_idx {
        features &= !(1 << VIRTIO_RING_F_EVENT_IDX);
    }
    let mut h = EventLoopHarness::new(dev, DEPTH, BLOCK as usize, features).unwrap();
    let mut kicks = 0u64;
    for (op, order) in [
        (Op::Write, (0..BLOCKS).collect::<Vec<_>>()),
        (Op::Read, (0..BLOCKS).map(|i| (i * 7919) % BLOCKS).collect()),
    ] {
        let mut in_flight: HashMap<usize, u64> = HashMap::new();
        let mut next = order.iter().peekable();
        while next.peek().is_some() || !in_flight.is_empty() {
            while h.free_slots() > 0 {
                let Some(&n) = next.next() else { break };
                let slot = match op {
                    Op::Write => h.submit_write(n * BLOCK, &content(n)),
                    _ => h.submit(op, n * BLOCK, BLOCK as usize),
                };
                in_flight.insert(slot.unwrap().unwrap(), n);
                // A flush after every 8th write, to wait for the writes before it.
                if op == Op::Write && n % 8 == 7 && h.free_slots() > 0 {
                    in_flight.insert(h.submit(Op::Flush, 0, 0).unwrap().unwrap(), FLUSH);
                }
                kicks += u64::from(h.kick().unwrap());
            }
            for d in h
                .wait(STALL)
                .unwrap_or_else(|e| panic!("{op:?} phase: {e}"))
            {
                assert_eq!(d.status, VIRTIO_BLK_S_OK as u8, "{op:?} failed");
                let n = in_flight.remove(&d.slot).expect("unknown slot returned");
                if n == FLUSH {
                    continue;
                }
                if op == Op::Read {
                    let mut got = vec![0u8; BLOCK as usize];
                    h.read_slot(d.slot, &mut got).unwrap();
                    assert!(got == content(n), "block {n} read back wrong");
                }
            }
        }
    }
    h.close().unwrap();
    assert!(kicks > 0, "the driver never kicked");
    // After close the device and its threads are gone; the disk holds what was written.
    let mut got = vec![0u8; BLOCK as usize];
    for n in [0, 1, BLOCKS / 2, BLOCKS - 1] {
        disk.read_at(&mut got, n * BLOCK).unwrap();
        assert!(got == content(n), "block {n} on disk wrong");
    }
}

#[test]
fn raw_through_the_ring_with_event_idx() {
    write_then_read_back(ImageFormat::Raw, true);
}

#[test]
fn raw_through_the_ring_with_ring_flags() {
    write_then_read_back(ImageFormat::Raw, false);
}

#[test]
fn qcow2_through_the_pool_with_event_idx() {
    write_then_read_back(ImageFormat::Qcow2, true);
}

#[test]
fn qcow2_through_the_pool_with_ring_flags() {
    write_then_read_back(ImageFormat::Qcow2, false);
}

/// A small xorshift generator: the same sequence on every run.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

/// Writes, discards of whole clusters and reads, at random over a small qcow2 image so
/// freed clusters get reused, with up to `DEPTH` in flight (never two on the same
/// bytes): every read must match a copy kept in memory. Reads of data clusters go
/// around imago, so a read that used a mapping a discard had freed would show here.
#[test]
fn qcow2_random_writes_discards_and_reads_match_a_copy() {
    const CLUSTER: u64 = 64 << 10;
    const SIZE: u64 = 24 * CLUSTER;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("disk.qcow2");
    create_image(
        &path,
        &CreateOptions {
            cluster_size: Some(CLUSTER),
            ..CreateOptions::new(ImageFormat::Qcow2, Some(SIZE))
        },
    )
    .unwrap();
    let disk = open_disk(&DiskConfig {
        format: Some(ImageFormat::Qcow2),
        ..DiskConfig::new(path.clone())
    })
    .unwrap();
    let dev = Block::new(disk, None).unwrap();
    let features = dev.device_features();
    let mut h = EventLoopHarness::new(dev, DEPTH, CLUSTER as usize, features).unwrap();
    let mut copy = vec![0u8; SIZE as usize];
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    // slot -> (op, offset, len)
    let mut in_flight: HashMap<usize, (Op, u64, u64)> = HashMap::new();
    let mut ops = 0;
    while ops < 3000 || !in_flight.is_empty() {
        let next = (ops < 3000).then(|| {
            let kind = rng.below(20);
            let (op, offset, len) = if kind < 3 {
                let clusters = 1 + rng.below(2);
                (
                    Op::Discard,
                    rng.below(SIZE / CLUSTER - 1) * CLUSTER,
                    clusters * CLUSTER,
                )
            } else {
                let len = 4096 * (1 + rng.below(16));
                let offset = rng.below((SIZE - len) / 4096) * 4096;
                (if kind < 11 { Op::Write } else { Op::Read }, offset, len)
            };
            (op, offset, len.min(SIZE - offset))
        });
        let overlaps = |&(_, o, l): &(Op, u64, u64)| {
            in_flight
                .values()
                .any(|&(_, fo, fl)| o < fo + fl && fo < o + l)
        };
        match next {
            Some(req) if h.free_slots() > 0 && !overlaps(&req) => {
                let (op, offset, len) = req;
                let slot = if op == Op::Write {
                    let data: Vec<u8> = (0..len).map(|_| rng.below(256) as u8).collect();
                    copy[offset as usize..(offset + len) as usize].copy_from_slice(&data);
                    h.submit_write(offset, &data)
                } else {
                    h.submit(op, offset, len as usize)
                };
                if op == Op::Discard {
                    copy[offset as usize..(offset + len) as usize].fill(0);
                }
                in_flight.insert(slot.unwrap().unwrap(), req);
                h.kick().unwrap();
                ops += 1;
            }
            _ => {
                for d in h.wait(STALL).unwrap() {
                    let (op, offset, len) = in_flight.remove(&d.slot).unwrap();
                    assert_eq!(d.status, VIRTIO_BLK_S_OK as u8, "{op:?} at {offset}");
                    if op == Op::Read {
                        let mut got = vec![0u8; len as usize];
                        h.read_slot(d.slot, &mut got).unwrap();
                        let want = &copy[offset as usize..(offset + len) as usize];
                        assert!(
                            got == want,
                            "read of {len} at {offset} after {ops} requests"
                        );
                    }
                }
            }
        }
    }
    h.close().unwrap();
    let disk = open_disk(&DiskConfig {
        format: Some(ImageFormat::Qcow2),
        readonly: true,
        ..DiskConfig::new(path)
    })
    .unwrap();
    let mut whole = vec![0u8; SIZE as usize];
    disk.read_at(&mut whole, 0).unwrap();
    assert!(whole == copy, "the image differs from the copy after close");
}

//! VIRTIO_RING_F_EVENT_IDX (virtio 1.2 §2.7.10): the driver's used_event decides when
//! the device interrupts, and the device's avail_event when the driver kicks.
//!
//! Driven through the harness: virtio-queue's MockSplitQueue places its used ring
//! `queue size` bytes after the avail ring, on top of used_event.

use virtio_bindings::bindings::virtio_ring::VIRTIO_RING_F_EVENT_IDX;

use super::harness::{Harness, Op, QueueDriver};
use super::parallel_tests::{slow_disk, OK};
use super::*;
use crate::virtio::VirtioDevice;

/// A harness of depth 4 over a device with EVENT_IDX negotiated (or not), every
/// request run inline so each kick completes its requests.
fn harness(event_idx: bool) -> (tempfile::TempDir, Harness) {
    let dir = tempfile::tempdir().unwrap();
    let dev = Block::with_workers(slow_disk(&dir, 0), None, 0).unwrap();
    let offered = dev.device_features();
    assert_ne!(
        offered & (1 << VIRTIO_RING_F_EVENT_IDX),
        0,
        "EVENT_IDX not offered"
    );
    let wanted = if event_idx {
        offered
    } else {
        offered & !(1 << VIRTIO_RING_F_EVENT_IDX)
    };
    (dir, Harness::with_features(dev, 4, 4096, wanted).unwrap())
}

fn read(h: &mut Harness, n: u64) {
    h.submit(Op::Read, n * 4096, 4096).unwrap().unwrap();
    h.kick().unwrap();
    let done = h.reap().unwrap();
    assert_eq!(done.len(), 1);
    assert_eq!(done[0].status, OK);
}

#[test]
fn used_event_decides_when_the_device_interrupts() {
    let (_dir, mut h) = harness(true);
    // "Interrupt me once the used index passes 1": not after the first request, after
    // the second, and not again after the third.
    h.set_used_event(1).unwrap();
    let mut interrupts = Vec::new();
    for n in 0..3 {
        read(&mut h, n);
        interrupts.push(h.interrupts());
    }
    assert_eq!(interrupts, [0, 1, 1]);
    h.set_used_event(3).unwrap();
    read(&mut h, 3);
    assert_eq!(h.interrupts(), 2);
}

#[test]
fn without_event_idx_every_completion_interrupts() {
    let (_dir, mut h) = harness(false);
    h.set_used_event(1).unwrap();
    for n in 0..3 {
        read(&mut h, n);
    }
    assert_eq!(h.interrupts(), 3);
    assert_eq!(
        h.avail_event().unwrap(),
        0,
        "avail_event written without EVENT_IDX"
    );
}

#[test]
fn the_device_asks_for_a_kick_at_the_next_request() {
    let (_dir, mut h) = harness(true);
    for n in 0..3 {
        h.submit(Op::Read, n * 4096, 4096).unwrap().unwrap();
    }
    h.kick().unwrap();
    assert_eq!(h.reap().unwrap().len(), 3);
    // Three popped: the driver must kick when it makes the fourth available.
    assert_eq!(h.avail_event().unwrap(), 3);
    read(&mut h, 3);
    assert_eq!(h.avail_event().unwrap(), 4);
}

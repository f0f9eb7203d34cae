//! The cache mode (virtio 1.2 §5.2.5, §5.2.6): VIRTIO_BLK_F_CONFIG_WCE lets the driver
//! switch between a writeback cache (data durable at FLUSH) and writethrough (each
//! write flushed before it completes) through the `writeback` config field; a driver
//! without FLUSH gets writethrough.

use std::time::Duration;

use virtio_bindings::bindings::virtio_ring::VIRTIO_RING_F_EVENT_IDX;

use super::harness::{polling_driver_features, Harness, Op, QueueDriver};
use super::parallel_tests::{slow_disk, SlowDisk, OK};
use super::uring_tests::{raw_image, ProbeDisk};
use super::*;
use crate::virtio::VirtioDevice;

const WAIT: Duration = Duration::from_secs(20);

fn writeback_field(dev: &Block) -> u8 {
    let mut b = [0xffu8];
    dev.read_config(CONFIG_WRITEBACK as u64, &mut b);
    b[0]
}

/// Run one request through `h` (4 KiB unless it writes `data`) and check it succeeded.
pub(super) fn run_ok(h: &mut Harness, op: Op, offset: u64, data: Option<&[u8]>) {
    match data {
        Some(d) => h.submit_write(offset, d),
        None => h.submit(op, offset, 4096),
    }
    .unwrap()
    .unwrap();
    h.kick().unwrap();
    let mut done = Vec::new();
    while done.is_empty() {
        done = h.wait(WAIT).unwrap();
    }
    assert_eq!(done.len(), 1);
    assert_eq!(done[0].status, OK, "{op:?} at {offset}");
}

fn flushes(disk: &SlowDisk) -> usize {
    let log = disk.state.lock().unwrap();
    log.events.iter().filter(|e| *e == "flush").count()
}

#[test]
fn config_wce_is_offered_on_writable_disks_and_starts_writeback() {
    let dir = tempfile::tempdir().unwrap();
    let mut dev = Block::new(slow_disk(&dir, 0), None).unwrap();
    assert_ne!(dev.device_features() & bit(VIRTIO_BLK_F_CONFIG_WCE), 0);
    dev.ack_features(polling_driver_features(&dev));
    assert_eq!(writeback_field(&dev), 1);
    assert!(!dev.writethrough());

    // A driver that takes CONFIG_WCE but not FLUSH starts writethrough (§5.2.5.2).
    dev.ack_features(bit(VIRTIO_BLK_F_CONFIG_WCE) | crate::virtio::VIRTIO_F_VERSION_1);
    assert_eq!(writeback_field(&dev), 0);
    assert!(dev.writethrough());

    let ro_dir = tempfile::tempdir().unwrap();
    let ro_path = raw_image(&ro_dir);
    let ro = crate::block::raw::RawDisk::open(&ro_path, true).unwrap();
    let ro = Block::new(Arc::new(ro), None).unwrap();
    assert_eq!(ro.device_features() & bit(VIRTIO_BLK_F_CONFIG_WCE), 0);
}

#[test]
fn writethrough_flushes_every_write_before_it_completes() {
    let dir = tempfile::tempdir().unwrap();
    let disk = slow_disk(&dir, 0);
    // Every request through the pool, none inline: the path of qcow2 writes.
    let mut dev = Block::with_workers(disk.clone(), None, 2).unwrap();
    dev.set_inline_lone_requests(false);
    let mut h = Harness::new(dev, 4, 4096).unwrap();

    run_ok(&mut h, Op::Write, 0, Some(&[1u8; 4096]));
    assert_eq!(flushes(&disk), 0, "a writeback cache flushes only on FLUSH");

    h.device().write_config(CONFIG_WRITEBACK as u64, &[0]);
    assert_eq!(writeback_field(h.device()), 0);
    assert!(h.device().writethrough());
    run_ok(&mut h, Op::Write, 4096, Some(&[2u8; 4096]));
    run_ok(&mut h, Op::Discard, 8192, None);
    run_ok(&mut h, Op::Read, 0, None);
    assert_eq!(flushes(&disk), 2, "each write, and only writes, flushed");
    {
        let log = disk.state.lock().unwrap();
        let end = log.events.iter().position(|e| e == "end write 4096");
        let flush = log.events.iter().position(|e| e == "flush");
        assert!(
            end < flush,
            "flushed before the write ended: {:?}",
            log.events
        );
    }

    h.device().write_config(CONFIG_WRITEBACK as u64, &[1]);
    run_ok(&mut h, Op::Write, 0, Some(&[3u8; 4096]));
    assert_eq!(flushes(&disk), 2, "back to writeback");
}

#[test]
fn a_writethrough_write_on_a_raw_image_is_durable_when_it_completes() {
    let dir = tempfile::tempdir().unwrap();
    let path = raw_image(&dir);
    let disk = ProbeDisk::new(
        &path,
        std::fs::File::options().write(true).open(&path).unwrap(),
    );
    let mut dev = Block::new(disk.clone(), None).unwrap();
    // Not inline on the event loop: to the ring, where raw writes go at depth.
    dev.set_inline_lone_requests(false);
    let mut h = Harness::new(dev, 4, 4096).unwrap();
    assert!(h.device().uses_io_uring());
    h.device().write_config(CONFIG_WRITEBACK as u64, &[0]);
    run_ok(&mut h, Op::Write, 8192, Some(&[0x5a; 4096]));
    let at_flush = disk.at_flush.lock().unwrap();
    assert_eq!(at_flush.len(), 1, "one flush for the one write");
    assert!(at_flush[0][8192..12288].iter().all(|&b| b == 0x5a));
}

#[test]
fn a_driver_without_flush_gets_writethrough_unless_cache_is_unsafe() {
    for (cache, want_flushes) in [(Cache::Writeback, 1), (Cache::Unsafe, 0)] {
        let dir = tempfile::tempdir().unwrap();
        let disk = slow_disk(&dir, 0);
        let mut dev = Block::with_workers(disk.clone(), None, 2).unwrap();
        dev.set_cache(cache);
        let features = dev.device_features()
            & !(bit(VIRTIO_BLK_F_FLUSH)
                | bit(VIRTIO_BLK_F_CONFIG_WCE)
                | bit(VIRTIO_RING_F_EVENT_IDX));
        let mut h = Harness::with_features(dev, 4, 4096, features).unwrap();
        assert!(h.device().writethrough());
        run_ok(&mut h, Op::Write, 0, Some(&[7u8; 4096]));
        assert_eq!(flushes(&disk), want_flushes, "{cache:?}");
    }
}

#[test]
fn the_writeback_field_is_read_only_without_config_wce_and_renegotiation_resets_it() {
    let dir = tempfile::tempdir().unwrap();
    let mut dev = Block::new(slow_disk(&dir, 0), None).unwrap();
    dev.ack_features(polling_driver_features(&dev) & !bit(VIRTIO_BLK_F_CONFIG_WCE));
    dev.write_config(CONFIG_WRITEBACK as u64, &[0]);
    assert_eq!(writeback_field(&dev), 1);
    assert!(!dev.writethrough());
    // Only the one byte is writable: a wider write, or one elsewhere, changes nothing.
    dev.ack_features(polling_driver_features(&dev));
    dev.write_config(CONFIG_WRITEBACK as u64, &[0, 0]);
    dev.write_config(0, &[0]);
    assert_eq!(writeback_field(&dev), 1);
    let mut capacity = [0u8; 8];
    dev.read_config(0, &mut capacity);
    assert_eq!(u64::from_le_bytes(capacity), dev.capacity());

    dev.write_config(CONFIG_WRITEBACK as u64, &[0]);
    assert!(dev.writethrough());
    dev.reset();
    dev.ack_features(polling_driver_features(&dev));
    assert_eq!(writeback_field(&dev), 1);
    assert!(!dev.writethrough());
}

#[test]
fn cache_writethrough_starts_with_the_cache_off_until_the_driver_turns_it_on() {
    for cache in [Cache::Writethrough, Cache::Directsync] {
        let dir = tempfile::tempdir().unwrap();
        let disk = slow_disk(&dir, 0);
        let mut dev = Block::with_workers(disk.clone(), None, 2).unwrap();
        dev.set_cache(cache);
        let mut h = Harness::new(dev, 4, 4096).unwrap();
        assert_eq!(writeback_field(h.device()), 0, "{cache:?}");
        assert!(h.device().writethrough());
        run_ok(&mut h, Op::Write, 0, Some(&[1u8; 4096]));
        assert_eq!(flushes(&disk), 1, "{cache:?}: the write was not flushed");
        h.device().write_config(CONFIG_WRITEBACK as u64, &[1]);
        run_ok(&mut h, Op::Write, 4096, Some(&[2u8; 4096]));
        assert_eq!(flushes(&disk), 1, "{cache:?}: still writethrough");

        // A driver with FLUSH but without CONFIG_WCE cannot turn it on.
        let other = tempfile::tempdir().unwrap();
        let mut dev = Block::new(slow_disk(&other, 0), None).unwrap();
        dev.set_cache(cache);
        dev.ack_features(polling_driver_features(&dev) & !bit(VIRTIO_BLK_F_CONFIG_WCE));
        assert!(dev.writethrough(), "{cache:?}");
    }
}

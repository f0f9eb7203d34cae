//! Several request queues (VIRTIO_BLK_F_MQ): offered on request, each served on its
//! own, and a driver that sets up only the first of them.

use virtio_bindings::bindings::virtio_blk::*;
use virtio_queue::mock::MockSplitQueue;
use virtio_queue::Queue;
use vm_memory::{Bytes, GuestAddress};

use std::sync::atomic::Ordering;

use super::extent_tests::PipeExtentDisk;
use super::harness::polling_driver_features;
use super::parallel_tests::{data_buf, request, slow_disk, status_of, OK};
use super::*;
use crate::block::create::{create_image, CreateOptions};
use crate::block::{open_disk, DiskConfig, ImageFormat};
use crate::virtio::test_utils::*;
use crate::GuestMemory;

/// Where queue `q`'s rings go (below the test buffers at DATA).
fn ring_at(q: u64) -> GuestAddress {
    GuestAddress(q * 0x1_0000)
}

fn num_queues(dev: &Block) -> u16 {
    let mut b = [0u8; 2];
    dev.read_config(CONFIG_NUM_QUEUES as u64, &mut b);
    u16::from_le_bytes(b)
}

#[test]
fn mq_is_offered_with_more_than_one_queue() {
    let dir = tempfile::tempdir().unwrap();
    let mut dev = Block::new(slow_disk(&dir, 0), None).unwrap();
    assert_eq!(dev.device_features() & bit(VIRTIO_BLK_F_MQ), 0);
    assert_eq!(dev.queue_max_sizes(), [QUEUE_SIZE]);
    dev.set_num_queues(4).unwrap();
    assert_ne!(dev.device_features() & bit(VIRTIO_BLK_F_MQ), 0);
    assert_eq!(num_queues(&dev), 4);
    assert_eq!(dev.queue_max_sizes(), [QUEUE_SIZE; 4]);
    dev.set_num_queues(1).unwrap();
    assert_eq!(dev.device_features() & bit(VIRTIO_BLK_F_MQ), 0);
    assert_eq!(dev.queue_max_sizes().len(), 1);
    for bad in [0, MAX_QUEUES + 1] {
        let err = dev
            .set_num_queues(bad)
            .expect_err("bad queue count accepted");
        assert_eq!(err.kind(), std::io::ErrorKind::InvalidInput);
        assert!(err.to_string().contains(&format!("{bad} queues")), "{err}");
        assert!(err.to_string().contains("1..=64"), "{err}");
    }
    // A refused count leaves the offer as it was.
    assert_eq!(dev.queue_max_sizes().len(), 1);
}

#[test]
fn each_queue_serves_its_own_requests() {
    let dir = tempfile::tempdir().unwrap();
    let disk = slow_disk(&dir, 20);
    let mem = test_mem();
    let mut dev = Block::with_workers(disk, None, 4).unwrap();
    dev.set_num_queues(2).unwrap();
    dev.ack_features(polling_driver_features(&dev));
    // Queue 0 writes two sectors; queue 1 reads two others, at the same time.
    for i in 0..2u16 {
        mem.write_slice(&[0x40 + i as u8; 4096], GuestAddress(data_buf(i)))
            .unwrap();
    }
    let vqs: Vec<_> = (0..2)
        .map(|q| MockSplitQueue::create(&mem, ring_at(q), 16))
        .collect();
    let q0 = [
        request(&mem, 0, VIRTIO_BLK_T_OUT, 8, true),
        request(&mem, 1, VIRTIO_BLK_T_OUT, 16, true),
    ];
    let q1 = [
        request(&mem, 2, VIRTIO_BLK_T_IN, 64, true),
        request(&mem, 3, VIRTIO_BLK_T_IN, 72, true),
    ];
    for (vq, reqs) in vqs.iter().zip([&q0, &q1]) {
        let mut descs = chain(0, &reqs[0]);
        descs.extend(chain(descs.len() as u16, &reqs[1]));
        vq.add_desc_chains(&descs, 0).unwrap();
    }
    let irq = activate(&mut dev, &mem, &[&vqs[0], &vqs[1]]);
    dev.process_queue_index(1);
    dev.process_queue_index(0);
    super::tests::settle(&mut dev);
    for (q, vq) in vqs.iter().enumerate() {
        assert_eq!(used_idx(vq), 2, "queue {q} returned its two requests");
    }
    for i in 0..5 {
        assert_eq!(status_of(&mem, i), OK, "request {i}");
    }
    // The reads saw the disk's pattern (byte i of the disk is i % 251).
    let mut got = [0u8; 4096];
    mem.read_slice(&mut got, GuestAddress(data_buf(2))).unwrap();
    assert!(got
        .iter()
        .zip(64 * 512u64..)
        .all(|(b, at)| u64::from(*b) == at % 251));
    assert!(irq.used_count() >= 1);
}

#[test]
fn a_driver_may_set_up_only_the_first_queues() {
    let dir = tempfile::tempdir().unwrap();
    let mem = test_mem();
    let mut dev = Block::with_workers(slow_disk(&dir, 0), None, 2).unwrap();
    dev.set_num_queues(4).unwrap();
    dev.ack_features(polling_driver_features(&dev));
    let vq = MockSplitQueue::create(&mem, ring_at(0), 16);
    vq.add_desc_chains(&chain(0, &request(&mem, 0, VIRTIO_BLK_T_IN, 0, true)), 0)
        .unwrap();
    let mut queues = vec![vq.create_queue::<Queue>().unwrap()];
    queues.extend((1..4).map(|_| Queue::new(QUEUE_SIZE).unwrap()));
    activate_queues(&mut dev, &mem, queues);
    for q in 0..4 {
        dev.process_queue_index(q);
    }
    super::tests::settle(&mut dev);
    assert_eq!(used_idx(&vq), 1);
    assert_eq!(status_of(&mem, 0), OK);

    // A gap (queue 0 not ready, queue 1 ready) is not something a driver does.
    dev.reset();
    dev.ack_features(polling_driver_features(&dev));
    let vq1 = MockSplitQueue::create(&mem, ring_at(1), 16);
    let mut queues = vec![Queue::new(QUEUE_SIZE).unwrap()];
    queues.push(vq1.create_queue::<Queue>().unwrap());
    queues.extend((2..4).map(|_| Queue::new(QUEUE_SIZE).unwrap()));
    let got = dev.activate(ActivateContext {
        mem: mem.clone(),
        queues,
        queue_events: Vec::new(),
        interrupt: std::sync::Arc::new(CountingInterrupt::default()),
    });
    assert!(
        matches!(got, Err(ActivateError::InvalidQueue(0))),
        "{got:?}"
    );
}

#[test]
fn qcow2_and_raw_reads_take_the_ring_with_several_queues() {
    // The queues share one fence (see the next test), so a qcow2 image's data
    // clusters are read around the format on every queue, as a raw image's are.
    let dir = tempfile::tempdir().unwrap();
    let qcow2 = dir.path().join("d.qcow2");
    create_image(
        &qcow2,
        &CreateOptions::new(ImageFormat::Qcow2, Some(1 << 20)),
    )
    .unwrap();
    let raw = slow_disk(&dir, 0);
    let mem = test_mem();
    for (image, queues, ring) in [
        (Some(&qcow2), 1, true),
        (Some(&qcow2), 2, true),
        (None, 2, true),
    ] {
        // One open at a time: the image is locked while open.
        let disk = match image {
            Some(path) => open_disk(&DiskConfig::new(path)).unwrap(),
            None => raw.inner.clone(),
        };
        let mut dev = Block::new(disk, None).unwrap();
        dev.set_num_queues(queues).unwrap();
        dev.ack_features(polling_driver_features(&dev));
        let vqs: Vec<_> = (0..u64::from(queues))
            .map(|q| MockSplitQueue::create(&mem, ring_at(q), 16))
            .collect();
        let refs: Vec<_> = vqs.iter().collect();
        activate(&mut dev, &mem, &refs);
        assert_eq!(dev.uses_io_uring(), ring, "{queues} queues");
        dev.reset();
    }
}

/// Discard request `i` of `sectors` sectors at `sector`: header, one 16-byte range, status.
fn discard_request(mem: &GuestMemory, i: u16, sector: u64, sectors: u32) -> Vec<Buf> {
    let mut bufs = request(mem, i, VIRTIO_BLK_T_DISCARD, sector, false);
    let mut range = [0u8; 16];
    range[0..8].copy_from_slice(&sector.to_le_bytes());
    range[8..12].copy_from_slice(&sectors.to_le_bytes());
    mem.write_slice(&range, GuestAddress(data_buf(i))).unwrap();
    bufs.insert(1, (data_buf(i), 16, false));
    bufs
}

/// Process completions until queue `vq` returned `n` requests (or 10 s passed).
fn wait_used(dev: &mut Block, vq: &MockSplitQueue<GuestMemory>, n: u16) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while used_idx(vq) < n {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        assert!(
            !left.is_zero(),
            "the queue returned {} of {n}",
            used_idx(vq)
        );
        if super::harness::wait_readable(dev.completion_event(), left).unwrap() {
            dev.process_completions();
        }
    }
}

#[test]
fn a_discard_on_one_queue_waits_for_ring_reads_on_another() {
    let dir = tempfile::tempdir().unwrap();
    let (disk, feed) = PipeExtentDisk::new(dir.path());
    let mem = test_mem();
    let mut dev = Block::new(disk.clone(), None).unwrap();
    dev.set_num_queues(2).unwrap();
    dev.ack_features(polling_driver_features(&dev));
    let vqs: Vec<_> = (0..2)
        .map(|q| MockSplitQueue::create(&mem, ring_at(q), 16))
        .collect();
    // Queue 0: two reads, which wait on the pipe. Queue 1: a discard, then a read.
    let reads = [
        request(&mem, 0, VIRTIO_BLK_T_IN, 0, true),
        request(&mem, 1, VIRTIO_BLK_T_IN, 8, true),
    ];
    let mut descs = chain(0, &reads[0]);
    descs.extend(chain(3, &reads[1]));
    vqs[0].add_desc_chains(&descs, 0).unwrap();
    let discard = discard_request(&mem, 2, 128, 128);
    let mut descs = chain(0, &discard);
    descs.extend(chain(3, &request(&mem, 3, VIRTIO_BLK_T_IN, 16, true)));
    vqs[1].add_desc_chains(&descs, 0).unwrap();
    activate(&mut dev, &mem, &[&vqs[0], &vqs[1]]);
    assert!(dev.uses_io_uring());

    dev.process_queue_index(0);
    assert_eq!(
        disk.format_reads.load(Ordering::SeqCst),
        0,
        "not ring reads"
    );
    dev.process_queue_index(1);
    // The read behind the discard goes through the format and comes back; the
    // discard waits for queue 0's reads, whose clusters it could free.
    wait_used(&mut dev, &vqs[1], 1);
    assert_eq!(
        used(&vqs[1], 0).0,
        3,
        "the read, not the discard, came back"
    );
    assert_eq!(disk.format_reads.load(Ordering::SeqCst), 1);
    std::thread::sleep(std::time::Duration::from_millis(100));
    dev.process_completions();
    assert_eq!(
        disk.discards.load(Ordering::SeqCst),
        0,
        "discard ran under reads"
    );
    assert_eq!(used_idx(&vqs[1]), 1);
    // While the discard waits, a new read on queue 0 goes through the format too.
    let late_read = request(&mem, 4, VIRTIO_BLK_T_IN, 24, true);
    vqs[0].add_desc_chains(&chain(6, &late_read), 6).unwrap();
    dev.process_queue_index(0);
    wait_used(&mut dev, &vqs[0], 1);
    assert_eq!(used(&vqs[0], 0).0, 6, "the late read came back first");
    assert_eq!(disk.format_reads.load(Ordering::SeqCst), 2);

    // Queue 0's reads finish, which lets queue 1's discard run.
    std::io::Write::write_all(&mut &feed, &[0x77; 8192]).unwrap();
    wait_used(&mut dev, &vqs[0], 3);
    wait_used(&mut dev, &vqs[1], 2);
    assert_eq!(disk.discards.load(Ordering::SeqCst), 1);
    for i in 0..5 {
        assert_eq!(status_of(&mem, i), OK, "request {i}");
    }
    let mut got = [0u8; 4096];
    for i in 0..2 {
        mem.read_slice(&mut got, GuestAddress(data_buf(i))).unwrap();
        assert!(got.iter().all(|b| *b == 0x77), "ring read {i}");
    }
    for i in [3, 4] {
        mem.read_slice(&mut got, GuestAddress(data_buf(i))).unwrap();
        assert!(
            got.iter().all(|b| *b == 0x11),
            "read {i} through the format"
        );
    }
}

//! Asynchronous completion, continued: FLUSH across notifications, failures and hostile
//! chains in workers, reset and drop mid-flight, the inline path for a lone request,
//! and the in-process driver harness.

use std::sync::Arc;
use std::time::{Duration, Instant};

use virtio_bindings::bindings::virtio_blk::*;
use virtio_queue::mock::MockSplitQueue;
use vm_memory::{Bytes, GuestAddress, VolatileSlice};

use super::async_tests::{add_requests, sector_of, GateDisk};
use super::harness::{Done, Harness, Op, QueueDriver};
use super::parallel_tests::{
    data_buf, request, slow_disk, status_of, SlowDisk, DISK_SIZE, IOERR, OK, STATUSES,
};
use super::tests::{activate_blk, settle};
use super::*;
use crate::block::delegate::delegate_disk;
use crate::block::{DiskError, ImageFormat};
use crate::virtio::test_utils::*;

#[test]
fn flush_waits_for_writes_of_an_earlier_notification_but_not_for_reads() {
    let dir = tempfile::tempdir().unwrap();
    let slow = slow_disk(&dir, 40);
    // The read returns only once a flush ran: a flush that waited for it would deadlock
    // (and the read time out with IOERR).
    let disk = Arc::new(GateDisk {
        flush_opens: true,
        ..Arc::into_inner(GateDisk::new(slow.clone(), usize::MAX)).unwrap()
    });
    let mem = test_mem();
    mem.write_slice(&[0x33; 4096], GuestAddress(data_buf(0)))
        .unwrap();
    let vq = MockSplitQueue::create(&mem, GuestAddress(0), 16);
    let mut dev = Block::with_workers(disk.clone(), None, 4).unwrap();
    activate_blk(&mut dev, &mem, &[&vq]);
    add_requests(
        &vq,
        &[
            (0, request(&mem, 0, VIRTIO_BLK_T_OUT, 40, true)),
            (1, request(&mem, 1, VIRTIO_BLK_T_IN, 80, true)),
        ],
    );
    dev.process_queue();
    add_requests(&vq, &[(2, request(&mem, 2, VIRTIO_BLK_T_FLUSH, 0, false))]);
    dev.process_queue();
    settle(&mut dev);
    for i in 0..3 {
        assert_eq!(status_of(&mem, i), OK, "request {i}");
    }
    let events = slow.state.lock().unwrap().events.clone();
    let at = |e: &str| events.iter().position(|x| x == e).unwrap();
    assert!(at("end write 20480") < at("flush"), "{events:?}");
    let mut on_disk = vec![0u8; 4096];
    slow.inner.read_at(&mut on_disk, 40 * 512).unwrap();
    assert_eq!(on_disk, vec![0x33; 4096]);
}

/// Fails reads at sector 1 and panics on reads at sector 2.
struct FaultyDisk(Arc<SlowDisk>);

impl DiskBackend for FaultyDisk {
    delegate_disk!(0: read_at, write_at, write_vectored, discard, write_zeroes);
    fn format(&self) -> ImageFormat {
        ImageFormat::Raw
    }
    fn size(&self) -> u64 {
        DISK_SIZE
    }
    fn is_read_only(&self) -> bool {
        false
    }
    fn read_vectored(&self, bufs: &[VolatileSlice<'_>], offset: u64) -> Result<(), DiskError> {
        match offset / 512 {
            1 => Err(DiskError::Io(std::io::ErrorKind::Other.into())),
            2 => panic!("backend bug"),
            _ => self.0.read_vectored(bufs, offset),
        }
    }
    fn flush(&self) -> Result<(), DiskError> {
        Err(DiskError::Io(std::io::ErrorKind::Other.into()))
    }
}

#[test]
fn failures_and_hostile_chains_in_the_async_path() {
    let dir = tempfile::tempdir().unwrap();
    // Slow enough that the read cannot finish while process_queue runs, even on a
    // loaded 2-core machine (20 ms did, once in 30 runs of the suite with 16 threads).
    let disk = Arc::new(FaultyDisk(slow_disk(&dir, 1000)));
    let mem = test_mem();
    let vq = MockSplitQueue::create(&mem, GuestAddress(0), 64);
    let mut dev = Block::with_workers(disk, Some("ser"), 4).unwrap();
    activate_blk(&mut dev, &mem, &[&vq]);
    let capacity = DISK_SIZE / 512;
    mem.write_obj(0xeeu8, GuestAddress(STATUSES + 4)).unwrap();
    let mut id_req = request(&mem, 6, VIRTIO_BLK_T_GET_ID, 0, true);
    id_req[1].2 = true; // GET_ID writes its buffer
    add_requests(
        &vq,
        &[
            (0, request(&mem, 0, VIRTIO_BLK_T_IN, 1, true)), // backend error
            (1, request(&mem, 1, VIRTIO_BLK_T_IN, 2, true)), // backend panic
            (2, request(&mem, 2, VIRTIO_BLK_T_IN, 8, true)), // fine, slow
            (3, request(&mem, 3, VIRTIO_BLK_T_IN, capacity, true)), // past the end
            (4, vec![(DATA + 0x20000, 16, false)]),          // no status byte
            (5, request(&mem, 5, VIRTIO_BLK_T_FLUSH, 0, false)), // backend flush fails
            (6, id_req),
            (7, request(&mem, 7, 0xdead, 0, false)), // unsupported
        ],
    );
    dev.process_queue();
    // What needs no disk is answered at once, before the slow read finishes.
    let early: Vec<u32> = (0..used_idx(&vq)).map(|i| used(&vq, i).0).collect();
    for head in [12, 18, 21] {
        assert!(
            early.contains(&head),
            "{head} not answered at once: {early:?}"
        );
    }
    assert!(
        !early.contains(&6),
        "slow read answered too early: {early:?}"
    );
    settle(&mut dev);
    assert_eq!(used_idx(&vq), 8);
    let want = [
        IOERR,
        IOERR,
        OK,
        IOERR,
        0xee,
        IOERR,
        OK,
        VIRTIO_BLK_S_UNSUPP as u8,
    ];
    for (i, w) in want.iter().enumerate() {
        assert_eq!(status_of(&mem, i as u16), *w, "status of request {i}");
    }
    // And the device still works afterwards.
    add_requests(&vq, &[(8, request(&mem, 8, VIRTIO_BLK_T_IN, 9, true))]);
    dev.process_queue();
    settle(&mut dev);
    assert_eq!(status_of(&mem, 8), OK);
}

#[test]
fn reset_with_requests_in_flight_finishes_running_and_drops_queued_ones() {
    let dir = tempfile::tempdir().unwrap();
    // Reads slow enough that the test thread, however late it is scheduled, resets
    // while the first two run and six wait.
    let disk = slow_disk(&dir, 400);
    let mem = test_mem();
    let vq = MockSplitQueue::create(&mem, GuestAddress(0), 64);
    let mut dev = Block::with_workers(disk.clone(), None, 2).unwrap();
    activate_blk(&mut dev, &mem, &[&vq]);
    let reqs: Vec<_> = (0..8)
        .map(|i| (i, request(&mem, i, VIRTIO_BLK_T_IN, sector_of(i), true)))
        .collect();
    add_requests(&vq, &reqs);
    dev.process_queue();
    let deadline = Instant::now() + Duration::from_secs(10);
    while disk.state.lock().unwrap().in_flight < 2 {
        assert!(Instant::now() < deadline, "workers never started");
        std::thread::sleep(Duration::from_millis(1));
    }
    assert!(dev.reset());
    let log = disk.state.lock().unwrap();
    assert_eq!(log.in_flight, 0, "reset returned with I/O still running");
    let started = log.events.iter().filter(|e| e.starts_with("start")).count();
    drop(log);
    assert!(
        started < 8,
        "queued requests were not dropped ({started} ran)"
    );
    assert_eq!((dev.io_threads(), dev.in_flight()), (0, 0));
    std::thread::sleep(Duration::from_millis(120));
    let started_later = disk.state.lock().unwrap().events.len();
    assert_eq!(started_later, started * 2, "a request ran after reset");
    assert_eq!(used_idx(&vq), 0, "used ring touched after reset");
    // A stale completion event after reset is harmless.
    dev.process_completions();
    assert_eq!(used_idx(&vq), 0);

    // Re-activation works, and dropping the device mid-flight joins its workers.
    disk.set_delay(20);
    let vq = MockSplitQueue::create(&mem, GuestAddress(0), 64);
    activate_blk(&mut dev, &mem, &[&vq]);
    add_requests(&vq, &reqs);
    dev.process_queue();
    settle(&mut dev);
    assert_eq!(used_idx(&vq), 8);
    let vq = MockSplitQueue::create(&mem, GuestAddress(0), 64);
    activate_blk(&mut dev, &mem, &[&vq]);
    add_requests(&vq, &reqs);
    dev.process_queue();
    drop(dev);
    assert_eq!(disk.state.lock().unwrap().in_flight, 0);
}

#[test]
fn lone_request_runs_inline_and_others_on_workers() {
    let dir = tempfile::tempdir().unwrap();
    let disk = slow_disk(&dir, 0);
    let mem = test_mem();
    for inline in [true, false] {
        let vq = MockSplitQueue::create(&mem, GuestAddress(0), 16);
        let mut dev = Block::with_workers(disk.clone(), None, 4).unwrap();
        dev.set_inline_lone_requests(inline);
        activate_blk(&mut dev, &mem, &[&vq]);
        add_requests(&vq, &[(0, request(&mem, 0, VIRTIO_BLK_T_IN, 4, true))]);
        dev.process_queue();
        if inline {
            assert_eq!(used_idx(&vq), 1, "lone read not completed inline");
            assert_eq!(dev.io_threads(), 0);
        } else {
            settle(&mut dev);
            assert_eq!(dev.io_threads(), 1);
        }
        // A flush never runs inline (it may take long).
        add_requests(&vq, &[(1, request(&mem, 1, VIRTIO_BLK_T_FLUSH, 0, false))]);
        dev.process_queue();
        settle(&mut dev);
        if inline {
            assert_eq!(dev.io_threads(), 1, "the flush ran inline");
        } else {
            // The read's thread may not be idle yet when the flush comes.
            assert!((1..=2).contains(&dev.io_threads()));
        }
        assert_eq!(used_idx(&vq), 2);
    }
}

/// Put one read on `h`'s ring and notify; the requests returned by the time the
/// notification was handled (the read itself if it ran inline), and how long that took.
fn lone_read(h: &mut Harness, n: u64) -> (Vec<Done>, Duration) {
    h.submit(Op::Read, n % 64 * 4096, 4096).unwrap().unwrap();
    let start = Instant::now();
    h.kick().unwrap();
    let took = start.elapsed();
    (h.reap().unwrap(), took)
}

fn wait_for(h: &mut Harness, count: usize) {
    let mut done = 0;
    while done < count {
        for d in h.wait(Duration::from_secs(10)).unwrap() {
            assert_eq!(d.status, OK);
            done += 1;
        }
    }
}

#[test]
fn a_lone_request_after_parallel_ones_does_not_hold_up_the_next() {
    // A driver keeping several requests in flight whose queue drained: its next request
    // arrives alone, and the others follow while it runs. Reads here wait until two
    // reached the disk (or the gate is opened); run inline, the lone one would hold the
    // event loop until it timed out (30 s, IOERR, so back by the time the notification
    // was handled), and the next could not be popped.
    let dir = tempfile::tempdir().unwrap();
    let disk = GateDisk::new(slow_disk(&dir, 0), 2);
    let close_gate = || *disk.state.lock().unwrap() = (0, false);
    let mut h = Harness::new(Block::with_workers(disk.clone(), None, 4).unwrap(), 4, 4096).unwrap();
    for n in 0..2 {
        h.submit(Op::Read, n * 4096, 4096).unwrap().unwrap();
    }
    h.kick().unwrap();
    wait_for(&mut h, 2);

    close_gate();
    let (done, took) = lone_read(&mut h, 2);
    assert!(
        done.is_empty(),
        "lone read held the event loop for {took:?}"
    );
    // The second read opens the gate: both may be back before the notification returns.
    let (done, _) = lone_read(&mut h, 3);
    wait_for(&mut h, 2 - done.len());

    // Those two were in flight together: the next PARALLEL_MEMORY lone reads go to the
    // pool (each held at the closed gate until the test opens it), then lone reads run
    // inline again, as a depth-1 driver wants.
    for n in 0..u64::from(inflight::PARALLEL_MEMORY) {
        close_gate();
        let (done, took) = lone_read(&mut h, n);
        assert!(done.is_empty(), "lone read {n} ran inline ({took:?})");
        disk.open();
        wait_for(&mut h, 1);
    }
    let (done, _) = lone_read(&mut h, 7);
    assert_eq!(done.len(), 1, "depth-1 reads no longer run inline");
    assert_eq!(done[0].status, OK);
}

#[test]
fn harness_keeps_a_deep_queue_in_flight() {
    // 24 reads that wait for each other: only a device with 24 in flight passes.
    let dir = tempfile::tempdir().unwrap();
    let disk = GateDisk::new(slow_disk(&dir, 0), 24);
    let dev = Block::with_workers(disk.clone(), None, 64).unwrap();
    let mut h = Harness::new(dev, 24, 4096).unwrap();
    for i in 0..24u64 {
        assert!(h.submit(Op::Read, i * 8192, 4096).unwrap().is_some());
    }
    assert!(
        h.submit(Op::Read, 0, 4096).unwrap().is_none(),
        "slots exhausted"
    );
    h.kick().unwrap();
    let mut done = Vec::new();
    while done.len() < 24 {
        done.extend(h.wait(Duration::from_secs(10)).unwrap());
    }
    assert!(
        done.iter().all(|d| d.status == OK && d.len == 4097),
        "{done:?}"
    );
    assert!(h.interrupts() >= 1);
    for d in &done {
        // Slot s read offset s * 8192 (slots are handed out in order).
        let mut got = vec![0u8; 4096];
        h.read_slot(d.slot, &mut got).unwrap();
        let start = d.slot as u64 * 8192;
        assert!(got.iter().zip(start..).all(|(b, o)| *b == (o % 251) as u8));
    }
    // Writes, a flush and more rounds through the same ring (indices wrap).
    for round in 0..40u64 {
        let slot = h.submit(Op::Write, round * 4096, 4096).unwrap().unwrap();
        h.write_slot(slot, &[round as u8; 4096]).unwrap();
        h.submit(Op::Flush, 0, 0).unwrap().unwrap();
        h.kick().unwrap();
        let mut n = 0;
        while n < 2 {
            let got = h.wait(Duration::from_secs(10)).unwrap();
            assert!(got.iter().all(|d| d.status == OK), "{got:?}");
            n += got.len();
        }
    }
    let mut b = [0u8; 4096];
    disk.read_at(&mut b, 39 * 4096).unwrap();
    assert_eq!(b, [39u8; 4096]);
    assert!(matches!(
        Harness::new(Block::new(disk, None).unwrap(), 86, 4096),
        Err(super::harness::HarnessError::Depth { .. })
    ));
}

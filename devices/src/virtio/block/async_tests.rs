//! Asynchronous completion: requests of several notifications in flight at once,
//! completions through the completion `EventFd` and the event manager, the in-flight
//! limit and notification suppression. (FLUSH, failures and reset: `async_fault_tests`.)

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use event_manager::{EventManager, MutEventSubscriber, SubscriberOps};
use virtio_bindings::bindings::virtio_blk::*;
use virtio_bindings::bindings::virtio_ring::VRING_AVAIL_F_NO_INTERRUPT;
use virtio_queue::mock::MockSplitQueue;
use virtio_queue::Queue;
use vm_memory::{Address, Bytes, GuestAddress, VolatileSlice};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::harness::wait_readable;
use super::parallel_tests::{data_buf, request, slow_disk, status_of, SlowDisk, OK};
use super::tests::{activate_blk, settle};
use super::*;
use crate::block::delegate::delegate_disk;
use crate::block::{DiskError, ImageFormat};
use crate::virtio::test_utils::*;
use crate::GuestMemory;

/// How long a read waits at a closed gate before it fails: longer than any test waits
/// for a request, so that a slow host shows as a test's timeout, not as IOERR.
pub(super) const GATE_TIMEOUT: Duration = Duration::from_secs(30);

/// A disk whose reads wait until `need` reads have arrived or the test opens the gate;
/// after [`GATE_TIMEOUT`] a read fails instead, so a device that never gets that many
/// requests in flight fails the test rather than hanging it. A flush opens the gate
/// too when `flush_opens` is set.
pub(super) struct GateDisk {
    pub inner: Arc<SlowDisk>,
    pub need: usize,
    pub flush_opens: bool,
    pub state: Mutex<(usize, bool)>, // (reads arrived, gate open)
    pub changed: Condvar,
    pub reads: AtomicUsize,
}

impl GateDisk {
    pub fn new(inner: Arc<SlowDisk>, need: usize) -> Arc<Self> {
        Arc::new(GateDisk {
            inner,
            need,
            flush_opens: false,
            state: Mutex::new((0, false)),
            changed: Condvar::new(),
            reads: AtomicUsize::new(0),
        })
    }

    pub fn open(&self) {
        self.state.lock().unwrap().1 = true;
        self.changed.notify_all();
    }
}

impl DiskBackend for GateDisk {
    delegate_disk!(inner: size, read_at, write_at, write_vectored, discard, write_zeroes);
    fn format(&self) -> ImageFormat {
        ImageFormat::Raw
    }
    fn is_read_only(&self) -> bool {
        false
    }
    fn read_vectored(&self, bufs: &[VolatileSlice<'_>], offset: u64) -> Result<(), DiskError> {
        self.reads.fetch_add(1, Ordering::SeqCst);
        let mut state = self.state.lock().unwrap();
        state.0 += 1;
        self.changed.notify_all();
        let (state, wait) = self
            .changed
            .wait_timeout_while(state, GATE_TIMEOUT, |s| s.0 < self.need && !s.1)
            .unwrap();
        drop(state);
        if wait.timed_out() {
            return Err(DiskError::Io(std::io::ErrorKind::TimedOut.into()));
        }
        self.inner.inner.read_vectored(bufs, offset)
    }
    fn flush(&self) -> Result<(), DiskError> {
        let r = self.inner.flush();
        if self.flush_opens {
            self.open();
        }
        r
    }
}

pub(super) fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(2));
    }
}

pub(super) fn sector_of(i: u16) -> u64 {
    u64::from(i) * 9 + 3
}

pub(super) fn expect_disk_data(mem: &GuestMemory, i: u16) {
    let mut got = vec![0u8; 4096];
    mem.read_slice(&mut got, GuestAddress(data_buf(i))).unwrap();
    let start = sector_of(i) * 512;
    let want: Vec<u8> = (start..start + 4096).map(|b| (b % 251) as u8).collect();
    assert!(got == want, "data of read {i}");
}

/// Put each `(i, bufs)` on `vq` as a chain at descriptor 3i and publish it.
pub(super) fn add_requests(vq: &MockSplitQueue<GuestMemory>, reqs: &[(u16, Vec<Buf>)]) {
    for (i, r) in reqs {
        vq.add_desc_chains(&chain(i * 3, r), i * 3).unwrap();
    }
}

fn set_avail_flags(mem: &GuestMemory, vq: &MockSplitQueue<GuestMemory>, flags: u16) {
    mem.write_obj(flags, vq.avail_addr()).unwrap();
}

#[test]
fn requests_of_several_notifications_are_in_flight_together() {
    // Twelve reads that each wait until all twelve reached the disk, submitted in three
    // notifications of four: a device that waits for each notification's requests
    // before taking the next (as kiln did before) times out with IOERR here.
    let dir = tempfile::tempdir().unwrap();
    let disk = GateDisk::new(slow_disk(&dir, 0), 12);
    let mem = test_mem();
    let vq = MockSplitQueue::create(&mem, GuestAddress(0), 64);
    let mut dev = Block::with_workers(disk.clone(), None, 16).unwrap();
    activate_blk(&mut dev, &mem, &[&vq]);
    for batch in 0..3u16 {
        let reqs: Vec<_> = (batch * 4..batch * 4 + 4)
            .map(|i| (i, request(&mem, i, VIRTIO_BLK_T_IN, sector_of(i), true)))
            .collect();
        add_requests(&vq, &reqs);
        let start = Instant::now();
        dev.process_queue();
        // Waiting for the disk would take GATE_TIMEOUT and end the reads with IOERR.
        assert!(
            start.elapsed() < GATE_TIMEOUT,
            "process_queue waited for the disk"
        );
    }
    // All twelve were popped. The last read to arrive opens the gate, so some may
    // already be finished and published by the time the third process_queue returns.
    assert_eq!(dev.in_flight() + usize::from(used_idx(&vq)), 12);
    settle(&mut dev);
    assert_eq!(used_idx(&vq), 12);
    for i in 0..12 {
        assert_eq!(status_of(&mem, i), OK, "status of read {i}");
        expect_disk_data(&mem, i);
    }
}

#[test]
fn completions_are_published_by_the_event_loop_on_the_completion_event() {
    let dir = tempfile::tempdir().unwrap();
    // Reads wait at the gate until the test opens it (a fixed delay can pass while a
    // loaded host starts the worker threads).
    let disk = GateDisk::new(slow_disk(&dir, 0), usize::MAX);
    let mem = test_mem();
    let vq = MockSplitQueue::create(&mem, GuestAddress(0), 16);
    let reqs: Vec<_> = (0..2)
        .map(|i| (i, request(&mem, i, VIRTIO_BLK_T_IN, sector_of(i), true)))
        .collect();
    add_requests(&vq, &reqs);
    let mut dev = Block::with_workers(disk.clone(), None, 4).unwrap();
    let irq = activate_blk(&mut dev, &mem, &[&vq]);
    dev.process_queue();
    assert_eq!(
        (used_idx(&vq), dev.in_flight()),
        (0, 2),
        "nothing waited for"
    );
    disk.open();
    let deadline = Instant::now() + Duration::from_secs(10);
    while status_of(&mem, 0) == 0xee || status_of(&mem, 1) == 0xee {
        assert!(Instant::now() < deadline, "workers never finished");
        std::thread::sleep(Duration::from_millis(5));
    }
    assert!(wait_readable(dev.completion_event(), Duration::from_secs(10)).unwrap());
    // The workers wrote data and status; only the event loop touches the used ring.
    assert_eq!(used_idx(&vq), 0);
    assert_eq!(irq.used_count(), 0);
    // A worker reports just after writing the status, so the second report may come
    // after the first pass (almost never). Each pass that publishes interrupts once.
    let mut batches = 0;
    while dev.in_flight() > 0 {
        assert!(wait_readable(dev.completion_event(), Duration::from_secs(10)).unwrap());
        let before = used_idx(&vq);
        dev.process_completions();
        batches += usize::from(used_idx(&vq) > before);
    }
    assert_eq!(used_idx(&vq), 2);
    assert_eq!(irq.used_count(), batches, "one interrupt per batch");
    assert!(
        !wait_readable(dev.completion_event(), Duration::ZERO).unwrap(),
        "completion event left readable"
    );
    expect_disk_data(&mem, 0);
    expect_disk_data(&mem, 1);
}

#[test]
fn event_manager_drives_queue_and_completion_events() {
    let dir = tempfile::tempdir().unwrap();
    let disk = slow_disk(&dir, 10);
    let mem = test_mem();
    let vq = MockSplitQueue::create(&mem, GuestAddress(0), 64);
    let dev = Arc::new(Mutex::new(Block::with_workers(disk, None, 8).unwrap()));
    let mut events: EventManager<Arc<Mutex<dyn MutEventSubscriber + Send>>> =
        EventManager::new().unwrap();
    let subscriber: Arc<Mutex<dyn MutEventSubscriber + Send>> = dev.clone();
    events.add_subscriber(subscriber);
    let kick = EventFd::new(EFD_NONBLOCK).unwrap();
    let irq = Arc::new(CountingInterrupt::default());
    dev.lock()
        .unwrap()
        .activate(ActivateContext {
            mem: mem.clone(),
            queues: vec![vq.create_queue().unwrap()],
            queue_events: vec![kick.try_clone().unwrap()],
            interrupt: irq.clone(),
        })
        .unwrap();
    events.run_with_timeout(100).unwrap(); // registers the queue event
    let reqs: Vec<_> = (0..8)
        .map(|i| (i, request(&mem, i, VIRTIO_BLK_T_IN, sector_of(i), true)))
        .collect();
    add_requests(&vq, &reqs);
    kick.write(1).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while used_idx(&vq) < 8 {
        assert!(
            Instant::now() < deadline,
            "used ring stuck at {}",
            used_idx(&vq)
        );
        events.run_with_timeout(100).unwrap();
    }
    assert!(irq.used_count() >= 1);
    for i in 0..8 {
        assert_eq!(status_of(&mem, i), OK);
        expect_disk_data(&mem, i);
    }
}

/// Publish avail ring entries for `head`, `count` times (a hostile driver may list the
/// same chain many times), past the mock's helpers which assume a fresh ring.
fn publish_head(mem: &GuestMemory, vq: &MockSplitQueue<GuestMemory>, head: u16, count: u16) {
    let size = 16u16;
    let idx_addr = vq.avail_addr().unchecked_add(2);
    let idx: u16 = mem.read_obj(idx_addr).unwrap();
    for k in 0..count {
        let slot = (idx.wrapping_add(k) % size) as u64;
        mem.write_obj(head, vq.avail_addr().unchecked_add(4 + 2 * slot))
            .unwrap();
    }
    mem.write_obj(idx.wrapping_add(count), idx_addr).unwrap();
}

#[test]
fn requests_in_flight_are_bounded_by_the_queue_size() {
    // One read chain listed 16 times, then 16 more times while the first 16 are stuck
    // on the disk: the device must not take more than the queue size.
    let dir = tempfile::tempdir().unwrap();
    let disk = GateDisk::new(slow_disk(&dir, 0), usize::MAX);
    let mem = test_mem();
    let vq = MockSplitQueue::create(&mem, GuestAddress(0), 16);
    let descs = chain(0, &request(&mem, 0, VIRTIO_BLK_T_IN, 5, true));
    for (i, d) in descs.iter().enumerate() {
        vq.desc_table().store(i as u16, *d).unwrap();
    }
    // The mock puts the used ring over the second half of the avail ring; this test
    // fills the whole avail ring, so the used ring goes elsewhere.
    let used_ring = GuestAddress(0x8000);
    let mut queue: Queue = vq.create_queue().unwrap();
    queue.try_set_used_ring_address(used_ring).unwrap();
    let mut dev = Block::with_workers(disk.clone(), None, 64).unwrap();
    dev.activate(ActivateContext {
        mem: mem.clone(),
        queues: vec![queue],
        queue_events: vec![EventFd::new(EFD_NONBLOCK).unwrap()],
        interrupt: Arc::new(CountingInterrupt::default()),
    })
    .unwrap();
    let used_idx = || mem.read_obj::<u16>(used_ring.unchecked_add(2)).unwrap();
    let used_flags = || mem.read_obj::<u16>(used_ring).unwrap();

    publish_head(&mem, &vq, 0, 16);
    dev.process_queue();
    assert_eq!(dev.in_flight(), 16);
    wait_until("16 reads at the disk", || {
        disk.reads.load(Ordering::SeqCst) == 16
    });
    assert_eq!(
        used_flags(),
        1,
        "at the limit, the driver is asked not to kick"
    );
    publish_head(&mem, &vq, 0, 16);
    dev.process_queue();
    assert_eq!(dev.in_flight(), 16, "more than the queue size in flight");
    std::thread::sleep(Duration::from_millis(20));
    assert_eq!(disk.reads.load(Ordering::SeqCst), 16);
    disk.open();
    // Completions bring the other 16 in.
    settle(&mut dev);
    assert_eq!(used_idx(), 32);
    assert_eq!(disk.reads.load(Ordering::SeqCst), 32);
    assert_eq!(status_of(&mem, 0), OK);
    assert_eq!(used_flags(), 0, "notifications back on");
}

#[test]
fn driver_can_suppress_interrupts() {
    let dir = tempfile::tempdir().unwrap();
    let disk = slow_disk(&dir, 0);
    let mem = test_mem();
    let vq = MockSplitQueue::create(&mem, GuestAddress(0), 16);
    let mut dev = Block::with_workers(disk, None, 2).unwrap();
    let irq = activate_blk(&mut dev, &mem, &[&vq]);
    set_avail_flags(&mem, &vq, VRING_AVAIL_F_NO_INTERRUPT as u16);
    add_requests(
        &vq,
        &[
            (0, request(&mem, 0, VIRTIO_BLK_T_IN, 1, true)),
            (1, request(&mem, 1, VIRTIO_BLK_T_IN, 2, true)),
        ],
    );
    dev.process_queue();
    settle(&mut dev);
    assert_eq!(used_idx(&vq), 2, "requests are still returned");
    assert_eq!(
        irq.used_count(),
        0,
        "interrupt despite VRING_AVAIL_F_NO_INTERRUPT"
    );
    set_avail_flags(&mem, &vq, 0);
    add_requests(&vq, &[(2, request(&mem, 2, VIRTIO_BLK_T_IN, 3, true))]);
    dev.process_queue();
    settle(&mut dev);
    assert_eq!(used_idx(&vq), 3);
    assert_eq!(irq.used_count(), 1);
}

#[test]
fn avail_index_beyond_the_queue_size_does_not_hang() {
    // A driver that moves the avail index by more than the queue size: nothing can be
    // popped, yet the index differs from the device's; the device must not spin.
    let dir = tempfile::tempdir().unwrap();
    let disk = slow_disk(&dir, 0);
    let mem = test_mem();
    let vq = MockSplitQueue::create(&mem, GuestAddress(0), 16);
    let mut dev = Block::with_workers(disk, None, 2).unwrap();
    activate_blk(&mut dev, &mem, &[&vq]);
    vq.avail().idx().store(100);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        dev.process_queue();
        dev.process_completions();
        tx.send(dev.in_flight()).unwrap();
    });
    assert_eq!(
        rx.recv_timeout(Duration::from_secs(10)),
        Ok(0),
        "device spun"
    );
    assert_eq!(used_idx(&vq), 0);
}

#[test]
fn kicks_are_never_left_off_with_room_in_flight() {
    // With the ring exactly full, the device hits the in-flight limit and turns kicks
    // off; when those requests finish within the same call (here: an inline device),
    // it must take up the ring again and turn kicks back on, or a driver that saw
    // VRING_USED_F_NO_NOTIFY would wait forever.
    let dir = tempfile::tempdir().unwrap();
    let disk = slow_disk(&dir, 0);
    let mem = test_mem();
    let vq = MockSplitQueue::create(&mem, GuestAddress(0), 16);
    for (i, d) in chain(0, &request(&mem, 0, VIRTIO_BLK_T_IN, 5, true))
        .iter()
        .enumerate()
    {
        vq.desc_table().store(i as u16, *d).unwrap();
    }
    let used_ring = GuestAddress(0x8000); // clear of the avail ring (see above)
    let mut queue: Queue = vq.create_queue().unwrap();
    queue.try_set_used_ring_address(used_ring).unwrap();
    let mut dev = Block::with_workers(disk, None, 0).unwrap();
    dev.activate(ActivateContext {
        mem: mem.clone(),
        queues: vec![queue],
        queue_events: vec![EventFd::new(EFD_NONBLOCK).unwrap()],
        interrupt: Arc::new(CountingInterrupt::default()),
    })
    .unwrap();
    publish_head(&mem, &vq, 0, 16);
    dev.process_queue();
    assert_eq!(dev.in_flight(), 0);
    assert_eq!(mem.read_obj::<u16>(used_ring.unchecked_add(2)).unwrap(), 16);
    assert_eq!(
        mem.read_obj::<u16>(used_ring).unwrap(),
        0,
        "kicks left off with nothing in flight"
    );
}

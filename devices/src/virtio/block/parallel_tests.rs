//! virtio-blk with a pool of I/O threads: parallelism, FLUSH ordering, hostile chains.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use virtio_bindings::bindings::virtio_blk::*;
use virtio_queue::mock::MockSplitQueue;
use vm_memory::{Bytes, GuestAddress, VolatileSlice};

use super::tests::activate_blk;
use super::*;
use crate::block::delegate::delegate_disk;
use crate::block::{open_disk, DiskConfig, DiskError};
use crate::virtio::test_utils::*;
use crate::GuestMemory;

pub(super) const DISK_SIZE: u64 = 1 << 20;
const HDRS: u64 = DATA;
pub(super) const STATUSES: u64 = DATA + 0x8000;
const BUFS: u64 = DATA + 0x1_0000;
pub(super) const OK: u8 = VIRTIO_BLK_S_OK as u8;
pub(super) const IOERR: u8 = VIRTIO_BLK_S_IOERR as u8;

/// A raw disk whose reads and writes take a while and which logs what happens when.
pub(super) struct SlowDisk {
    pub inner: Arc<dyn DiskBackend>,
    /// How long each read, write and flush takes (see [`SlowDisk::set_delay`]).
    delay_ms: AtomicU64,
    pub state: Mutex<Log>,
}

#[derive(Default)]
pub(super) struct Log {
    pub in_flight: usize,
    pub max_in_flight: usize,
    pub events: Vec<String>,
    /// An event a flush waits (up to 10 s) to see logged before it ends, so that a
    /// test can tell "runs beside the flush" from "waits for it" on any machine.
    pub flush_ends_after: Option<String>,
}

impl SlowDisk {
    pub fn set_delay(&self, ms: u64) {
        self.delay_ms.store(ms, Ordering::SeqCst);
    }

    fn delay(&self) -> Duration {
        Duration::from_millis(self.delay_ms.load(Ordering::SeqCst))
    }

    fn io<R>(&self, what: &str, offset: u64, f: impl FnOnce() -> R) -> R {
        {
            let mut s = self.state.lock().unwrap();
            s.in_flight += 1;
            s.max_in_flight = s.max_in_flight.max(s.in_flight);
            s.events.push(format!("start {what} {offset}"));
        }
        std::thread::sleep(self.delay());
        let r = f();
        let mut s = self.state.lock().unwrap();
        s.in_flight -= 1;
        s.events.push(format!("end {what} {offset}"));
        r
    }
}

impl DiskBackend for SlowDisk {
    delegate_disk!(inner: format, size, read_at, write_at, discard, write_zeroes);
    fn is_read_only(&self) -> bool {
        false
    }
    fn read_vectored(&self, bufs: &[VolatileSlice<'_>], offset: u64) -> Result<(), DiskError> {
        self.io("read", offset, || self.inner.read_vectored(bufs, offset))
    }
    fn write_vectored(&self, bufs: &[VolatileSlice<'_>], offset: u64) -> Result<(), DiskError> {
        self.io("write", offset, || self.inner.write_vectored(bufs, offset))
    }
    fn flush(&self) -> Result<(), DiskError> {
        self.state.lock().unwrap().events.push("flush".into());
        std::thread::sleep(self.delay());
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while std::time::Instant::now() < deadline {
            let s = self.state.lock().unwrap();
            match &s.flush_ends_after {
                Some(event) if !s.events.contains(event) => {}
                _ => break,
            }
            drop(s);
            std::thread::sleep(Duration::from_millis(1));
        }
        let r = self.inner.flush();
        self.state.lock().unwrap().events.push("flush done".into());
        r
    }
}

pub(super) fn slow_disk(dir: &tempfile::TempDir, delay_ms: u64) -> Arc<SlowDisk> {
    let path = dir.path().join("disk.raw");
    let content: Vec<u8> = (0..DISK_SIZE).map(|i| (i % 251) as u8).collect();
    std::fs::write(&path, content).unwrap();
    let inner = open_disk(&DiskConfig::new(path)).unwrap();
    Arc::new(SlowDisk {
        inner,
        delay_ms: AtomicU64::new(delay_ms),
        state: Mutex::default(),
    })
}

/// Request `i`: header, one 4 KiB data buffer (device-writable for reads), status.
pub(super) fn request(
    mem: &GuestMemory,
    i: u16,
    kind: u32,
    sector: u64,
    with_data: bool,
) -> Vec<Buf> {
    let hdr = HDRS + u64::from(i) * 16;
    let mut h = [0u8; 16];
    h[0..4].copy_from_slice(&kind.to_le_bytes());
    h[8..16].copy_from_slice(&sector.to_le_bytes());
    mem.write_slice(&h, GuestAddress(hdr)).unwrap();
    let status = STATUSES + u64::from(i);
    mem.write_obj(0xeeu8, GuestAddress(status)).unwrap();
    let mut bufs = vec![(hdr, 16, false)];
    if with_data {
        bufs.push((data_buf(i), 4096, kind == VIRTIO_BLK_T_IN));
    }
    bufs.push((status, 1, true));
    bufs
}

pub(super) fn data_buf(i: u16) -> u64 {
    BUFS + u64::from(i) * 4096
}

pub(super) fn status_of(mem: &GuestMemory, i: u16) -> u8 {
    mem.read_obj(GuestAddress(STATUSES + u64::from(i))).unwrap()
}

/// Queue the requests (each built by `request`), notify the device once, wait for all.
fn run_all<'m>(
    disk: Arc<SlowDisk>,
    mem: &'m GuestMemory,
    workers: usize,
    reqs: &[Vec<Buf>],
) -> (MockSplitQueue<'m, GuestMemory>, Arc<CountingInterrupt>) {
    let vq = MockSplitQueue::create(mem, GuestAddress(0), 256);
    let mut descs = Vec::new();
    for r in reqs {
        descs.extend(chain(descs.len() as u16, r));
    }
    vq.add_desc_chains(&descs, 0).unwrap();
    let mut dev = Block::with_workers(disk, None, workers).unwrap();
    let irq = activate_blk(&mut dev, mem, &[&vq]);
    dev.process_queue();
    super::tests::settle(&mut dev);
    (vq, irq)
}

/// Every head of `heads` appears exactly once in the used ring, with length `len`.
fn check_used(vq: &MockSplitQueue<GuestMemory>, heads: &[u32], len: impl Fn(u32) -> u32) {
    assert_eq!(usize::from(used_idx(vq)), heads.len());
    let mut seen: Vec<u32> = (0..used_idx(vq))
        .map(|i| {
            let (head, l) = used(vq, i);
            assert_eq!(l, len(head), "used length of request at head {head}");
            head
        })
        .collect();
    seen.sort_unstable();
    assert_eq!(seen, heads);
}

fn concurrent_reads(workers: usize) -> usize {
    let dir = tempfile::tempdir().unwrap();
    let disk = slow_disk(&dir, 20);
    let mem = test_mem();
    let n = 24u16;
    let reqs: Vec<_> = (0..n)
        .map(|i| request(&mem, i, VIRTIO_BLK_T_IN, u64::from(i) * 13 + 1, true))
        .collect();
    let (vq, irq) = run_all(disk.clone(), &mem, workers, &reqs);
    let heads: Vec<u32> = (0..u32::from(n)).map(|i| i * 3).collect();
    check_used(&vq, &heads, |_| 4097);
    let irqs = irq.used_count();
    assert!((1..=usize::from(n)).contains(&irqs), "{irqs} interrupts");
    for i in 0..n {
        assert_eq!(status_of(&mem, i), OK, "status of read {i}");
        let mut got = vec![0u8; 4096];
        mem.read_slice(&mut got, GuestAddress(data_buf(i))).unwrap();
        let start = (u64::from(i) * 13 + 1) * 512;
        let want: Vec<u8> = (start..start + 4096).map(|b| (b % 251) as u8).collect();
        assert!(got == want, "data of read {i}");
    }
    let max = disk.state.lock().unwrap().max_in_flight;
    max
}

#[test]
fn many_concurrent_reads_return_correct_data() {
    let max = concurrent_reads(4);
    assert!(max > 1, "4 workers never overlapped two reads (max {max})");
    assert!(max <= 4, "more reads in flight ({max}) than workers");
}

#[test]
fn zero_workers_run_inline_one_at_a_time() {
    assert_eq!(concurrent_reads(0), 1);
}

#[test]
fn flush_waits_for_earlier_writes_only() {
    let dir = tempfile::tempdir().unwrap();
    let disk = slow_disk(&dir, 30);
    // A write that waited for the flush would start only after it: never, in 10 s.
    disk.state.lock().unwrap().flush_ends_after = Some("start write 12288".into());
    let mem = test_mem();
    for i in 0..4u16 {
        mem.write_slice(&[0x10 + i as u8; 4096], GuestAddress(data_buf(i)))
            .unwrap();
    }
    let reqs = [
        request(&mem, 0, VIRTIO_BLK_T_OUT, 8, true),
        request(&mem, 1, VIRTIO_BLK_T_OUT, 16, true),
        request(&mem, 2, VIRTIO_BLK_T_FLUSH, 0, false),
        request(&mem, 3, VIRTIO_BLK_T_OUT, 24, true),
    ];
    let (vq, _irq) = run_all(disk.clone(), &mem, 4, &reqs);
    check_used(&vq, &[0, 3, 6, 8], |_| 1);
    for i in 0..4 {
        assert_eq!(status_of(&mem, i), OK, "status of request {i}");
    }
    let events = disk.state.lock().unwrap().events.clone();
    let at = |e: &str| {
        events
            .iter()
            .position(|x| x == e)
            .unwrap_or_else(|| panic!("no '{e}' in {events:?}"))
    };
    let flush = at("flush");
    assert!(at("end write 4096") < flush, "{events:?}");
    assert!(at("end write 8192") < flush, "{events:?}");
    // The write after the flush did not wait for it.
    assert!(at("start write 12288") < at("flush done"), "{events:?}");
    let mut on_disk = vec![0u8; 4096];
    disk.inner.read_at(&mut on_disk, 4096).unwrap();
    assert_eq!(on_disk, vec![0x10; 4096]);
}

#[test]
fn hostile_chains_are_rejected_among_parallel_requests() {
    let dir = tempfile::tempdir().unwrap();
    let disk = slow_disk(&dir, 5);
    let mem = test_mem();
    let capacity = DISK_SIZE / 512;
    let reqs = [
        request(&mem, 0, VIRTIO_BLK_T_IN, 0, true),
        // No device-writable descriptor: nowhere to put a status.
        vec![(HDRS + 16, 16, false)],
        request(&mem, 2, VIRTIO_BLK_T_IN, capacity - 1, true),
        request(&mem, 3, VIRTIO_BLK_T_IN, 2, true),
    ];
    let (vq, _irq) = run_all(disk.clone(), &mem, 4, &reqs);
    check_used(&vq, &[0, 3, 4, 7], |head| match head {
        3 => 0,
        4 => 1,
        _ => 4097,
    });
    assert_eq!(status_of(&mem, 0), OK);
    assert_eq!(status_of(&mem, 2), IOERR, "read past the end");
    assert_eq!(status_of(&mem, 3), OK);
    let events = disk.state.lock().unwrap().events.clone();
    assert_eq!(
        events.len(),
        4,
        "only the two good reads reach the disk: {events:?}"
    );
}

#[test]
fn reset_stops_io_threads_and_reactivation_works() {
    let dir = tempfile::tempdir().unwrap();
    let disk = slow_disk(&dir, 1);
    let mem = test_mem();
    let mut dev = Block::with_workers(disk, None, 3).unwrap();
    for round in 0..2u16 {
        let vq = MockSplitQueue::create(&mem, GuestAddress(0), 16);
        let mut descs = chain(0, &request(&mem, 0, VIRTIO_BLK_T_IN, 1, true));
        descs.extend(chain(3, &request(&mem, 1, VIRTIO_BLK_T_IN, 2, true)));
        vq.add_desc_chains(&descs, 0).unwrap();
        activate_blk(&mut dev, &mem, &[&vq]);
        assert_eq!(
            dev.io_threads(),
            0,
            "round {round}: threads start on demand"
        );
        dev.process_queue();
        assert!(dev.io_threads() >= 1, "round {round}");
        super::tests::settle(&mut dev);
        assert_eq!(used_idx(&vq), 2, "round {round}");
        assert!(dev.reset());
        assert_eq!(
            dev.io_threads(),
            0,
            "round {round}: threads left after reset"
        );
    }
}

//! virtio-blk driven through mock queues in mock guest memory.

use std::sync::Arc;

use virtio_bindings::bindings::virtio_blk::*;
use virtio_bindings::bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use virtio_queue::mock::MockSplitQueue;
use vm_memory::{Bytes, GuestAddress};

use super::*;
use crate::block::{open_disk, DiskConfig};
use crate::virtio::test_utils::*;
use crate::GuestMemory;

const DISK_SIZE: u64 = 1 << 20;
pub(super) const HDR: u64 = DATA;
pub(super) const BUF: u64 = DATA + 0x1000;
pub(super) const STATUS: u64 = DATA + 0x8000;

pub(super) struct Fixture {
    _dir: tempfile::TempDir,
    pub(super) disk: Arc<dyn DiskBackend>,
    pub(super) mem: GuestMemory,
}

pub(super) fn fixture(readonly: bool) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("disk.raw");
    let content: Vec<u8> = (0..DISK_SIZE).map(|i| (i % 251) as u8).collect();
    std::fs::write(&path, content).unwrap();
    let disk = open_disk(&DiskConfig {
        readonly,
        ..DiskConfig::new(path)
    })
    .unwrap();
    Fixture {
        _dir: dir,
        disk,
        mem: test_mem(),
    }
}

pub(super) fn header(mem: &GuestMemory, kind: u32, sector: u64) {
    let mut h = [0u8; 16];
    h[0..4].copy_from_slice(&kind.to_le_bytes());
    h[8..16].copy_from_slice(&sector.to_le_bytes());
    mem.write_slice(&h, GuestAddress(HDR)).unwrap();
}

fn status(mem: &GuestMemory) -> u8 {
    mem.read_obj(GuestAddress(STATUS)).unwrap()
}

/// Put `descs` on a fresh queue, run the device once; returns (used len, status byte, device).
pub(super) fn run(
    f: &Fixture,
    serial: Option<&str>,
    descs: &[virtio_queue::desc::RawDescriptor],
) -> (u32, u8, Arc<CountingInterrupt>) {
    let vq = MockSplitQueue::create(&f.mem, GuestAddress(0), 16);
    vq.add_desc_chains(descs, 0).unwrap();
    f.mem.write_obj(0xeeu8, GuestAddress(STATUS)).unwrap();
    let mut dev = Block::new(f.disk.clone(), serial).unwrap();
    let irq = activate_blk(&mut dev, &f.mem, &[&vq]);
    dev.process_queue();
    settle(&mut dev);
    assert_eq!(used_idx(&vq), 1, "request was not returned to the driver");
    let (head, len) = used(&vq, 0);
    assert_eq!(head, 0);
    (len, status(&f.mem), irq)
}

/// Negotiate as a driver that polls the used ring would (FLUSH, so a writeback
/// cache), then activate `dev` on `vqs`.
pub(super) fn activate_blk(
    dev: &mut Block,
    mem: &GuestMemory,
    vqs: &[&MockSplitQueue<GuestMemory>],
) -> Arc<CountingInterrupt> {
    dev.ack_features(harness::polling_driver_features(dev));
    activate(dev, mem, vqs)
}

/// Wait for every request in flight to come back through the completion event.
pub(super) fn settle(dev: &mut Block) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while dev.in_flight() > 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "{} requests never completed",
            dev.in_flight()
        );
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        if harness::wait_readable(dev.completion_event(), left).unwrap() {
            dev.process_completions();
        }
    }
}

pub(super) fn disk_bytes(f: &Fixture, offset: u64, len: usize) -> Vec<u8> {
    let mut b = vec![0u8; len];
    f.disk.read_at(&mut b, offset).unwrap();
    b
}

pub(super) const OK: u8 = VIRTIO_BLK_S_OK as u8;
pub(super) const IOERR: u8 = VIRTIO_BLK_S_IOERR as u8;
const UNSUPP: u8 = VIRTIO_BLK_S_UNSUPP as u8;

#[test]
fn features_and_config() {
    let f = fixture(false);
    let dev = Block::new(f.disk.clone(), None).unwrap();
    let feat = dev.device_features();
    for b in [
        VIRTIO_BLK_F_FLUSH,
        VIRTIO_BLK_F_DISCARD,
        VIRTIO_BLK_F_WRITE_ZEROES,
        VIRTIO_BLK_F_SEG_MAX,
        VIRTIO_BLK_F_BLK_SIZE,
    ] {
        assert_ne!(feat & (1 << b), 0, "feature bit {b}");
    }
    assert_eq!(feat & (1 << VIRTIO_BLK_F_RO), 0);
    assert_ne!(feat & crate::virtio::VIRTIO_F_VERSION_1, 0);
    let mut c = [0u8; 8];
    dev.read_config(0, &mut c);
    assert_eq!(u64::from_le_bytes(c), DISK_SIZE / 512);
    let mut c = [0u8; 4];
    dev.read_config(12, &mut c);
    assert_eq!(u32::from_le_bytes(c), SEG_MAX);
    dev.read_config(20, &mut c);
    assert_eq!(u32::from_le_bytes(c), 512);
    dev.read_config(1000, &mut c);
    assert_eq!(c, [0; 4]);

    let ro = fixture(true);
    let dev = Block::new(ro.disk.clone(), None).unwrap();
    assert_ne!(dev.device_features() & (1 << VIRTIO_BLK_F_RO), 0);
    assert_eq!(dev.device_features() & (1 << VIRTIO_BLK_F_DISCARD), 0);
}

#[test]
fn read() {
    let f = fixture(false);
    header(&f.mem, VIRTIO_BLK_T_IN, 3);
    let (len, st, irq) = run(
        &f,
        None,
        &chain(0, &[(HDR, 16, false), (BUF, 1024, true), (STATUS, 1, true)]),
    );
    assert_eq!((st, len), (OK, 1025));
    assert_eq!(irq.used_count(), 1);
    let mut got = vec![0u8; 1024];
    f.mem.read_slice(&mut got, GuestAddress(BUF)).unwrap();
    assert_eq!(got, disk_bytes(&f, 3 * 512, 1024));
}

#[test]
fn read_with_split_header_and_zero_length_descriptor() {
    let f = fixture(false);
    header(&f.mem, VIRTIO_BLK_T_IN, 1);
    let descs = chain(
        0,
        &[
            (HDR, 8, false),
            (HDR + 8, 8, false),
            (BUF, 0, true),
            (BUF, 512, true),
            (STATUS, 1, true),
        ],
    );
    let (len, st, _) = run(&f, None, &descs);
    assert_eq!((st, len), (OK, 513));
    let mut got = vec![0u8; 512];
    f.mem.read_slice(&mut got, GuestAddress(BUF)).unwrap();
    assert_eq!(got, disk_bytes(&f, 512, 512));
}

#[test]
fn write() {
    let f = fixture(false);
    header(&f.mem, VIRTIO_BLK_T_OUT, 10);
    f.mem.write_slice(&[0x5a; 1536], GuestAddress(BUF)).unwrap();
    let (len, st, _) = run(
        &f,
        None,
        &chain(
            0,
            &[(HDR, 16, false), (BUF, 1536, false), (STATUS, 1, true)],
        ),
    );
    assert_eq!((st, len), (OK, 1));
    assert_eq!(disk_bytes(&f, 10 * 512, 1536), vec![0x5a; 1536]);
    assert_eq!(disk_bytes(&f, 13 * 512, 1), vec![((13 * 512) % 251) as u8]);
}

#[test]
fn flush() {
    let f = fixture(false);
    header(&f.mem, VIRTIO_BLK_T_FLUSH, 0);
    let (len, st, _) = run(&f, None, &chain(0, &[(HDR, 16, false), (STATUS, 1, true)]));
    assert_eq!((st, len), (OK, 1));
}

fn discard_segment(mem: &GuestMemory, sector: u64, n: u32, flags: u32) {
    let mut s = [0u8; 16];
    s[0..8].copy_from_slice(&sector.to_le_bytes());
    s[8..12].copy_from_slice(&n.to_le_bytes());
    s[12..16].copy_from_slice(&flags.to_le_bytes());
    mem.write_slice(&s, GuestAddress(BUF)).unwrap();
}

fn seg_chain() -> Vec<virtio_queue::desc::RawDescriptor> {
    chain(0, &[(HDR, 16, false), (BUF, 16, false), (STATUS, 1, true)])
}

#[test]
fn write_zeroes_with_and_without_unmap() {
    for flags in [0, VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP] {
        let f = fixture(false);
        header(&f.mem, VIRTIO_BLK_T_WRITE_ZEROES, 4);
        discard_segment(&f.mem, 4, 8, flags);
        let (len, st, _) = run(&f, None, &seg_chain());
        assert_eq!((st, len), (OK, 1));
        assert_eq!(disk_bytes(&f, 4 * 512, 4096), vec![0; 4096]);
        assert_ne!(disk_bytes(&f, 12 * 512, 512), vec![0; 512]);
        assert_ne!(disk_bytes(&f, 3 * 512, 512)[1..], vec![0; 511]);
    }
}

#[test]
fn discard() {
    let f = fixture(false);
    header(&f.mem, VIRTIO_BLK_T_DISCARD, 0);
    discard_segment(&f.mem, 8, 8, 0);
    let (len, st, _) = run(&f, None, &seg_chain());
    assert_eq!((st, len), (OK, 1));
    // Raw discard punches a hole, which reads back as zeroes.
    assert_eq!(disk_bytes(&f, 8 * 512, 4096), vec![0; 4096]);

    // Flags are not allowed on discard; too many segments; beyond the end.
    discard_segment(&f.mem, 8, 8, VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP);
    assert_eq!(run(&f, None, &seg_chain()).1, UNSUPP);
    discard_segment(&f.mem, DISK_SIZE / 512 - 1, 2, 0);
    assert_eq!(run(&f, None, &seg_chain()).1, IOERR);
    discard_segment(&f.mem, u64::MAX, u32::MAX, 0);
    assert_eq!(run(&f, None, &seg_chain()).1, IOERR);
    let two = chain(0, &[(HDR, 16, false), (BUF, 32, false), (STATUS, 1, true)]);
    assert_eq!(run(&f, None, &two).1, UNSUPP);
    let partial = chain(0, &[(HDR, 16, false), (BUF, 10, false), (STATUS, 1, true)]);
    assert_eq!(run(&f, None, &partial).1, IOERR);
}

#[test]
fn get_id() {
    let f = fixture(false);
    header(&f.mem, VIRTIO_BLK_T_GET_ID, 0);
    f.mem.write_slice(&[0xff; 20], GuestAddress(BUF)).unwrap();
    let descs = chain(0, &[(HDR, 16, false), (BUF, 20, true), (STATUS, 1, true)]);
    let (len, st, _) = run(&f, Some("kiln-disk-7"), &descs);
    assert_eq!((st, len), (OK, 21));
    let mut id = [0u8; 20];
    f.mem.read_slice(&mut id, GuestAddress(BUF)).unwrap();
    let mut want = [0u8; 20];
    want[..11].copy_from_slice(b"kiln-disk-7");
    assert_eq!(id, want);
}

#[test]
fn unsupported_type() {
    let f = fixture(false);
    header(&f.mem, 99, 0);
    let (len, st, _) = run(&f, None, &chain(0, &[(HDR, 16, false), (STATUS, 1, true)]));
    assert_eq!((st, len), (UNSUPP, 1));
}

#[test]
fn read_only_disk_refuses_writes() {
    let f = fixture(true);
    header(&f.mem, VIRTIO_BLK_T_OUT, 0);
    f.mem.write_slice(&[1; 512], GuestAddress(BUF)).unwrap();
    let descs = chain(0, &[(HDR, 16, false), (BUF, 512, false), (STATUS, 1, true)]);
    assert_eq!(run(&f, None, &descs).1, IOERR);
    assert_eq!(disk_bytes(&f, 0, 4), vec![0, 1, 2, 3]);
    header(&f.mem, VIRTIO_BLK_T_WRITE_ZEROES, 0);
    discard_segment(&f.mem, 0, 1, 0);
    assert_eq!(run(&f, None, &seg_chain()).1, IOERR);
}

// --- hostile chains ---

#[test]
fn buffer_outside_guest_memory() {
    let f = fixture(false);
    header(&f.mem, VIRTIO_BLK_T_IN, 0);
    let descs = chain(
        0,
        &[
            (HDR, 16, false),
            (MEM_SIZE - 256, 512, true),
            (STATUS, 1, true),
        ],
    );
    let (len, st, _) = run(&f, None, &descs);
    assert_eq!((len, st), (1, IOERR));
    let descs = chain(0, &[(u64::MAX - 8, 16, false), (STATUS, 1, true)]);
    assert_eq!(run(&f, None, &descs).1, IOERR);
}

#[test]
fn status_outside_guest_memory_drops_request() {
    let f = fixture(false);
    header(&f.mem, VIRTIO_BLK_T_FLUSH, 0);
    let descs = chain(0, &[(HDR, 16, false), (MEM_SIZE + 0x1000, 1, true)]);
    let (len, st, irq) = run(&f, None, &descs);
    assert_eq!(len, 0);
    assert_eq!(st, 0xee, "status memory untouched");
    assert_eq!(irq.used_count(), 1, "driver still gets the buffer back");
    let descs = chain(0, &[(HDR, 16, false), (u64::MAX, 1, true)]);
    assert_eq!(run(&f, None, &descs).0, 0);
}

#[test]
fn no_status_descriptor() {
    let f = fixture(false);
    header(&f.mem, VIRTIO_BLK_T_IN, 0);
    let descs = chain(0, &[(HDR, 16, false), (BUF, 512, false)]);
    let (len, st, _) = run(&f, None, &descs);
    assert_eq!((len, st), (0, 0xee));
    let descs = chain(0, &[(HDR, 16, false), (STATUS, 0, true)]);
    assert_eq!(run(&f, None, &descs).0, 0);
}

#[test]
fn descriptor_loops() {
    let f = fixture(false);
    header(&f.mem, VIRTIO_BLK_T_IN, 0);
    let next = VRING_DESC_F_NEXT as u16;
    let write = VRING_DESC_F_WRITE as u16;
    // Readable-only loop: never a status byte.
    let descs = [raw_desc(HDR, 16, next, 1), raw_desc(BUF, 512, next, 0)];
    assert_eq!(run(&f, None, &descs).0, 0);
    // Loop through a writable descriptor: readable after writable, IOERR.
    let descs = [
        raw_desc(HDR, 16, next, 1),
        raw_desc(STATUS, 1, next | write, 0),
    ];
    let (len, st, _) = run(&f, None, &descs);
    assert_eq!((len, st), (1, IOERR));
    // Self loop on the status descriptor.
    let descs = [
        raw_desc(HDR, 16, next, 1),
        raw_desc(STATUS, 1, next | write, 1),
    ];
    assert_eq!(
        run(&f, None, &descs).1,
        IOERR,
        "the loop repeats the 1-byte buffer: 14 payload bytes, not whole sectors"
    );
}

#[test]
fn zero_length_and_short_header() {
    let f = fixture(false);
    header(&f.mem, VIRTIO_BLK_T_IN, 0);
    let descs = chain(0, &[(HDR, 0, false), (BUF, 512, true), (STATUS, 1, true)]);
    assert_eq!(run(&f, None, &descs).1, IOERR);
    let descs = chain(0, &[(HDR, 12, false), (BUF, 512, true), (STATUS, 1, true)]);
    assert_eq!(run(&f, None, &descs).1, IOERR);
}

#[test]
fn read_into_device_read_only_buffer() {
    let f = fixture(false);
    header(&f.mem, VIRTIO_BLK_T_IN, 0);
    f.mem.write_slice(&[0x77; 512], GuestAddress(BUF)).unwrap();
    let descs = chain(0, &[(HDR, 16, false), (BUF, 512, false), (STATUS, 1, true)]);
    let (len, st, _) = run(&f, None, &descs);
    assert_eq!((len, st), (1, IOERR));
    let mut got = [0u8; 512];
    f.mem.read_slice(&mut got, GuestAddress(BUF)).unwrap();
    assert_eq!(
        got, [0x77; 512],
        "device wrote into a driver-read-only buffer"
    );
    // GET_ID into a read-only buffer.
    header(&f.mem, VIRTIO_BLK_T_GET_ID, 0);
    let descs = chain(0, &[(HDR, 16, false), (BUF, 20, false), (STATUS, 1, true)]);
    assert_eq!(run(&f, Some("x"), &descs).1, IOERR);
}

#[test]
fn beyond_end_and_unaligned() {
    let f = fixture(false);
    let last = DISK_SIZE / 512 - 1;
    for (sector, len) in [
        (last, 1024u32),
        (last + 1, 512),
        (u64::MAX, 512),
        (u64::MAX / 512, 512),
    ] {
        header(&f.mem, VIRTIO_BLK_T_IN, sector);
        let descs = chain(0, &[(HDR, 16, false), (BUF, len, true), (STATUS, 1, true)]);
        let (l, st, _) = run(&f, None, &descs);
        assert_eq!((l, st), (1, IOERR), "sector {sector}");
        header(&f.mem, VIRTIO_BLK_T_OUT, sector);
        let descs = chain(0, &[(HDR, 16, false), (BUF, len, false), (STATUS, 1, true)]);
        assert_eq!(run(&f, None, &descs).1, IOERR, "write sector {sector}");
    }
    header(&f.mem, VIRTIO_BLK_T_IN, last);
    let descs = chain(0, &[(HDR, 16, false), (BUF, 512, true), (STATUS, 1, true)]);
    assert_eq!(run(&f, None, &descs).1, OK, "last sector is readable");
    let descs = chain(0, &[(HDR, 16, false), (BUF, 100, true), (STATUS, 1, true)]);
    assert_eq!(run(&f, None, &descs).1, IOERR, "partial sector");
}

#[test]
fn many_requests_one_interrupt() {
    let f = fixture(false);
    header(&f.mem, VIRTIO_BLK_T_FLUSH, 0);
    let vq = MockSplitQueue::create(&f.mem, GuestAddress(0), 16);
    let mut descs = Vec::new();
    for i in 0..4u16 {
        descs.extend(chain(
            i * 2,
            &[(HDR, 16, false), (STATUS + u64::from(i), 1, true)],
        ));
    }
    vq.add_desc_chains(&descs, 0).unwrap();
    // Inline: the four flushes complete within the one call, so one interrupt.
    let mut dev = Block::with_workers(f.disk.clone(), None, 0).unwrap();
    let irq = activate_blk(&mut dev, &f.mem, &[&vq]);
    dev.process_queue();
    assert_eq!(used_idx(&vq), 4);
    assert_eq!(irq.used_count(), 1);
    assert!(dev.reset());
    dev.process_queue(); // no queue after reset: nothing happens
    assert_eq!(used_idx(&vq), 4);
}

//! Requests in indirect descriptor tables (VIRTIO_RING_F_INDIRECT_DESC), as Linux
//! sends every request of more than one buffer once the feature is offered.

use virtio_bindings::bindings::virtio_blk::*;
use virtio_bindings::bindings::virtio_ring::{VRING_DESC_F_INDIRECT, VRING_DESC_F_NEXT};
use vm_memory::{Bytes, GuestAddress};

use super::request::MAX_DESCRIPTORS;
use super::tests::*;
use crate::virtio::test_utils::*;
use crate::virtio::{VirtioDevice, VIRTIO_RING_F_INDIRECT};

/// Where the indirect table goes, clear of the header, buffers and status.
const TABLE: u64 = DATA + 0x1_0000;
/// Room for a few hundred 512-byte buffers.
const MANY: u64 = DATA + 0x2_0000;

#[test]
fn the_device_offers_indirect_descriptors() {
    let f = fixture(false);
    let dev = super::Block::new(f.disk.clone(), None).unwrap();
    assert_ne!(dev.device_features() & VIRTIO_RING_F_INDIRECT, 0);
}

#[test]
fn reads_and_writes_through_an_indirect_table() {
    let f = fixture(false);
    // A read into three buffers.
    header(&f.mem, VIRTIO_BLK_T_IN, 5);
    let bufs = [
        (HDR, 16, false),
        (BUF, 512, true),
        (BUF + 0x800, 1024, true),
        (BUF + 0x1000, 512, true),
        (STATUS, 1, true),
    ];
    let (len, st, _) = run(&f, None, &[indirect_table(&f.mem, TABLE, &bufs)]);
    assert_eq!((st, len), (OK, 2049));
    let mut got = vec![0u8; 2048];
    for (i, &(addr, n, _)) in bufs[1..4].iter().enumerate() {
        let at = [0, 512, 1536][i];
        f.mem
            .read_slice(&mut got[at..at + n as usize], GuestAddress(addr))
            .unwrap();
    }
    assert_eq!(got, disk_bytes(&f, 5 * 512, 2048));
    // A write of two buffers.
    header(&f.mem, VIRTIO_BLK_T_OUT, 9);
    f.mem.write_slice(&[0x71; 512], GuestAddress(BUF)).unwrap();
    f.mem
        .write_slice(&[0x72; 512], GuestAddress(BUF + 0x800))
        .unwrap();
    let bufs = [
        (HDR, 16, false),
        (BUF, 512, false),
        (BUF + 0x800, 512, false),
        (STATUS, 1, true),
    ];
    let (len, st, _) = run(&f, None, &[indirect_table(&f.mem, TABLE, &bufs)]);
    assert_eq!((st, len), (OK, 1));
    let mut want = vec![0x71; 512];
    want.extend([0x72; 512]);
    assert_eq!(disk_bytes(&f, 9 * 512, 1024), want);
}

/// A read of `segments` 512-byte buffers in one table.
fn read_of_segments(f: &Fixture, segments: usize) -> (u32, u8) {
    header(&f.mem, VIRTIO_BLK_T_IN, 0);
    let mut bufs = vec![(HDR, 16, false)];
    bufs.extend((0..segments).map(|i| (MANY + 512 * i as u64, 512, true)));
    bufs.push((STATUS, 1, true));
    let (len, st, _) = run(f, None, &[indirect_table(&f.mem, TABLE, &bufs)]);
    (len, st)
}

#[test]
fn a_table_longer_than_seg_max_allows_fails_the_request() {
    let f = fixture(false);
    let most = MAX_DESCRIPTORS - 2;
    assert_eq!(read_of_segments(&f, most), (512 * most as u32 + 1, OK));
    // One more, and the readv would go past what SEG_MAX promised the host takes.
    assert_eq!(read_of_segments(&f, most + 1), (1, IOERR));
    assert_eq!(read_of_segments(&f, 4000), (1, IOERR));
}

#[test]
fn malformed_tables_are_answered_without_a_panic() {
    let f = fixture(false);
    header(&f.mem, VIRTIO_BLK_T_IN, 0);
    let ok = [(HDR, 16, false), (BUF, 512, true), (STATUS, 1, true)];
    // An indirect descriptor inside a table (the spec forbids it): the chain ends
    // there, with no status byte, and is returned with nothing written.
    let inner = indirect_table(&f.mem, TABLE + 0x800, &ok);
    f.mem.write_obj(inner, GuestAddress(TABLE)).unwrap();
    let outer = raw_desc(TABLE, 16, VRING_DESC_F_INDIRECT as u16, 0);
    assert_eq!(run(&f, None, &[outer]).0, 0);
    // A table whose length is not whole descriptors.
    indirect_table(&f.mem, TABLE, &ok);
    let ragged = raw_desc(TABLE, 40, VRING_DESC_F_INDIRECT as u16, 0);
    assert_eq!(run(&f, None, &[ragged]).0, 0);
    // A table outside guest memory.
    let outside = raw_desc(MEM_SIZE - 16, 48, VRING_DESC_F_INDIRECT as u16, 0);
    assert_eq!(run(&f, None, &[outside]).0, 0);
    // A table whose entries loop: bounded by the table's size.
    let looped = [
        raw_desc(HDR, 16, VRING_DESC_F_NEXT as u16, 1),
        raw_desc(BUF, 512, VRING_DESC_F_NEXT as u16, 0),
    ];
    for (i, d) in looped.iter().enumerate() {
        f.mem
            .write_obj(*d, GuestAddress(TABLE + 16 * i as u64))
            .unwrap();
    }
    let table = raw_desc(TABLE, 32, VRING_DESC_F_INDIRECT as u16, 0);
    assert_eq!(run(&f, None, &[table]).0, 0);
}

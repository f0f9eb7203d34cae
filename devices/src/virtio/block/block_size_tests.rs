//! Logical and physical block sizes: what the driver is told (blk_size, topology,
//! discard alignment), and requests that are not whole logical blocks.

use std::sync::Arc;
use std::time::Duration;

use virtio_bindings::bindings::virtio_blk::*;

use super::harness::{Harness, Op, QueueDriver};
use super::*;
use crate::block::config::BlockSizes;
use crate::block::{open_disk, DiskConfig};

const DISK_SIZE: usize = 1 << 20;

fn raw_disk(dir: &tempfile::TempDir) -> Arc<dyn DiskBackend> {
    let path = dir.path().join("disk.raw");
    let content: Vec<u8> = (0..DISK_SIZE).map(|i| (i / 512) as u8).collect();
    std::fs::write(&path, content).unwrap();
    open_disk(&DiskConfig::new(path)).unwrap()
}

fn config_bytes<const N: usize>(dev: &Block, at: u64) -> [u8; N] {
    let mut b = [0u8; N];
    dev.read_config(at, &mut b);
    b
}

/// (blk_size, physical_block_exp, discard_sector_alignment, num_queues, capacity).
fn told(dev: &Block) -> (u32, u8, u32, u16, u64) {
    (
        u32::from_le_bytes(config_bytes(dev, 20)),
        config_bytes::<1>(dev, 24)[0],
        u32::from_le_bytes(config_bytes(dev, 44)),
        u16::from_le_bytes(config_bytes(dev, CONFIG_NUM_QUEUES as u64)),
        u64::from_le_bytes(config_bytes(dev, 0)),
    )
}

#[test]
fn the_driver_is_told_the_block_sizes() {
    let dir = tempfile::tempdir().unwrap();
    let mut dev = Block::new(raw_disk(&dir), None).unwrap();
    assert_ne!(dev.device_features() & bit(VIRTIO_BLK_F_TOPOLOGY), 0);
    assert_ne!(dev.device_features() & bit(VIRTIO_BLK_F_BLK_SIZE), 0);
    let sectors = DISK_SIZE as u64 / 512;
    assert_eq!(told(&dev), (512, 0, 1, 0, sectors));
    dev.set_num_queues(2).unwrap();
    // 512-byte sectors on 4 KiB physical blocks (a 512e disk).
    let e512 = BlockSizes {
        logical: 512,
        physical: 4096,
    };
    dev.set_block_sizes(e512);
    assert_eq!(told(&dev), (512, 3, 1, 2, sectors));
    // 4Kn: the capacity stays in 512-byte sectors, discards are whole 4 KiB blocks.
    dev.set_block_sizes(BlockSizes {
        logical: 4096,
        physical: 4096,
    });
    assert_eq!(told(&dev), (4096, 0, 8, 2, sectors));
}

#[test]
fn requests_must_be_whole_aligned_logical_blocks() {
    const OK: u8 = VIRTIO_BLK_S_OK as u8;
    const IOERR: u8 = VIRTIO_BLK_S_IOERR as u8;
    let cases: [(Op, u64, usize, u8); 8] = [
        (Op::Read, 4096, 4096, OK),
        (Op::Read, 8192, 8192, OK),
        (Op::Read, 512, 4096, IOERR),
        (Op::Read, 0, 512, IOERR),
        (Op::Write, 12288, 4096, OK),
        (Op::Write, 4096 + 1024, 4096, IOERR),
        (Op::Discard, 16384, 8192, OK),
        (Op::Discard, 16384, 2048, IOERR),
    ];
    // Through the I/O threads and through the ring (raw images take it).
    for ring in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        let disk = raw_disk(&dir);
        let mut dev = Block::new(disk.clone(), None).unwrap();
        dev.set_io_uring(ring);
        dev.set_block_sizes(BlockSizes {
            logical: 4096,
            physical: 4096,
        });
        let mut h = Harness::new(dev, 8, 8192).unwrap();
        assert_eq!(h.device().uses_io_uring(), ring);
        for (op, offset, len, want) in cases {
            let slot = h.submit(op, offset, len).unwrap().unwrap();
            h.kick().unwrap();
            let done = h.wait(Duration::from_secs(10)).unwrap();
            assert_eq!(done.len(), 1);
            assert_eq!(done[0].slot, slot);
            let case = format!("{op:?} of {len} at {offset} (ring {ring})");
            assert_eq!(done[0].status, want, "{case}");
        }
        // A whole-block write lands; the refused one left the disk as it was.
        h.submit_write(12288, &[0x77; 4096]).unwrap().unwrap();
        h.kick().unwrap();
        assert_eq!(h.wait(Duration::from_secs(10)).unwrap()[0].status, OK);
        let mut b = [0u8; 4096];
        disk.read_at(&mut b, 12288).unwrap();
        assert!(
            b.iter().all(|&x| x == 0x77),
            "ring {ring}: the whole-block write"
        );
        disk.read_at(&mut b, 4096 + 1024).unwrap();
        let sector = |i: usize| ((4096 + 1024 + i) / 512) as u8;
        let untouched = b.iter().enumerate().all(|(i, &x)| x == sector(i));
        assert!(untouched, "ring {ring}: the refused write landed");
    }
}

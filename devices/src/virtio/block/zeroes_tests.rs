//! `detect-zeroes` and `discard=ignore`: what reaches the disk for writes of zeroes,
//! discards and unmapping write-zeroes, through the pool and past the io_uring path of
//! raw images.

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::Mutex;

use vm_memory::VolatileSlice;

use super::cache_mode_tests::run_ok;
use super::harness::{Harness, Op};
use super::parallel_tests::OK;
use super::*;
use crate::block::config::{DetectZeroes, Discard};
use crate::block::delegate::delegate_disk;
use crate::block::raw::RawDisk;
use crate::block::{DiskError, ImageFormat};

const LEN: usize = 64 << 10;

/// A raw disk that records the writes, write-zeroes and discards it is asked for.
struct Recorder {
    raw: RawDisk,
    calls: Mutex<Vec<String>>,
}

impl Recorder {
    fn new(path: &Path) -> Arc<Self> {
        std::fs::write(path, vec![0x55u8; 1 << 20]).unwrap();
        Arc::new(Recorder {
            raw: RawDisk::open(path, false).unwrap(),
            calls: Mutex::new(Vec::new()),
        })
    }

    fn log(&self, call: String) {
        self.calls.lock().unwrap().push(call);
    }

    fn take(&self) -> Vec<String> {
        std::mem::take(&mut self.calls.lock().unwrap())
    }
}

impl DiskBackend for Recorder {
    delegate_disk!(raw: size, read_at, read_vectored, flush);
    fn format(&self) -> ImageFormat {
        ImageFormat::Raw
    }
    fn is_read_only(&self) -> bool {
        false
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> Result<(), DiskError> {
        self.log(format!("write {offset}"));
        self.raw.write_at(buf, offset)
    }
    fn write_vectored(&self, bufs: &[VolatileSlice<'_>], offset: u64) -> Result<(), DiskError> {
        self.log(format!("write {offset}"));
        self.raw.write_vectored(bufs, offset)
    }
    fn discard(&self, offset: u64, len: u64) -> Result<(), DiskError> {
        self.log(format!("discard {offset}+{len}"));
        self.raw.discard(offset, len)
    }
    fn write_zeroes(&self, offset: u64, len: u64, unmap: bool) -> Result<(), DiskError> {
        self.log(format!("zeroes {offset}+{len} unmap={unmap}"));
        self.raw.write_zeroes(offset, len, unmap)
    }
}

fn device(disk: Arc<dyn DiskBackend>, discard: Discard, detect: DetectZeroes) -> Harness {
    let mut dev = Block::with_workers(disk, None, 2).unwrap();
    dev.set_discard(discard);
    dev.set_detect_zeroes(detect);
    Harness::new(dev, 4, LEN).unwrap()
}

#[test]
fn writes_of_zeroes_reach_the_disk_as_asked() {
    let dir = tempfile::tempdir().unwrap();
    let zeroes = vec![0u8; LEN];
    let mut almost = zeroes.clone();
    almost[LEN - 1] = 1;
    for (discard, detect, expect) in [
        (Discard::Unmap, DetectZeroes::Off, "write 0"),
        (
            Discard::Unmap,
            DetectZeroes::On,
            "zeroes 0+65536 unmap=false",
        ),
        (
            Discard::Unmap,
            DetectZeroes::Unmap,
            "zeroes 0+65536 unmap=true",
        ),
        // Set on the device directly (a --disk option refuses the pair): no unmapping.
        (
            Discard::Ignore,
            DetectZeroes::Unmap,
            "zeroes 0+65536 unmap=false",
        ),
    ] {
        let disk = Recorder::new(&dir.path().join("disk.raw"));
        let mut h = device(disk.clone(), discard, detect);
        run_ok(&mut h, Op::Write, 0, Some(&zeroes));
        // One non-zero byte: data.
        run_ok(&mut h, Op::Write, LEN as u64, Some(&almost));
        let case = format!("{discard:?} {detect:?}");
        assert_eq!(disk.take(), [expect, "write 65536"], "{case}");
        let mut back = vec![0xffu8; 2 * LEN];
        disk.read_at(&mut back, 0).unwrap();
        assert!(back[..LEN].iter().all(|b| *b == 0), "{case}");
        assert_eq!(back[LEN..], almost[..], "{case}");
    }
}

#[test]
fn ignored_discards_succeed_and_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    for (discard, expect) in [
        (Discard::Unmap, vec!["discard 0+4096".to_string()]),
        (Discard::Ignore, vec![]),
    ] {
        let disk = Recorder::new(&dir.path().join("disk.raw"));
        let mut h = device(disk.clone(), discard, DetectZeroes::Off);
        run_ok(&mut h, Op::Discard, 0, None);
        assert_eq!(disk.take(), expect, "{discard:?}");
        let mut back = vec![0u8; 4096];
        disk.read_at(&mut back, 0).unwrap();
        let kept = back.iter().all(|b| *b == 0x55);
        assert_eq!(kept, discard == Discard::Ignore, "{discard:?}");
    }
}

/// Blocks the file system holds for `path`.
fn blocks(path: &Path) -> u64 {
    std::fs::metadata(path).unwrap().blocks()
}

#[test]
fn zeroes_on_a_raw_file_free_its_blocks_past_the_io_uring_path() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("disk.raw");
    for detect in [DetectZeroes::Off, DetectZeroes::Unmap] {
        std::fs::write(&path, vec![0x55u8; 1 << 20]).unwrap();
        let disk = Arc::new(RawDisk::open(&path, false).unwrap());
        let mut dev = Block::new(disk, None).unwrap();
        dev.set_detect_zeroes(detect);
        let mut h = Harness::new(dev, 4, LEN).unwrap();
        assert!(h.device().uses_io_uring(), "raw writes take the ring here");
        let before = blocks(&path);
        for i in 0..4 {
            run_ok(&mut h, Op::Write, i * LEN as u64, Some(&[0u8; LEN]));
        }
        let freed = before.saturating_sub(blocks(&path)) * 512;
        match detect {
            DetectZeroes::Off => assert_eq!(freed, 0, "written as data"),
            _ => assert_eq!(freed, 4 * LEN as u64, "punched"),
        }
        let bytes = std::fs::read(&path).unwrap();
        assert!(bytes[..4 * LEN].iter().all(|b| *b == 0), "{detect:?}");
        assert!(bytes[4 * LEN..].iter().all(|b| *b == 0x55), "{detect:?}");
    }
}

#[test]
fn ignored_discards_keep_write_zeroes_from_unmapping() {
    use super::io::IoContext;
    use super::request::{Request, RequestType, Segment};
    use virtio_bindings::bindings::virtio_blk::VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP;
    use vm_memory::{Bytes, GuestAddress};

    let dir = tempfile::tempdir().unwrap();
    let disk = Recorder::new(&dir.path().join("disk.raw"));
    let mem = crate::GuestMemory::from_ranges(&[(GuestAddress(0), 0x2000)]).unwrap();
    // One segment: sector 0, 8 sectors, UNMAP.
    let mut segment = [0u8; 16];
    segment[8..12].copy_from_slice(&8u32.to_le_bytes());
    segment[12..16].copy_from_slice(&VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP.to_le_bytes());
    mem.write_slice(&segment, GuestAddress(0x1000)).unwrap();
    let req = Request {
        kind: RequestType::WriteZeroes,
        sector: 0,
        data: vec![Segment {
            addr: GuestAddress(0x1000),
            len: 16,
        }],
        data_len: 16,
    };
    for discard in [Discard::Unmap, Discard::Ignore] {
        let ctx = IoContext {
            disk: disk.as_ref(),
            serial: &[],
            capacity: disk.size() / 512,
            flushes: true,
            writethrough: false,
            discard,
            block_size: 512,
        };
        assert_eq!(ctx.execute(&mem, &req).0, OK, "{discard:?}");
        let unmap = discard == Discard::Unmap;
        assert_eq!(disk.take(), [format!("zeroes 0+4096 unmap={unmap}")]);
    }
}

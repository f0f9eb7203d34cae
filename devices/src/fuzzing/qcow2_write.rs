//! qcow2 writes on a hostile image opened read-write with cache=none: through imago
//! and, where `write_extent` maps them, straight into the image file as virtio-blk's
//! io_uring path does.

use std::os::unix::fs::FileExt;
use std::path::Path;

use super::tempfile_in;
use crate::block::dio::AlignedBuf;
use crate::block::lock::Access;
use crate::block::qcow2::Qcow2Disk;
use crate::block::DiskBackend;

/// Bytes of input per operation.
const OP_LEN: usize = 4;
/// Most operations one input runs.
const MAX_OPS: usize = 16;
/// Transfers are whole 4 KiB blocks, which any O_DIRECT file takes.
const BLOCK: u64 = 4096;

/// What one input did, for the plain test to check that it reached the code.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct WriteOutcome {
    pub opened: bool,
    /// Writes `write_extent` mapped into the image file.
    pub extent_writes: usize,
}

/// Fuzz qcow2 writes. Byte 0 gives the number of operations (mod 17); each takes
/// [`OP_LEN`] bytes: the kind, then the block (u16) and a length in blocks (1-4).
/// The rest of the input is the image, written to a file in `dir` (on a file system
/// with O_DIRECT; the caller checks). Besides never panicking, a write
/// `write_extent` maps must read back through imago, and the image must reopen (or
/// be refused) after the writes.
pub fn qcow2_write_in(dir: &Path, data: &[u8]) -> WriteOutcome {
    let mut outcome = WriteOutcome::default();
    let Some((&count, rest)) = data.split_first() else {
        return outcome;
    };
    let count = usize::from(count) % (MAX_OPS + 1);
    let Some((ops, image)) = rest.split_at_checked(count * OP_LEN) else {
        return outcome;
    };
    let Ok((path, file)) = tempfile_in(dir) else {
        return outcome;
    };
    if file.write_all_at(image, 0).is_ok() {
        if let Ok(disk) = Qcow2Disk::open_with(&path, Access::ReadWrite, true) {
            outcome.opened = true;
            for (i, op) in ops.chunks_exact(OP_LEN).enumerate() {
                outcome.extent_writes += usize::from(run_op(&disk, op, i as u8));
            }
            let _ = disk.flush();
            drop(disk);
            let _ = Qcow2Disk::open(&path, true);
        }
    }
    let _ = std::fs::remove_file(&path);
    outcome
}

/// One operation; true if it was a write `write_extent` mapped.
fn run_op(disk: &Qcow2Disk, op: &[u8], tag: u8) -> bool {
    let blocks = disk.size() / BLOCK;
    if blocks == 0 {
        return false;
    }
    let block = u64::from(u16::from_le_bytes([op[1], op[2]])) % blocks;
    let len = (1 + u64::from(op[3] % 4)).min(blocks - block) * BLOCK;
    let offset = block * BLOCK;
    let mut buf = AlignedBuf::new(len as usize, 0);
    buf.fill(0xa0 | (tag & 0xf));
    match op[0] % 6 {
        0 => {
            let _ = disk.write_at(&buf, offset);
        }
        1 => {
            let _ = disk.write_zeroes(offset, len, op[3] & 0x80 != 0);
        }
        2 => {
            let _ = disk.discard(offset, len);
        }
        3 => {
            let _ = disk.flush();
        }
        _ => return write_through_extent(disk, &buf, offset),
    }
    false
}

/// Write `buf` where `write_extent` maps `offset`, as the io_uring path would, and
/// check that imago then reads it back.
fn write_through_extent(disk: &Qcow2Disk, buf: &[u8], offset: u64) -> bool {
    let len = buf.len() as u64;
    let Some((fd, host)) = disk.write_extent(offset, len) else {
        return false;
    };
    // SAFETY: `buf` is readable for `len` bytes, and `fd` stays open while `disk`
    // lives.
    let n = unsafe { libc::pwrite(fd, buf.as_ptr().cast(), buf.len(), host as i64) };
    assert_eq!(
        n,
        buf.len() as isize,
        "write extent at {offset} (host {host}) writes short"
    );
    let mut back = vec![0u8; buf.len()];
    if disk.read_at(&mut back, offset).is_ok() {
        assert!(
            back == buf,
            "write extent at {offset} (host {host}) does not read back through imago"
        );
    }
    true
}

//! Entry points shared by the cargo-fuzz targets (`fuzz/`) and the plain `#[test]`
//! that runs them over a seed corpus plus pseudo-random inputs on a stable toolchain.
//!
//! Each takes arbitrary bytes and must never panic.

use std::sync::{Arc, Mutex};

use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
use virtio_queue::mock::MockSplitQueue;
use virtio_queue::Queue;
use vm_memory::{Bytes, GuestAddress};

use crate::block::config::BlockSizes;
use crate::block::qcow2::header::Qcow2Header;
use crate::block::qcow2::refcheck::{
    check_refcounts, count_data_references, scan_in_windows, scan_refcounts,
};
use crate::block::qcow2::repair::{rebuild_refcounts, repair, RepairMode};
use crate::block::{check_range, DiskBackend, DiskError, ImageFormat};
use crate::virtio::block::Block;
use crate::virtio::{ActivateContext, VirtioDevice, VirtioInterrupt};
use crate::GuestMemory;

const MEM: usize = 0x2_0000;
const QUEUE_SIZE: u16 = 16;

/// An in-memory disk for fuzzing.
struct MemDisk(Mutex<Vec<u8>>);

impl DiskBackend for MemDisk {
    fn format(&self) -> ImageFormat {
        ImageFormat::Raw
    }
    fn size(&self) -> u64 {
        self.0.lock().unwrap().len() as u64
    }
    fn is_read_only(&self) -> bool {
        false
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<(), DiskError> {
        check_range(offset, buf.len() as u64, self.size())?;
        let d = self.0.lock().unwrap();
        buf.copy_from_slice(&d[offset as usize..offset as usize + buf.len()]);
        Ok(())
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> Result<(), DiskError> {
        check_range(offset, buf.len() as u64, self.size())?;
        let mut d = self.0.lock().unwrap();
        d[offset as usize..offset as usize + buf.len()].copy_from_slice(buf);
        Ok(())
    }
    fn read_vectored(
        &self,
        bufs: &[vm_memory::VolatileSlice<'_>],
        offset: u64,
    ) -> Result<(), DiskError> {
        let mut pos = offset;
        for b in bufs {
            let mut tmp = vec![0u8; b.len()];
            self.read_at(&mut tmp, pos)?;
            b.copy_from(&tmp);
            pos += b.len() as u64;
        }
        Ok(())
    }
    fn write_vectored(
        &self,
        bufs: &[vm_memory::VolatileSlice<'_>],
        offset: u64,
    ) -> Result<(), DiskError> {
        let mut pos = offset;
        for b in bufs {
            let mut tmp = vec![0u8; b.len()];
            b.copy_to(&mut tmp[..]);
            self.write_at(&tmp, pos)?;
            pos += b.len() as u64;
        }
        Ok(())
    }
    fn flush(&self) -> Result<(), DiskError> {
        Ok(())
    }
    fn discard(&self, offset: u64, len: u64) -> Result<(), DiskError> {
        self.write_zeroes(offset, len, true)
    }
    fn write_zeroes(&self, offset: u64, len: u64, _unmap: bool) -> Result<(), DiskError> {
        check_range(offset, len, self.size())?;
        let mut d = self.0.lock().unwrap();
        d[offset as usize..(offset + len) as usize].fill(0);
        Ok(())
    }
}

struct NoInterrupt;

impl VirtioInterrupt for NoInterrupt {
    fn signal_used_queue(&self, _: u16) -> std::io::Result<()> {
        Ok(())
    }
    fn signal_config_change(&self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A split virtqueue of [`QUEUE_SIZE`] at guest address 0 of `mem`, holding the
/// descriptor chains `data` describes, with the rest of `data` as guest memory from
/// 0x1000. The first byte gives the number of descriptors (1-16), then 16 bytes each:
/// addr, len, flags, next. `None` when the input makes no chain.
fn fuzzed_queue(data: &[u8], mem: &GuestMemory) -> Option<Queue> {
    let n = (data.first().copied().unwrap_or(0) as usize % QUEUE_SIZE as usize) + 1;
    let (descs, rest) = data
        .get(1..)
        .unwrap_or(&[])
        .split_at(((n * 16).min(data.len().saturating_sub(1))) & !15);
    // Fill guest memory above the queue with the rest of the input.
    let _ = mem.write_slice(&rest[..rest.len().min(MEM - 0x1000)], GuestAddress(0x1000));
    let vq = MockSplitQueue::create(mem, GuestAddress(0), QUEUE_SIZE);
    let raw: Vec<RawDescriptor> = descs
        .chunks_exact(16)
        .map(|c| {
            let addr = u64::from_le_bytes(c[0..8].try_into().unwrap_or_default());
            // Keep most addresses inside memory so parsing goes deep, but not all.
            let addr = if c[15] & 0x80 == 0 {
                addr % MEM as u64
            } else {
                addr
            };
            let len = u32::from_le_bytes(c[8..12].try_into().unwrap_or_default()) % 0x4000;
            let flags = u16::from_le_bytes([c[12], c[13]]) & 0x7;
            let next = u16::from(c[14]) % QUEUE_SIZE;
            RawDescriptor::from(SplitDescriptor::new(addr, len, flags, next))
        })
        .collect();
    if raw.is_empty() || vq.add_desc_chains(&raw, 0).is_err() {
        return None;
    }
    vq.create_queue().ok()
}

fn fuzz_memory() -> Option<GuestMemory> {
    GuestMemory::from_ranges(&[(GuestAddress(0), MEM)]).ok()
}

/// Fuzz virtio-blk request parsing and execution (input: see [`fuzzed_queue`]).
pub fn blk_descriptor_chain(data: &[u8]) {
    let Some(mem) = fuzz_memory() else { return };
    let Some(queue) = fuzzed_queue(data, &mem) else {
        return;
    };
    let disk = Arc::new(MemDisk(Mutex::new(vec![0x5a; 64 * 512])));
    let Ok(mut dev) = Block::with_workers(disk, Some("fuzz"), 0) else {
        return;
    };
    // The last byte picks the block sizes (512 to 4096 logical), so that requests are
    // also checked against blocks larger than a sector.
    let sizes = data.last().copied().unwrap_or(0);
    let logical = 512 << (sizes % 4);
    dev.set_block_sizes(BlockSizes {
        logical,
        physical: logical << ((sizes >> 2) % 4),
    });
    let Ok(evt) = vmm_sys_util::eventfd::EventFd::new(0) else {
        return;
    };
    let ctx = ActivateContext {
        mem: mem.clone(),
        queues: vec![queue],
        queue_events: vec![evt],
        interrupt: Arc::new(NoInterrupt),
    };
    if dev.activate(ctx).is_ok() {
        dev.process_queue();
    }
}

/// Fuzz kiln's qcow2 header, L1 and refcount/L2 parsing on an image given as bytes.
pub fn qcow2_metadata(data: &[u8]) {
    let Ok(h) = Qcow2Header::parse(data) else {
        return;
    };
    let len = data.len() as u64;
    let _ = h.cluster_size();
    if h.check_layout(len).is_err() {
        return;
    }
    let l1_end = (h.l1_table_offset + u64::from(h.l1_size) * 8) as usize;
    if let Some(l1) = data.get(h.l1_table_offset as usize..l1_end) {
        let _ = h.check_l1_table(l1, len);
    }
    let _ = check_refcounts(data, &h, len);
    scans_agree_in_windows(data, &h);
    repair_a_copy(data, &h);
}

/// Counting the refcounts in passes over windows of clusters must find what one pass
/// finds. Windows of a third of the file keep the passes few.
fn scans_agree_in_windows(data: &[u8], h: &Qcow2Header) {
    let len = data.len() as u64;
    let window = len.div_ceil(h.cluster_size()) / 3 + 1;
    assert_eq!(
        scan_in_windows(data, h, len, window),
        scan_in_windows(data, h, len, u64::MAX),
        "a scan in windows of {window} clusters"
    );
}

/// `kiln img check -r all` on a copy of the image: whatever the metadata says, the
/// repair must end without a panic (what it cannot fix it reports).
fn repair_a_copy(data: &[u8], h: &Qcow2Header) {
    use std::io::Write;
    let Ok((path, mut file)) = tempfile_in_shm() else {
        return;
    };
    let len = data.len() as u64;
    if file.write_all(data).is_ok() {
        if let Ok(scan) = scan_refcounts(&file, h, len) {
            let _ = repair(&file, h, len, &scan, RepairMode::All);
        }
        rebuild_and_recount(&file, h, len);
    }
    let _ = std::fs::remove_file(&path);
}

/// Rebuild the refcount structures of the image in `file`. If that succeeds and the
/// metadata still means what it meant (hostile tables may overlap the header fields
/// the rebuild rewrites), a new count must find every refcount at least its
/// references.
fn rebuild_and_recount(file: &std::fs::File, h: &Qcow2Header, len: u64) {
    use std::os::unix::fs::FileExt;
    let Ok(before) = count_data_references(file, h, len) else {
        return;
    };
    if rebuild_refcounts(file, h, len).is_err() {
        return;
    }
    let new_len = file.metadata().map(|m| m.len()).unwrap_or(0);
    let mut first = vec![0u8; new_len.min(2 << 20) as usize];
    if file.read_exact_at(&mut first, 0).is_err() {
        return;
    }
    let rebuilt = Qcow2Header::parse(&first).expect("a rebuild keeps the header parseable");
    let Ok(after) = count_data_references(file, &rebuilt, new_len) else {
        return;
    };
    if after[..before.len()] != before[..] || after[before.len()..].iter().any(|&r| r != 0) {
        return;
    }
    let scan = scan_refcounts(file, &rebuilt, new_len).expect("the rebuilt image counts");
    assert!(
        scan.corruptions.is_empty(),
        "refcounts too small after a rebuild: {:?}",
        scan.corruptions
    );
}

/// Fuzz the whole qcow2 open path including imago (header, L1/L2, refcounts, reads)
/// on an image written to a temporary file.
pub fn qcow2_open_and_read(data: &[u8]) {
    use std::io::Write;
    let Ok(mut f) = tempfile_in_shm() else { return };
    if f.1.write_all(data).is_err() {
        return;
    }
    if let Ok(disk) = crate::block::qcow2::Qcow2Disk::open(&f.0, true) {
        let size = disk.size().min(1 << 20);
        let mut buf = vec![0u8; 4096];
        let mut off = 0;
        while off + 4096 <= size {
            let through_imago = disk.read_at(&mut buf, off);
            // Where virtio-blk would read around imago, it must get the same bytes.
            if let (Ok(()), Some((fd, host))) = (through_imago, disk.read_extent(off, 4096)) {
                let mut direct = vec![0u8; 4096];
                // SAFETY: `direct` is a writable buffer of 4096 bytes, and `fd` stays
                // open while `disk` lives.
                let n = unsafe { libc::pread(fd, direct.as_mut_ptr().cast(), 4096, host as i64) };
                assert_eq!(n, 4096, "read extent at {off} (host {host}) reads short");
                assert!(direct == buf, "read extent at {off} (host {host}) differs");
            }
            off += 4096 * 7;
        }
    }
    let _ = std::fs::remove_file(&f.0);
}

/// A fresh file for one input in /dev/shm (memory, so fast) or /tmp.
fn tempfile_in_shm() -> std::io::Result<(std::path::PathBuf, std::fs::File)> {
    let dir = if std::path::Path::new("/dev/shm").is_dir() {
        "/dev/shm"
    } else {
        "/tmp"
    };
    tempfile_in(std::path::Path::new(dir))
}

/// A fresh, empty file in `dir`, named for this process and input.
fn tempfile_in(dir: &std::path::Path) -> std::io::Result<(std::path::PathBuf, std::fs::File)> {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    let path = dir.join(format!(
        "kiln-fuzz-{}-{}.qcow2",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&path)?;
    Ok((path, f))
}

/// The first of /dev/shm (tmpfs takes O_DIRECT since Linux 6.6), the temporary
/// directory and /var/tmp whose file system takes direct I/O, as cache=none needs.
pub fn direct_io_dir() -> Option<std::path::PathBuf> {
    let candidates = [
        std::path::PathBuf::from("/dev/shm"),
        std::env::temp_dir(),
        std::path::PathBuf::from("/var/tmp"),
    ];
    candidates.into_iter().find(|dir| {
        let Ok((path, _file)) = tempfile_in(dir) else {
            return false;
        };
        let direct = crate::block::dio::open_direct(&path, true).is_ok();
        let _ = std::fs::remove_file(&path);
        direct
    })
}

/// [`qcow2_write_in`] in [`direct_io_dir`], found once per process. Panics if no
/// directory takes direct I/O: the target would test nothing.
pub fn qcow2_write(data: &[u8]) {
    static DIR: std::sync::OnceLock<Option<std::path::PathBuf>> = std::sync::OnceLock::new();
    let dir = DIR.get_or_init(direct_io_dir).as_ref();
    let dir = dir.expect("no directory here takes O_DIRECT (tried /dev/shm, $TMPDIR, /var/tmp)");
    qcow2_write_in(dir, data);
}

mod console;
mod net;
mod qcow2_write;
mod serial;
pub use console::console_tx;
pub use net::net_chains;
pub use qcow2_write::{qcow2_write_in, WriteOutcome};
pub use serial::serial_control;

#[cfg(test)]
mod tests;

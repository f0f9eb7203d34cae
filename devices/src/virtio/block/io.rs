//! Executing one parsed virtio-blk request against the disk.

use log::{debug, warn};
use virtio_bindings::bindings::virtio_blk::*;
use virtio_queue::DescriptorChain;
use vm_memory::{Bytes, GuestMemoryBackend, VolatileSlice};

use super::request::{parse, read_segments, Parsed, Request, RequestType, Segment, SEGMENT_LEN};
use super::{MAX_DISCARD_SECTORS, MAX_DISCARD_SEGMENTS};
use crate::block::config::Discard;
use crate::block::{DiskBackend, SECTOR_SIZE};
use crate::GuestMemory;

/// What a request needs besides guest memory.
pub struct IoContext<'a> {
    pub disk: &'a dyn DiskBackend,
    pub serial: &'a [u8],
    /// Disk size in sectors.
    pub capacity: u64,
    /// Whether a FLUSH reaches the disk (false with `cache=unsafe`: it succeeds at once).
    pub flushes: bool,
    /// Each write is flushed before it completes: the driver chose a writethrough cache
    /// (see `Block::writethrough`) and FLUSH reaches the disk.
    pub writethrough: bool,
    /// With [`Discard::Ignore`], discards change nothing and write-zeroes never unmap.
    pub discard: Discard,
    /// The logical block size in bytes (a multiple of 512): every transfer, discard and
    /// write-zeroes must be whole blocks at a block boundary.
    pub block_size: u64,
}

/// Outcome: the status byte and how many bytes the device wrote into the payload.
type Outcome = (u8, u32);

const OK: u8 = VIRTIO_BLK_S_OK as u8;
const IOERR: u8 = VIRTIO_BLK_S_IOERR as u8;
const UNSUPP: u8 = VIRTIO_BLK_S_UNSUPP as u8;

impl IoContext<'_> {
    /// Parse and run one chain; returns the used length (payload written + status byte).
    pub fn handle_chain(&self, mem: &GuestMemory, chain: DescriptorChain<&GuestMemory>) -> u32 {
        match parse(mem, chain) {
            Ok(parsed) => self.complete(mem, parsed),
            Err(e) => {
                warn!("virtio-blk: dropping request: {e}");
                0
            }
        }
    }

    /// Run a parsed chain and write its status; returns the used length (payload
    /// written + status byte).
    pub fn complete(&self, mem: &GuestMemory, parsed: Parsed) -> u32 {
        let (status, written) = match parsed.request {
            Ok(req) => self.execute(mem, &req),
            Err(e) => {
                warn!("virtio-blk: malformed request: {e}");
                (IOERR, 0)
            }
        };
        if let Err(e) = mem.write_obj(status, parsed.status) {
            // parse() checked the address; memory cannot shrink under us.
            warn!("virtio-blk: cannot write status: {e}");
            return 0;
        }
        written.saturating_add(1)
    }

    /// Run a well-formed request; in writethrough mode a successful write is flushed
    /// before it completes (a failed flush fails the write).
    pub fn execute(&self, mem: &GuestMemory, req: &Request) -> Outcome {
        let outcome = self.execute_cached(mem, req);
        let write = matches!(
            req.kind,
            RequestType::Out
                | RequestType::Discard
                | RequestType::WriteZeroes
                | RequestType::ZeroedOut { .. }
        );
        if write && outcome.0 == OK && self.writethrough {
            if let Err(e) = self.disk.flush() {
                warn!(
                    "virtio-blk: flush after a writethrough {:?} failed: {e}",
                    req.kind
                );
                return (IOERR, 0);
            }
        }
        outcome
    }

    /// Run a well-formed request as a writeback cache would.
    fn execute_cached(&self, mem: &GuestMemory, req: &Request) -> Outcome {
        match req.kind {
            RequestType::In | RequestType::Out => self.read_write(mem, req),
            RequestType::Flush if !self.flushes => (OK, 0),
            RequestType::Flush => match self.disk.flush() {
                Ok(()) => (OK, 0),
                Err(e) => {
                    warn!("virtio-blk: flush failed: {e}");
                    (IOERR, 0)
                }
            },
            RequestType::GetId => self.get_id(mem, req),
            RequestType::Discard | RequestType::WriteZeroes => self.discard(mem, req),
            RequestType::ZeroedOut { unmap } => self.zeroed_out(req, unmap),
            RequestType::Unsupported(t) => {
                debug!("virtio-blk: unsupported request type {t}");
                (UNSUPP, 0)
            }
        }
    }

    /// Byte offset and length of `sectors` sectors at `sector`, if inside the disk.
    fn byte_range(&self, sector: u64, bytes: u64) -> Option<u64> {
        let end_sector = sector.checked_add(bytes.div_ceil(SECTOR_SIZE))?;
        (end_sector <= self.capacity).then(|| sector * SECTOR_SIZE)
    }

    /// Whether `bytes` at `sector` are whole logical blocks at a block boundary.
    fn whole_blocks(&self, sector: u64, bytes: u64) -> bool {
        let block = self.block_size.max(SECTOR_SIZE);
        bytes % block == 0 && sector % (block / SECTOR_SIZE) == 0
    }

    /// Byte offset of an IN or OUT request's data on the disk, if the request is whole
    /// logical blocks inside the disk (logged otherwise).
    pub fn transfer_offset(&self, req: &Request) -> Option<u64> {
        if !self.whole_blocks(req.sector, req.data_len) {
            warn!(
                "virtio-blk: {:?} of {} bytes at sector {} is not whole {}-byte blocks",
                req.kind, req.data_len, req.sector, self.block_size
            );
            return None;
        }
        let offset = self.byte_range(req.sector, req.data_len);
        if offset.is_none() {
            warn!(
                "virtio-blk: {:?} of {} bytes at sector {} is beyond the disk ({} sectors)",
                req.kind, req.data_len, req.sector, self.capacity
            );
        }
        offset
    }

    fn read_write(&self, mem: &GuestMemory, req: &Request) -> Outcome {
        let Some(offset) = self.transfer_offset(req) else {
            return (IOERR, 0);
        };
        let slices = match guest_slices(mem, &req.data) {
            Some(s) => s,
            None => return (IOERR, 0),
        };
        let result = if req.kind == RequestType::In {
            self.disk.read_vectored(&slices, offset)
        } else {
            self.disk.write_vectored(&slices, offset)
        };
        match result {
            // data_len fits u32: a chain carries at most 2^32 bytes.
            Ok(()) if req.kind == RequestType::In => (OK, req.data_len as u32),
            Ok(()) => (OK, 0),
            Err(e) => {
                warn!(
                    "virtio-blk: {:?} at sector {} failed: {e}",
                    req.kind, req.sector
                );
                (IOERR, 0)
            }
        }
    }

    /// An OUT of zeroes (detect-zeroes): a write-zeroes of its range.
    fn zeroed_out(&self, req: &Request, unmap: bool) -> Outcome {
        let Some(offset) = self.transfer_offset(req) else {
            return (IOERR, 0);
        };
        let unmap = unmap && self.discard == Discard::Unmap;
        match self.disk.write_zeroes(offset, req.data_len, unmap) {
            Ok(()) => (OK, 0),
            Err(e) => {
                warn!(
                    "virtio-blk: zeroes written at sector {} failed: {e}",
                    req.sector
                );
                (IOERR, 0)
            }
        }
    }

    fn get_id(&self, mem: &GuestMemory, req: &Request) -> Outcome {
        // The ID is VIRTIO_BLK_ID_BYTES long, zero-padded; shorter buffers get a prefix.
        let mut id = [0u8; VIRTIO_BLK_ID_BYTES as usize];
        id[..self.serial.len()].copy_from_slice(self.serial);
        let mut written = 0usize;
        for seg in &req.data {
            if written == id.len() {
                break;
            }
            let n = (seg.len as usize).min(id.len() - written);
            if mem
                .write_slice(&id[written..written + n], seg.addr)
                .is_err()
            {
                return (IOERR, written as u32);
            }
            written += n;
        }
        (OK, written as u32)
    }

    fn discard(&self, mem: &GuestMemory, req: &Request) -> Outcome {
        let unmap_flag = VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP;
        if req.data_len == 0 || req.data_len % SEGMENT_LEN as u64 != 0 {
            warn!(
                "virtio-blk: {:?} payload of {} bytes",
                req.kind, req.data_len
            );
            return (IOERR, 0);
        }
        let count = req.data_len / SEGMENT_LEN as u64;
        if count > u64::from(MAX_DISCARD_SEGMENTS) {
            return (UNSUPP, 0);
        }
        let segments = match read_segments(mem, &req.data, count as usize) {
            Ok(s) => s,
            Err(e) => {
                warn!("virtio-blk: {e}");
                return (IOERR, 0);
            }
        };
        for s in segments {
            let allowed = if req.kind == RequestType::Discard {
                0
            } else {
                unmap_flag
            };
            if s.flags & !allowed != 0 {
                return (UNSUPP, 0);
            }
            let bytes = u64::from(s.num_sectors) * SECTOR_SIZE;
            if s.num_sectors > MAX_DISCARD_SECTORS {
                return (IOERR, 0);
            }
            if !self.whole_blocks(s.sector, bytes) {
                warn!(
                    "virtio-blk: {:?} of {} sectors at sector {} is not whole {}-byte blocks",
                    req.kind, s.num_sectors, s.sector, self.block_size
                );
                return (IOERR, 0);
            }
            let Some(offset) = self.byte_range(s.sector, bytes) else {
                return (IOERR, 0);
            };
            let unmap = s.flags & unmap_flag != 0 && self.discard == Discard::Unmap;
            let result = match req.kind {
                RequestType::Discard if self.discard == Discard::Ignore => Ok(()),
                RequestType::Discard => self.disk.discard(offset, bytes),
                _ => self.disk.write_zeroes(offset, bytes, unmap),
            };
            if let Err(e) = result {
                warn!(
                    "virtio-blk: {:?} at sector {} failed: {e}",
                    req.kind, s.sector
                );
                return (IOERR, 0);
            }
        }
        (OK, 0)
    }
}

/// Host views of the guest buffers `segs`, split where guest memory regions split.
fn guest_slices<'m>(mem: &'m GuestMemory, segs: &[Segment]) -> Option<Vec<VolatileSlice<'m>>> {
    let mut out = Vec::with_capacity(segs.len());
    for s in segs {
        for slice in mem.get_slices(s.addr, s.len as usize) {
            match slice {
                Ok(v) => out.push(v),
                Err(e) => {
                    warn!("virtio-blk: buffer {:#x}+{}: {e}", s.addr.0, s.len);
                    return None;
                }
            }
        }
    }
    Some(out)
}

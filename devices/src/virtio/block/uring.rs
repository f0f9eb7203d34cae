//! io_uring submission of IN and OUT requests on raw images, and of IN requests on
//! the data clusters of qcow2 images.
//!
//! With a raw image the disk is a file, so the event loop can hand the kernel a
//! readv/writev straight into the guest buffers: one `io_uring_enter` per read or per
//! 8 writes (see `inflight::WRITES_PER_SUBMIT`) instead of two thread hand-offs (and
//! context switches), which is what the worker pool costs on a host with few cores.
//! Measured with `kiln bench blk` (cold 4 KiB random reads at depth 64 on a 2-core
//! host): about 8-10 us of CPU per request against about 15 us through the pool. The
//! ring signals the device's completion `EventFd` (registered with `register_eventfd`),
//! and the event loop reaps the completions on that event, next to the workers' ones.
//! A qcow2 image's reads take the same path when `DiskBackend::read_extent` maps them
//! to one run of the image file; everything else about qcow2 stays on the workers.
//!
//! One ring per activated queue, owned by the event loop. At most queue-size requests
//! are in flight (the pipeline's cap), each with one SQE at a time, so a ring of
//! queue-size entries (and twice as many CQEs) never overflows.
//!
//! The `io-uring` crate (tokio-rs) is used because it is a thin, runtime-free binding
//! of the kernel ABI with no C library behind it, maintained by the tokio project and
//! the most used Rust io_uring binding; kiln needs nothing but readv, writev and an
//! eventfd from it.
//!
//! Lifetime of the buffers: an SQE holds raw pointers into guest memory and into the
//! request's iovec array until its CQE is reaped. [`UringEngine`] owns clones of the
//! guest memory and of the disk (which keeps the file descriptor open), and its `Drop`
//! waits for every CQE before either can go; if it cannot wait, it leaks them rather
//! than let the kernel write into freed memory.

use std::io;
use std::os::unix::io::{AsRawFd, RawFd};
use std::sync::Arc;

use io_uring::{opcode, types, IoUring};
use log::warn;
use virtio_bindings::bindings::virtio_blk::{VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_OK};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend as _};
use vmm_sys_util::eventfd::EventFd;

use super::inflight::Completion;
use super::request::{RequestType, Segment};
use crate::block::dio::IoAlign;
use crate::block::DiskBackend;
use crate::GuestMemory;

/// `user_data` of the cancellation pushed when the ring goes.
const CANCEL_ALL: u64 = u64::MAX;

/// A read or write in the ring.
struct RingRequest {
    seq: u64,
    head: u16,
    status: GuestAddress,
    write: bool,
    /// The disk's file this request reads or writes.
    fd: RawFd,
    /// Host addresses of the guest buffers; the SQE points into this heap array,
    /// which stays put while the request lives (only the `Vec` header moves).
    iovs: Vec<libc::iovec>,
    /// First iovec not fully transferred, and the file offset where it goes.
    first: usize,
    offset: u64,
    data_len: u32,
}

// SAFETY: the iovecs are plain addresses into guest memory (shared between threads by
// design: vCPUs and the kernel write it concurrently) and are only dereferenced by the
// kernel; nothing about them is tied to the thread that built them, so the request may
// move with the device to another thread.
unsafe impl Send for RingRequest {}

/// One io_uring for one virtio-blk queue.
pub struct UringEngine {
    ring: IoUring,
    /// Requests by `user_data`; `free` lists the empty slots.
    slots: Vec<Option<RingRequest>>,
    free: Vec<usize>,
    /// SQEs pushed whose CQE has not been reaped.
    in_ring: usize,
    /// SQEs pushed since the last submit.
    unsubmitted: usize,
    /// Keep the buffers mapped and the fd open while the kernel may use them.
    mem: Arc<GuestMemory>,
    _disk: Arc<dyn DiskBackend>,
}

/// Whether this process may set up an io_uring (kernel support, seccomp, limits).
pub fn probe() -> io::Result<()> {
    IoUring::new(2).map(drop)
}

impl UringEngine {
    /// A ring of `entries` SQEs for the files of `disk` (see
    /// `DiskBackend::read_extent` and `passthrough_fd`) that signals `event` on
    /// completions. Fails where io_uring is unavailable (old kernel, seccomp, limits)
    /// or the disk has no file to reach directly.
    pub fn new(
        entries: u32,
        disk: Arc<dyn DiskBackend>,
        mem: Arc<GuestMemory>,
        event: &EventFd,
    ) -> io::Result<Self> {
        if !disk.has_read_extents() {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "no host file to reach directly",
            ));
        }
        let ring = IoUring::builder()
            .setup_cqsize(entries.saturating_mul(2))
            .build(entries)?;
        ring.submitter().register_eventfd(event.as_raw_fd())?;
        Ok(UringEngine {
            ring,
            slots: Vec::new(),
            free: Vec::new(),
            in_ring: 0,
            unsubmitted: 0,
            mem,
            _disk: disk,
        })
    }

    /// SQEs pushed and not yet handed to the kernel.
    pub fn unsubmitted(&self) -> usize {
        self.unsubmitted
    }

    /// Requests in the ring.
    pub fn in_flight(&self) -> usize {
        self.in_ring
    }

    /// Requests in the ring whose completion has not arrived yet (a read the page
    /// cache answers completes during its submission, so it never counts here).
    pub fn unfinished(&mut self) -> usize {
        self.in_ring.saturating_sub(self.ring.completion().len())
    }

    /// Queue an IN or OUT of `segs` (checked inside guest memory by the parser, and
    /// inside the disk by the caller) at byte `offset` of `fd`, a file the disk keeps
    /// open, whose transfers must meet `align`. Returns false, queueing nothing, if the
    /// buffers cannot be mapped, do not meet `align`, or the ring is full: the caller
    /// then runs the request another way. Call [`UringEngine::submit`] after the batch.
    pub fn push(
        &mut self,
        (seq, head, status): (u64, u16, GuestAddress),
        kind: RequestType,
        segs: &[Segment],
        (fd, offset): (RawFd, u64),
        align: IoAlign,
    ) -> bool {
        let mut iovs = Vec::with_capacity(segs.len());
        let mut data_len = 0u32;
        for s in segs {
            for slice in self.mem.get_slices(s.addr, s.len as usize) {
                let Ok(slice) = slice else {
                    return false;
                };
                // A plain mmap region: the guard is a no-op and the pointer stays valid
                // as long as the region is mapped, which `self.mem` ensures.
                iovs.push(libc::iovec {
                    iov_base: slice.ptr_guard_mut().as_ptr().cast(),
                    iov_len: slice.len(),
                });
            }
            data_len = data_len.saturating_add(s.len);
        }
        if !align.fits(offset, &iovs) {
            return false;
        }
        let request = RingRequest {
            seq,
            head,
            status,
            write: kind == RequestType::Out,
            fd,
            iovs,
            first: 0,
            offset,
            data_len,
        };
        let slot = match self.free.pop() {
            Some(i) => i,
            None => {
                self.slots.push(None);
                self.slots.len() - 1
            }
        };
        self.slots[slot] = Some(request);
        if self.queue_sqe(slot) {
            true
        } else {
            self.slots[slot] = None;
            self.free.push(slot);
            false
        }
    }

    /// Push the SQE for what is left of the request in `slot`.
    fn queue_sqe(&mut self, slot: usize) -> bool {
        let Some(r) = self.slots.get(slot).and_then(Option::as_ref) else {
            return false;
        };
        let iovs = &r.iovs[r.first..];
        // At most SEG_MAX segments (the parser fails longer chains, indirect tables
        // included; each splits where memory regions split): far below UIO_MAXIOV, and
        // below u32::MAX in any case.
        let count = u32::try_from(iovs.len()).unwrap_or(u32::MAX);
        let fd = types::Fd(r.fd);
        let sqe = if r.write {
            opcode::Writev::new(fd, iovs.as_ptr(), count)
                .offset(r.offset)
                .build()
        } else {
            opcode::Readv::new(fd, iovs.as_ptr(), count)
                .offset(r.offset)
                .build()
        }
        .user_data(slot as u64);
        for attempt in 0..2 {
            // SAFETY: the SQE points at `r.iovs` (a heap array that neither moves nor is
            // freed before this slot's CQE is reaped: `reap` and `Drop` are the only
            // places that free a slot with an SQE in the ring) and, through it, at guest
            // buffers of the chain. Those lie inside guest memory (checked by the parser
            // and re-resolved by get_slices above), which stays mapped while `self.mem`
            // lives, and `Drop` keeps it alive until every CQE arrived. The fd is one the
            // disk keeps open (`push`), and `self._disk` keeps the disk just as long.
            // Only the kernel writes through these pointers; no Rust reference to guest
            // memory exists, and the driver may not touch buffers of a request it has
            // not got back.
            let pushed = unsafe { self.ring.submission().push(&sqe) }.is_ok();
            if pushed {
                self.in_ring += 1;
                self.unsubmitted += 1;
                return true;
            }
            if attempt == 0 {
                self.submit();
            }
        }
        false
    }

    /// Hand the pushed SQEs to the kernel (one system call per batch).
    pub fn submit(&mut self) {
        while self.unsubmitted > 0 {
            match self.ring.submit() {
                Ok(n) => self.unsubmitted = self.unsubmitted.saturating_sub(n),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    // EAGAIN/EBUSY: the SQEs stay queued and go with the next submit.
                    warn!("virtio-blk: io_uring submit failed: {e}");
                    return;
                }
            }
        }
    }

    /// Take the finished requests (writing their status bytes) into `out`; short
    /// transfers are resubmitted for the rest.
    pub(super) fn reap(&mut self, out: &mut Vec<Completion>) {
        let mut cqes = Vec::new();
        cqes.extend(
            self.ring
                .completion()
                .filter(|c| c.user_data() != CANCEL_ALL)
                .map(|c| (c.user_data() as usize, c.result())),
        );
        for (slot, result) in cqes {
            self.in_ring = self.in_ring.saturating_sub(1);
            if let Some(done) = self.complete(slot, result) {
                out.push(done);
            }
        }
        self.submit();
    }

    /// Account one CQE; `None` if the request went back into the ring.
    fn complete(&mut self, slot: usize, result: i32) -> Option<Completion> {
        let r = self.slots.get_mut(slot)?.as_mut()?;
        let ok = match result {
            n if n > 0 => {
                if advance(r, n as usize) {
                    true
                } else if self.queue_sqe(slot) {
                    return None;
                } else {
                    false
                }
            }
            n if n == -libc::EINTR || n == -libc::EAGAIN => {
                if self.queue_sqe(slot) {
                    return None;
                }
                false
            }
            // A read past the end of the file (the disk is the file rounded up to
            // sectors, or the file shrank): the rest reads as zeroes, as in QEMU.
            0 if !r.write => {
                zero_rest(r);
                true
            }
            0 => {
                warn!("virtio-blk: io_uring write made no progress at the end of the file");
                false
            }
            n => {
                warn!(
                    "virtio-blk: io_uring transfer failed: {}",
                    io::Error::from_raw_os_error(-n)
                );
                false
            }
        };
        let r = self.slots.get_mut(slot)?.take()?;
        self.free.push(slot);
        let (status, written) = if ok {
            let written = if r.write { 0 } else { r.data_len };
            (VIRTIO_BLK_S_OK as u8, written)
        } else {
            (VIRTIO_BLK_S_IOERR as u8, 0)
        };
        let len = match self.mem.write_obj(status, r.status) {
            Ok(()) => written.saturating_add(1),
            Err(e) => {
                warn!("virtio-blk: cannot write status: {e}");
                0
            }
        };
        Some(Completion {
            seq: r.seq,
            head: r.head,
            len,
        })
    }
}

/// Zero the guest buffers a read has not reached.
fn zero_rest(r: &RingRequest) {
    for iov in &r.iovs[r.first.min(r.iovs.len())..] {
        // SAFETY: the iovecs point into guest memory, which the engine keeps mapped
        // (it holds a clone of it) while the request lives; the kernel is done with
        // this request, so nothing else writes these bytes meanwhile.
        unsafe { std::ptr::write_bytes(iov.iov_base.cast::<u8>(), 0, iov.iov_len) };
    }
}

/// Move past `done` transferred bytes; true when nothing is left.
fn advance(r: &mut RingRequest, mut done: usize) -> bool {
    r.offset += done as u64;
    while r.first < r.iovs.len() && done >= r.iovs[r.first].iov_len {
        done -= r.iovs[r.first].iov_len;
        r.first += 1;
    }
    // Skip empty iovecs so a finished request is recognised.
    while r.first < r.iovs.len() && r.iovs[r.first].iov_len == 0 {
        r.first += 1;
    }
    if r.first == r.iovs.len() {
        return true;
    }
    if done > 0 {
        let iov = &mut r.iovs[r.first];
        // done < iov_len, so the advanced address stays inside the buffer; only an
        // address computation, the pointer is not dereferenced here.
        iov.iov_base = iov.iov_base.cast::<u8>().wrapping_add(done).cast();
        iov.iov_len -= done;
    }
    false
}

impl Drop for UringEngine {
    fn drop(&mut self) {
        // The kernel may still write into guest buffers (and read the iovec arrays)
        // until each CQE: cancel what can be cancelled (a read waiting on a file that
        // never becomes ready), then wait for them all, discarding the results (after a
        // reset nothing is reported to the driver). Reads of regular files in progress
        // are not cancellable; they finish on their own.
        if self.in_ring > 0 {
            let cancel = opcode::AsyncCancel2::new(types::CancelBuilder::any())
                .build()
                .user_data(CANCEL_ALL);
            // SAFETY: a cancellation refers to no memory.
            if unsafe { self.ring.submission().push(&cancel) }.is_err() {
                warn!("virtio-blk: cannot cancel io_uring requests; waiting for them");
            }
        }
        while self.in_ring > 0 {
            match self.ring.submit_and_wait(1) {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    warn!(
                        "virtio-blk: cannot wait for {} io_uring requests ({e}); \
                         keeping their memory",
                        self.in_ring
                    );
                    // Leak what the kernel may still use rather than free it under it.
                    std::mem::forget(std::mem::take(&mut self.slots));
                    std::mem::forget(self.mem.clone());
                    std::mem::forget(self._disk.clone());
                    return;
                }
            }
            let reaped = self
                .ring
                .completion()
                .filter(|c| c.user_data() != CANCEL_ALL)
                .count();
            self.in_ring = self.in_ring.saturating_sub(reaped);
        }
    }
}

//! The request pipeline of an active virtio-blk queue.
//!
//! On a queue notification the event loop pops chains (at most queue-size requests in
//! flight; the rest stay on the avail ring), parses them (hostile chains never reach a
//! worker), answers what needs no disk at once, and hands each disk request to the
//! worker pool without waiting. A worker writes the data and status into guest memory,
//! then reports (head, used length) through a channel and wakes the event loop through
//! the completion `EventFd`; the event loop adds the used entries and interrupts the
//! driver once per batch, unless the driver suppressed interrupts.
//!
//! Reads and writes that bypass the format (qcow2 data clusters through io_uring, see
//! `DiskBackend::read_extent` and `write_extent`) hold a mapping that a discard or
//! write-zeroes could free and reuse. So while such a transfer is in flight on any of
//! the device's queues, discards and write-zeroes are held back, and while one of
//! those is popped and unfinished, reads and writes go through the format on the
//! workers (see [`ExtentFence`]).
//!
//! FLUSH: a flush is held back until every write (OUT, DISCARD, WRITE_ZEROES) popped
//! before it has completed, then runs the backend flush (metadata writeback + fsync).
//! So it covers every write completed or submitted before it. Requests popped after a
//! flush do not wait for it: nothing they do can undo the durability of earlier writes.
//!
//! A lone request (nothing else in flight, nothing else on the ring) of at most
//! [`INLINE_MAX`] bytes runs on the event-loop thread instead: at queue depth 1 there is
//! nothing to overlap, and the two thread hand-offs a worker costs would add about
//! 30 us to each request on a nested host (`qemu-img bench -i threads` is a third
//! slower than `-i io_uring` at depth 1 here for that reason). The price: while it
//! runs, the event loop serves no other device and pops nothing, for one request's
//! latency. So a lone request runs inline only while the driver has been working one
//! request at a time: once two or more were in flight, the next [`PARALLEL_MEMORY`]
//! lone requests go to the pool. A deep-queue driver whose queue drains between bursts
//! (a disk that completes its requests together does that every round) would
//! otherwise have the first request of each burst hold up the rest of it for a whole
//! disk latency.

use std::collections::{BTreeSet, VecDeque};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::Arc;

use log::{info, warn};
use virtio_bindings::bindings::virtio_blk::VIRTIO_BLK_S_IOERR;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::eventfd::EventFd;

use super::fence::ExtentFence;
use super::io::IoContext;
use super::read_helpers::{ReadHelpers, HELPER_READ_MAX, READ_HELPERS};
use super::request::{self, Parsed, Request, RequestType};
use super::uring::UringEngine;
use super::workers::{Task, WorkerPool};
use super::zeroes;
use crate::block::config::{DetectZeroes, Discard};
use crate::block::{DiskBackend, SECTOR_SIZE};
use crate::virtio::{notify, VirtioInterrupt};
use crate::GuestMemory;

/// Largest request run on the event-loop thread when it is the only one.
pub const INLINE_MAX: u64 = 1 << 20;

/// Lone requests sent to the pool after two or more requests were last in flight at
/// once, before lone requests run inline again.
pub const PARALLEL_MEMORY: u32 = 32;

/// io_uring writes handed to the kernel at a time while a batch is popped; reads go
/// one by one. The kernel plugs the block requests of one submission until all of it
/// is prepared (about 5 us each for a cold buffered read here, 300 us for 64), so the
/// first reads of a batch would wait for the last; each read submitted on its own
/// reaches the disk at once, as with `qemu-img bench -i io_uring`. A buffered write
/// mostly ends in the page cache during its submission, so writes share system calls.
/// Measured with paired runs against qemu-img at depth 64 (median ratio over 6-8
/// runs): cold 4 KiB random reads on raw 1.00 one by one, 0.95 in groups of 8, 0.82
/// all at once; 4 KiB random writes about 0.99 one by one and 1.10 in groups of 8.
const WRITES_PER_SUBMIT: usize = 8;

/// A finished request: its sequence number, descriptor head and used length (from a
/// worker or from the ring).
pub(super) struct Completion {
    pub(super) seq: u64,
    pub(super) head: u16,
    pub(super) len: u32,
}

/// What a worker needs to run a request and report it; shared by all jobs of one
/// activation.
struct JobContext {
    disk: Arc<dyn DiskBackend>,
    serial: Arc<[u8]>,
    flushes: bool,
    discard: Discard,
    block_size: u64,
    /// The driver's cache mode: true for writethrough (see `Block`).
    writethrough: Arc<AtomicBool>,
    mem: Arc<GuestMemory>,
    done: Sender<Completion>,
    event: Arc<EventFd>,
    /// Set by the first completion after the event loop last looked, so a burst of
    /// completions costs one `EventFd` write.
    signalled: AtomicBool,
}

impl JobContext {
    fn io(&self) -> IoContext<'_> {
        IoContext {
            disk: self.disk.as_ref(),
            serial: &self.serial,
            capacity: self.disk.size() / SECTOR_SIZE,
            flushes: self.flushes,
            writethrough: self.writes_through(),
            discard: self.discard,
            block_size: self.block_size,
        }
    }

    /// Whether writes must be flushed before they complete.
    fn writes_through(&self) -> bool {
        self.flushes && self.writethrough.load(Ordering::Acquire)
    }

    /// Run the request and write its status; a request that panics gets IOERR.
    fn run(&self, seq: u64, head: u16, parsed: Parsed) -> Completion {
        let status = parsed.status;
        let len = match catch_unwind(AssertUnwindSafe(|| self.io().complete(&self.mem, parsed))) {
            Ok(len) => len,
            Err(_) => {
                warn!("virtio-blk: request at descriptor {head} failed internally");
                write_ioerr(&self.mem, status)
            }
        };
        Completion { seq, head, len }
    }

    /// Hand a completion to the event loop (from a worker).
    fn report(&self, completion: Completion) {
        if self.done.send(completion).is_err() {
            return; // the device was reset; nobody wants the result
        }
        // AcqRel pairs with the event loop's swap: either it sees our message, or we
        // see its `false` and wake it.
        if !self.signalled.swap(true, Ordering::AcqRel) {
            if let Err(e) = self.event.write(1) {
                warn!("virtio-blk: cannot signal a completion: {e}");
            }
        }
    }
}

/// Write VIRTIO_BLK_S_IOERR; returns the used length (1, or 0 if the status byte is
/// unwritable).
fn write_ioerr(mem: &GuestMemory, status: GuestAddress) -> u32 {
    match mem.write_obj(VIRTIO_BLK_S_IOERR as u8, status) {
        Ok(()) => 1,
        Err(_) => 0,
    }
}

/// Whether `kind` changes the disk (a later FLUSH must wait for it).
fn is_write(kind: RequestType) -> bool {
    matches!(
        kind,
        RequestType::Out
            | RequestType::Discard
            | RequestType::WriteZeroes
            | RequestType::ZeroedOut { .. }
    )
}

/// Whether `kind` may free clusters (and so move what `read_extent` mapped).
fn is_unmap(kind: RequestType) -> bool {
    matches!(
        kind,
        RequestType::Discard | RequestType::WriteZeroes | RequestType::ZeroedOut { .. }
    )
}

/// A read the read helpers may take.
fn is_small_read(p: &Pending) -> bool {
    matches!(&p.parsed.request, Ok(r) if r.kind == RequestType::In && r.data_len <= HELPER_READ_MAX)
}

fn is_unmap_request(p: &Pending) -> bool {
    matches!(&p.parsed.request, Ok(r) if is_unmap(r.kind))
}

/// Whether `kind` goes to the disk (and so to a worker), rather than being answered at once.
fn needs_disk(kind: RequestType) -> bool {
    is_write(kind) || matches!(kind, RequestType::In | RequestType::Flush)
}

/// A popped request that needs the disk.
struct Pending {
    seq: u64,
    head: u16,
    parsed: Parsed,
}

/// Hand one request to a worker, which runs it and reports its completion.
fn run_on_pool(pool: &mut WorkerPool, ctx: &Arc<JobContext>, p: Pending) {
    pool.submit(task(ctx, p));
}

/// The task that runs `p` on an I/O thread and reports its completion.
fn task(ctx: &Arc<JobContext>, p: Pending) -> Task {
    let ctx = ctx.clone();
    Box::new(move || {
        let c = ctx.run(p.seq, p.head, p.parsed);
        ctx.report(c);
    })
}

/// The queue of an activated device and everything in flight on it.
pub struct Active {
    /// First field, so dropped first: on reset or drop the tasks not started are
    /// discarded and the running ones joined before anything else goes.
    pool: WorkerPool,
    /// Second, for the same reason: the threads that share deep batches of reads
    /// with the ring.
    helpers: ReadHelpers,
    mem: Arc<GuestMemory>,
    queue: Queue,
    interrupt: Arc<dyn VirtioInterrupt>,
    ctx: Arc<JobContext>,
    completions: Receiver<Completion>,
    /// Raw images: IN and OUT go through io_uring instead of the pool; qcow2: the IN
    /// and OUT that `read_extent` and `write_extent` map.
    ring: Option<UringEngine>,
    /// The disk's `extents_move`: discards and write-zeroes can invalidate ring
    /// transfers.
    extents_move: bool,
    /// Sequence numbers of this queue's ring transfers a discard or write-zeroes could
    /// invalidate (counted in `fence` too).
    ring_transfers: BTreeSet<u64>,
    /// Sequence numbers of this queue's discards and write-zeroes popped and
    /// unfinished (with `extents_move`; counted in `fence` too).
    unmaps: BTreeSet<u64>,
    /// Discards and write-zeroes waiting for the ring transfers of every queue to drain,
    /// in ring order.
    held_unmaps: VecDeque<Pending>,
    /// The device's counts of ring transfers and unmapping requests, over all its queues.
    fence: Arc<ExtentFence>,
    inline_lone: bool,
    /// OUT requests of zeroes become write-zeroes when popped (see `zeroes`).
    detect_zeroes: DetectZeroes,
    /// Lone requests still to send to the pool since requests last ran in parallel.
    lone_to_pool: u32,
    next_seq: u64,
    /// Requests popped and not yet in the used ring (including held-back flushes).
    in_flight: usize,
    /// Sequence numbers of writes in flight.
    writes: BTreeSet<u64>,
    /// Flushes waiting for earlier writes, in ring order.
    flushes: VecDeque<Pending>,
    /// Popping stopped at the in-flight limit; completions resume it.
    throttled: bool,
    /// The queue's index, for its interrupts.
    index: u16,
    /// Scratch: requests popped in this pass, and used entries to publish.
    batch: Vec<Pending>,
    used: Vec<(u16, u32)>,
}

/// Everything [`Active::new`] needs.
pub struct ActiveConfig {
    pub mem: GuestMemory,
    pub queue: Queue,
    pub interrupt: Arc<dyn VirtioInterrupt>,
    pub disk: Arc<dyn DiskBackend>,
    pub serial: Arc<[u8]>,
    /// false (`cache=unsafe`): FLUSH succeeds at once, without touching the disk.
    pub flushes: bool,
    pub discard: Discard,
    pub detect_zeroes: DetectZeroes,
    /// The logical block size in bytes (requests are whole, aligned blocks).
    pub block_size: u64,
    /// The driver's cache mode, which it may change while the queue runs: true for
    /// writethrough, where every write is flushed before it completes.
    pub writethrough: Arc<AtomicBool>,
    pub completion_event: Arc<EventFd>,
    /// Most I/O threads; 0 runs every request on the event-loop thread.
    pub workers: usize,
    pub inline_lone: bool,
    /// Try an io_uring for IN/OUT when the disk is a raw file (and `workers` > 0).
    pub io_uring: bool,
    /// Shared by all queues of the device.
    pub fence: Arc<ExtentFence>,
    /// The queue's index, for its interrupts.
    pub index: u16,
}

impl Active {
    pub fn new(cfg: ActiveConfig) -> Self {
        let (done, completions) = channel();
        let mem = Arc::new(cfg.mem);
        let ring = if cfg.io_uring && cfg.workers > 0 && cfg.disk.has_read_extents() {
            let entries = u32::from(cfg.queue.size().max(1));
            match UringEngine::new(
                entries,
                cfg.disk.clone(),
                mem.clone(),
                &cfg.completion_event,
            ) {
                Ok(ring) => Some(ring),
                Err(e) => {
                    info!("virtio-blk: io_uring unavailable ({e}); using I/O threads");
                    None
                }
            }
        } else {
            None
        };
        let helpers = if ring.is_some() {
            ReadHelpers::new(cfg.workers.min(READ_HELPERS))
        } else {
            ReadHelpers::new(0)
        };
        Active {
            helpers,
            ring,
            extents_move: cfg.disk.extents_move(),
            ring_transfers: BTreeSet::new(),
            unmaps: BTreeSet::new(),
            held_unmaps: VecDeque::new(),
            fence: cfg.fence,
            ctx: Arc::new(JobContext {
                disk: cfg.disk,
                serial: cfg.serial,
                flushes: cfg.flushes,
                discard: cfg.discard,
                block_size: cfg.block_size,
                writethrough: cfg.writethrough,
                mem: mem.clone(),
                done,
                event: cfg.completion_event,
                signalled: AtomicBool::new(false),
            }),
            mem,
            queue: cfg.queue,
            interrupt: cfg.interrupt,
            completions,
            pool: WorkerPool::new(cfg.workers, "kiln-blk"),
            inline_lone: cfg.inline_lone,
            detect_zeroes: cfg.detect_zeroes,
            lone_to_pool: 0,
            next_seq: 0,
            in_flight: 0,
            writes: BTreeSet::new(),
            flushes: VecDeque::new(),
            throttled: false,
            index: cfg.index,
            batch: Vec::new(),
            used: Vec::new(),
        }
    }

    pub fn in_flight(&self) -> usize {
        self.in_flight
    }

    pub fn threads(&self) -> usize {
        self.pool.threads() + self.helpers.threads()
    }

    /// Reads ever handed to the read helpers.
    pub fn reads_shared(&self) -> u64 {
        self.helpers.shared_total()
    }

    pub fn uses_io_uring(&self) -> bool {
        self.ring.is_some()
    }

    /// The driver notified the queue: start what is available, publish what finished.
    pub fn process_queue(&mut self) {
        self.fill();
        self.collect();
        self.refill();
        self.publish();
    }

    /// The completion event fired: publish what finished, start what waited for it.
    pub fn process_completions(&mut self) {
        self.collect();
        self.refill();
        self.publish();
    }

    /// After completions freed room at the in-flight limit, take more from the ring.
    /// Must run until the limit is hit again or the ring is empty: while throttled the
    /// driver does not kick, so leaving room unused with nothing left in flight would
    /// stall the queue for good.
    fn refill(&mut self) {
        let limit = usize::from(self.queue.size());
        while self.throttled && self.in_flight < limit {
            self.fill();
            self.collect();
        }
    }

    /// Pop and start requests until the ring is empty or the in-flight limit is hit.
    fn fill(&mut self) {
        let limit = usize::from(self.queue.size());
        loop {
            // The driver need not kick while we are looking at the ring anyway.
            if let Err(e) = self.queue.disable_notification(self.mem.as_ref()) {
                warn!("virtio-blk: cannot suppress notifications: {e}");
            }
            let mut popped = false;
            while self.in_flight < limit {
                let Some(chain) = self.queue.pop_descriptor_chain(self.mem.as_ref()) else {
                    break;
                };
                popped = true;
                let head = chain.head_index();
                match request::parse(self.mem.as_ref(), chain) {
                    Ok(mut parsed) => {
                        if let Ok(req) = &mut parsed.request {
                            zeroes::detect(&self.mem, req, self.detect_zeroes);
                        }
                        self.start(head, parsed)
                    }
                    Err(e) => {
                        warn!("virtio-blk: dropping request: {e}");
                        self.used.push((head, 0));
                    }
                }
            }
            self.dispatch_batch();
            self.throttled = self.in_flight >= limit;
            if self.throttled {
                // Notifications stay off: completions bring us back to the ring.
                return;
            }
            match self.queue.enable_notification(self.mem.as_ref()) {
                // The driver added chains meanwhile.
                Ok(true) if popped => continue,
                // Nothing new; or the avail index moved yet nothing could be popped (a
                // driver that put more than the queue size on the ring): wait for a kick.
                Ok(_) => return,
                Err(e) => {
                    warn!("virtio-blk: cannot re-enable notifications: {e}");
                    return;
                }
            }
        }
    }

    /// Route one parsed chain: answer it now, hold it (flush), or batch it for the disk.
    fn start(&mut self, head: u16, parsed: Parsed) {
        let flush_ignored = |kind| kind == RequestType::Flush && !self.ctx.flushes;
        let disk_kind = match &parsed.request {
            Ok(Request { kind, .. }) if needs_disk(*kind) && !flush_ignored(*kind) => *kind,
            _ => {
                // Malformed, GET_ID, unsupported, an ignored FLUSH: no disk I/O,
                // answered on this thread.
                let len = self.ctx.io().complete(&self.mem, parsed);
                self.used.push((head, len));
                return;
            }
        };
        let seq = self.next_seq;
        self.next_seq += 1;
        self.in_flight += 1;
        let pending = Pending { seq, head, parsed };
        if disk_kind == RequestType::Flush {
            self.flushes.push_back(pending);
        } else {
            if is_write(disk_kind) {
                self.writes.insert(seq);
            }
            if self.extents_move && is_unmap(disk_kind) {
                self.unmaps.insert(seq);
                self.fence.add_unmaps(1);
            }
            self.batch.push(pending);
        }
    }

    /// Start the popped disk requests: a lone small read or write inline, else on the pool.
    fn dispatch_batch(&mut self) {
        if self.batch.is_empty() {
            return self.release_flushes();
        }
        if self.in_flight > 1 {
            self.lone_to_pool = PARALLEL_MEMORY;
        }
        let lone = self.batch.len() == 1 && self.in_flight == 1;
        let driver_works_in_parallel = self.lone_to_pool > 0;
        if lone && driver_works_in_parallel {
            self.lone_to_pool -= 1;
        } else if lone && self.inline_lone {
            let small = matches!(
                &self.batch[0].parsed.request,
                Ok(r) if matches!(r.kind, RequestType::In | RequestType::Out)
                    && r.data_len <= INLINE_MAX
            );
            if small {
                if let Some(p) = self.batch.pop() {
                    let c = self.ctx.run(p.seq, p.head, p.parsed);
                    self.finish(c);
                }
            }
        }
        if let Some(ring) = self.ring.as_mut() {
            let reads = self.batch.iter().filter(|p| is_small_read(p)).count();
            self.helpers.plan(ring.unfinished(), reads);
        }
        let mut batch = std::mem::take(&mut self.batch);
        for p in batch.drain(..) {
            if self.extents_move && is_unmap_request(&p) && self.fence.transfers_in_flight() {
                self.held_unmaps.push_back(p);
                continue;
            }
            let Some(p) = self.push_to_ring(p) else {
                continue;
            };
            run_on_pool(&mut self.pool, &self.ctx, p);
        }
        self.batch = batch;
        if let Some(ring) = self.ring.as_mut() {
            ring.submit();
        }
        self.release_flushes();
    }

    /// Queue a well-formed, non-empty IN or OUT on the ring when the disk lets it reach
    /// the file directly; gives back what the ring does not take (other kinds,
    /// malformed requests, unmapped reads: the pool answers those).
    fn push_to_ring(&mut self, p: Pending) -> Option<Pending> {
        if self.ring.is_none() {
            return Some(p);
        }
        let Ok(req) = &p.parsed.request else {
            return Some(p);
        };
        let rw = matches!(req.kind, RequestType::In | RequestType::Out);
        let writable = req.kind == RequestType::In || !self.ctx.disk.is_read_only();
        // A writethrough write flushes after it: the pool does both (see `IoContext`).
        let flushed_write = req.kind == RequestType::Out && self.ctx.writes_through();
        if !rw || !writable || flushed_write || req.data_len == 0 {
            return Some(p);
        }
        let Some(offset) = self.ctx.io().transfer_offset(req) else {
            // Beyond the disk or not whole blocks (logged): answered here, as the pool
            // would, without checking and logging it a second time there.
            let len = write_ioerr(&self.mem, p.parsed.status);
            self.finish(Completion {
                seq: p.seq,
                head: p.head,
                len,
            });
            return None;
        };
        let disk = self.ctx.disk.as_ref();
        let target = match req.kind {
            // A discard or write-zeroes is pending: its clusters must not be read or
            // written around the format.
            _ if self.extents_move && self.fence.unmaps_pending() => None,
            RequestType::In => disk.read_extent(offset, req.data_len),
            _ => disk.write_extent(offset, req.data_len),
        };
        let (Some((fd, at)), Some(ring)) = (target, self.ring.as_mut()) else {
            return Some(p);
        };
        if req.kind == RequestType::In && self.helpers.takes(req.data_len, ring.unfinished()) {
            self.helpers.submit(p.seq, task(&self.ctx, p));
            return None;
        }
        let id = (p.seq, p.head, p.parsed.status);
        if !ring.push(id, req.kind, &req.data, (fd, at), disk.io_align()) {
            return Some(p);
        }
        if req.kind == RequestType::In || ring.unsubmitted() >= WRITES_PER_SUBMIT {
            ring.submit();
        }
        if self.extents_move {
            self.ring_transfers.insert(p.seq);
            self.fence.add_transfers(1);
        }
        None
    }

    /// Start the held-back discards and write-zeroes once no queue of the device has a
    /// ring transfer in flight. The device calls this on every queue after any queue
    /// finished requests: the last ring transfer may have been another queue's.
    pub fn release_unmaps(&mut self) {
        if self.held_unmaps.is_empty() || self.fence.transfers_in_flight() {
            return;
        }
        for p in std::mem::take(&mut self.held_unmaps) {
            run_on_pool(&mut self.pool, &self.ctx, p);
        }
    }

    /// Start the held-back flushes that no earlier write blocks any more.
    fn release_flushes(&mut self) {
        while let Some(f) = self.flushes.front() {
            if self.writes.first().is_some_and(|&w| w < f.seq) {
                return;
            }
            let Some(p) = self.flushes.pop_front() else {
                return;
            };
            run_on_pool(&mut self.pool, &self.ctx, p);
        }
    }

    /// Account a finished request.
    fn finish(&mut self, c: Completion) {
        self.in_flight = self.in_flight.saturating_sub(1);
        if self.unmaps.remove(&c.seq) {
            self.fence.remove_unmaps(1);
        }
        if self.ring_transfers.remove(&c.seq) {
            self.fence.remove_transfers(1);
            self.release_unmaps();
        }
        let was_write = self.writes.remove(&c.seq);
        self.used.push((c.head, c.len));
        if was_write {
            self.release_flushes();
        }
    }

    /// Take every completion the workers reported.
    fn collect(&mut self) {
        // Pairs with JobContext::report: a message sent before a worker saw `true` is
        // visible to the receives below.
        self.ctx.signalled.swap(false, Ordering::AcqRel);
        // finish() may start flushes; an inline pool reports them into this same loop.
        while let Ok(c) = self.completions.try_recv() {
            self.helpers.finished(c.seq);
            self.finish(c);
        }
        let mut done = Vec::new();
        if let Some(ring) = self.ring.as_mut() {
            ring.reap(&mut done);
        }
        for c in done {
            self.finish(c);
        }
    }

    /// Put the finished requests in the used ring and interrupt the driver once.
    fn publish(&mut self) {
        if self.used.is_empty() {
            return;
        }
        for (head, len) in self.used.drain(..) {
            if let Err(e) = self.queue.add_used(self.mem.as_ref(), head, len) {
                warn!("virtio-blk: cannot return descriptor {head}: {e}");
            }
        }
        let device = "virtio-blk";
        notify::signal_used(
            &mut self.queue,
            &self.mem,
            self.interrupt.as_ref(),
            self.index,
            device,
        );
    }
}

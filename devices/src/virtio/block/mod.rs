//! virtio-blk (virtio 1.2 §5.2) on any [`DiskBackend`].
//!
//! Layout follows Firecracker's: request parsing in [`request`], request execution in
//! [`io`], the pipeline of requests in flight in [`inflight`], the I/O thread pool in
//! [`workers`], the device (features, config space, event handling) here.
//!
//! Requests complete asynchronously: the event loop parses chains and hands disk
//! requests to the pool without waiting; workers report completions through a
//! channel and [`Block::completion_event`], which the device's event subscriber
//! watches, and the event loop fills the used ring and interrupts. Up to queue-size
//! requests are in flight. A FLUSH waits for the writes before it (see [`inflight`]).
//! On raw images, reads and writes go through an io_uring instead of the pool when the
//! host allows one, and so do the reads of a qcow2 image's own data clusters (see
//! [`uring`] and `DiskBackend::read_extent`); a few [`read_helpers`] threads take a
//! share of deep batches of reads off the ring.
//! With VIRTIO_RING_F_EVENT_IDX negotiated, the driver's used_event decides when to
//! interrupt and the device's avail_event when to kick (virtio-queue keeps both).
//! With VIRTIO_BLK_F_MQ each request queue the driver sets up has its own pipeline
//! (see [`Block::set_num_queues`]), and the queues share one [`fence`]; with
//! VIRTIO_BLK_F_CONFIG_WCE the driver chooses between a writeback and a writethrough
//! cache (see [`Block::writethrough`]).

pub mod fence;
pub mod harness;
pub mod inflight;
pub mod io;
pub mod read_helpers;
pub mod request;
pub mod uring;
pub mod workers;
pub mod zeroes;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};
use log::warn;
use virtio_bindings::bindings::virtio_blk::*;
use virtio_bindings::bindings::virtio_ring::VIRTIO_RING_F_EVENT_IDX;
use virtio_queue::QueueT;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use self::fence::ExtentFence;
use self::inflight::{Active, ActiveConfig};
use super::activation::{Activation, DeviceEvent};
use super::{device_type, ActivateContext, ActivateError, VirtioDevice};
use crate::block::config::{BlockSizes, Cache, DetectZeroes, Discard};
use crate::block::{DiskBackend, SECTOR_SIZE};

pub use crate::block::config::MAX_QUEUES;

/// Descriptors per queue.
pub const QUEUE_SIZE: u16 = 256;
/// Data segments per request we advertise (the header and status take two descriptors).
pub const SEG_MAX: u32 = QUEUE_SIZE as u32 - 2;
/// Discard / write-zeroes segments per request.
pub const MAX_DISCARD_SEGMENTS: u32 = 1;
/// Largest discard / write-zeroes per segment, in sectors (keeps each one bounded).
pub const MAX_DISCARD_SECTORS: u32 = (1 << 30) / SECTOR_SIZE as u32;

/// Offset of `writeback` in struct virtio_blk_config: 1 writeback, 0 writethrough.
const CONFIG_WRITEBACK: usize = 32;
/// Offset of `num_queues` (u16), valid with VIRTIO_BLK_F_MQ.
const CONFIG_NUM_QUEUES: usize = 34;

/// `Events::data` of the completion event (queue events use their index, activation u32::MAX).
const COMPLETION_DATA: u32 = 0x424c_4b00;

const fn bit(b: u32) -> u64 {
    1 << b
}

/// A virtio-blk device.
pub struct Block {
    disk: Arc<dyn DiskBackend>,
    serial: Arc<[u8]>,
    workers: usize,
    inline_lone: bool,
    io_uring: bool,
    cache: Cache,
    discard: Discard,
    detect_zeroes: DetectZeroes,
    /// The logical block size in bytes: requests must be whole, aligned blocks.
    block_size: u32,
    features: u64,
    acked_features: u64,
    config: Vec<u8>,
    /// The cache mode the driver sees (see [`Block::writethrough`]), shared with the
    /// queue's requests: the driver may switch it while they run.
    writethrough: Arc<AtomicBool>,
    activation: Activation,
    /// Workers write it when they finish a request; lives as long as the device.
    completion_event: Arc<EventFd>,
    /// One size per request queue offered.
    queue_sizes: Vec<u16>,
    /// The queues the driver set up, by index (see [`Block::set_num_queues`]).
    active: Vec<Option<Active>>,
}

impl Block {
    /// A device over `disk`; `serial` (at most 20 bytes) answers GET_ID. I/O runs on up
    /// to [`workers::default_workers`] threads, started on demand.
    pub fn new(disk: Arc<dyn DiskBackend>, serial: Option<&str>) -> std::io::Result<Self> {
        Self::with_workers(disk, serial, workers::default_workers())
    }

    /// Like [`Block::new`] with at most `workers` I/O threads; 0 runs every request on
    /// the event-loop thread, so each [`Block::process_queue`] completes its requests.
    pub fn with_workers(
        disk: Arc<dyn DiskBackend>,
        serial: Option<&str>,
        workers: usize,
    ) -> std::io::Result<Self> {
        let mut features = super::VIRTIO_F_VERSION_1
            | bit(VIRTIO_BLK_F_FLUSH)
            | bit(VIRTIO_BLK_F_SEG_MAX)
            | bit(VIRTIO_BLK_F_BLK_SIZE)
            | bit(VIRTIO_BLK_F_TOPOLOGY)
            | bit(VIRTIO_RING_F_EVENT_IDX)
            | super::VIRTIO_RING_F_INDIRECT;
        if disk.is_read_only() {
            features |= bit(VIRTIO_BLK_F_RO);
        } else {
            features |= bit(VIRTIO_BLK_F_DISCARD)
                | bit(VIRTIO_BLK_F_WRITE_ZEROES)
                | bit(VIRTIO_BLK_F_CONFIG_WCE);
        }
        let mut serial = serial.unwrap_or("").as_bytes().to_vec();
        serial.truncate(VIRTIO_BLK_ID_BYTES as usize);
        let config = config_space(disk.size() / SECTOR_SIZE);
        Ok(Block {
            disk,
            serial: serial.into(),
            workers,
            inline_lone: true,
            io_uring: true,
            cache: Cache::Writeback,
            discard: Discard::Unmap,
            detect_zeroes: DetectZeroes::Off,
            block_size: BlockSizes::default().logical,
            features,
            acked_features: 0,
            config,
            // Until the driver negotiates FLUSH (see `Block::writethrough`).
            writethrough: Arc::new(AtomicBool::new(true)),
            activation: Activation::new()?,
            completion_event: Arc::new(EventFd::new(EFD_NONBLOCK)?),
            queue_sizes: vec![QUEUE_SIZE],
            active: Vec::new(),
        })
    }

    /// Offer `n` request queues (VIRTIO_BLK_F_MQ when more than one, 1 to
    /// [`MAX_QUEUES`]); the driver may set up fewer. Requests on different queues run
    /// side by side, each queue with its own pipeline and a share of the I/O threads.
    /// Call before the driver negotiates.
    pub fn set_num_queues(&mut self, n: u16) -> std::io::Result<()> {
        if n == 0 || n > MAX_QUEUES {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("virtio-blk: {n} queues is outside 1..={MAX_QUEUES}"),
            ));
        }
        self.queue_sizes = vec![QUEUE_SIZE; usize::from(n)];
        if n > 1 {
            self.features |= bit(VIRTIO_BLK_F_MQ);
        } else {
            self.features &= !bit(VIRTIO_BLK_F_MQ);
        }
        self.config[CONFIG_NUM_QUEUES..CONFIG_NUM_QUEUES + 2].copy_from_slice(&n.to_le_bytes());
        Ok(())
    }

    fn actives(&self) -> impl Iterator<Item = &Active> {
        self.active.iter().flatten()
    }

    /// Whether a lone small request (nothing else in flight) runs on the event-loop
    /// thread rather than a worker (default on; see [`inflight`]). Takes effect at the
    /// next activation.
    pub fn set_inline_lone_requests(&mut self, on: bool) {
        self.inline_lone = on;
    }

    /// Whether IN and OUT on a raw image go through an io_uring owned by the event loop
    /// (default on; see [`uring`]), falling back to the I/O threads where io_uring is
    /// unavailable. Never with 0 workers, which keeps every request synchronous. Takes
    /// effect at the next activation.
    pub fn set_io_uring(&mut self, on: bool) {
        self.io_uring = on;
    }

    /// What a guest FLUSH does (metadata writeback and fsync, except with
    /// [`Cache::Unsafe`]: nothing, it succeeds at once), and whether the device starts
    /// writethrough ([`Cache::Writethrough`], [`Cache::Directsync`]; see
    /// [`Block::writethrough`]). Whether the image bypasses the host page cache is the
    /// disk's, chosen when it is opened ([`crate::block::open_disk`]). Takes effect at
    /// the next activation.
    pub fn set_cache(&mut self, cache: Cache) {
        self.cache = cache;
    }

    /// The block sizes the driver is told (default 512 and 512; see [`BlockSizes`]).
    /// Requests that are not whole logical blocks, aligned, then fail with IOERR, as in
    /// QEMU. Takes effect at the next activation; the disk's size should be whole
    /// logical blocks (the guest cannot reach a partial last one).
    pub fn set_block_sizes(&mut self, sizes: BlockSizes) {
        self.block_size = sizes.logical;
        write_block_sizes(&mut self.config, sizes);
    }

    /// What guest discards do (default [`Discard::Unmap`]; see [`Discard`]). Takes
    /// effect at the next activation.
    pub fn set_discard(&mut self, discard: Discard) {
        self.discard = discard;
    }

    /// Whether OUT requests of zeroes are stored as write-zeroes (default
    /// [`DetectZeroes::Off`]; see [`zeroes`]). Takes effect at the next activation.
    pub fn set_detect_zeroes(&mut self, mode: DetectZeroes) {
        self.detect_zeroes = mode;
    }

    /// Whether the device runs its cache writethrough (each write flushed before it
    /// completes) rather than writeback (data durable at FLUSH), as the driver chose:
    /// - with VIRTIO_BLK_F_CONFIG_WCE, through the `writeback` config field (Linux:
    ///   /sys/block/vdX/cache_type), which starts writeback when FLUSH is negotiated;
    /// - else writeback if it negotiated VIRTIO_BLK_F_FLUSH, writethrough if not: a
    ///   driver that cannot flush must get durable writes (QEMU decides the same way).
    ///
    /// With `cache=unsafe` nothing is flushed either way.
    pub fn writethrough(&self) -> bool {
        self.writethrough.load(Ordering::Acquire)
    }

    fn update_cache_mode(&mut self) {
        let acked = |f| self.acked_features & bit(f) != 0;
        let through = if acked(VIRTIO_BLK_F_CONFIG_WCE) {
            self.config[CONFIG_WRITEBACK] == 0
        } else {
            !acked(VIRTIO_BLK_F_FLUSH) || self.cache.starts_writethrough()
        };
        self.writethrough.store(through, Ordering::Release);
    }

    /// Whether an active queue submits through io_uring.
    pub fn uses_io_uring(&self) -> bool {
        self.actives().any(Active::uses_io_uring)
    }

    /// Capacity in sectors, as the driver sees it.
    pub fn capacity(&self) -> u64 {
        self.disk.size() / SECTOR_SIZE
    }

    /// I/O threads currently running (0 before activation and after reset).
    pub fn io_threads(&self) -> usize {
        self.actives().map(Active::threads).sum()
    }

    /// Reads ever handed to the read helpers (see [`read_helpers`]) by the queues
    /// active now.
    pub fn reads_shared(&self) -> u64 {
        self.actives().map(Active::reads_shared).sum()
    }

    /// Requests taken from the ring and not yet returned to the driver.
    pub fn in_flight(&self) -> usize {
        self.actives().map(Active::in_flight).sum()
    }

    /// Readable when workers finished requests; then call [`Block::process_completions`].
    /// The device's event subscriber watches it; tests and benchmarks poll it.
    pub fn completion_event(&self) -> &EventFd {
        &self.completion_event
    }

    /// Start every available request (up to the in-flight limit) of every queue
    /// without waiting for the disk; publish what already finished. Public for tests
    /// and VMMs that poll.
    pub fn process_queue(&mut self) {
        for active in self.active.iter_mut().flatten() {
            active.process_queue();
        }
    }

    /// [`Block::process_queue`] for queue `index` only: the event loop's answer to
    /// its notification.
    pub fn process_queue_index(&mut self, index: usize) {
        if let Some(Some(active)) = self.active.get_mut(index) {
            active.process_queue();
        }
        self.release_unmaps();
    }

    /// With several queues, the last ring read to finish may have been another
    /// queue's than the one holding a discard back (see [`fence`]).
    fn release_unmaps(&mut self) {
        if self.active.len() > 1 {
            for active in self.active.iter_mut().flatten() {
                active.release_unmaps();
            }
        }
    }

    /// Put finished requests in the used ring, interrupt the driver (unless it asked
    /// not to be), and start requests that waited for them. Called from the event loop
    /// when [`Block::completion_event`] fires; public for tests and VMMs that poll.
    pub fn process_completions(&mut self) {
        // EAGAIN: nothing counted since the last read; looking anyway is harmless.
        let _ = self.completion_event.read();
        for active in self.active.iter_mut().flatten() {
            active.process_completions();
        }
        self.release_unmaps();
    }
}

/// struct virtio_blk_config, little-endian, up to write_zeroes_may_unmap. The
/// capacity stays in 512-byte sectors whatever the block size (virtio 1.2, 5.2.4).
fn config_space(capacity: u64) -> Vec<u8> {
    let mut c = vec![0u8; 60];
    c[0..8].copy_from_slice(&capacity.to_le_bytes());
    c[12..16].copy_from_slice(&SEG_MAX.to_le_bytes());
    write_block_sizes(&mut c, BlockSizes::default());
    c[36..40].copy_from_slice(&MAX_DISCARD_SECTORS.to_le_bytes());
    c[40..44].copy_from_slice(&MAX_DISCARD_SEGMENTS.to_le_bytes());
    c[48..52].copy_from_slice(&MAX_DISCARD_SECTORS.to_le_bytes());
    c[52..56].copy_from_slice(&MAX_DISCARD_SEGMENTS.to_le_bytes());
    c[CONFIG_WRITEBACK] = 1;
    c[56] = 1; // write_zeroes_may_unmap
    c
}

/// The config fields that follow the block sizes: blk_size, the topology (the
/// physical block exponent; alignment offset and I/O size hints stay 0, as QEMU's
/// defaults) and discard_sector_alignment (in sectors: discards are whole blocks).
fn write_block_sizes(config: &mut [u8], sizes: BlockSizes) {
    config[20..24].copy_from_slice(&sizes.logical.to_le_bytes());
    config[24] = sizes.physical_exponent();
    let alignment = sizes.logical / SECTOR_SIZE as u32;
    config[44..48].copy_from_slice(&alignment.to_le_bytes());
}

impl VirtioDevice for Block {
    fn device_type(&self) -> u32 {
        device_type::BLOCK
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &self.queue_sizes
    }

    fn device_features(&self) -> u64 {
        self.features
    }

    fn ack_features(&mut self, features: u64) {
        self.acked_features = features & self.features;
        // virtio 1.2 §5.2.5.2: a configurable cache without FLUSH starts writethrough;
        // so does one configured writethrough (the driver may turn it on).
        let flush = self.acked_features & bit(VIRTIO_BLK_F_FLUSH) != 0;
        self.config[CONFIG_WRITEBACK] = u8::from(flush && !self.cache.starts_writethrough());
        self.update_cache_mode();
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        for (i, b) in data.iter_mut().enumerate() {
            let at = offset.checked_add(i as u64);
            *b = at
                .and_then(|a| self.config.get(usize::try_from(a).ok()?))
                .copied()
                .unwrap_or(0);
        }
    }

    fn write_config(&mut self, offset: u64, data: &[u8]) {
        // Only `writeback` is writable, and only with VIRTIO_BLK_F_CONFIG_WCE.
        let wce = self.acked_features & bit(VIRTIO_BLK_F_CONFIG_WCE) != 0;
        match data {
            [mode] if wce && offset == CONFIG_WRITEBACK as u64 => {
                self.config[CONFIG_WRITEBACK] = u8::from(*mode != 0);
                self.update_cache_mode();
                log::info!(
                    "virtio-blk: the driver set a {} cache",
                    if *mode != 0 {
                        "writeback"
                    } else {
                        "writethrough"
                    }
                );
            }
            _ => warn!(
                "virtio-blk: driver wrote {} bytes of read-only config space at {offset:#x}",
                data.len()
            ),
        }
    }

    fn activate(&mut self, ctx: ActivateContext) -> Result<(), ActivateError> {
        let offered = self.queue_sizes.len();
        if ctx.queues.len() != offered {
            return Err(ActivateError::QueueCount {
                got: ctx.queues.len(),
                want: offered,
            });
        }
        // A driver may set up fewer queues than offered (Linux: one per vCPU), but
        // always the first ones.
        let ready = ctx.queues.iter().take_while(|q| q.ready()).count();
        if ready == 0 || ctx.queues[ready..].iter().any(|q| q.ready()) {
            return Err(ActivateError::InvalidQueue(ready));
        }
        // Dropping the old state (if any) joins its threads.
        self.active.clear();
        // Ring reads of a qcow2 image bypass the format on a mapping that a discard on
        // any queue could free: the queues share one fence.
        let fence = Arc::new(ExtentFence::default());
        let workers = self.workers.div_ceil(ready);
        for (index, mut queue) in ctx.queues.into_iter().enumerate() {
            if index >= ready {
                self.active.push(None);
                continue;
            }
            // virtio 1.2 §2.7.10: with EVENT_IDX the driver says through used_event when
            // it wants an interrupt, and the device through avail_event when it wants a
            // kick.
            queue.set_event_idx(self.acked_features & bit(VIRTIO_RING_F_EVENT_IDX) != 0);
            self.active.push(Some(Active::new(ActiveConfig {
                mem: ctx.mem.clone(),
                queue,
                interrupt: ctx.interrupt.clone(),
                disk: self.disk.clone(),
                serial: self.serial.clone(),
                completion_event: self.completion_event.clone(),
                workers,
                inline_lone: self.inline_lone,
                io_uring: self.io_uring,
                fence: fence.clone(),
                flushes: self.cache.flushes(),
                discard: self.discard,
                detect_zeroes: self.detect_zeroes,
                block_size: u64::from(self.block_size),
                writethrough: self.writethrough.clone(),
                index: index as u16,
            })));
        }
        self.activation.activate(ctx.queue_events);
        Ok(())
    }

    fn reset(&mut self) -> bool {
        // Dropping the queue state discards the requests not started and joins the
        // workers, so no request touches guest memory after this returns. Finished but
        // unpublished requests are forgotten with the ring.
        self.active.clear();
        // The cache mode follows at the next negotiation (`ack_features`).
        self.acked_features = 0;
        true
    }
}

impl MutEventSubscriber for Block {
    fn init(&mut self, ops: &mut EventOps) {
        self.activation.init(ops);
        let ev = Events::with_data(
            self.completion_event.as_ref(),
            COMPLETION_DATA,
            EventSet::IN,
        );
        if let Err(e) = ops.add(ev) {
            warn!("virtio-blk: cannot register the completion event: {e}");
        }
    }

    fn process(&mut self, events: Events, ops: &mut EventOps) {
        if events.data() == COMPLETION_DATA {
            self.process_completions();
            return;
        }
        if let DeviceEvent::Queue(index) = self.activation.handle(&events, ops) {
            self.process_queue_index(index);
        }
    }
}

#[cfg(test)]
mod async_fault_tests;
#[cfg(test)]
mod async_tests;
#[cfg(test)]
mod block_size_tests;
#[cfg(test)]
mod cache_mode_tests;
#[cfg(test)]
mod direct_ring_tests;
#[cfg(test)]
mod event_idx_tests;
#[cfg(test)]
mod event_loop_tests;
#[cfg(test)]
mod extent_tests;
#[cfg(test)]
mod indirect_tests;
#[cfg(test)]
mod mq_tests;
#[cfg(test)]
mod parallel_tests;
#[cfg(test)]
mod read_helpers_tests;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod uring_tests;
#[cfg(test)]
mod zeroes_tests;

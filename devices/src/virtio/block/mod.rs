//! virtio-blk (virtio 1.2 §5.2) on any [`DiskBackend`].
//!
//! Layout follows Firecracker's: request parsing in [`request`], request execution in
//! [`io`], the I/O thread pool in [`workers`], the device (features, config space,
//! queue, event handling) here.
//!
//! Requests of one queue notification run in parallel on the pool; the event-loop
//! thread parses every chain first (hostile chains never reach the disk), waits for
//! the batch, then fills the used ring and interrupts once. A FLUSH is a barrier: the
//! requests before it complete before it starts, and it completes before later ones.

pub mod io;
pub mod request;
pub mod workers;

use std::sync::Arc;

use event_manager::{EventOps, Events, MutEventSubscriber};
use log::warn;
use virtio_bindings::bindings::virtio_blk::*;
use virtio_queue::{Queue, QueueT};

use self::request::{Parsed, RequestType};
use self::workers::{Job, WorkerPool};
use super::activation::{Activation, DeviceEvent};
use super::{device_type, ActivateContext, ActivateError, VirtioDevice, VirtioInterrupt};
use crate::block::{DiskBackend, SECTOR_SIZE};
use crate::GuestMemory;

/// Descriptors per queue.
pub const QUEUE_SIZE: u16 = 256;
/// Data segments per request we advertise (the header and status take two descriptors).
pub const SEG_MAX: u32 = QUEUE_SIZE as u32 - 2;
/// Discard / write-zeroes segments per request.
pub const MAX_DISCARD_SEGMENTS: u32 = 1;
/// Largest discard / write-zeroes per segment, in sectors (keeps each one bounded).
pub const MAX_DISCARD_SECTORS: u32 = (1 << 30) / SECTOR_SIZE as u32;

const fn bit(b: u32) -> u64 {
    1 << b
}

struct Active {
    mem: Arc<GuestMemory>,
    queue: Queue,
    interrupt: Arc<dyn VirtioInterrupt>,
    /// Started on activate, stopped and joined on reset or drop.
    pool: WorkerPool,
}

/// A virtio-blk device.
pub struct Block {
    disk: Arc<dyn DiskBackend>,
    serial: Arc<[u8]>,
    workers: usize,
    features: u64,
    acked_features: u64,
    config: Vec<u8>,
    activation: Activation,
    active: Option<Active>,
}

impl Block {
    /// A device over `disk`; `serial` (at most 20 bytes) answers GET_ID. I/O runs on
    /// [`workers::default_workers`] threads.
    pub fn new(disk: Arc<dyn DiskBackend>, serial: Option<&str>) -> std::io::Result<Self> {
        Self::with_workers(disk, serial, workers::default_workers())
    }

    /// Like [`Block::new`] with `workers` I/O threads; 0 runs every request on the
    /// event-loop thread.
    pub fn with_workers(
        disk: Arc<dyn DiskBackend>,
        serial: Option<&str>,
        workers: usize,
    ) -> std::io::Result<Self> {
        let mut features = super::VIRTIO_F_VERSION_1
            | bit(VIRTIO_BLK_F_FLUSH)
            | bit(VIRTIO_BLK_F_SEG_MAX)
            | bit(VIRTIO_BLK_F_BLK_SIZE);
        if disk.is_read_only() {
            features |= bit(VIRTIO_BLK_F_RO);
        } else {
            features |= bit(VIRTIO_BLK_F_DISCARD) | bit(VIRTIO_BLK_F_WRITE_ZEROES);
        }
        let mut serial = serial.unwrap_or("").as_bytes().to_vec();
        serial.truncate(VIRTIO_BLK_ID_BYTES as usize);
        let config = config_space(disk.size() / SECTOR_SIZE);
        Ok(Block {
            disk,
            serial: serial.into(),
            workers,
            features,
            acked_features: 0,
            config,
            activation: Activation::new()?,
            active: None,
        })
    }

    /// Capacity in sectors, as the driver sees it.
    pub fn capacity(&self) -> u64 {
        self.disk.size() / SECTOR_SIZE
    }

    /// I/O threads currently running (0 before activation and after reset).
    pub fn io_threads(&self) -> usize {
        self.active.as_ref().map_or(0, |a| a.pool.size())
    }

    /// Serve every available request on the queue, then interrupt the driver if
    /// anything was used. Returns once every request has completed. Called from the
    /// event loop; public for tests and VMMs that poll.
    pub fn process_queue(&mut self) {
        let Some(active) = self.active.as_mut() else {
            return;
        };
        let mut used = Vec::new();
        let mut batch = Vec::new();
        while let Some(chain) = active.queue.pop_descriptor_chain(active.mem.as_ref()) {
            let head = chain.head_index();
            match request::parse(active.mem.as_ref(), chain) {
                Ok(parsed) => {
                    let flush = matches!(&parsed.request, Ok(r) if r.kind == RequestType::Flush);
                    if flush {
                        // Barrier: drain what came before, then the flush on its own.
                        run_batch(&self.disk, &self.serial, active, &mut batch, &mut used);
                        batch.push((head, parsed));
                        run_batch(&self.disk, &self.serial, active, &mut batch, &mut used);
                    } else {
                        batch.push((head, parsed));
                    }
                }
                Err(e) => {
                    warn!("virtio-blk: dropping request: {e}");
                    used.push((head, 0));
                }
            }
        }
        run_batch(&self.disk, &self.serial, active, &mut batch, &mut used);
        for &(head, len) in &used {
            if let Err(e) = active.queue.add_used(active.mem.as_ref(), head, len) {
                warn!("virtio-blk: cannot return descriptor {head}: {e}");
                break;
            }
        }
        if !used.is_empty() {
            if let Err(e) = active.interrupt.signal_used_queue(0) {
                warn!("virtio-blk: cannot interrupt the driver: {e}");
            }
        }
    }
}

/// Run the parsed requests of `batch` on the pool, wait for them, and append their
/// (head, used length) to `used`.
fn run_batch(
    disk: &Arc<dyn DiskBackend>,
    serial: &Arc<[u8]>,
    active: &Active,
    batch: &mut Vec<(u16, Parsed)>,
    used: &mut Vec<(u16, u32)>,
) {
    if batch.is_empty() {
        return;
    }
    let heads: Vec<u16> = batch.iter().map(|(head, _)| *head).collect();
    let jobs: Vec<Job<u32>> = batch
        .drain(..)
        .map(|(_, parsed)| {
            let (disk, serial, mem) = (disk.clone(), serial.clone(), active.mem.clone());
            Box::new(move || {
                let ctx = io::IoContext {
                    disk: disk.as_ref(),
                    serial: &serial,
                    capacity: disk.size() / SECTOR_SIZE,
                };
                ctx.complete(&mem, parsed)
            }) as Job<u32>
        })
        .collect();
    for (head, result) in heads.into_iter().zip(active.pool.run_all(jobs)) {
        // A job that panicked wrote no status; report nothing written.
        let len = result.unwrap_or_else(|| {
            warn!("virtio-blk: request {head} failed internally");
            0
        });
        used.push((head, len));
    }
}

/// struct virtio_blk_config, little-endian, up to write_zeroes_may_unmap.
fn config_space(capacity: u64) -> Vec<u8> {
    let mut c = vec![0u8; 60];
    c[0..8].copy_from_slice(&capacity.to_le_bytes());
    c[12..16].copy_from_slice(&SEG_MAX.to_le_bytes());
    c[20..24].copy_from_slice(&(SECTOR_SIZE as u32).to_le_bytes());
    c[36..40].copy_from_slice(&MAX_DISCARD_SECTORS.to_le_bytes());
    c[40..44].copy_from_slice(&MAX_DISCARD_SEGMENTS.to_le_bytes());
    c[44..48].copy_from_slice(&1u32.to_le_bytes()); // discard_sector_alignment
    c[48..52].copy_from_slice(&MAX_DISCARD_SECTORS.to_le_bytes());
    c[52..56].copy_from_slice(&MAX_DISCARD_SEGMENTS.to_le_bytes());
    c[56] = 1; // write_zeroes_may_unmap
    c
}

impl VirtioDevice for Block {
    fn device_type(&self) -> u32 {
        device_type::BLOCK
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE]
    }

    fn device_features(&self) -> u64 {
        self.features
    }

    fn ack_features(&mut self, features: u64) {
        self.acked_features = features & self.features;
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

    fn write_config(&mut self, offset: u64, _data: &[u8]) {
        // Nothing is writable without VIRTIO_BLK_F_CONFIG_WCE, which kiln does not offer.
        warn!("virtio-blk: driver wrote read-only config space at {offset:#x}");
    }

    fn activate(&mut self, ctx: ActivateContext) -> Result<(), ActivateError> {
        let mut queues = ctx.queues;
        if queues.len() != 1 {
            return Err(ActivateError::QueueCount {
                got: queues.len(),
                want: 1,
            });
        }
        let queue = queues.remove(0);
        if !queue.ready() {
            return Err(ActivateError::InvalidQueue(0));
        }
        let pool = WorkerPool::new(self.workers, "kiln-blk")
            .map_err(|e| ActivateError::Backend(format!("cannot start I/O threads: {e}")))?;
        // Dropping the old state (if any) joins its threads.
        self.active = Some(Active {
            mem: Arc::new(ctx.mem),
            queue,
            interrupt: ctx.interrupt,
            pool,
        });
        self.activation.activate(ctx.queue_events);
        Ok(())
    }

    fn reset(&mut self) -> bool {
        // No request is in flight (process_queue waits for its batch); this joins the pool.
        self.active = None;
        self.acked_features = 0;
        true
    }
}

impl MutEventSubscriber for Block {
    fn init(&mut self, ops: &mut EventOps) {
        self.activation.init(ops);
    }

    fn process(&mut self, events: Events, ops: &mut EventOps) {
        if let DeviceEvent::Queue(0) = self.activation.handle(&events, ops) {
            self.process_queue();
        }
    }
}

#[cfg(test)]
mod parallel_tests;
#[cfg(test)]
mod tests;

//! virtio-rng / entropy device (virtio 1.2 §5.4), fed from the host's getrandom(2),
//! optionally capped per period (see limit.rs).

use std::sync::Arc;

use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};
use log::warn;
use virtio_bindings::bindings::virtio_ring::VIRTIO_RING_F_EVENT_IDX;
use virtio_queue::{DescriptorChain, Queue, QueueOwnedT, QueueT};
use vm_memory::Bytes;

use self::limit::Budget;
pub use self::limit::RateLimit;
use super::activation::{Activation, DeviceEvent};
use super::{device_type, notify, ActivateContext, ActivateError, VirtioDevice, VirtioInterrupt};
use crate::GuestMemory;

/// Descriptors in the request queue.
pub const QUEUE_SIZE: u16 = 256;
/// VIRTIO_RING_F_EVENT_IDX: see [`notify`].
const EVENT_IDX: u64 = 1 << VIRTIO_RING_F_EVENT_IDX;
const FEATURES: u64 = super::VIRTIO_F_VERSION_1 | EVENT_IDX | super::VIRTIO_RING_F_INDIRECT;
/// Bytes served per request at most, so a huge buffer cannot stall the event loop.
pub const MAX_BYTES_PER_REQUEST: usize = 64 << 10;
/// `Events::data` of the rate limit's timer (queue events use their index, activation
/// u32::MAX).
const PERIOD_DATA: u32 = u32::MAX - 1;

/// Source of random bytes (getrandom in production; tests can count calls).
pub trait EntropySource: Send {
    fn fill(&mut self, buf: &mut [u8]) -> std::io::Result<()>;
}

/// The host kernel's CSPRNG via getrandom(2).
pub struct GetRandom;

impl EntropySource for GetRandom {
    fn fill(&mut self, buf: &mut [u8]) -> std::io::Result<()> {
        let mut done = 0;
        while done < buf.len() {
            let rest = &mut buf[done..];
            // SAFETY: getrandom writes at most rest.len() bytes into the valid buffer `rest`.
            let n = unsafe { libc::getrandom(rest.as_mut_ptr().cast(), rest.len(), 0) };
            if n < 0 {
                let e = std::io::Error::last_os_error();
                if e.kind() == std::io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            done += n as usize;
        }
        Ok(())
    }
}

struct Active {
    mem: GuestMemory,
    queue: Queue,
    interrupt: Arc<dyn VirtioInterrupt>,
}

/// A virtio-rng device.
pub struct Rng {
    source: Box<dyn EntropySource>,
    /// With a rate limit: what is left of this period's.
    budget: Option<Budget>,
    acked_features: u64,
    activation: Activation,
    active: Option<Active>,
}

impl Rng {
    /// A device fed from getrandom(2).
    pub fn new() -> std::io::Result<Self> {
        Self::with_source(Box::new(GetRandom))
    }

    pub fn with_source(source: Box<dyn EntropySource>) -> std::io::Result<Self> {
        Ok(Rng {
            source,
            budget: None,
            acked_features: 0,
            activation: Activation::new()?,
            active: None,
        })
    }

    /// Serve at most `limit.max_bytes` per `limit.period` (set before the device is
    /// added to the event loop).
    pub fn set_rate_limit(&mut self, limit: RateLimit) -> std::io::Result<()> {
        self.budget = Some(Budget::new(limit)?);
        Ok(())
    }

    /// Fill every available buffer with random bytes, as far as the rate limit lets;
    /// the rest wait on the ring for the next period.
    pub fn process_queue(&mut self) {
        let Some(a) = self.active.as_mut() else {
            return;
        };
        let mut used = false;
        let mut buf = vec![0u8; 4096];
        let source = &mut self.source;
        let budget = &mut self.budget;
        notify::drain_with_kicks_suppressed(&mut a.queue, &a.mem, |queue| {
            while let Some(chain) = queue.pop_descriptor_chain(&a.mem) {
                let cap = match budget.as_mut() {
                    Some(b) => usize::try_from(b.available()).unwrap_or(usize::MAX),
                    None => MAX_BYTES_PER_REQUEST,
                };
                if cap == 0 {
                    // Back on the ring; the period's timer brings us back to it.
                    queue.go_to_previous_position();
                    return false;
                }
                let head = chain.head_index();
                let cap = cap.min(MAX_BYTES_PER_REQUEST);
                let written = fill_chain(source.as_mut(), &a.mem, chain, &mut buf, cap);
                if let Some(b) = budget.as_mut() {
                    b.spend(written as u64);
                }
                if queue.add_used(&a.mem, head, written as u32).is_err() {
                    return false;
                }
                used = true;
            }
            true
        });
        if used {
            notify::signal_used(&mut a.queue, &a.mem, a.interrupt.as_ref(), 0, "virtio-rng");
        }
    }
}

/// Fill the device-writable buffers of `chain` (up to `cap` bytes); returns the bytes
/// written.
fn fill_chain(
    source: &mut dyn EntropySource,
    mem: &GuestMemory,
    chain: DescriptorChain<&GuestMemory>,
    buf: &mut Vec<u8>,
    cap: usize,
) -> usize {
    let mut written = 0usize;
    for d in chain.filter(|d| d.is_write_only()) {
        let n = (d.len() as usize).min(cap - written);
        if n == 0 {
            break;
        }
        buf.resize(n, 0);
        if let Err(e) = source.fill(buf) {
            warn!("virtio-rng: getrandom failed: {e}");
            break;
        }
        if mem.write_slice(buf, d.addr()).is_err() {
            warn!(
                "virtio-rng: buffer {:#x}+{n} outside guest memory",
                d.addr().0
            );
            break;
        }
        written += n;
    }
    written
}

impl VirtioDevice for Rng {
    fn device_type(&self) -> u32 {
        device_type::RNG
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE]
    }

    fn device_features(&self) -> u64 {
        FEATURES
    }

    fn ack_features(&mut self, features: u64) {
        self.acked_features = features & FEATURES;
    }

    fn read_config(&self, _offset: u64, data: &mut [u8]) {
        data.fill(0); // no config space
    }

    fn write_config(&mut self, _offset: u64, _data: &[u8]) {}

    fn activate(&mut self, mut ctx: ActivateContext) -> Result<(), ActivateError> {
        let [queue] = ctx.take_queue_array(self.acked_features & EVENT_IDX != 0)?;
        self.active = Some(Active {
            mem: ctx.mem,
            queue,
            interrupt: ctx.interrupt,
        });
        self.activation.activate(ctx.queue_events);
        Ok(())
    }

    fn reset(&mut self) -> bool {
        self.active = None;
        self.acked_features = 0;
        true
    }
}

impl MutEventSubscriber for Rng {
    fn init(&mut self, ops: &mut EventOps) {
        self.activation.init(ops);
        if let Some(b) = &self.budget {
            let timer = Events::with_data_raw(b.timer_fd(), PERIOD_DATA, EventSet::IN);
            if let Err(e) = ops.add(timer) {
                warn!("virtio-rng: cannot watch the rate-limit timer: {e}");
            }
        }
    }

    fn process(&mut self, events: Events, ops: &mut EventOps) {
        if events.data() == PERIOD_DATA {
            if let Some(b) = self.budget.as_mut() {
                b.period_over();
            }
            self.process_queue();
        } else if let DeviceEvent::Queue(0) = self.activation.handle(&events, ops) {
            self.process_queue();
        }
    }
}

mod limit;

#[cfg(test)]
mod limit_tests;
#[cfg(test)]
mod tests;

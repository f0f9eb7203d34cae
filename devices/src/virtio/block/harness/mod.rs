//! virtio-blk drivers in the same process: guest memory, a split virtqueue and a
//! [`Block`] behind it, driven through the device's real avail ring, used ring and
//! completion event. Tests use them to keep many requests in flight, and `kiln bench
//! blk` measures the device path with them.
//!
//! - [`Harness`] is single-threaded and polls: it plays both the guest (filling the
//!   avail ring, reading the used ring) and the event loop (calling
//!   [`Block::process_queue`] on a kick and [`Block::process_completions`] when the
//!   completion event fires). Tests see every step in order, and the bench gets the
//!   device without a guest's costs, as `qemu-img bench` has none.
//! - [`EventLoopHarness`] runs the device on its own thread under an
//!   `event_manager::EventManager`, as `kiln run` does, and the driver on the caller's
//!   thread as a vCPU would: it kicks through the queue's EventFd (KVM's ioeventfd)
//!   and waits on the interrupt's EventFd (KVM's irqfd). `kiln bench blk
//!   --device-thread` uses it.

mod driver;
mod threaded;

use std::os::unix::io::AsRawFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use virtio_bindings::bindings::virtio_ring::VIRTIO_RING_F_EVENT_IDX;
use vm_memory::VolatileSlice;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

pub use self::driver::Driver;
pub use self::threaded::EventLoopHarness;
use super::Block;
use crate::virtio::{ActivateContext, VirtioDevice, VirtioInterrupt};
use crate::GuestMemory;

/// Why the harness could not be set up or a request could not be made.
#[derive(Debug, thiserror::Error)]
pub enum HarnessError {
    #[error("queue depth {depth} is out of range: 1..={max} (three descriptors per request)")]
    Depth { depth: usize, max: usize },
    #[error("cannot set up guest memory: {0}")]
    Memory(String),
    #[error("cannot set up the virtqueue: {0}")]
    Queue(String),
    #[error("cannot activate the device: {0}")]
    Activate(#[from] crate::virtio::ActivateError),
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("request of {len} bytes at {offset}: not whole sectors or larger than a slot")]
    BadRequest { offset: u64, len: usize },
    #[error("no request finished within {0:?}")]
    Timeout(Duration),
    #[error("the device's event loop stopped: {0}")]
    EventLoop(String),
}

/// What a request does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Read,
    Write,
    Flush,
    /// One segment covering the request's range.
    Discard,
}

/// A request the device returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Done {
    /// The slot [`QueueDriver::submit`] returned.
    pub slot: usize,
    /// The virtio-blk status byte.
    pub status: u8,
    /// The used length the device reported.
    pub len: u32,
}

#[derive(Default)]
struct CountingInterrupt(AtomicU64);

impl VirtioInterrupt for CountingInterrupt {
    fn signal_used_queue(&self, _: u16) -> std::io::Result<()> {
        self.0.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
    fn signal_config_change(&self) -> std::io::Result<()> {
        Ok(())
    }
}

/// What a test or benchmark does as the guest, with either harness. The ring work
/// is [`Driver`]'s; a harness decides how kicks and interrupts travel.
pub trait QueueDriver {
    fn driver(&self) -> &Driver;
    fn driver_mut(&mut self) -> &mut Driver;

    /// Notify the device, unless it asked not to be notified (it will look at the
    /// ring again when requests complete). Returns whether it was notified.
    fn kick(&mut self) -> Result<bool, HarnessError>;

    /// Wait until the device returns at least one request, and return every request
    /// returned so far.
    fn wait(&mut self, timeout: Duration) -> Result<Vec<Done>, HarnessError>;

    /// Guest memory, e.g. to check what a read brought in.
    fn memory(&self) -> &GuestMemory {
        self.driver().memory()
    }

    /// Slots free for [`QueueDriver::submit`].
    fn free_slots(&self) -> usize {
        self.driver().free_slots()
    }

    /// The data buffer of `slot`.
    fn slot_data(&self, slot: usize) -> Result<VolatileSlice<'_>, HarnessError> {
        self.driver().slot_data(slot)
    }

    /// Copy `data` into the start of `slot`'s data buffer (what a write request sends).
    fn write_slot(&self, slot: usize, data: &[u8]) -> Result<(), HarnessError> {
        self.driver().write_slot(slot, data)
    }

    /// Copy the start of `slot`'s data buffer (what a read request brought) into `buf`.
    fn read_slot(&self, slot: usize, buf: &mut [u8]) -> Result<(), HarnessError> {
        self.driver().read_slot(slot, buf)
    }

    /// Set the driver's used_event (with EVENT_IDX negotiated: interrupt me once the
    /// used index passes `value`).
    fn set_used_event(&self, value: u16) -> Result<(), HarnessError> {
        self.driver().set_used_event(value)
    }

    /// The device's avail_event (with EVENT_IDX negotiated: kick me once the avail
    /// index passes it).
    fn avail_event(&self) -> Result<u16, HarnessError> {
        self.driver().avail_event()
    }

    /// Put a request on the avail ring (without kicking). Returns its slot, or `None`
    /// when every slot is in flight.
    fn submit(&mut self, op: Op, offset: u64, len: usize) -> Result<Option<usize>, HarnessError> {
        self.driver_mut().submit(op, offset, len)
    }

    /// Put a write of `data` on the avail ring (without kicking), its data in the slot
    /// before the device can see the request.
    fn submit_write(&mut self, offset: u64, data: &[u8]) -> Result<Option<usize>, HarnessError> {
        self.driver_mut().submit_write(offset, data)
    }

    /// Requests the device returned since the last call, without waiting.
    fn reap(&mut self) -> Result<Vec<Done>, HarnessError> {
        self.driver_mut().reap()
    }
}

/// What a driver that polls the used ring negotiates: all the device offers (FLUSH
/// among it, so the cache is writeback) but the event indexes, which it does not keep.
pub fn polling_driver_features(dev: &Block) -> u64 {
    dev.device_features() & !(1 << VIRTIO_RING_F_EVENT_IDX)
}

/// A [`Block`] device with an in-process, single-threaded driver of queue depth `depth`.
pub struct Harness {
    driver: Driver,
    dev: Block,
    interrupts: Arc<CountingInterrupt>,
}

impl Harness {
    /// Deepest queue the harness supports (three descriptors per request).
    pub const MAX_DEPTH: usize = Driver::MAX_DEPTH;

    /// Activate `dev` on a fresh queue with `depth` request slots of up to `slot_bytes`
    /// of data each, negotiating [`polling_driver_features`].
    pub fn new(dev: Block, depth: usize, slot_bytes: usize) -> Result<Self, HarnessError> {
        let features = polling_driver_features(&dev);
        Self::with_features(dev, depth, slot_bytes, features)
    }

    /// [`Harness::new`] negotiating `features` (those of them the device offers).
    pub fn with_features(
        dev: Block,
        depth: usize,
        slot_bytes: usize,
        features: u64,
    ) -> Result<Self, HarnessError> {
        let (driver, queue) = Driver::new(depth, slot_bytes)?;
        let interrupts = Arc::new(CountingInterrupt::default());
        let mut dev = dev;
        dev.ack_features(features & dev.device_features());
        dev.activate(ActivateContext {
            mem: driver.memory().clone(),
            queues: vec![queue],
            queue_events: vec![EventFd::new(EFD_NONBLOCK)?],
            interrupt: interrupts.clone(),
        })?;
        Ok(Harness {
            driver,
            dev,
            interrupts,
        })
    }

    /// The device under test.
    pub fn device(&mut self) -> &mut Block {
        &mut self.dev
    }

    /// Interrupts the device raised so far.
    pub fn interrupts(&self) -> u64 {
        self.interrupts.0.load(Ordering::Relaxed)
    }
}

impl QueueDriver for Harness {
    fn driver(&self) -> &Driver {
        &self.driver
    }

    fn driver_mut(&mut self) -> &mut Driver {
        &mut self.driver
    }

    /// Runs [`Block::process_queue`] on this thread.
    fn kick(&mut self) -> Result<bool, HarnessError> {
        if !self.driver.kick_wanted() {
            return Ok(false);
        }
        self.dev.process_queue();
        Ok(true)
    }

    /// Polls the device's completion event and runs [`Block::process_completions`]
    /// on this thread.
    fn wait(&mut self, timeout: Duration) -> Result<Vec<Done>, HarnessError> {
        let dev = &mut self.dev;
        self.driver.wait_with(timeout, |left| {
            if wait_readable(dev.completion_event(), left)? {
                dev.process_completions();
            }
            Ok(())
        })
    }
}

/// Wait up to `timeout` for `event` to become readable; false on timeout.
pub fn wait_readable(event: &EventFd, timeout: Duration) -> std::io::Result<bool> {
    crate::virtio::poll::wait_for(event.as_raw_fd(), libc::POLLIN, timeout)
}

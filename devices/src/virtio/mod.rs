//! virtio 1.2 devices and their virtio-mmio transport.
//!
//! Contract between the transport and a device model:
//! - The transport owns the queue configuration registers. When the driver sets
//!   DRIVER_OK it calls [`VirtioDevice::activate`] with the configured queues, one
//!   notification `EventFd` per queue (registered by the VMM as an ioeventfd on
//!   QueueNotify), and a [`VirtioInterrupt`] the device uses to signal the driver.
//! - Device work runs in event-manager subscribers: the device is also an
//!   `event_manager::MutEventSubscriber` and watches its queue events after activation.

pub mod activation;
pub mod block;
pub mod console;
pub mod mmio;
pub mod net;
pub mod notify;
pub mod rng;
pub mod serial;
#[cfg(test)]
pub(crate) mod test_utils;

use std::sync::Arc;

use virtio_bindings::bindings::virtio_ring::VIRTIO_RING_F_INDIRECT_DESC;
use virtio_queue::Queue;
use vmm_sys_util::eventfd::EventFd;

use crate::GuestMemory;

/// Device IDs from virtio 1.2 section 5.
pub mod device_type {
    pub const NET: u32 = 1;
    pub const BLOCK: u32 = 2;
    pub const CONSOLE: u32 = 3;
    pub const RNG: u32 = 4;
}

/// Feature bits common to all devices (virtio 1.2 section 6).
pub const VIRTIO_F_VERSION_1: u64 = 1 << 32;

/// VIRTIO_RING_F_INDIRECT_DESC, which every device offers, as QEMU's do: a driver may
/// put a request's buffers in a table of its own, one ring slot per request. Devices
/// read chains through virtio-queue's `DescriptorChain`, which follows a table where
/// a descriptor refers to one and ends the chain on a malformed table (nested, not
/// whole descriptors, outside guest memory, over 65535 entries). A device that needs
/// fewer buffers per request bounds them itself (virtio-blk: SEG_MAX).
pub const VIRTIO_RING_F_INDIRECT: u64 = 1 << VIRTIO_RING_F_INDIRECT_DESC;

/// How a device signals the driver.
pub trait VirtioInterrupt: Send + Sync {
    /// The device put buffers in the used ring of `queue_index`.
    fn signal_used_queue(&self, queue_index: u16) -> std::io::Result<()>;
    /// The device configuration space changed.
    fn signal_config_change(&self) -> std::io::Result<()>;
}

/// Why activation failed.
#[derive(Debug, thiserror::Error)]
pub enum ActivateError {
    #[error("driver configured {got} queues, device needs {want}")]
    QueueCount { got: usize, want: usize },
    #[error("queue {0} is not valid (size or ring addresses outside guest memory)")]
    InvalidQueue(usize),
    #[error("device could not start: {0}")]
    Backend(String),
}

/// What the transport hands a device when the driver sets DRIVER_OK.
pub struct ActivateContext {
    pub mem: GuestMemory,
    pub queues: Vec<Queue>,
    pub queue_events: Vec<EventFd>,
    pub interrupt: Arc<dyn VirtioInterrupt>,
}

/// A virtio device model, independent of its transport.
pub trait VirtioDevice: Send {
    /// Device ID (see [`device_type`]).
    fn device_type(&self) -> u32;
    /// Maximum size of each queue; the length is the number of queues.
    fn queue_max_sizes(&self) -> &[u16];
    /// Feature bits the device offers.
    fn device_features(&self) -> u64;
    /// The feature bits the driver accepted (a subset of [`Self::device_features`]).
    fn ack_features(&mut self, features: u64);
    /// Read the device configuration space; out-of-range bytes read as zero.
    fn read_config(&self, offset: u64, data: &mut [u8]);
    /// Write the device configuration space; read-only fields ignore writes.
    fn write_config(&mut self, offset: u64, data: &[u8]);
    /// Start processing queues.
    fn activate(&mut self, ctx: ActivateContext) -> Result<(), ActivateError>;
    /// Stop processing and forget the queues. Returns false if the device cannot reset.
    fn reset(&mut self) -> bool;
}

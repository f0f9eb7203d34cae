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
pub(crate) mod poll;
pub mod rng;
pub mod serial;
#[cfg(test)]
pub(crate) mod test_utils;
pub(crate) mod timer;

use std::sync::Arc;

use virtio_bindings::bindings::virtio_ring::VIRTIO_RING_F_INDIRECT_DESC;
use virtio_queue::{Queue, QueueT};
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

impl ActivateContext {
    /// The queues, if the driver set up the `want` the device has, each told whether
    /// VIRTIO_RING_F_EVENT_IDX was negotiated (virtio 1.2 §2.7.10: with it, used_event
    /// decides interrupts and avail_event kicks).
    pub fn take_queues(
        &mut self,
        want: usize,
        event_idx: bool,
    ) -> Result<Vec<Queue>, ActivateError> {
        let got = self.queues.len();
        if got != want {
            return Err(ActivateError::QueueCount { got, want });
        }
        let mut queues = std::mem::take(&mut self.queues);
        for q in &mut queues {
            q.set_event_idx(event_idx);
        }
        Ok(queues)
    }

    /// [`ActivateContext::take_queues`] for a device with `N` queues.
    pub fn take_queue_array<const N: usize>(
        &mut self,
        event_idx: bool,
    ) -> Result<[Queue; N], ActivateError> {
        self.take_queues(N, event_idx)?
            .try_into()
            .map_err(|q: Vec<Queue>| ActivateError::QueueCount {
                got: q.len(),
                want: N,
            })
    }
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

#[cfg(test)]
mod activate_tests {
    use super::*;
    use crate::virtio::console::Console;
    use crate::virtio::rng::Rng;
    use crate::virtio::test_utils::{test_mem, CountingInterrupt};

    fn context(queues: usize) -> ActivateContext {
        ActivateContext {
            mem: test_mem(),
            queues: (0..queues).map(|_| Queue::new(16).unwrap()).collect(),
            queue_events: (0..queues).map(|_| EventFd::new(0).unwrap()).collect(),
            interrupt: Arc::new(CountingInterrupt::default()),
        }
    }

    #[test]
    fn queues_are_taken_only_in_the_number_the_device_has() {
        let [a, b] = context(2).take_queue_array(true).unwrap();
        assert!(a.event_idx_enabled() && b.event_idx_enabled());
        let queues = context(3).take_queues(3, false).unwrap();
        assert!(queues.iter().all(|q| !q.event_idx_enabled()));
        for got in [2, 4] {
            let err = context(got).take_queues(3, false).unwrap_err();
            let want = format!("driver configured {got} queues, device needs 3");
            assert_eq!(err.to_string(), want);
        }
        let err = context(3).take_queue_array::<2>(true).unwrap_err();
        assert_eq!(
            err.to_string(),
            "driver configured 3 queues, device needs 2"
        );
        // Devices refuse a driver that set up another number of queues.
        let mut console = Console::new(Box::new(std::io::sink()), None).unwrap();
        let err = console.activate(context(1)).unwrap_err();
        assert_eq!(
            err.to_string(),
            "driver configured 1 queues, device needs 2"
        );
        let mut rng = Rng::new().unwrap();
        let err = rng.activate(context(2)).unwrap_err();
        assert_eq!(
            err.to_string(),
            "driver configured 2 queues, device needs 1"
        );
    }
}

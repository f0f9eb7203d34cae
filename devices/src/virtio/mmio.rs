//! virtio-mmio transport, version 2 (the "modern" register layout of virtio 1.2 §4.2.2).
//!
//! # How a VMM wires a device
//!
//! ```text
//! let dev = Arc::new(Mutex::new(Block::new(disk, ..)?));          // device model
//! let transport = MmioTransport::new(mem.clone(), dev.clone())?;  // dyn VirtioDevice
//! event_manager.add_subscriber(dev);              // device work runs on the event loop
//! for (i, evt) in transport.queue_events().iter().enumerate() {
//!     // QueueNotify is at base + NOTIFY_REG_OFFSET (0x50), the value written is the queue index.
//!     vm.register_ioevent(evt, &IoEventAddress::Mmio(base + NOTIFY_REG_OFFSET), i as u32)?;
//! }
//! vm.register_irqfd(transport.irq_event(), gsi)?;   // edge-triggered GSI
//! mmio_bus.insert(Arc::new(Mutex::new(transport)), base, MMIO_REGION_SIZE)?;
//! // Describe it to the guest: ACPI `LNRO0005` (base, MMIO_REGION_SIZE, gsi) and/or
//! // `virtio_mmio.device=4K@0xBASE:GSI` on the kernel command line.
//! ```
//!
//! The vCPU thread drives the transport through [`BusDevice`]. When the driver sets
//! DRIVER_OK the transport hands the device an [`super::ActivateContext`] (queues, clones of
//! the queue `EventFd`s, and an [`MmioInterrupt`]). The device stores it and wakes its
//! own event subscriber (see [`super::activation::Activation`]), which then registers
//! the queue events with the event manager (once: later activations reuse them). On a
//! device reset (status 0) the device drops its queue state; notifications that still
//! arrive are drained and ignored. Without ioeventfd a write to QueueNotify still
//! works: the transport writes the queue's `EventFd` itself.
//!
//! Interrupts: the device calls [`VirtioInterrupt::signal_used_queue`], which sets
//! bit 0 of InterruptStatus and writes the irq `EventFd` (registered as irqfd). The
//! driver reads InterruptStatus and acknowledges through InterruptACK.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use log::{debug, warn};
use virtio_queue::{Queue, QueueT};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::{VirtioDevice, VirtioInterrupt, VIRTIO_F_VERSION_1};
use crate::bus::BusDevice;
use crate::GuestMemory;

/// Size of the MMIO window a VMM should reserve per device.
pub const MMIO_REGION_SIZE: u64 = 0x1000;
/// Offset of QueueNotify, for ioeventfd registration (datamatch = queue index).
pub const NOTIFY_REG_OFFSET: u64 = 0x50;
/// Offset of the device configuration space.
pub const CONFIG_SPACE_OFFSET: u64 = 0x100;

const MAGIC_VALUE: u32 = 0x7472_6976; // "virt"
const MMIO_VERSION: u32 = 2;
/// Vendor ID reported to the driver ("KILN" would not fit the PCI-style convention; any value works).
pub const VENDOR_ID: u32 = 0x4e4c_494b;

/// Device status bits (virtio 1.2 §2.1).
pub mod status {
    pub const ACKNOWLEDGE: u32 = 1;
    pub const DRIVER: u32 = 2;
    pub const DRIVER_OK: u32 = 4;
    pub const FEATURES_OK: u32 = 8;
    pub const DEVICE_NEEDS_RESET: u32 = 64;
    pub const FAILED: u32 = 128;
}

/// InterruptStatus bits.
pub const INT_VRING: u32 = 1;
pub const INT_CONFIG: u32 = 2;

/// Interrupt state shared between the transport (which the driver reads) and the device.
pub struct MmioInterrupt {
    status: AtomicU32,
    config_generation: AtomicU32,
    irq: EventFd,
}

impl MmioInterrupt {
    fn new() -> std::io::Result<Self> {
        Ok(MmioInterrupt {
            status: AtomicU32::new(0),
            config_generation: AtomicU32::new(0),
            irq: EventFd::new(EFD_NONBLOCK)?,
        })
    }

    /// Current InterruptStatus bits.
    pub fn status(&self) -> u32 {
        self.status.load(Ordering::SeqCst)
    }

    fn raise(&self, bit: u32) -> std::io::Result<()> {
        self.status.fetch_or(bit, Ordering::SeqCst);
        self.irq.write(1)
    }
}

impl VirtioInterrupt for MmioInterrupt {
    fn signal_used_queue(&self, _queue_index: u16) -> std::io::Result<()> {
        self.raise(INT_VRING)
    }

    fn signal_config_change(&self) -> std::io::Result<()> {
        self.config_generation.fetch_add(1, Ordering::SeqCst);
        self.raise(INT_CONFIG)
    }
}

/// One virtio device behind a virtio-mmio register window.
pub struct MmioTransport {
    device: Arc<Mutex<dyn VirtioDevice>>,
    mem: GuestMemory,
    device_type: u32,
    device_features: u64,
    queues: Vec<Queue>,
    queue_events: Vec<EventFd>,
    interrupt: Arc<MmioInterrupt>,
    status: u32,
    device_features_select: u32,
    driver_features_select: u32,
    driver_features: u64,
    queue_select: u32,
    activated: bool,
}

/// Errors building a transport.
#[derive(Debug, thiserror::Error)]
pub enum MmioError {
    #[error("cannot create an eventfd for the virtio-mmio transport: {0}")]
    EventFd(#[source] std::io::Error),
    #[error(
        "virtio device has an invalid queue maximum size {0} (must be a power of two, 1..=32768)"
    )]
    QueueSize(u16),
}

impl MmioTransport {
    /// Put `device` behind a virtio-mmio register window over guest memory `mem`.
    pub fn new(mem: GuestMemory, device: Arc<Mutex<dyn VirtioDevice>>) -> Result<Self, MmioError> {
        let (device_type, device_features, max_sizes) = {
            let d = lock(&device);
            (
                d.device_type(),
                d.device_features() | VIRTIO_F_VERSION_1,
                d.queue_max_sizes().to_vec(),
            )
        };
        let mut queues = Vec::with_capacity(max_sizes.len());
        let mut queue_events = Vec::with_capacity(max_sizes.len());
        for size in max_sizes {
            queues.push(Queue::new(size).map_err(|_| MmioError::QueueSize(size))?);
            queue_events.push(EventFd::new(EFD_NONBLOCK).map_err(MmioError::EventFd)?);
        }
        Ok(MmioTransport {
            device,
            mem,
            device_type,
            device_features,
            queues,
            queue_events,
            interrupt: Arc::new(MmioInterrupt::new().map_err(MmioError::EventFd)?),
            status: 0,
            device_features_select: 0,
            driver_features_select: 0,
            driver_features: 0,
            queue_select: 0,
            activated: false,
        })
    }

    /// Number of virtqueues.
    pub fn queue_count(&self) -> usize {
        self.queues.len()
    }

    /// One `EventFd` per queue; register each as ioeventfd on QueueNotify with datamatch = index.
    pub fn queue_events(&self) -> &[EventFd] {
        &self.queue_events
    }

    /// The `EventFd` the transport writes to interrupt the driver; register it as irqfd.
    pub fn irq_event(&self) -> &EventFd {
        &self.interrupt.irq
    }

    /// The interrupt object handed to the device.
    pub fn interrupt(&self) -> Arc<MmioInterrupt> {
        self.interrupt.clone()
    }

    /// virtio device ID of the device behind this transport.
    pub fn device_type(&self) -> u32 {
        self.device_type
    }

    /// Current device status register.
    pub fn status(&self) -> u32 {
        self.status
    }

    /// Whether the device was activated (DRIVER_OK accepted).
    pub fn is_activated(&self) -> bool {
        self.activated
    }

    fn selected_queue(&mut self) -> Option<&mut Queue> {
        self.queues.get_mut(self.queue_select as usize)
    }

    /// Queue registers are writable only between FEATURES_OK and DRIVER_OK, and only
    /// while the selected queue is not ready.
    fn queue_writable(&mut self) -> Option<&mut Queue> {
        let s = self.status;
        if s & status::FEATURES_OK == 0 || s & (status::DRIVER_OK | status::FAILED) != 0 {
            warn!("virtio-mmio: queue register write in status {s:#x} ignored");
            return None;
        }
        self.selected_queue().filter(|q| !q.ready())
    }

    fn read_reg(&self, offset: u64) -> u32 {
        let queue = self.queues.get(self.queue_select as usize);
        match offset {
            0x00 => MAGIC_VALUE,
            0x04 => MMIO_VERSION,
            0x08 => self.device_type,
            0x0c => VENDOR_ID,
            0x10 => match self.device_features_select {
                0 => self.device_features as u32,
                1 => (self.device_features >> 32) as u32,
                _ => 0,
            },
            0x34 => queue.map_or(0, |q| u32::from(q.max_size())),
            0x44 => queue.map_or(0, |q| u32::from(q.ready())),
            0x60 => self.interrupt.status(),
            0x70 => self.status,
            // No shared memory regions: length reads as -1 (virtio 1.2 §4.2.2).
            0xb0 | 0xb4 => u32::MAX,
            0xfc => self.interrupt.config_generation.load(Ordering::SeqCst),
            _ => {
                debug!("virtio-mmio: read of unknown/write-only register {offset:#x}");
                0
            }
        }
    }

    fn write_reg(&mut self, offset: u64, v: u32) {
        match offset {
            0x14 => self.device_features_select = v,
            0x20 => self.write_driver_features(v),
            0x24 => self.driver_features_select = v,
            0x30 => self.queue_select = v,
            0x38 => {
                if let Some(q) = self.queue_writable() {
                    // Queue::set_size ignores (and logs) sizes that are zero, too large or not a power of 2.
                    q.set_size(v.min(u32::from(u16::MAX)) as u16);
                }
            }
            0x44 => {
                if let Some(q) = self.queue_writable() {
                    q.set_ready(v == 1);
                } else if v == 0 {
                    // Clearing ready on a ready queue is a per-queue reset, which we do not offer.
                    warn!("virtio-mmio: QueueReady=0 on a live queue ignored");
                }
            }
            0x50 => self.notify(v),
            0x64 => {
                self.interrupt.status.fetch_and(!v, Ordering::SeqCst);
            }
            0x70 => self.write_status(v),
            0x80 => self.set_addr(|q, v| q.set_desc_table_address(Some(v), None), v),
            0x84 => self.set_addr(|q, v| q.set_desc_table_address(None, Some(v)), v),
            0x90 => self.set_addr(|q, v| q.set_avail_ring_address(Some(v), None), v),
            0x94 => self.set_addr(|q, v| q.set_avail_ring_address(None, Some(v)), v),
            0xa0 => self.set_addr(|q, v| q.set_used_ring_address(Some(v), None), v),
            0xa4 => self.set_addr(|q, v| q.set_used_ring_address(None, Some(v)), v),
            0xac => {} // SHMSel: no shared memory regions
            _ => debug!("virtio-mmio: write {v:#x} to unknown/read-only register {offset:#x}"),
        }
    }

    fn set_addr(&mut self, f: impl FnOnce(&mut Queue, u32), v: u32) {
        if let Some(q) = self.queue_writable() {
            f(q, v);
        }
    }

    fn write_driver_features(&mut self, v: u32) {
        if self.status & status::DRIVER == 0 || self.status & status::FEATURES_OK != 0 {
            warn!(
                "virtio-mmio: DriverFeatures write in status {:#x} ignored",
                self.status
            );
            return;
        }
        match self.driver_features_select {
            0 => self.driver_features = (self.driver_features & !0xffff_ffff) | u64::from(v),
            1 => self.driver_features = (self.driver_features & 0xffff_ffff) | (u64::from(v) << 32),
            sel => warn!("virtio-mmio: DriverFeatures bank {sel} does not exist"),
        }
    }

    fn notify(&mut self, v: u32) {
        match self.queue_events.get(v as usize) {
            Some(evt) if self.activated => {
                if let Err(e) = evt.write(1) {
                    warn!("virtio-mmio: cannot signal queue {v}: {e}");
                }
            }
            Some(_) => debug!("virtio-mmio: notify of queue {v} before DRIVER_OK"),
            None => warn!("virtio-mmio: notify of nonexistent queue {v}"),
        }
    }
}

/// A poisoned lock means a device thread panicked; the state is still usable for
/// register access, so take it rather than propagating the panic to the vCPU.
fn lock<'a>(
    device: &'a Mutex<dyn VirtioDevice + 'static>,
) -> std::sync::MutexGuard<'a, dyn VirtioDevice + 'static> {
    device.lock().unwrap_or_else(|e| e.into_inner())
}

impl BusDevice for MmioTransport {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if offset >= CONFIG_SPACE_OFFSET {
            lock(&self.device).read_config(offset - CONFIG_SPACE_OFFSET, data);
            return;
        }
        if data.len() != 4 || offset % 4 != 0 {
            warn!(
                "virtio-mmio: {}-byte read at {offset:#x} ignored",
                data.len()
            );
            data.fill(0);
            return;
        }
        data.copy_from_slice(&self.read_reg(offset).to_le_bytes());
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset >= CONFIG_SPACE_OFFSET {
            lock(&self.device).write_config(offset - CONFIG_SPACE_OFFSET, data);
            return;
        }
        if data.len() != 4 || offset % 4 != 0 {
            warn!(
                "virtio-mmio: {}-byte write at {offset:#x} ignored",
                data.len()
            );
            return;
        }
        let v = u32::from_le_bytes([data[0], data[1], data[2], data[3]]);
        self.write_reg(offset, v);
    }
}

mod lifecycle;

#[cfg(test)]
mod tests;

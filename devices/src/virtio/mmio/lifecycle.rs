//! The device status state machine of the virtio-mmio transport: feature
//! negotiation, activation on DRIVER_OK, and reset (virtio 1.2 §3.1, §4.2.2).

use std::sync::atomic::Ordering;

use log::warn;
use virtio_queue::{Queue, QueueT};
use vmm_sys_util::eventfd::EventFd;

use super::{lock, status, MmioTransport};
use crate::virtio::{ActivateContext, VirtioInterrupt, VIRTIO_F_VERSION_1};

impl MmioTransport {
    pub(super) fn write_status(&mut self, v: u32) {
        use status::*;
        if v == 0 {
            self.reset();
            return;
        }
        let old = self.status;
        if v & FAILED != 0 {
            self.status |= FAILED;
            return;
        }
        // The driver may only add bits, in order (virtio 1.2 §3.1.1).
        let added = v & !old;
        if v & old != old || added == 0 {
            warn!("virtio-mmio: status {old:#x} -> {v:#x} ignored (bits may only be added)");
            return;
        }
        let order = [ACKNOWLEDGE, DRIVER, FEATURES_OK, DRIVER_OK];
        let mut have = old;
        for bit in order {
            if added & bit != 0 {
                let prerequisites = order
                    .iter()
                    .take_while(|&&b| b != bit)
                    .fold(0, |a, b| a | b);
                if have & prerequisites != prerequisites {
                    warn!("virtio-mmio: status bit {bit:#x} set before its prerequisites");
                    return;
                }
                have |= bit;
            }
        }
        if added & !(ACKNOWLEDGE | DRIVER | FEATURES_OK | DRIVER_OK) != 0 {
            warn!("virtio-mmio: driver set unknown status bits {v:#x}");
            return;
        }
        if added & FEATURES_OK != 0 && !self.features_acceptable() {
            // Leave FEATURES_OK clear: the driver re-reads status and gives up.
            self.status = old | (added & !(FEATURES_OK | DRIVER_OK));
            return;
        }
        self.status = v;
        if added & FEATURES_OK != 0 {
            lock(&self.device).ack_features(self.driver_features);
        }
        if added & DRIVER_OK != 0 {
            self.activate();
        }
    }

    fn features_acceptable(&self) -> bool {
        let f = self.driver_features;
        if f & !self.device_features != 0 {
            warn!(
                "virtio-mmio: driver accepted features {:#x} the device did not offer",
                f & !self.device_features
            );
            return false;
        }
        if f & VIRTIO_F_VERSION_1 == 0 {
            warn!("virtio-mmio: legacy driver (VIRTIO_F_VERSION_1 not accepted) refused");
            return false;
        }
        true
    }

    fn activate(&mut self) {
        if let Some(i) = self
            .queues
            .iter()
            .position(|q| q.ready() && !q.is_valid(&self.mem))
        {
            warn!("virtio-mmio: queue {i} is not valid; device needs reset");
            self.needs_reset();
            return;
        }
        let queue_events: Result<Vec<EventFd>, _> =
            self.queue_events.iter().map(EventFd::try_clone).collect();
        let queue_events = match queue_events {
            Ok(e) => e,
            Err(e) => {
                warn!("virtio-mmio: cannot clone queue eventfd: {e}");
                self.needs_reset();
                return;
            }
        };
        let ctx = ActivateContext {
            mem: self.mem.clone(),
            queues: self.queues.iter().map(copy_queue).collect(),
            queue_events,
            interrupt: self.interrupt.clone(),
        };
        let result = lock(&self.device).activate(ctx);
        match result {
            Ok(()) => self.activated = true,
            Err(e) => {
                warn!(
                    "virtio-mmio: device type {} failed to activate: {e}",
                    self.device_type
                );
                self.needs_reset();
            }
        }
    }

    fn reset_device(&self) -> bool {
        lock(&self.device).reset()
    }

    fn needs_reset(&mut self) {
        self.status |= status::DEVICE_NEEDS_RESET;
        if let Err(e) = self.interrupt.signal_config_change() {
            warn!("virtio-mmio: cannot signal DEVICE_NEEDS_RESET: {e}");
        }
    }

    fn reset(&mut self) {
        if self.activated && !self.reset_device() {
            warn!("virtio-mmio: device type {} cannot reset", self.device_type);
            self.needs_reset();
            return;
        }
        self.activated = false;
        self.status = 0;
        self.driver_features = 0;
        self.device_features_select = 0;
        self.driver_features_select = 0;
        self.queue_select = 0;
        self.interrupt.status.store(0, Ordering::SeqCst);
        for q in &mut self.queues {
            q.reset();
        }
        for evt in &self.queue_events {
            // Drain stale notifications; EAGAIN just means there were none.
            let _ = evt.read();
        }
    }
}

/// A fresh `Queue` with the driver's configuration of `q` (Queue is not Clone).
fn copy_queue(q: &Queue) -> Queue {
    let mut c = Queue::new(q.max_size()).expect("max size was valid for the original");
    c.set_size(q.size());
    c.set_ready(q.ready());
    let split = |a: u64| (Some(a as u32), Some((a >> 32) as u32));
    let (l, h) = split(q.desc_table());
    c.set_desc_table_address(l, h);
    let (l, h) = split(q.avail_ring());
    c.set_avail_ring_address(l, h);
    let (l, h) = split(q.used_ring());
    c.set_used_ring_address(l, h);
    c
}

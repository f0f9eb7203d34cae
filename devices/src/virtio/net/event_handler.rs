//! Event-loop wiring: the device is an event-manager subscriber watching its queue
//! events (through [`Activation`](crate::virtio::activation::Activation)) and the
//! backend fd.
//!
//! The backend fd is registered only while the device is active, for reading only while
//! no packet waits for rx buffers (epoll is level-triggered: an unread fd would spin),
//! and for writing only while output is pending.

use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};
use log::warn;

use super::device::{Net, RX_QUEUE, TX_QUEUE};
use crate::virtio::activation::DeviceEvent;

/// `Events::data` of the backend fd (queue events use their index, activation u32::MAX).
const BACKEND_DATA: u32 = 0x4e45_5400;

impl Net {
    fn wanted_interest(&self) -> Option<EventSet> {
        if self.active.as_ref().is_none_or(|a| a.broken) || !self.backend_alive {
            return None;
        }
        let mut set = EventSet::empty();
        if self.rx_pending.is_none() {
            set |= EventSet::IN;
        }
        if self.tx_pending.is_some() || self.backend.has_pending_output() {
            set |= EventSet::OUT;
        }
        (!set.is_empty()).then_some(set)
    }

    fn update_interest(&mut self, ops: &mut EventOps) {
        let want = self.wanted_interest();
        if want == self.interest {
            return;
        }
        let fd = self.backend.raw_fd();
        let ev = |set| Events::with_data_raw(fd, BACKEND_DATA, set);
        let res = match (self.interest, want) {
            (None, Some(set)) => ops.add(ev(set)),
            (Some(_), Some(set)) => ops.modify(ev(set)),
            (Some(old), None) => ops.remove(ev(old)),
            (None, None) => Ok(()),
        };
        if let Err(e) = res {
            warn!("virtio-net: cannot update backend fd registration: {e}");
        }
        self.interest = want;
    }
}

impl MutEventSubscriber for Net {
    fn init(&mut self, ops: &mut EventOps) {
        self.activation.init(ops);
    }

    fn process(&mut self, events: Events, ops: &mut EventOps) {
        if events.data() == BACKEND_DATA {
            let set = events.event_set();
            if set.intersects(EventSet::HANG_UP | EventSet::ERROR) {
                let e = std::io::Error::new(
                    std::io::ErrorKind::ConnectionReset,
                    "backend fd hung up or failed",
                );
                self.backend_died(&e);
            } else if self.active.is_some() {
                if set.contains(EventSet::OUT) {
                    self.process_backend_writable();
                }
                if set.contains(EventSet::IN) {
                    self.process_rx();
                }
            }
        } else {
            match self.activation.handle(&events, ops) {
                DeviceEvent::Queue(RX_QUEUE) => self.process_rx(),
                DeviceEvent::Queue(TX_QUEUE) => self.process_tx(),
                DeviceEvent::Queue(_) | DeviceEvent::None => {}
            }
        }
        self.update_interest(ops);
    }
}

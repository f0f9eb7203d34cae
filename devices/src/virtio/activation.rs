//! Hand-over of a device's queues from the transport (vCPU thread) to the device's
//! event subscriber (event-loop thread).
//!
//! A device model owns an [`Activation`]. In `VirtioDevice::activate` it keeps the
//! memory, queues and interrupt and passes the queue events to
//! [`Activation::activate`]; in `reset` it drops its queue state. Its
//! `MutEventSubscriber::init` calls [`Activation::init`], and its `process` asks
//! [`Activation::handle`] what the event was: the activation event (the queue events
//! get registered) or a notification for queue N (its counter is drained).

use event_manager::{EventOps, EventSet, Events};
use log::warn;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

/// `Events::data` of the activation event; queue events carry their queue index.
const ACTIVATE_DATA: u32 = u32::MAX;

/// What an event meant for the device.
#[derive(Debug, PartialEq, Eq)]
pub enum DeviceEvent {
    /// The driver notified queue N.
    Queue(usize),
    /// Registrations changed (activation or reset) or the event was spurious: nothing to do.
    None,
}

/// Activation event plus the queue events, registered once with the event manager.
///
/// The transport's queue `EventFd`s live as long as the transport, and every
/// activation hands over clones of the same ones, so the first set is kept for the
/// device's lifetime: a reset only drops the device's queue state, and a queue event
/// arriving while the device is not active is drained and ignored by the device.
pub struct Activation {
    evt: EventFd,
    queue_events: Vec<EventFd>,
    registered: bool,
}

impl Activation {
    pub fn new() -> std::io::Result<Self> {
        Ok(Activation {
            evt: EventFd::new(EFD_NONBLOCK)?,
            queue_events: Vec::new(),
            registered: false,
        })
    }

    /// Register the activation event; call from `MutEventSubscriber::init`.
    pub fn init(&self, ops: &mut EventOps) {
        let ev = Events::with_data(&self.evt, ACTIVATE_DATA, EventSet::IN);
        if let Err(e) = ops.add(ev) {
            warn!("virtio: cannot register activation event: {e}");
        }
    }

    /// Call from `VirtioDevice::activate` with the context's queue events.
    pub fn activate(&mut self, queue_events: Vec<EventFd>) {
        if self.queue_events.is_empty() {
            self.queue_events = queue_events;
        }
        if let Err(e) = self.evt.write(1) {
            warn!("virtio: cannot signal activation: {e}");
        }
    }

    /// Classify `events`, registering the queue events on the first activation.
    pub fn handle(&mut self, events: &Events, ops: &mut EventOps) -> DeviceEvent {
        if events.data() == ACTIVATE_DATA {
            let _ = self.evt.read();
            if !self.registered {
                for (i, evt) in self.queue_events.iter().enumerate() {
                    if let Err(e) = ops.add(Events::with_data(evt, i as u32, EventSet::IN)) {
                        warn!("virtio: cannot register queue {i} event: {e}");
                    }
                }
                self.registered = !self.queue_events.is_empty();
            }
            return DeviceEvent::None;
        }
        let index = events.data() as usize;
        match self.queue_events.get(index) {
            Some(evt) => {
                // EAGAIN: nothing pending; processing the queue anyway is harmless.
                let _ = evt.read();
                DeviceEvent::Queue(index)
            }
            None => DeviceEvent::None,
        }
    }
}

//! [`EventLoopHarness`]: the device on its own event-loop thread, the driver on the
//! caller's thread, signalling each other through EventFds as in a VM.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use event_manager::{EventManager, SubscriberOps};
use virtio_bindings::bindings::virtio_ring::VIRTIO_RING_F_EVENT_IDX;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::driver::Driver;
use super::{wait_readable, Done, HarnessError, QueueDriver};
use crate::virtio::block::Block;
use crate::virtio::{ActivateContext, VirtioDevice, VirtioInterrupt};

/// How long the event loop sleeps between looks at the stop flag when idle.
const EVENT_LOOP_TICK_MS: i32 = 100;
/// How often a waiting driver checks that the event loop is still running.
const LIVENESS_CHECK: Duration = Duration::from_secs(1);

/// Raises the driver's interrupt by writing an EventFd, as KVM's irqfd is written.
struct EventFdInterrupt(EventFd);

impl VirtioInterrupt for EventFdInterrupt {
    fn signal_used_queue(&self, _: u16) -> std::io::Result<()> {
        self.0.write(1)
    }
    fn signal_config_change(&self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A [`Block`] serving one queue on its own event-loop thread, and its driver.
///
/// The driver kicks through the queue's EventFd unless the device set
/// VRING_USED_F_NO_NOTIFY, and sleeps on the interrupt's EventFd until the used ring
/// moves. So the device's processing of completions and the driver's refilling of the
/// ring overlap, as a vCPU and `kiln run`'s event loop do, and every hand-over costs a
/// real thread wake-up. Dropping the harness stops the loop and drops the device,
/// which joins its I/O threads.
pub struct EventLoopHarness {
    driver: Driver,
    kick: EventFd,
    irq: EventFd,
    stop: Arc<AtomicBool>,
    event_loop: Option<JoinHandle<Result<(), String>>>,
}

impl EventLoopHarness {
    /// Deepest queue the harness supports (three descriptors per request).
    pub const MAX_DEPTH: usize = Driver::MAX_DEPTH;

    /// Negotiate `features` (those of them the device offers), activate `dev` on a
    /// fresh queue with `depth` request slots of up to `slot_bytes` of data each, and
    /// start its event loop. With VIRTIO_RING_F_EVENT_IDX among them, the driver
    /// kicks and sleeps by the event indexes, as Linux does.
    pub fn new(
        dev: Block,
        depth: usize,
        slot_bytes: usize,
        features: u64,
    ) -> Result<Self, HarnessError> {
        let (mut driver, queue) = Driver::new(depth, slot_bytes)?;
        let mut dev = dev;
        let features = features & dev.device_features();
        dev.ack_features(features);
        if features & (1 << VIRTIO_RING_F_EVENT_IDX) != 0 {
            driver.use_event_idx();
        }
        let queue_event = EventFd::new(EFD_NONBLOCK)?;
        let kick = queue_event.try_clone()?;
        let irq = EventFd::new(EFD_NONBLOCK)?;
        dev.activate(ActivateContext {
            mem: driver.memory().clone(),
            queues: vec![queue],
            queue_events: vec![queue_event],
            interrupt: Arc::new(EventFdInterrupt(irq.try_clone()?)),
        })?;
        let mut events: EventManager<Arc<Mutex<Block>>> =
            EventManager::new().map_err(|e| HarnessError::EventLoop(e.to_string()))?;
        events.add_subscriber(Arc::new(Mutex::new(dev)));
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = stop.clone();
        let event_loop = std::thread::Builder::new()
            .name("blk-event-loop".into())
            .spawn(move || {
                while !stopping.load(Ordering::Acquire) {
                    events
                        .run_with_timeout(EVENT_LOOP_TICK_MS)
                        .map_err(|e| e.to_string())?;
                }
                Ok(())
            })?;
        Ok(EventLoopHarness {
            driver,
            kick,
            irq,
            stop,
            event_loop: Some(event_loop),
        })
    }

    /// Stop the event loop and drop the device (its I/O threads joined, a qcow2's
    /// metadata written back); the loop's error, if it failed.
    pub fn close(mut self) -> Result<(), HarnessError> {
        self.join()
    }

    fn join(&mut self) -> Result<(), HarnessError> {
        let Some(event_loop) = self.event_loop.take() else {
            return Ok(());
        };
        self.stop.store(true, Ordering::Release);
        // Wakes the loop at once; the device finds nothing new on the ring.
        let _ = self.kick.write(1);
        match event_loop.join() {
            Ok(result) => result.map_err(HarnessError::EventLoop),
            Err(_) => Err(HarnessError::EventLoop("its thread panicked".into())),
        }
    }
}

impl QueueDriver for EventLoopHarness {
    fn driver(&self) -> &Driver {
        &self.driver
    }

    fn driver_mut(&mut self) -> &mut Driver {
        &mut self.driver
    }

    /// Writes the queue's EventFd, as KVM's ioeventfd would.
    fn kick(&mut self) -> Result<bool, HarnessError> {
        if !self.driver.kick_wanted() {
            return Ok(false);
        }
        self.kick.write(1)?;
        Ok(true)
    }

    /// Sleeps on the interrupt's EventFd (armed by used_event with EVENT_IDX).
    fn wait(&mut self, timeout: Duration) -> Result<Vec<Done>, HarnessError> {
        let (irq, event_loop) = (&self.irq, &self.event_loop);
        let mut stopped = false;
        let result = self.driver.wait_with(timeout, |left| {
            if wait_readable(irq, left.min(LIVENESS_CHECK))? {
                // EAGAIN: another wait already drained it; the ring is looked at anyway.
                let _ = irq.read();
            } else if event_loop.as_ref().is_none_or(|t| t.is_finished()) {
                stopped = true;
                return Err(HarnessError::EventLoop(
                    "it exited while requests were in flight".into(),
                ));
            }
            Ok(())
        });
        match result {
            // The loop's own error, if it has one, says more.
            Err(exited) if stopped => Err(self.join().err().unwrap_or(exited)),
            result => result,
        }
    }
}

impl Drop for EventLoopHarness {
    fn drop(&mut self) {
        if let Err(e) = self.join() {
            log::warn!("virtio-blk harness: {e}");
        }
    }
}

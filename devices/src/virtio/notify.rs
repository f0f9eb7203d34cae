//! Notification suppression, shared by the devices (virtio 1.2 §2.7.7 and §2.7.10).
//!
//! - Interrupts: with VIRTIO_RING_F_EVENT_IDX the driver's used_event says when it
//!   wants one; without it the driver's VRING_AVAIL_F_NO_INTERRUPT flag asks for none.
//!   virtio-queue's `needs_notification` covers only the first, so the flag is read
//!   here. A driver polling the used ring (Linux's hvc console does, for output) then
//!   takes no interrupt it would only discard.
//! - Kicks: a device that drains its ring on the event loop asks not to be kicked
//!   while it does, and re-enables kicks afterwards. With EVENT_IDX re-enabling writes
//!   avail_event, without which the driver would kick only once per trip round the
//!   index space. After re-enabling it looks at the ring once more, or a buffer made
//!   available in between would wait for a kick that never comes.

use std::sync::atomic::Ordering;

use log::warn;
use virtio_bindings::bindings::virtio_ring::VRING_AVAIL_F_NO_INTERRUPT;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress};

use super::VirtioInterrupt;
use crate::GuestMemory;

/// Whether the driver wants an interrupt for the used entries added to `queue` since
/// the last call. Callers that cannot read the ring should interrupt: a spurious
/// interrupt is harmless, a missing one can hang the driver.
pub fn driver_wants_interrupt(
    queue: &mut Queue,
    mem: &GuestMemory,
) -> Result<bool, virtio_queue::Error> {
    if !queue.needs_notification(mem)? {
        return Ok(false);
    }
    if queue.event_idx_enabled() {
        return Ok(true);
    }
    let flags: u16 = mem
        .load(GuestAddress(queue.avail_ring()), Ordering::Acquire)
        .map(u16::from_le)
        .map_err(virtio_queue::Error::GuestMemory)?;
    Ok(flags & VRING_AVAIL_F_NO_INTERRUPT as u16 == 0)
}

/// Interrupt the driver of `queue` (number `index`) if it wants it; a `device` named
/// warning if that fails, and an interrupt if the ring cannot be read.
pub fn signal_used(
    queue: &mut Queue,
    mem: &GuestMemory,
    interrupt: &dyn VirtioInterrupt,
    index: u16,
    device: &str,
) {
    let wanted = driver_wants_interrupt(queue, mem).unwrap_or_else(|e| {
        warn!("{device}: cannot read the driver's interrupt suppression: {e}");
        true
    });
    if wanted {
        if let Err(e) = interrupt.signal_used_queue(index) {
            warn!("{device}: cannot interrupt the driver: {e}");
        }
    }
}

/// Run `drain` over `queue` with kicks suppressed, until it leaves the ring empty with
/// kicks enabled again. `drain` pops what it can and returns whether it would take
/// more: false when it stopped for a reason of its own (a console with no input left
/// for its receive buffers), so buffers made available meanwhile stay for later.
/// Errors reading the ring end the loop; the caller's next event retries.
///
/// The avail index may say there is more while nothing can be popped: a driver put
/// more than the queue size on the ring, or the queue is not set up. Two rounds in a
/// row that pop nothing end the loop then (one such round is the ordinary race with a
/// driver adding buffers just before kicks were enabled again).
pub fn drain_with_kicks_suppressed(
    queue: &mut Queue,
    mem: &GuestMemory,
    mut drain: impl FnMut(&mut Queue) -> bool,
) {
    let mut idle_rounds = 0;
    loop {
        // Failing to suppress costs only extra kicks.
        let _ = queue.disable_notification(mem);
        let before = queue.next_avail();
        let wants_more = drain(queue);
        idle_rounds = if queue.next_avail() == before {
            idle_rounds + 1
        } else {
            0
        };
        match queue.enable_notification(mem) {
            Ok(true) if wants_more && idle_rounds < 2 => continue,
            _ => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::virtio::test_utils::{test_mem, TestRing, DATA};

    #[test]
    fn an_avail_index_past_the_ring_ends_the_drain() {
        let mem = test_mem();
        let ring = TestRing::new(&mem, 0, 16);
        let mut queue = ring.queue();
        // More than the queue size ahead: nothing can be popped, yet the index moved.
        ring.set_avail_idx(100);
        let mut rounds = 0;
        drain_with_kicks_suppressed(&mut queue, &mem, |q| {
            rounds += 1;
            assert!(rounds < 10, "the drain does not end");
            while q.pop_descriptor_chain(&mem).is_some() {}
            true
        });
        assert_eq!(rounds, 2);
    }

    #[test]
    fn buffers_added_before_kicks_are_enabled_again_are_taken() {
        let mem = test_mem();
        let mut ring = TestRing::new(&mem, 0, 16);
        let mut queue = ring.queue();
        let mut popped = 0;
        let mut rounds = 0;
        drain_with_kicks_suppressed(&mut queue, &mem, |q| {
            rounds += 1;
            while q.pop_descriptor_chain(&mem).is_some() {
                popped += 1;
            }
            if rounds == 1 {
                // The driver adds a buffer while kicks are off: it does not kick.
                ring.post(0, &[(DATA, 16, true)]);
            }
            true
        });
        assert_eq!((popped, rounds), (1, 2));
    }
}

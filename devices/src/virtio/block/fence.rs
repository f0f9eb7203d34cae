//! The fence between transfers that bypass the format and requests that free clusters,
//! shared by every queue of one device.
//!
//! A ring transfer (`DiskBackend::read_extent`, `write_extent`) holds a host offset
//! that a discard or an unmapping write-zeroes could free and a later write reuse, on
//! any queue of the disk. So while a ring transfer is in flight on some queue,
//! unmapping requests on every queue wait; while an unmapping request is popped and
//! unfinished on some queue, reads and writes on every queue go through the format.
//! Each queue keeps its own requests' sequence numbers; the fence keeps the
//! device-wide counts.
//!
//! All queues of a device run on one event-loop thread, so the counts need no
//! ordering with other memory; atomics only make the fence `Sync`.

use std::sync::atomic::{AtomicUsize, Ordering};

/// Device-wide counts of ring transfers and unmapping requests in flight.
#[derive(Debug, Default)]
pub struct ExtentFence {
    ring_transfers: AtomicUsize,
    unmaps: AtomicUsize,
}

impl ExtentFence {
    /// A ring transfer holds a mapping somewhere: unmapping requests must wait.
    pub fn transfers_in_flight(&self) -> bool {
        self.ring_transfers.load(Ordering::Relaxed) > 0
    }

    /// An unmapping request is pending somewhere: transfers must use the format.
    pub fn unmaps_pending(&self) -> bool {
        self.unmaps.load(Ordering::Relaxed) > 0
    }

    pub fn add_transfers(&self, n: usize) {
        self.ring_transfers.fetch_add(n, Ordering::Relaxed);
    }

    pub fn add_unmaps(&self, n: usize) {
        self.unmaps.fetch_add(n, Ordering::Relaxed);
    }

    /// Forget `n` finished (or abandoned) ring transfers; never below zero.
    pub fn remove_transfers(&self, n: usize) {
        saturating_sub(&self.ring_transfers, n);
    }

    /// Forget `n` finished (or abandoned) unmapping requests; never below zero.
    pub fn remove_unmaps(&self, n: usize) {
        saturating_sub(&self.unmaps, n);
    }
}

fn saturating_sub(count: &AtomicUsize, n: usize) {
    // The closure never returns None, so the update cannot fail.
    let _ = count.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |c| {
        Some(c.saturating_sub(n))
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_go_up_and_down_and_not_below_zero() {
        let fence = ExtentFence::default();
        assert!(!fence.transfers_in_flight() && !fence.unmaps_pending());
        fence.add_transfers(2);
        fence.add_unmaps(1);
        assert!(fence.transfers_in_flight() && fence.unmaps_pending());
        fence.remove_transfers(1);
        assert!(fence.transfers_in_flight());
        fence.remove_transfers(5);
        fence.remove_unmaps(1);
        assert!(!fence.transfers_in_flight() && !fence.unmaps_pending());
        fence.add_transfers(1);
        assert!(fence.transfers_in_flight(), "a count that went below zero");
    }
}

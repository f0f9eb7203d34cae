//! A cap on the entropy a guest may take, as QEMU's virtio-rng `max-bytes` and
//! `period`: at most `max_bytes` per period. A period starts with the first request
//! after the last one ended and lasts `period`; requests beyond the budget wait on the
//! ring (a request is served in part if only part of it fits) until a timer in the
//! event loop ends the period. Without a cap a guest can keep the event loop, which
//! every device shares, busy filling buffers.

use std::os::unix::io::{AsRawFd, RawFd};
use std::time::Duration;

use vmm_sys_util::timerfd::TimerFd;

use crate::virtio::timer::nonblocking_timer;

/// At most `max_bytes` of entropy per `period`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RateLimit {
    pub max_bytes: u64,
    pub period: Duration,
}

impl RateLimit {
    /// QEMU's default period when only max-bytes is given is 65.536 s; kiln uses 1 s,
    /// which makes `max-bytes` a rate per second.
    pub const DEFAULT_PERIOD: Duration = Duration::from_secs(1);
}

/// What is left of the current period's budget.
pub(super) struct Budget {
    limit: RateLimit,
    left: u64,
    /// A period is running: its timer is armed.
    running: bool,
    timer: TimerFd,
}

impl Budget {
    pub(super) fn new(limit: RateLimit) -> std::io::Result<Self> {
        Ok(Budget {
            limit,
            left: 0,
            running: false,
            timer: nonblocking_timer()?,
        })
    }

    pub(super) fn timer_fd(&self) -> RawFd {
        self.timer.as_raw_fd()
    }

    /// Bytes the next request may take now; starts a period if none runs. 0: wait
    /// for [`Budget::period_over`].
    pub(super) fn available(&mut self) -> u64 {
        if !self.running {
            match self.timer.reset(self.limit.period, None) {
                Ok(()) => {
                    self.running = true;
                    self.left = self.limit.max_bytes;
                }
                // Without a timer nothing would end the period: serve nothing rather
                // than without a cap, and try again at the next request.
                Err(e) => log::warn!("virtio-rng: cannot start a rate-limit period: {e}"),
            }
        }
        self.left
    }

    pub(super) fn spend(&mut self, bytes: u64) {
        self.left = self.left.saturating_sub(bytes);
    }

    /// The timer fired: the next request starts a new period with a full budget.
    pub(super) fn period_over(&mut self) {
        // Non-blocking: a spurious wake-up reads nothing.
        let _ = self.timer.wait();
        self.running = false;
    }
}

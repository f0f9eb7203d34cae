//! Waiting on one file descriptor outside the event loop (a test's or a benchmark's
//! driver, a vCPU waiting for room in a relay).

use std::os::unix::io::RawFd;
use std::time::Duration;

/// Wait up to `timeout` for `fd` to report one of `events` (`libc::POLLIN`, ...);
/// false on timeout. A signal does not cut the wait short.
pub(crate) fn wait_for(
    fd: RawFd,
    events: libc::c_short,
    timeout: Duration,
) -> std::io::Result<bool> {
    let mut pfd = libc::pollfd {
        fd,
        events,
        revents: 0,
    };
    // Rounded up: a timeout below a millisecond must still sleep, not spin.
    let ms = timeout.as_micros().div_ceil(1000).min(i32::MAX as u128) as i32;
    loop {
        // SAFETY: `pfd` is one valid pollfd that outlives the call.
        let rc = unsafe { libc::poll(&mut pfd, 1, ms) };
        if rc >= 0 {
            return Ok(rc > 0);
        }
        let err = std::io::Error::last_os_error();
        if err.kind() != std::io::ErrorKind::Interrupted {
            return Err(err);
        }
    }
}

//! Timers for the event loop.

use std::os::unix::io::AsRawFd;

use vmm_sys_util::timerfd::TimerFd;

/// A monotonic timerfd that reads without blocking: a tick already in the epoll batch
/// may find the timer disarmed or re-armed by the time it is handled.
pub(crate) fn nonblocking_timer() -> std::io::Result<TimerFd> {
    let timer = TimerFd::new()?;
    let fd = timer.as_raw_fd();
    // SAFETY: F_GETFL/F_SETFL on a descriptor owned by `timer` change only its flags;
    // the results are checked.
    let nonblocking = unsafe {
        let flags = libc::fcntl(fd, libc::F_GETFL);
        flags >= 0 && libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) == 0
    };
    if !nonblocking {
        return Err(std::io::Error::last_os_error());
    }
    Ok(timer)
}

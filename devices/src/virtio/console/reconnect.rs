//! A client socket connected again after its listener hangs up or goes away, as
//! QEMU's `-chardev socket,server=off,reconnect-ms=N`: a host agent that restarts
//! finds its channel again.
//!
//! Connections are made without blocking: a listener whose backlog is full would
//! otherwise hold the event loop in connect(2) for as long as it does not accept.
//! std's `UnixStream::connect` only blocks, so the socket comes from `socket2` (kept
//! by the Tokio project, and the usual way to reach socket options std leaves out)
//! rather than from hand-written `libc::connect` calls.

use std::os::unix::io::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use log::{debug, warn};
use socket2::{Domain, SockAddr, Socket, Type};
use vmm_sys_util::timerfd::TimerFd;

use crate::virtio::timer::nonblocking_timer;

/// Connect to the listener at `path` without waiting for it to accept: an error
/// (`WouldBlock` for a full backlog) means "not now".
pub fn connect_nonblocking(path: &Path) -> std::io::Result<UnixStream> {
    let socket = Socket::new(Domain::UNIX, Type::STREAM, None)?;
    socket.set_nonblocking(true)?;
    socket.connect(&SockAddr::unix(path)?)?;
    Ok(UnixStream::from(std::os::fd::OwnedFd::from(socket)))
}

/// Where a port connects again, how often it tries, and the timer of its next try.
pub struct Reconnect {
    path: PathBuf,
    every: Duration,
    timer: TimerFd,
    /// Tries that failed since the connection was lost (logged at the first only).
    failures: u64,
}

impl Reconnect {
    pub fn new(path: PathBuf, every: Duration) -> std::io::Result<Self> {
        Ok(Reconnect {
            path,
            every,
            timer: nonblocking_timer()?,
            failures: 0,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The connection is gone (or was never made): try again in `every`.
    pub fn schedule(&mut self) {
        if let Err(e) = self.timer.reset(self.every, None) {
            warn!(
                "{}: cannot arm the reconnect timer: {e}; not connecting again",
                self.path.display()
            );
        }
    }

    /// The timer fired: connect now, or schedule the next try and return `None`.
    pub fn try_now(&mut self) -> Option<UnixStream> {
        if !matches!(self.timer.wait(), Ok(n) if n > 0) {
            return None; // a stale tick: disarmed or re-armed since
        }
        match connect_nonblocking(&self.path) {
            Ok(stream) => {
                self.failures = 0;
                Some(stream)
            }
            Err(e) => {
                if self.failures == 0 {
                    debug!("{}: cannot connect yet: {e}", self.path.display());
                }
                self.failures += 1;
                self.schedule();
                None
            }
        }
    }
}

impl AsRawFd for Reconnect {
    /// The timer, to watch for readability.
    fn as_raw_fd(&self) -> RawFd {
        self.timer.as_raw_fd()
    }
}

//! A [`Relay`] behind a plain `Write`, for a device that cannot hold its output and
//! come back later: the 16550 UART, whose transmit register the guest writes one byte
//! at a time from a vCPU, with the port's lock held.
//!
//! Written directly, a stdout nobody reads (a pager waiting for a key) blocks that
//! vCPU for as long as it waits, and with it the event loop the moment it needs the
//! port (a key typed for the guest, Ctrl-A x). Through a relay, a write waits for
//! room at most the stall limit, as the virtio console does; after that the guest's
//! output is dropped, and counted, until the output takes data again.

use std::io::{ErrorKind, Write};
use std::os::unix::io::AsRawFd;
use std::time::{Duration, Instant};

use log::warn;

use super::Relay;
use crate::virtio::poll::wait_for;

/// Writes to a relay, never waiting longer than the stall limit in all.
pub struct RelayWriter {
    relay: Relay,
    limit: Duration,
    /// When the relay stopped taking data, while it has not taken any since.
    stalled_since: Option<Instant>,
    /// Bytes dropped since the limit passed; `None` while not skipping.
    skipped: Option<u64>,
    what: &'static str,
}

impl RelayWriter {
    pub fn new(relay: Relay, limit: Duration, what: &'static str) -> std::io::Result<Self> {
        relay.stream().set_nonblocking(true)?;
        Ok(RelayWriter {
            relay,
            limit,
            stalled_since: None,
            skipped: None,
            what,
        })
    }

    /// Bytes dropped since the output stopped taking data, while it still does not.
    pub fn skipping(&self) -> Option<u64> {
        self.skipped
    }

    /// Wait for room until the stall limit is reached; false once it is.
    fn wait_for_room(&mut self) -> bool {
        let since = *self.stalled_since.get_or_insert_with(Instant::now);
        let Some(left) = self.limit.checked_sub(since.elapsed()) else {
            return false;
        };
        // An error here shows again in the next write, which reports it.
        let _ = wait_for(self.relay.stream().as_raw_fd(), libc::POLLOUT, left);
        true
    }
}

impl Write for RelayWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        loop {
            match self.relay.stream().write(buf) {
                Ok(n) => {
                    self.stalled_since = None;
                    if let Some(lost) = self.skipped.take() {
                        warn!(
                            "{}: the output takes data again; {lost} bytes of the guest's \
                             output were dropped",
                            self.what
                        );
                    }
                    return Ok(n);
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) if e.kind() == ErrorKind::WouldBlock => {
                    if let Some(lost) = self.skipped.as_mut() {
                        *lost += buf.len() as u64;
                        return Ok(buf.len());
                    }
                    if !self.wait_for_room() {
                        warn!(
                            "{}: the output took nothing for {:?}; dropping the guest's \
                             output until it takes data again",
                            self.what, self.limit
                        );
                        self.skipped = Some(buf.len() as u64);
                        return Ok(buf.len());
                    }
                }
                Err(e) => return Err(e),
            }
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(()) // the relay thread flushes after each piece
    }
}

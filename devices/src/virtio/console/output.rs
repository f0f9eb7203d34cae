//! Where a port's guest output goes, and how a port waits for a socket that cannot
//! take more.
//!
//! A socket client is written without blocking: the event loop serves every device,
//! so it must not wait for one slow reader. When the socket cannot take the rest of
//! a transmit chain, the port holds that chain (the guest gets it back only once it
//! is written) and takes nothing more from its queue, so the guest waits on its own
//! ring, as with QEMU's chardev throttling: a guest program writing to the port
//! blocks, a console write spins in the guest, nothing is lost. The device watches
//! the socket for room ([`PortWriter::sync_watch`]) and goes on from the byte where
//! it stopped. A port may have a stall limit ([`STALL_LIMIT`] for the console,
//! whose guest driver spins until its buffer comes back): a client that takes
//! nothing for that long is given up ([`StallTimer`]), so one that stops reading
//! cannot hold the guest's console for ever. stdout and files go through a relay
//! thread (relay.rs) and are written like a socket; one that stalls past the limit is
//! not given up but skipped: the guest's output is dropped (and counted) until it
//! takes data again.

use std::collections::VecDeque;
use std::io::{ErrorKind, Write};
use std::os::unix::io::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use event_manager::{EventOps, EventSet, Events};
use log::{info, warn};
use virtio_queue::DescriptorChain;
use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::timerfd::TimerFd;

use super::relay::Relay;
use super::CHUNK;
use crate::virtio::timer::nonblocking_timer;
use crate::GuestMemory;

/// How long a console's socket client may take nothing while the guest waits on it
/// before it is dropped.
pub const STALL_LIMIT: Duration = Duration::from_secs(5);

/// The output of a port.
pub enum PortOutput {
    /// Nobody to write to: the guest's output is dropped, as a pipe nobody reads.
    Discard,
    /// Written with blocking writes: stdout, a file, a test's buffer.
    Blocking(Box<dyn Write + Send>),
    /// A socket client, written without blocking.
    Socket(UnixStream),
    /// A blocking output written by a relay thread, through a socket written without
    /// blocking.
    Relayed(Relay),
}

impl PortOutput {
    /// The socket written without blocking, if the output has one.
    fn stream(&self) -> Option<&UnixStream> {
        match self {
            PortOutput::Socket(stream) => Some(stream),
            PortOutput::Relayed(relay) => Some(relay.stream()),
            PortOutput::Discard | PortOutput::Blocking(_) => None,
        }
    }
}

/// What [`PortWriter::give_up_if_stalled`] did with an output that took nothing for
/// its stall limit.
pub enum Stalled {
    /// A socket client is given up: the guest's further output is dropped.
    GaveUp(std::io::Error),
    /// A relayed output is skipped: the guest's output is dropped until it takes data
    /// again.
    Skipping(Duration),
}

/// A transmit chain's device-readable buffers not yet written, from the first byte
/// still to go.
pub(crate) struct PendingChain {
    pub head: u16,
    segments: VecDeque<(GuestAddress, u32)>,
}

impl PendingChain {
    pub fn new(chain: DescriptorChain<&GuestMemory>) -> Self {
        PendingChain {
            head: chain.head_index(),
            segments: chain
                .filter(|d| !d.is_write_only() && d.len() > 0)
                .map(|d| (d.addr(), d.len()))
                .collect(),
        }
    }

    /// Bytes still to go.
    fn remaining(&self) -> u64 {
        self.segments.iter().map(|&(_, len)| u64::from(len)).sum()
    }

    /// Hand the rest of the chain to `write`, which says how many bytes of each piece
    /// it took. Its error ends the copy where it stopped, so a `WouldBlock` can be
    /// resumed. A buffer outside guest memory is skipped with a warning.
    pub fn write_with(
        &mut self,
        mem: &GuestMemory,
        mut write: impl FnMut(&[u8]) -> std::io::Result<usize>,
    ) -> std::io::Result<()> {
        let mut buf = [0u8; CHUNK];
        while let Some(&(addr, len)) = self.segments.front() {
            let n = len.min(CHUNK as u32) as usize;
            if mem.read_slice(&mut buf[..n], addr).is_err() {
                warn!(
                    "virtio-console: tx buffer {:#x}+{n} outside guest memory",
                    addr.0
                );
                self.segments.pop_front();
                continue;
            }
            let took = match write(&buf[..n]) {
                Ok(0) => return Err(ErrorKind::WriteZero.into()),
                Ok(took) => took.min(n) as u32,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            match addr.0.checked_add(u64::from(took)) {
                Some(next) if took < len => self.segments[0] = (GuestAddress(next), len - took),
                _ => {
                    self.segments.pop_front();
                }
            }
        }
        Ok(())
    }
}

/// What [`PortWriter::write_chain`] did with a chain.
pub(crate) enum Written {
    /// All of it went (or was dropped): return it to the guest.
    Done,
    /// The socket is full: the writer holds the chain.
    Held,
}

/// A port's output and the chain it is part way through.
pub struct PortWriter {
    output: PortOutput,
    /// Writing failed: from now on the guest's output is dropped.
    failed: bool,
    pub(crate) held: Option<PendingChain>,
    /// Since when the socket has taken nothing while a chain is held, and how much it
    /// held unread at the last stall tick (the reader may be draining it slowly: the
    /// socket reports room only once three quarters are gone).
    stalled_since: Option<Instant>,
    unread_at_last_tick: Option<usize>,
    /// The socket's fd is in the event loop for EPOLLOUT.
    watched: Option<RawFd>,
    stall_limit: Option<Duration>,
    /// A relayed output is being skipped (see [`Stalled::Skipping`]): the bytes dropped
    /// so far.
    skipped: Option<u64>,
}

impl PortWriter {
    pub fn new(output: PortOutput) -> std::io::Result<Self> {
        if let Some(stream) = output.stream() {
            stream.set_nonblocking(true)?;
        }
        Ok(PortWriter {
            output,
            failed: false,
            held: None,
            stalled_since: None,
            unread_at_last_tick: None,
            watched: None,
            stall_limit: Some(STALL_LIMIT),
            skipped: None,
        })
    }

    /// Give a socket that takes nothing this long up; `None` waits for it as long as
    /// it takes.
    pub fn set_stall_limit(&mut self, limit: Option<Duration>) {
        self.stall_limit = limit;
    }

    /// How often the stall timer must look at this writer: while a chain waits and
    /// there is a stall limit.
    pub fn stall_check_period(&self) -> Option<Duration> {
        let limit = self.stall_limit.filter(|_| self.is_blocked())?;
        Some((limit / 4).max(Duration::from_millis(10)))
    }

    /// Write a new chain, or hold it if the socket is full.
    pub(crate) fn write_chain(
        &mut self,
        mem: &GuestMemory,
        mut chain: PendingChain,
    ) -> std::io::Result<Written> {
        let result = if self.failed {
            Ok(())
        } else if let Some(stream) = self.output.stream() {
            let (since, unread) = (&mut self.stalled_since, &mut self.unread_at_last_tick);
            let skipped = &mut self.skipped;
            chain.write_with(mem, |b| {
                let took = (&*stream).write(b)?;
                (*since, *unread) = (None, None);
                if let Some(bytes) = skipped.take() {
                    info!(
                        "virtio-console: the output takes data again; \
                         {bytes} bytes of the guest's output were dropped"
                    );
                }
                Ok(took)
            })
        } else {
            match &mut self.output {
                // A blocking output that says it would block (a terminal someone made
                // non-blocking) has no readiness to wait for: that is a failure.
                PortOutput::Blocking(out) => chain.write_with(mem, |b| match out.write_all(b) {
                    Ok(()) => Ok(b.len()),
                    Err(e) if e.kind() == ErrorKind::WouldBlock => Err(std::io::Error::other(e)),
                    Err(e) => Err(e),
                }),
                _ => Ok(()),
            }
        };
        match result {
            Ok(()) => Ok(Written::Done),
            Err(e) if e.kind() == ErrorKind::WouldBlock && self.skipped.is_some() => {
                let bytes = self.skipped.get_or_insert(0);
                *bytes = bytes.saturating_add(chain.remaining());
                Ok(Written::Done)
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                self.stalled_since.get_or_insert_with(Instant::now);
                self.held = Some(chain);
                Ok(Written::Held)
            }
            Err(e) => {
                self.failed = true;
                Err(e)
            }
        }
    }

    /// Write out what a blocking output buffers (stdout's partial line).
    pub(crate) fn flush(&mut self) -> std::io::Result<()> {
        match &mut self.output {
            PortOutput::Blocking(out) if !self.failed => out.flush().inspect_err(|_| {
                self.failed = true;
            }),
            _ => Ok(()),
        }
    }

    /// Whether a relayed output is being skipped (see [`Stalled::Skipping`]).
    pub fn skipping(&self) -> bool {
        self.skipped.is_some()
    }

    /// Whether a chain waits for room in the socket.
    pub fn is_blocked(&self) -> bool {
        self.held.is_some() && !self.failed
    }

    /// The socket took nothing for longer than the stall limit: give it up, and say so
    /// (the caller drops the client and returns the held chain). Called on every tick
    /// of the stall timer: a reader that took some of what the socket holds since the
    /// last tick is making progress.
    pub fn give_up_if_stalled(&mut self, now: Instant) -> Option<Stalled> {
        if !self.is_blocked() {
            return None;
        }
        if let Some(stream) = self.output.stream() {
            let unread = unread_bytes(stream);
            if unread.is_some() && unread < self.unread_at_last_tick {
                self.stalled_since = Some(now);
            }
            self.unread_at_last_tick = unread;
        }
        let (since, limit) = (self.stalled_since?, self.stall_limit?);
        if now.saturating_duration_since(since) < limit {
            return None;
        }
        if matches!(self.output, PortOutput::Relayed(_)) {
            self.skipped = Some(0);
            return Some(Stalled::Skipping(limit));
        }
        self.failed = true;
        Some(Stalled::GaveUp(std::io::Error::new(
            ErrorKind::TimedOut,
            format!("took nothing for {limit:?}"),
        )))
    }

    /// Put the socket in the event loop for EPOLLOUT (as `data`) while a chain waits
    /// for room, and take it out otherwise: level-triggered, a writable socket left in
    /// would wake the loop for ever.
    pub fn sync_watch(&mut self, ops: &mut EventOps, data: u32) {
        let want = self
            .output
            .stream()
            .filter(|_| self.is_blocked())
            .map(AsRawFd::as_raw_fd);
        if want == self.watched {
            return;
        }
        self.unwatch(ops);
        if let Some(fd) = want {
            match ops.add(Events::with_data_raw(fd, data, EventSet::OUT)) {
                Ok(()) => self.watched = Some(fd),
                Err(e) => warn!("virtio-console: cannot watch a client for room: {e}"),
            }
        }
    }

    fn unwatch(&mut self, ops: &mut EventOps) {
        if let Some(fd) = self.watched.take() {
            let _ = ops.remove(Events::empty_raw(fd));
        }
    }

    /// Swap the output (a client came or went); the old one leaves the event loop
    /// first. A held chain stays, to go to the new output.
    pub fn replace(&mut self, output: PortOutput, ops: &mut EventOps) -> std::io::Result<()> {
        let mut next = PortWriter::new(output)?;
        next.held = self.held.take();
        next.stall_limit = self.stall_limit;
        self.unwatch(ops);
        *self = next;
        Ok(())
    }

    /// The device was reset: its queues, and so the held chain, are gone.
    pub fn forget_held(&mut self) {
        self.held = None;
        (self.stalled_since, self.unread_at_last_tick) = (None, None);
        self.skipped = None;
    }
}

/// Bytes written to `stream` that its peer has not read (SIOCOUTQ), if the kernel
/// says.
fn unread_bytes(stream: &UnixStream) -> Option<usize> {
    let mut unread: libc::c_int = 0;
    // SAFETY: SIOCOUTQ (TIOCOUTQ) on a socket this writer owns writes one int, to a
    // local that outlives the call; the result is checked.
    let ok = unsafe { libc::ioctl(stream.as_raw_fd(), libc::TIOCOUTQ, &mut unread) } == 0;
    ok.then(|| usize::try_from(unread).ok()).flatten()
}

/// A periodic timer in the event loop while some port's socket is full, to give up
/// on a client that takes nothing for its stall limit.
pub struct StallTimer {
    timer: TimerFd,
    /// The period it ticks at.
    armed: Option<Duration>,
}

impl StallTimer {
    pub fn new() -> std::io::Result<Self> {
        Ok(StallTimer {
            timer: nonblocking_timer()?,
            armed: None,
        })
    }

    pub fn watch(&self, ops: &mut EventOps, data: u32) {
        if let Err(e) = ops.add(Events::with_data_raw(
            self.timer.as_raw_fd(),
            data,
            EventSet::IN,
        )) {
            warn!("virtio-console: cannot watch the stall timer: {e}");
        }
    }

    /// Tick every `period`, or stop with `None`.
    pub fn sync(&mut self, period: Option<Duration>) {
        if period == self.armed {
            return;
        }
        let result = match period {
            Some(period) => self.timer.reset(period, Some(period)),
            None => self.timer.clear(),
        };
        match result {
            Ok(()) => self.armed = period,
            Err(e) => warn!("virtio-console: cannot set the stall timer: {e}"),
        }
    }

    /// Take the tick that woke the event loop.
    pub fn consume(&mut self) {
        let _ = self.timer.wait();
    }
}

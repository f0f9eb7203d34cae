//! The console's host side: reading input at the guest's pace, serving clients of a
//! listening socket, connecting to a listener again (reconnect.rs), waiting for room
//! in a client's socket, and giving up on an output that fails or stalls.

use std::io::ErrorKind;
use std::os::unix::io::{AsRawFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::time::Instant;

use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};
use log::{info, warn};

use super::output::{PortOutput, Stalled};
use super::{Console, CHUNK, MAX_PENDING_INPUT, RX, TX};
use crate::virtio::activation::DeviceEvent;

/// `Events::data` of the input fd, the listening socket, the output socket (for
/// room), the stall timer and the reconnect timer (queue events use their index,
/// activation u32::MAX, the size u32::MAX - 3).
const INPUT_DATA: u32 = u32::MAX - 1;
const LISTENER_DATA: u32 = u32::MAX - 2;
const OUTPUT_DATA: u32 = u32::MAX - 4;
const STALL_DATA: u32 = u32::MAX - 5;
const RECONNECT_DATA: u32 = u32::MAX - 6;

impl Console {
    /// A console that listens on `listener` and serves one client at a time: output
    /// goes to the client (and is dropped while none is connected), input comes from
    /// it. When the client hangs up, stops reading or cannot be written, the next one
    /// is accepted.
    pub fn listening(listener: UnixListener) -> std::io::Result<Self> {
        listener.set_nonblocking(true)?;
        let mut console = Console::with_output(PortOutput::Discard, None)?;
        console.listener = Some(listener);
        Ok(console)
    }

    /// Whether a client of the listening socket, or a listener the console connects
    /// to again, is connected.
    pub fn has_client(&self) -> bool {
        self.serves_clients() && self.input.is_some()
    }

    /// Whether the console outlives its peer: it listens for the next client, or
    /// connects to the next listener.
    fn serves_clients(&self) -> bool {
        self.listener.is_some() || self.reconnect.is_some()
    }

    /// The output failed or stalled: say so once; the writer drops the guest's output
    /// from now on (a console must not stall the guest), and a client of the listening
    /// socket is dropped at the end of the event.
    pub(super) fn output_failed(&mut self, e: std::io::Error) {
        if self.serves_clients() {
            info!("virtio-console: client output failed ({e}); dropping the client");
            self.client_lost = true;
        } else {
            warn!("virtio-console: output failed ({e}); the guest's further output is dropped");
        }
    }

    /// The stall timer ticked: give up on a socket that took nothing for too long,
    /// and return the chain it held to the guest.
    fn check_stall(&mut self) {
        self.stall.consume();
        match self.writer.give_up_if_stalled(Instant::now()) {
            None => return,
            Some(Stalled::GaveUp(e)) => self.output_failed(e),
            Some(Stalled::Skipping(limit)) => warn!(
                "virtio-console: the output took nothing for {limit:?}; dropping the \
                 guest's output until it takes data again"
            ),
        }
        self.process_tx();
    }

    fn watch(ops: &mut EventOps, fd: RawFd, data: u32, what: &str) {
        if let Err(e) = ops.add(Events::with_data_raw(fd, data, EventSet::IN)) {
            warn!("virtio-console: cannot watch {what}: {e}");
        }
    }

    fn read_input(&mut self, ops: &mut EventOps) {
        loop {
            let Some(input) = self.input.as_mut() else {
                return;
            };
            let room = MAX_PENDING_INPUT.saturating_sub(self.pending.len());
            if room == 0 {
                // Level-triggered: left in the loop, the readable fd would wake it forever.
                let _ = ops.remove(Events::empty_raw(input.as_raw_fd()));
                self.input_paused = true;
                return;
            }
            let mut buf = [0u8; CHUNK];
            match input.read(&mut buf[..room.min(CHUNK)]) {
                Ok(0) => return self.input_closed(ops),
                Ok(n) => self.push_input(&buf[..n]),
                Err(e)
                    if e.kind() == ErrorKind::WouldBlock || e.kind() == ErrorKind::Interrupted =>
                {
                    return
                }
                Err(e) => {
                    warn!("virtio-console: input read failed: {e}");
                    return self.input_closed(ops);
                }
            }
            // One read per readiness, unless the input holds bytes the fd will not
            // announce (a blocking stdin must not be read once too often).
            if !self.input.as_ref().is_some_and(|i| i.holds_input()) {
                return;
            }
        }
    }

    /// EOF or a broken input: stop watching it (epoll would report it forever); a
    /// listening console waits for the next client, a reconnecting one tries again.
    fn input_closed(&mut self, ops: &mut EventOps) {
        if let Some(input) = self.input.take() {
            let _ = ops.remove(Events::empty_raw(input.as_raw_fd()));
        }
        self.input_paused = false;
        if !self.serves_clients() {
            return;
        }
        info!("virtio-console: client disconnected");
        self.client_lost = false;
        if let Some(listener) = &self.listener {
            Self::watch(ops, listener.as_raw_fd(), LISTENER_DATA, "the socket");
        }
        if let Some(reconnect) = self.reconnect.as_mut() {
            info!(
                "virtio-console: connecting to {} again",
                reconnect.path().display()
            );
            reconnect.schedule();
        }
        if let Err(e) = self.writer.replace(PortOutput::Discard, ops) {
            warn!("virtio-console: cannot drop the client's output: {e}");
        }
        // What the client did not take is dropped, and the guest's buffer returned.
        self.process_tx();
    }

    /// Take the next client of the listening socket.
    fn accept(&mut self, ops: &mut EventOps) {
        let Some(listener) = &self.listener else {
            return;
        };
        let stream = match listener.accept() {
            Ok((stream, _)) => stream,
            Err(e) if e.kind() == ErrorKind::WouldBlock => return,
            Err(e) => {
                warn!("virtio-console: cannot accept a client: {e}");
                return;
            }
        };
        // One client at a time: the next ones wait in the backlog.
        let listener_fd = listener.as_raw_fd();
        if self.attach(stream, ops) {
            let _ = ops.remove(Events::empty_raw(listener_fd));
        }
    }

    /// The reconnect timer fired: connect to the listener again.
    fn reconnect(&mut self, ops: &mut EventOps) {
        let Some(reconnect) = self.reconnect.as_mut() else {
            return;
        };
        // Armed only while there is no connection.
        if let Some(stream) = reconnect.try_now() {
            if !self.attach(stream, ops) {
                if let Some(reconnect) = self.reconnect.as_mut() {
                    reconnect.schedule();
                }
            }
        }
    }

    /// Make `stream` the client: output to it, input from it. False (with a warning)
    /// if it cannot be set up.
    fn attach(&mut self, stream: UnixStream, ops: &mut EventOps) -> bool {
        let output = stream
            .try_clone()
            .and_then(|out| self.writer.replace(PortOutput::Socket(out), ops));
        if let Err(e) = output {
            warn!("virtio-console: cannot set up a client: {e}");
            return false;
        }
        info!("virtio-console: client connected");
        Self::watch(ops, stream.as_raw_fd(), INPUT_DATA, "the client");
        self.input = Some(Box::new(stream));
        true
    }

    /// Watch the input again once the guest took some of what was pending.
    fn resume_input(&mut self, ops: &mut EventOps) {
        let Some(input) = self.input.as_ref().filter(|_| self.input_paused) else {
            return;
        };
        if self.pending.len() >= MAX_PENDING_INPUT {
            return;
        }
        Self::watch(ops, input.as_raw_fd(), INPUT_DATA, "input");
        self.input_paused = false;
        if input.holds_input() {
            self.read_input(ops);
        }
    }
}

impl MutEventSubscriber for Console {
    fn init(&mut self, ops: &mut EventOps) {
        self.activation.init(ops);
        self.watch_size(ops);
        self.stall.watch(ops, STALL_DATA);
        if let Some(reconnect) = &self.reconnect {
            Self::watch(
                ops,
                reconnect.as_raw_fd(),
                RECONNECT_DATA,
                "the reconnect timer",
            );
        }
        if let Some(input) = &self.input {
            Self::watch(ops, input.as_raw_fd(), INPUT_DATA, "input");
        } else if let Some(listener) = &self.listener {
            Self::watch(ops, listener.as_raw_fd(), LISTENER_DATA, "the socket");
        }
    }

    fn process(&mut self, events: Events, ops: &mut EventOps) {
        match events.data() {
            INPUT_DATA => self.read_input(ops),
            LISTENER_DATA => self.accept(ops),
            OUTPUT_DATA => self.process_tx(),
            STALL_DATA => self.check_stall(),
            RECONNECT_DATA => self.reconnect(ops),
            super::size::SIZE_DATA => self.refresh_size(),
            _ => match self.activation.handle(&events, ops) {
                DeviceEvent::Queue(RX) => {
                    self.process_rx();
                    self.resume_input(ops);
                }
                DeviceEvent::Queue(TX) => self.process_tx(),
                _ => {}
            },
        }
        if self.client_lost {
            self.input_closed(ops);
        }
        self.writer.sync_watch(ops, OUTPUT_DATA);
        self.stall.sync(self.writer.stall_check_period());
    }
}

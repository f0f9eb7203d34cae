//! The ports' host side: each port's listening (or connecting) socket, its client read
//! at the guest's pace and written as it takes it (as the console's, see
//! `console/host.rs` and `console/output.rs`), and connecting again (`reconnect.rs`).

use std::io::{ErrorKind, Read};
use std::os::unix::io::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::time::Instant;

use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};
use log::{info, warn};

use super::{SerialPorts, MAX_PENDING_INPUT};
use crate::virtio::activation::DeviceEvent;
use crate::virtio::console::{PortOutput, Stalled};

/// `Events::data` of port i's listening socket, of its client, of its client's output
/// waiting for room, and of its reconnect timer; and of the stall timer (queue events
/// use their index, activation u32::MAX).
const LISTENER_BASE: u32 = 0x1_0000;
const CLIENT_BASE: u32 = 0x2_0000;
const OUTPUT_BASE: u32 = 0x3_0000;
const STALL_DATA: u32 = 0x4_0000;
const RECONNECT_BASE: u32 = 0x5_0000;
const READ_CHUNK: usize = 4096;

fn watch(ops: &mut EventOps, fd: RawFd, data: u32, what: &str) {
    if let Err(e) = ops.add(Events::with_data_raw(fd, data, EventSet::IN)) {
        warn!("virtio-serial: cannot watch {what}: {e}");
    }
}

impl SerialPorts {
    /// Whether port `name` has a host client connected.
    pub fn has_client(&self, name: &str) -> bool {
        self.ports
            .iter()
            .any(|p| p.name == name && p.client.is_some())
    }

    /// Take the next client of the port at `index`; the port serves one at a time.
    fn accept(&mut self, index: usize, ops: &mut EventOps) {
        let port = &mut self.ports[index];
        let Some(listener) = &port.listener else {
            return;
        };
        let stream = match listener.accept() {
            Ok((stream, _)) => stream,
            Err(e) if e.kind() == ErrorKind::WouldBlock => return,
            Err(e) => {
                warn!(
                    "virtio-serial: port {}: cannot accept a client: {e}",
                    port.name
                );
                return;
            }
        };
        let listener_fd = listener.as_raw_fd();
        if self.attach(index, stream, ops) {
            let _ = ops.remove(Events::empty_raw(listener_fd));
        }
    }

    /// The reconnect timer of the port at `index` fired: connect to its listener again.
    fn reconnect(&mut self, index: usize, ops: &mut EventOps) {
        let port = &mut self.ports[index];
        let Some(reconnect) = port.reconnect.as_mut() else {
            return;
        };
        // Armed only while there is no connection.
        if let Some(stream) = reconnect.try_now() {
            if !self.attach(index, stream, ops) {
                if let Some(reconnect) = self.ports[index].reconnect.as_mut() {
                    reconnect.schedule();
                }
            }
        }
    }

    /// Make `stream` the client of the port at `index` and tell the driver the host
    /// side opened; false (with a warning) if it cannot be set up.
    fn attach(&mut self, index: usize, stream: UnixStream, ops: &mut EventOps) -> bool {
        let port = &mut self.ports[index];
        let output = stream.set_nonblocking(true).and_then(|()| {
            let out = stream.try_clone()?;
            port.writer.replace(PortOutput::Socket(out), ops)
        });
        if let Err(e) = output {
            warn!(
                "virtio-serial: port {}: cannot set up a client: {e}",
                port.name
            );
            return false;
        }
        info!("virtio-serial: port {}: client connected", port.name);
        watch(
            ops,
            stream.as_raw_fd(),
            CLIENT_BASE + index as u32,
            "a client",
        );
        port.client = Some(stream);
        port.input_paused = false;
        self.announce_open(index);
        true
    }

    fn read_client(&mut self, index: usize, ops: &mut EventOps) {
        let port = &mut self.ports[index];
        let Some(stream) = port.client.as_mut() else {
            return;
        };
        let room = MAX_PENDING_INPUT.saturating_sub(port.pending.len());
        if room == 0 || !port.guest_open {
            // Level-triggered: left in the loop, the readable fd would wake it forever.
            let _ = ops.remove(Events::empty_raw(stream.as_raw_fd()));
            port.input_paused = true;
            return;
        }
        let mut buf = [0u8; READ_CHUNK];
        match stream.read(&mut buf[..room.min(READ_CHUNK)]) {
            Ok(0) => self.client_closed(index, ops),
            Ok(n) => self.push_input(index, &buf[..n]),
            Err(e) if e.kind() == ErrorKind::WouldBlock || e.kind() == ErrorKind::Interrupted => {}
            Err(e) => {
                warn!("virtio-serial: port {}: client read failed: {e}", port.name);
                self.client_closed(index, ops);
            }
        }
    }

    /// The client of the port at `index` hung up or failed: tell the driver the host
    /// side closed, and wait for the next client (a connected port has none).
    fn client_closed(&mut self, index: usize, ops: &mut EventOps) {
        let port = &mut self.ports[index];
        port.lost = false;
        let Some(stream) = port.client.take() else {
            return;
        };
        let _ = ops.remove(Events::empty_raw(stream.as_raw_fd()));
        info!("virtio-serial: port {}: client disconnected", port.name);
        if let Some(listener) = &port.listener {
            watch(
                ops,
                listener.as_raw_fd(),
                LISTENER_BASE + index as u32,
                "a port socket",
            );
        }
        if let Some(reconnect) = port.reconnect.as_mut() {
            info!(
                "virtio-serial: port {}: connecting to {} again",
                port.name,
                reconnect.path().display()
            );
            reconnect.schedule();
        }
        if let Err(e) = port.writer.replace(PortOutput::Discard, ops) {
            warn!(
                "virtio-serial: port {}: cannot drop the client's output: {e}",
                port.name
            );
        }
        // What the client did not take is dropped, and the guest's buffer returned.
        self.process_port_tx(index);
        self.announce_open(index);
    }

    /// The stall timer ticked: a client that took nothing of the guest's output for
    /// too long is dropped at the end of the event (which returns the held chain).
    fn check_stalls(&mut self) {
        self.stall.consume();
        let now = Instant::now();
        for port in &mut self.ports {
            match port.writer.give_up_if_stalled(now) {
                Some(Stalled::GaveUp(e)) => {
                    warn!(
                        "virtio-serial: port {}: client output failed ({e})",
                        port.name
                    );
                    port.lost = true;
                }
                // Channel ports write to sockets, never through a relay.
                Some(Stalled::Skipping(_)) | None => {}
            }
        }
    }

    /// Watch a paused client again once the guest took some of its input and has the
    /// port open.
    fn resume_input(&mut self, index: usize, ops: &mut EventOps) {
        let port = &mut self.ports[index];
        let Some(stream) = port.client.as_ref().filter(|_| port.input_paused) else {
            return;
        };
        if port.guest_open && port.pending.len() < MAX_PENDING_INPUT {
            watch(
                ops,
                stream.as_raw_fd(),
                CLIENT_BASE + index as u32,
                "a client",
            );
            port.input_paused = false;
        }
    }
}

impl MutEventSubscriber for SerialPorts {
    fn init(&mut self, ops: &mut EventOps) {
        self.activation.init(ops);
        self.stall.watch(ops, STALL_DATA);
        for (i, port) in self.ports.iter().enumerate() {
            if let Some(listener) = &port.listener {
                watch(
                    ops,
                    listener.as_raw_fd(),
                    LISTENER_BASE + i as u32,
                    "a port socket",
                );
            }
            if let Some(client) = &port.client {
                watch(
                    ops,
                    client.as_raw_fd(),
                    CLIENT_BASE + i as u32,
                    "a port socket",
                );
            }
            if let Some(reconnect) = &port.reconnect {
                watch(
                    ops,
                    reconnect.as_raw_fd(),
                    RECONNECT_BASE + i as u32,
                    "a reconnect timer",
                );
            }
        }
    }

    fn process(&mut self, events: Events, ops: &mut EventOps) {
        let data = events.data();
        let ports = self.ports.len() as u32;
        if (LISTENER_BASE..LISTENER_BASE + ports).contains(&data) {
            self.accept((data - LISTENER_BASE) as usize, ops);
        } else if (CLIENT_BASE..CLIENT_BASE + ports).contains(&data) {
            self.read_client((data - CLIENT_BASE) as usize, ops);
        } else if (OUTPUT_BASE..OUTPUT_BASE + ports).contains(&data) {
            self.process_port_tx((data - OUTPUT_BASE) as usize);
        } else if (RECONNECT_BASE..RECONNECT_BASE + ports).contains(&data) {
            self.reconnect((data - RECONNECT_BASE) as usize, ops);
        } else if data == STALL_DATA {
            self.check_stalls();
        } else if let DeviceEvent::Queue(q) = self.activation.handle(&events, ops) {
            self.process_queue(q);
        }
        // A receive buffer or a guest's PORT_OPEN may let a paused client go on.
        for index in 0..self.ports.len() {
            if self.ports[index].lost {
                self.client_closed(index, ops);
            }
            self.resume_input(index, ops);
            self.ports[index]
                .writer
                .sync_watch(ops, OUTPUT_BASE + index as u32);
        }
        let period = self
            .ports
            .iter()
            .filter_map(|p| p.writer.stall_check_period())
            .min();
        self.stall.sync(period);
    }
}

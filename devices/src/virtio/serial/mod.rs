//! virtio-serial: a virtio-console device with VIRTIO_CONSOLE_F_MULTIPORT (virtio 1.2
//! §5.3.6) whose ports are named channels, as QEMU's `virtio-serial` with
//! `virtserialport`s: Linux shows each as /dev/vportNpM and
//! /sys/class/virtio-ports/vportNpM/name, and udev links it as /dev/virtio-ports/NAME,
//! where agents such as qemu-guest-agent (`org.qemu.guest_agent.0`) look for it.
//!
//! Port 0 is left out, as QEMU reserves it for a console: hvc0 stays with the
//! single-port virtio-console device. Ports 1..=N are announced to the driver on the
//! control queues: DEVICE_ADD for each once it says DEVICE_READY, then PORT_NAME once
//! it says PORT_READY, and PORT_OPEN whenever a host client comes or goes. Each port's
//! host side is a listening UNIX socket serving one client at a time (host.rs).
//!
//! Queues: port 0's receive and transmit (0, 1), the control queues (2 receive, 3
//! transmit), then port p's receive and transmit at 2p + 2 and 2p + 3.

use std::collections::VecDeque;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use log::warn;
use virtio_bindings::bindings::virtio_ring::VIRTIO_RING_F_EVENT_IDX;
use virtio_queue::Queue;

use super::activation::Activation;
use super::console::{
    PortOutput, PortQueue, PortWriter, Reconnect, StallTimer, MAX_PENDING_INPUT, QUEUE_SIZE,
};
use super::{device_type, ActivateContext, ActivateError, VirtioDevice, VirtioInterrupt};
use crate::GuestMemory;

mod control;
mod host;

/// VIRTIO_CONSOLE_F_MULTIPORT.
pub const F_MULTIPORT: u64 = 1 << 1;
const EVENT_IDX: u64 = 1 << VIRTIO_RING_F_EVENT_IDX;
const FEATURES: u64 =
    super::VIRTIO_F_VERSION_1 | EVENT_IDX | super::VIRTIO_RING_F_INDIRECT | F_MULTIPORT;

/// Most named ports one device carries (QEMU's default `max_ports` is 31).
pub const MAX_PORTS: usize = 31;
/// Longest port name kiln sends (the Linux driver takes up to a page).
pub const MAX_NAME_LEN: usize = 255;

const CONTROL_RX: usize = 2;
const CONTROL_TX: usize = 3;

/// The host end of a named port.
pub enum PortSocket {
    /// Listen here and serve one client at a time.
    Listening(UnixListener),
    /// Talk to this connected socket (kiln connected to a listener); once it hangs up
    /// the port stays closed, as QEMU's client sockets without `reconnect-ms`.
    Connected(UnixStream),
    /// Talk to `first` (if kiln could connect already), and connect to the listener at
    /// `path` again `every` after it hangs up or a try fails (QEMU's `reconnect-ms`).
    Reconnecting {
        path: PathBuf,
        every: Duration,
        first: Option<UnixStream>,
    },
}

/// One named port: its host socket and what the driver has said about it.
struct Port {
    name: String,
    /// `None` for a port that connected instead of listening.
    listener: Option<UnixListener>,
    /// Where a port that connects connects again after a hang-up, if it does.
    reconnect: Option<Reconnect>,
    /// The connected client, read from here.
    client: Option<UnixStream>,
    /// The guest's output: to the client, without blocking (see console/output.rs),
    /// or dropped while none is connected.
    writer: PortWriter,
    /// Bytes from the client waiting for the guest's receive buffers.
    pending: VecDeque<u8>,
    /// The client is out of the event loop: `pending` is full, or no guest program has
    /// the port open (Linux throws away what arrives for a closed port, so the client's
    /// bytes wait in its socket, as QEMU leaves them).
    input_paused: bool,
    /// The driver said PORT_READY, so it takes PORT_NAME and PORT_OPEN.
    ready: bool,
    /// A guest program has the port open (PORT_OPEN from the driver).
    guest_open: bool,
    /// Writing to the client failed: it is dropped at the end of the event.
    lost: bool,
}

struct Active {
    mem: GuestMemory,
    queues: Vec<Queue>,
    interrupt: Arc<dyn VirtioInterrupt>,
}

impl Active {
    /// Queue `index` as a console port's queue.
    fn port(&mut self, index: usize) -> PortQueue<'_> {
        PortQueue {
            queue: &mut self.queues[index],
            mem: &self.mem,
            interrupt: self.interrupt.as_ref(),
            index: index as u16,
            device: "virtio-serial",
        }
    }
}

/// A multiport virtio-console of named ports.
pub struct SerialPorts {
    ports: Vec<Port>,
    queue_sizes: Vec<u16>,
    /// Control messages for the driver, each with its payload (a port's name).
    control_out: VecDeque<Vec<u8>>,
    /// Ticks while some client's socket is full (see console/output.rs).
    stall: StallTimer,
    acked_features: u64,
    activation: Activation,
    active: Option<Active>,
}

/// Why a set of port names cannot make a device.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum PortsError {
    #[error("{0} ports: a virtio-serial device takes 1 to {MAX_PORTS}")]
    Count(usize),
    #[error("port name {0:?} is not 1-{MAX_NAME_LEN} letters, digits, '.', '_' or '-'")]
    Name(String),
    #[error("port name {0:?} is given twice")]
    Twice(String),
}

/// Check the names of one device's ports: 1 to [`MAX_PORTS`] of them, each unique and
/// made of what /dev/virtio-ports links and agents expect.
pub fn check_port_names<'a>(names: impl IntoIterator<Item = &'a str>) -> Result<(), PortsError> {
    let names: Vec<&str> = names.into_iter().collect();
    if names.is_empty() || names.len() > MAX_PORTS {
        return Err(PortsError::Count(names.len()));
    }
    for (i, name) in names.iter().enumerate() {
        let valid = !name.is_empty()
            && name.len() <= MAX_NAME_LEN
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
        if !valid {
            return Err(PortsError::Name(name.to_string()));
        }
        if names[..i].contains(name) {
            return Err(PortsError::Twice(name.to_string()));
        }
    }
    Ok(())
}

impl SerialPorts {
    /// A device with one port per `(name, socket)`, ids 1, 2, ... in order; the
    /// names must pass [`check_port_names`].
    pub fn new(ports: Vec<(String, PortSocket)>) -> std::io::Result<Self> {
        check_port_names(ports.iter().map(|(name, _)| name.as_str()))
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
        let mut out = Vec::with_capacity(ports.len());
        for (name, socket) in ports {
            let (listener, client, reconnect) = match socket {
                PortSocket::Listening(listener) => {
                    listener.set_nonblocking(true)?;
                    (Some(listener), None, None)
                }
                PortSocket::Connected(stream) => (None, Some(stream), None),
                PortSocket::Reconnecting { path, every, first } => {
                    let mut reconnect = Reconnect::new(path, every)?;
                    if first.is_none() {
                        reconnect.schedule();
                    }
                    (None, first, Some(reconnect))
                }
            };
            let output = match &client {
                Some(stream) => {
                    stream.set_nonblocking(true)?;
                    PortOutput::Socket(stream.try_clone()?)
                }
                None => PortOutput::Discard,
            };
            let mut writer = PortWriter::new(output)?;
            writer.set_stall_limit(None);
            out.push(Port {
                name,
                listener,
                reconnect,
                client,
                writer,
                pending: VecDeque::new(),
                input_paused: false,
                ready: false,
                guest_open: false,
                lost: false,
            });
        }
        let queues = 2 * (out.len() + 1) + 2;
        Ok(SerialPorts {
            ports: out,
            queue_sizes: vec![QUEUE_SIZE; queues],
            control_out: VecDeque::new(),
            stall: StallTimer::new()?,
            acked_features: 0,
            activation: Activation::new()?,
            active: None,
        })
    }

    /// The port with id `id`, if there is one (ids start at 1).
    fn port_index(&self, id: u32) -> Option<usize> {
        let i = (id as usize).checked_sub(1)?;
        (i < self.ports.len()).then_some(i)
    }

    /// Queue index of the receive queue of the port at `index` (id `index + 1`).
    fn rx_queue(index: usize) -> usize {
        2 * index + 4
    }

    /// Give a client that takes none of the guest's output this long up. By default
    /// a port waits for its client as long as it takes, as QEMU's do: only the guest
    /// program writing to the port waits meanwhile.
    pub fn set_stall_limit(&mut self, limit: Option<Duration>) {
        for port in &mut self.ports {
            port.writer.set_stall_limit(limit);
        }
    }

    /// Send what the guest wrote on the port at `index` to its client, as far as it
    /// takes it (dropped while none is connected, as a closed pipe would).
    pub fn process_port_tx(&mut self, index: usize) {
        let Some(a) = self.active.as_mut() else {
            return;
        };
        let port = &mut self.ports[index];
        let tx = a.port(Self::rx_queue(index) + 1);
        if let Err(e) = tx.send_output(&mut port.writer) {
            warn!(
                "virtio-serial: port {}: client output failed ({e})",
                port.name
            );
            port.lost = true;
        }
    }

    /// Hand the bytes waiting for the port at `index` to the guest's receive buffers,
    /// while a guest program has it open.
    pub fn process_port_rx(&mut self, index: usize) {
        let Some(a) = self.active.as_mut() else {
            return;
        };
        let port = &mut self.ports[index];
        if port.ready && port.guest_open {
            a.port(Self::rx_queue(index)).take_input(&mut port.pending);
        }
    }

    /// Bytes from the client of the port at `index`; what exceeds
    /// [`MAX_PENDING_INPUT`] is dropped with a warning (the host side reads only what
    /// fits).
    pub fn push_input(&mut self, index: usize, bytes: &[u8]) {
        let pending = &mut self.ports[index].pending;
        let room = MAX_PENDING_INPUT.saturating_sub(pending.len());
        if bytes.len() > room {
            warn!(
                "virtio-serial: input buffer full, dropping {} bytes",
                bytes.len() - room
            );
        }
        pending.extend(&bytes[..bytes.len().min(room)]);
        self.process_port_rx(index);
    }

    /// Whether a guest program has the port named `name` open.
    pub fn guest_has_open(&self, name: &str) -> bool {
        self.ports.iter().any(|p| p.name == name && p.guest_open)
    }

    /// The queue event `queue` fired.
    fn process_queue(&mut self, queue: usize) {
        match queue {
            CONTROL_RX => self.process_control_rx(),
            CONTROL_TX => self.process_control_tx(),
            q => match port_queue(q, self.ports.len()) {
                Some((index, true)) => self.process_port_rx(index),
                Some((index, false)) => self.process_port_tx(index),
                None => {} // port 0's queues: the port is never added
            },
        }
    }
}

impl VirtioDevice for SerialPorts {
    fn device_type(&self) -> u32 {
        device_type::CONSOLE
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &self.queue_sizes
    }

    fn device_features(&self) -> u64 {
        FEATURES
    }

    fn ack_features(&mut self, features: u64) {
        self.acked_features = features & self.device_features();
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        // cols, rows (no F_SIZE: 0), max_nr_ports, emerg_wr (not offered: 0).
        let mut config = [0u8; 12];
        let max_nr_ports = self.ports.len() as u32 + 1;
        config[4..8].copy_from_slice(&max_nr_ports.to_le_bytes());
        data.fill(0);
        if let Some(tail) = usize::try_from(offset).ok().and_then(|o| config.get(o..)) {
            let n = tail.len().min(data.len());
            data[..n].copy_from_slice(&tail[..n]);
        }
    }

    fn write_config(&mut self, _offset: u64, _data: &[u8]) {}

    fn activate(&mut self, mut ctx: ActivateContext) -> Result<(), ActivateError> {
        let want = self.queue_sizes.len();
        if self.acked_features & F_MULTIPORT == 0 {
            // Without MULTIPORT only port 0 would exist, and it is not served.
            return Err(ActivateError::Backend(
                "virtio-serial: the driver did not take MULTIPORT, which its ports need".into(),
            ));
        }
        let queues = ctx.take_queues(want, self.acked_features & EVENT_IDX != 0)?;
        self.active = Some(Active {
            mem: ctx.mem,
            queues,
            interrupt: ctx.interrupt,
        });
        self.activation.activate(ctx.queue_events);
        Ok(())
    }

    fn reset(&mut self) -> bool {
        self.active = None;
        self.acked_features = 0;
        self.control_out.clear();
        for port in &mut self.ports {
            port.ready = false;
            port.guest_open = false;
            port.writer.forget_held();
        }
        true
    }
}

/// The port (its index, id - 1) whose queue is `q`, of `ports`, and whether it is
/// the receive queue.
fn port_queue(q: usize, ports: usize) -> Option<(usize, bool)> {
    let index = q.checked_sub(4)? / 2;
    (index < ports).then_some((index, q % 2 == 0))
}

#[cfg(test)]
mod reconnect_tests;
#[cfg(test)]
mod tests;

//! virtio-console (virtio 1.2 §5.3) with one port, which Linux names hvc0, and its
//! size when the VMM gives one (VIRTIO_CONSOLE_F_SIZE, size.rs).
//!
//! Like vm-superio's serial, the device only knows a `Write` for the guest's output and
//! an optional readable file descriptor for its input, so the VMM decides whether that
//! is stdout, a file or a UNIX socket, and tests pass a `Vec` and a socket pair. Or it
//! listens on a UNIX socket and serves one client at a time ([`Console::listening`]),
//! or connects to one again whenever it comes back ([`Console::reconnecting`]).
//! The host side (input, clients, failed output) is in host.rs; a socket client is
//! written without blocking the event loop, and the guest waits for a slow one
//! (output.rs).
//!
//! Input is never dropped: the device buffers up to [`MAX_PENDING_INPUT`] bytes the
//! guest has no receive buffers for, then stops reading its input until the guest
//! posts some, so a fast writer is slowed to the guest's pace (a socket's writer
//! blocks, as with a pipe) rather than losing bytes.

use std::collections::VecDeque;
use std::io::{Read, Write};
use std::os::unix::io::AsRawFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use log::warn;
use virtio_bindings::bindings::virtio_ring::VIRTIO_RING_F_EVENT_IDX;
use virtio_queue::{DescriptorChain, Queue, QueueT};
use vm_memory::Bytes;

use super::activation::Activation;
use super::{device_type, notify, ActivateContext, ActivateError, VirtioDevice, VirtioInterrupt};
use crate::GuestMemory;

/// Descriptors per queue.
pub const QUEUE_SIZE: u16 = 256;
const RX: usize = 0;
const TX: usize = 1;
/// Input buffered while the driver has no receive buffers; beyond this the input is
/// not read until the driver posts buffers.
pub const MAX_PENDING_INPUT: usize = 64 << 10;
/// Bytes copied between guest memory and the host at a time.
const CHUNK: usize = 4096;
/// VIRTIO_RING_F_EVENT_IDX: see [`notify`].
const EVENT_IDX: u64 = 1 << VIRTIO_RING_F_EVENT_IDX;
const FEATURES: u64 = super::VIRTIO_F_VERSION_1 | EVENT_IDX | super::VIRTIO_RING_F_INDIRECT;

/// Where guest input comes from: something readable with a pollable file descriptor.
pub trait ConsoleInput: Read + AsRawFd + Send {
    /// Whether bytes already taken from the descriptor wait for the next read (an
    /// input that filters what it reads may give back more than it read, and keep
    /// what did not fit). The console then reads again at once: the descriptor will
    /// not become readable for them.
    fn holds_input(&self) -> bool {
        false
    }
}

impl ConsoleInput for UnixStream {}

struct Active {
    mem: GuestMemory,
    rx: Queue,
    tx: Queue,
    interrupt: Arc<dyn VirtioInterrupt>,
}

impl Active {
    /// The receive ([`RX`]) or transmit ([`TX`]) queue.
    fn port(&mut self, index: usize) -> PortQueue<'_> {
        PortQueue {
            queue: if index == RX {
                &mut self.rx
            } else {
                &mut self.tx
            },
            mem: &self.mem,
            interrupt: self.interrupt.as_ref(),
            index: index as u16,
            device: "virtio-console",
        }
    }
}

/// A virtio console with a single port.
pub struct Console {
    writer: PortWriter,
    /// Ticks while the output socket is full (see output.rs).
    stall: StallTimer,
    input: Option<Box<dyn ConsoleInput>>,
    /// The input fd is out of the event loop: the pending buffer is full.
    input_paused: bool,
    /// Server mode: clients connect here, one at a time (see host.rs).
    listener: Option<UnixListener>,
    /// Client mode with `reconnect-ms`: where to connect again after a hang-up.
    reconnect: Option<Reconnect>,
    /// The client's output failed: it is dropped at the end of the event.
    client_lost: bool,
    pending: VecDeque<u8>,
    /// Columns and rows, with F_SIZE (see size.rs).
    size: ConsoleSize,
    size_source: Option<SizeSource>,
    acked_features: u64,
    activation: Activation,
    active: Option<Active>,
}

impl Console {
    pub fn new(
        output: Box<dyn Write + Send>,
        input: Option<Box<dyn ConsoleInput>>,
    ) -> std::io::Result<Self> {
        Self::with_output(PortOutput::Blocking(output), input)
    }

    /// A console writing `output` (stdout, a file) from a thread of its own, so that an
    /// output that stops taking data holds up neither the event loop nor, past the
    /// stall limit, the guest (see relay.rs); input, if any, from `input`.
    pub fn relayed(
        output: Box<dyn Write + Send>,
        input: Option<Box<dyn ConsoleInput>>,
    ) -> std::io::Result<Self> {
        Self::with_output(
            PortOutput::Relayed(Relay::start(output, "virtio-console")?),
            input,
        )
    }

    /// A console talking to a connected socket: the guest's output goes to it without
    /// blocking the event loop (see output.rs), input comes from it.
    pub fn connected(stream: UnixStream) -> std::io::Result<Self> {
        let input = stream.try_clone()?;
        Self::with_output(PortOutput::Socket(stream), Some(Box::new(input)))
    }

    /// A console that connects to the listener at `path`, starting with `first` if
    /// kiln could connect already, and connects again `every` after it hangs up or a
    /// try fails (QEMU's `reconnect-ms`). Output is dropped while none is connected.
    pub fn reconnecting(
        path: PathBuf,
        every: Duration,
        first: Option<UnixStream>,
    ) -> std::io::Result<Self> {
        let mut reconnect = Reconnect::new(path, every)?;
        let mut console = match first {
            Some(stream) => Self::connected(stream)?,
            None => {
                reconnect.schedule();
                Self::with_output(PortOutput::Discard, None)?
            }
        };
        console.reconnect = Some(reconnect);
        Ok(console)
    }

    fn with_output(
        output: PortOutput,
        input: Option<Box<dyn ConsoleInput>>,
    ) -> std::io::Result<Self> {
        Ok(Console {
            writer: PortWriter::new(output)?,
            stall: StallTimer::new()?,
            input,
            input_paused: false,
            listener: None,
            reconnect: None,
            client_lost: false,
            pending: VecDeque::new(),
            size: (0, 0),
            size_source: None,
            acked_features: 0,
            activation: Activation::new()?,
            active: None,
        })
    }

    /// Queue bytes for the guest; what does not fit in [`MAX_PENDING_INPUT`] is
    /// dropped with a warning (the input fd handler reads only what fits).
    pub fn push_input(&mut self, bytes: &[u8]) {
        let room = MAX_PENDING_INPUT.saturating_sub(self.pending.len());
        if bytes.len() > room {
            warn!(
                "virtio-console: input buffer full, dropping {} bytes",
                bytes.len() - room
            );
        }
        self.pending.extend(&bytes[..bytes.len().min(room)]);
        self.process_rx();
    }

    /// Copy what the guest sent to the output, as far as it takes it. The guest's
    /// buffers are returned even if the output fails; from then on its output is
    /// dropped (see `Console::output_failed`).
    pub fn process_tx(&mut self) {
        let Some(a) = self.active.as_mut() else {
            return;
        };
        if let Err(e) = a.port(TX).send_output(&mut self.writer) {
            self.output_failed(e);
        }
    }

    /// Whether a chain of the guest's output waits for room in the socket.
    pub fn output_waiting(&self) -> bool {
        self.writer.is_blocked()
    }

    /// Give a client that takes none of the guest's output this long up (default
    /// [`STALL_LIMIT`]: the guest's console driver spins while it waits).
    pub fn set_stall_limit(&mut self, limit: std::time::Duration) {
        self.writer.set_stall_limit(Some(limit));
    }

    /// Hand pending input to the guest's receive buffers.
    pub fn process_rx(&mut self) {
        let Some(a) = self.active.as_mut() else {
            return;
        };
        a.port(RX).take_input(&mut self.pending);
    }
}

/// One queue of a console port (also the ports of virtio-serial) and what returning
/// its buffers needs.
pub(crate) struct PortQueue<'a> {
    pub queue: &'a mut Queue,
    pub mem: &'a GuestMemory,
    pub interrupt: &'a dyn VirtioInterrupt,
    /// The queue's index, for its interrupt.
    pub index: u16,
    /// For messages.
    pub device: &'static str,
}

impl PortQueue<'_> {
    /// Tell the driver this queue's used ring moved (as it asked, see [`notify`]).
    pub fn signal_used(&mut self) {
        notify::signal_used(
            self.queue,
            self.mem,
            self.interrupt,
            self.index,
            self.device,
        );
    }

    /// Write what the guest sent on this transmit queue to `writer`, starting with the
    /// chain it holds. Every chain written (or dropped) is returned to the guest; a
    /// socket that cannot take more holds the rest of the ring back (the writer then
    /// says [`PortWriter::is_blocked`]). The first output error is the result; from
    /// then on the writer drops the output.
    pub fn send_output(mut self, writer: &mut PortWriter) -> std::io::Result<()> {
        let mem = self.mem;
        let mut returned = false;
        let mut failure = None;
        if let Some(held) = writer.held.take() {
            let head = held.head;
            match writer.write_chain(mem, held) {
                Ok(Written::Held) => return Ok(()),
                Ok(Written::Done) => {}
                Err(e) => failure = Some(e),
            }
            returned = self.queue.add_used(mem, head, 0).is_ok();
        }
        notify::drain_with_kicks_suppressed(self.queue, mem, |q| {
            while let Some(chain) = q.pop_descriptor_chain(mem) {
                let head = chain.head_index();
                match writer.write_chain(mem, PendingChain::new(chain)) {
                    Ok(Written::Held) => return false,
                    Ok(Written::Done) => {}
                    Err(e) => failure = failure.take().or(Some(e)),
                }
                if q.add_used(mem, head, 0).is_err() {
                    return false;
                }
                returned = true;
            }
            true
        });
        if returned {
            self.signal_used();
        }
        if let Err(e) = writer.flush() {
            failure = failure.take().or(Some(e));
        }
        failure.map_or(Ok(()), Err)
    }

    /// Move `pending` into this receive queue's buffers, as far as they go.
    pub fn take_input(mut self, pending: &mut VecDeque<u8>) {
        let mut used = false;
        let mem = self.mem;
        // Wants more buffers while input waits; and with none pending, re-enabling
        // kicks still moves avail_event up to the buffers not yet taken.
        notify::drain_with_kicks_suppressed(self.queue, mem, |q| {
            while !pending.is_empty() {
                let Some(chain) = q.pop_descriptor_chain(mem) else {
                    break;
                };
                let head = chain.head_index();
                let written = copy_in(mem, chain, pending);
                if q.add_used(mem, head, written).is_err() {
                    return false;
                }
                used = true;
            }
            !pending.is_empty()
        });
        if used {
            self.signal_used();
        }
    }
}

/// Write the device-readable buffers of `chain` to `output`; an error writing the
/// output ends the copy (unreadable guest buffers are skipped with a warning).
pub(crate) fn copy_out(
    mem: &GuestMemory,
    chain: DescriptorChain<&GuestMemory>,
    output: &mut dyn Write,
) -> std::io::Result<()> {
    PendingChain::new(chain).write_with(mem, |b| output.write_all(b).map(|()| b.len()))
}

/// Move the front of `pending` into the device-writable buffers of `chain`; returns
/// the bytes written.
pub(crate) fn copy_in(
    mem: &GuestMemory,
    chain: DescriptorChain<&GuestMemory>,
    pending: &mut VecDeque<u8>,
) -> u32 {
    let mut written = 0u32;
    for d in chain.filter(|d| d.is_write_only()) {
        let n = (d.len() as usize).min(pending.len());
        let bytes: Vec<u8> = pending.iter().take(n).copied().collect();
        if mem.write_slice(&bytes, d.addr()).is_err() {
            warn!(
                "virtio-console: rx buffer {:#x} outside guest memory",
                d.addr().0
            );
            break;
        }
        pending.drain(..n);
        written += n as u32;
        if pending.is_empty() {
            break;
        }
    }
    written
}

impl VirtioDevice for Console {
    fn device_type(&self) -> u32 {
        device_type::CONSOLE
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE, QUEUE_SIZE]
    }

    fn device_features(&self) -> u64 {
        FEATURES | self.size_features()
    }

    fn ack_features(&mut self, features: u64) {
        self.acked_features = features & self.device_features();
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        // cols and rows with F_SIZE; max_nr_ports and emerg_wr belong to features not
        // offered. Past the end reads as zeroes.
        data.fill(0);
        let config = self.config_bytes();
        if let Some(tail) = usize::try_from(offset).ok().and_then(|o| config.get(o..)) {
            let n = tail.len().min(data.len());
            data[..n].copy_from_slice(&tail[..n]);
        }
    }

    fn write_config(&mut self, _offset: u64, _data: &[u8]) {}

    fn activate(&mut self, mut ctx: ActivateContext) -> Result<(), ActivateError> {
        let [rx, tx] = ctx.take_queue_array(self.acked_features & EVENT_IDX != 0)?;
        self.active = Some(Active {
            mem: ctx.mem,
            rx,
            tx,
            interrupt: ctx.interrupt,
        });
        self.activation.activate(ctx.queue_events);
        self.announce_size();
        Ok(())
    }

    fn reset(&mut self) -> bool {
        self.active = None;
        self.acked_features = 0;
        self.writer.forget_held();
        true
    }
}

mod host;
mod output;
mod reconnect;
mod relay;
mod relay_writer;
mod size;
pub(crate) use output::{PendingChain, Written};
pub use output::{PortOutput, PortWriter, StallTimer, Stalled, STALL_LIMIT};
pub use reconnect::{connect_nonblocking, Reconnect};
pub use relay::{Relay, DRAIN_LIMIT};
pub use relay_writer::RelayWriter;
pub use size::{ConsoleSize, SizeSource, F_SIZE};
#[cfg(test)]
pub(crate) mod backpressure_tests;
#[cfg(test)]
mod reconnect_tests;
#[cfg(test)]
mod relay_tests;
#[cfg(test)]
mod relay_writer_tests;
#[cfg(test)]
mod tests;

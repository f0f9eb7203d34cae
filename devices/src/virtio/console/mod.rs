//! virtio-console (virtio 1.2 §5.3) with one port, which Linux names hvc0.
//!
//! Like vm-superio's serial, the device only knows a `Write` for the guest's output and
//! an optional readable file descriptor for its input, so the VMM decides whether that
//! is stdout, a file or a UNIX socket, and tests pass a `Vec` and a socket pair.

use std::collections::VecDeque;
use std::io::{Read, Write};
use std::os::unix::io::{AsRawFd, RawFd};
use std::sync::Arc;

use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};
use log::warn;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress};

use super::activation::{Activation, DeviceEvent};
use super::{device_type, ActivateContext, ActivateError, VirtioDevice, VirtioInterrupt};
use crate::GuestMemory;

/// Descriptors per queue.
pub const QUEUE_SIZE: u16 = 256;
const RX: usize = 0;
const TX: usize = 1;
/// Input buffered while the driver has no receive buffers; beyond this it is dropped.
pub const MAX_PENDING_INPUT: usize = 64 << 10;
/// `Events::data` of the input fd (queue events use their index, activation u32::MAX).
const INPUT_DATA: u32 = u32::MAX - 1;
const CHUNK: usize = 4096;

/// Where guest input comes from: anything readable with a pollable file descriptor.
pub trait ConsoleInput: Read + AsRawFd + Send {}
impl<T: Read + AsRawFd + Send> ConsoleInput for T {}

struct Active {
    mem: GuestMemory,
    rx: Queue,
    tx: Queue,
    interrupt: Arc<dyn VirtioInterrupt>,
}

/// A virtio console with a single port.
pub struct Console {
    output: Box<dyn Write + Send>,
    input: Option<Box<dyn ConsoleInput>>,
    pending: VecDeque<u8>,
    activation: Activation,
    active: Option<Active>,
}

impl Console {
    pub fn new(
        output: Box<dyn Write + Send>,
        input: Option<Box<dyn ConsoleInput>>,
    ) -> std::io::Result<Self> {
        Ok(Console {
            output,
            input,
            pending: VecDeque::new(),
            activation: Activation::new()?,
            active: None,
        })
    }

    /// Queue bytes for the guest (also what the input fd handler does).
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

    /// Copy everything the guest sent to the output.
    pub fn process_tx(&mut self) {
        let Some(a) = self.active.as_mut() else {
            return;
        };
        let mut used = false;
        while let Some(chain) = a.tx.pop_descriptor_chain(&a.mem) {
            let head = chain.head_index();
            let mut buf = [0u8; CHUNK];
            for d in chain.filter(|d| !d.is_write_only()) {
                let mut done = 0u32;
                while done < d.len() {
                    let n = (d.len() - done).min(CHUNK as u32);
                    let Some(addr) = d.addr().0.checked_add(u64::from(done)) else {
                        break;
                    };
                    if a.mem
                        .read_slice(&mut buf[..n as usize], GuestAddress(addr))
                        .is_err()
                    {
                        warn!("virtio-console: tx buffer {addr:#x}+{n} outside guest memory");
                        break;
                    }
                    if let Err(e) = self.output.write_all(&buf[..n as usize]) {
                        warn!("virtio-console: output failed: {e}");
                    }
                    done += n;
                }
            }
            if a.tx.add_used(&a.mem, head, 0).is_err() {
                break;
            }
            used = true;
        }
        let _ = self.output.flush();
        if used {
            let _ = a.interrupt.signal_used_queue(TX as u16);
        }
    }

    /// Hand pending input to the guest's receive buffers.
    pub fn process_rx(&mut self) {
        let Some(a) = self.active.as_mut() else {
            return;
        };
        let mut used = false;
        while !self.pending.is_empty() {
            let Some(chain) = a.rx.pop_descriptor_chain(&a.mem) else {
                break;
            };
            let head = chain.head_index();
            let mut written = 0u32;
            for d in chain.filter(|d| d.is_write_only()) {
                let n = (d.len() as usize).min(self.pending.len());
                let bytes: Vec<u8> = self.pending.iter().take(n).copied().collect();
                if a.mem.write_slice(&bytes, d.addr()).is_err() {
                    warn!(
                        "virtio-console: rx buffer {:#x} outside guest memory",
                        d.addr().0
                    );
                    break;
                }
                self.pending.drain(..n);
                written += n as u32;
                if self.pending.is_empty() {
                    break;
                }
            }
            if a.rx.add_used(&a.mem, head, written).is_err() {
                break;
            }
            used = true;
        }
        if used {
            let _ = a.interrupt.signal_used_queue(RX as u16);
        }
    }

    fn read_input(&mut self, ops: &mut EventOps) {
        let Some(input) = self.input.as_mut() else {
            return;
        };
        let mut buf = [0u8; CHUNK];
        match input.read(&mut buf) {
            Ok(0) => {
                // EOF: stop watching, or epoll would report it forever.
                let fd: RawFd = input.as_raw_fd();
                let _ = ops.remove(Events::empty_raw(fd));
                self.input = None;
            }
            Ok(n) => self.push_input(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => warn!("virtio-console: input read failed: {e}"),
        }
    }
}

impl VirtioDevice for Console {
    fn device_type(&self) -> u32 {
        device_type::CONSOLE
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE, QUEUE_SIZE]
    }

    fn device_features(&self) -> u64 {
        super::VIRTIO_F_VERSION_1
    }

    fn ack_features(&mut self, _features: u64) {}

    fn read_config(&self, _offset: u64, data: &mut [u8]) {
        // cols, rows, max_nr_ports, emerg_wr: meaningful only with features we do not offer.
        data.fill(0);
    }

    fn write_config(&mut self, _offset: u64, _data: &[u8]) {}

    fn activate(&mut self, ctx: ActivateContext) -> Result<(), ActivateError> {
        let got = ctx.queues.len();
        let mut queues = ctx.queues.into_iter();
        let (Some(rx), Some(tx), None) = (queues.next(), queues.next(), queues.next()) else {
            return Err(ActivateError::QueueCount { got, want: 2 });
        };
        self.active = Some(Active {
            mem: ctx.mem,
            rx,
            tx,
            interrupt: ctx.interrupt,
        });
        self.activation.activate(ctx.queue_events);
        Ok(())
    }

    fn reset(&mut self) -> bool {
        self.active = None;
        true
    }
}

impl MutEventSubscriber for Console {
    fn init(&mut self, ops: &mut EventOps) {
        self.activation.init(ops);
        if let Some(input) = &self.input {
            let ev = Events::with_data_raw(input.as_raw_fd(), INPUT_DATA, EventSet::IN);
            if let Err(e) = ops.add(ev) {
                warn!("virtio-console: cannot watch input: {e}");
            }
        }
    }

    fn process(&mut self, events: Events, ops: &mut EventOps) {
        if events.data() == INPUT_DATA {
            self.read_input(ops);
            return;
        }
        match self.activation.handle(&events, ops) {
            DeviceEvent::Queue(RX) => self.process_rx(),
            DeviceEvent::Queue(TX) => self.process_tx(),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests;

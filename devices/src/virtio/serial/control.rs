//! The control queues: the driver says what it set up (DEVICE_READY, PORT_READY) and
//! which ports a guest program has open (PORT_OPEN); the device announces its ports
//! (DEVICE_ADD), their names (PORT_NAME) and whether a host client is connected
//! (PORT_OPEN). One message per buffer chain each way.

use std::collections::VecDeque;

use log::{debug, warn};
use virtio_queue::QueueT;

use super::{SerialPorts, CONTROL_RX, CONTROL_TX};
use crate::virtio::console::{copy_in, copy_out};
use crate::virtio::notify;

/// struct virtio_console_control: le32 id, le16 event, le16 value.
const CONTROL_LEN: usize = 8;
pub(super) const DEVICE_READY: u16 = 0;
pub(super) const DEVICE_ADD: u16 = 1;
pub(super) const PORT_READY: u16 = 3;
pub(super) const PORT_OPEN: u16 = 6;
pub(super) const PORT_NAME: u16 = 7;
/// Control messages waiting for the driver's receive buffers; beyond this the driver is
/// taken for stuck and further messages are dropped.
const MAX_PENDING_CONTROL: usize = 1024;

impl SerialPorts {
    /// Queue a control message for the driver and deliver what its buffers take.
    fn send_control(&mut self, id: u32, event: u16, value: u16, payload: &[u8]) {
        if self.control_out.len() >= MAX_PENDING_CONTROL {
            warn!("virtio-serial: the driver takes no control messages; dropping one");
            return;
        }
        let mut msg = Vec::with_capacity(CONTROL_LEN + payload.len());
        msg.extend_from_slice(&id.to_le_bytes());
        msg.extend_from_slice(&event.to_le_bytes());
        msg.extend_from_slice(&value.to_le_bytes());
        msg.extend_from_slice(payload);
        self.control_out.push_back(msg);
        self.process_control_rx();
    }

    /// Tell the driver whether a host client is connected to the port at `index`.
    pub(super) fn announce_open(&mut self, index: usize) {
        let port = &self.ports[index];
        if port.ready {
            let open = u16::from(port.client.is_some());
            self.send_control(index as u32 + 1, PORT_OPEN, open, &[]);
        }
    }

    /// Put waiting control messages in the driver's control receive buffers, one
    /// message per buffer chain.
    pub fn process_control_rx(&mut self) {
        let Some(a) = self.active.as_mut() else {
            return;
        };
        let mut used = false;
        let pending = &mut self.control_out;
        let mut port = a.port(CONTROL_RX);
        let mem = port.mem;
        notify::drain_with_kicks_suppressed(port.queue, mem, |q| {
            while let Some(msg) = pending.front() {
                let Some(chain) = q.pop_descriptor_chain(mem) else {
                    break;
                };
                let head = chain.head_index();
                let mut bytes: VecDeque<u8> = msg.iter().copied().collect();
                let written = copy_in(mem, chain, &mut bytes);
                if !bytes.is_empty() {
                    warn!("virtio-serial: a control buffer too small for its message");
                }
                pending.pop_front();
                if q.add_used(mem, head, written).is_err() {
                    return false;
                }
                used = true;
            }
            !pending.is_empty()
        });
        if used {
            port.signal_used();
        }
    }

    /// Read the driver's control messages and answer them.
    pub fn process_control_tx(&mut self) {
        let Some(a) = self.active.as_mut() else {
            return;
        };
        let mut messages = Vec::new();
        let mut used = false;
        let mut port = a.port(CONTROL_TX);
        let mem = port.mem;
        notify::drain_with_kicks_suppressed(port.queue, mem, |q| {
            while let Some(chain) = q.pop_descriptor_chain(mem) {
                let head = chain.head_index();
                // Only the header is read: a hostile chain may span guest memory.
                let mut msg = [0u8; CONTROL_LEN];
                let mut rest = &mut msg[..];
                let _ = copy_out(mem, chain, &mut rest);
                let len = CONTROL_LEN - rest.len();
                messages.push((msg, len));
                if q.add_used(mem, head, 0).is_err() {
                    return false;
                }
                used = true;
            }
            true
        });
        if used {
            port.signal_used();
        }
        for (msg, len) in messages {
            self.control_message(&msg[..len]);
        }
    }

    /// One message from the driver; malformed ones and unknown ports are ignored.
    fn control_message(&mut self, msg: &[u8]) {
        let Some(header) = msg.get(..CONTROL_LEN) else {
            warn!("virtio-serial: {}-byte control message", msg.len());
            return;
        };
        let id = u32::from_le_bytes([header[0], header[1], header[2], header[3]]);
        let event = u16::from_le_bytes([header[4], header[5]]);
        let value = u16::from_le_bytes([header[6], header[7]]);
        match event {
            DEVICE_READY if value == 1 => {
                for i in 0..self.ports.len() {
                    self.send_control(i as u32 + 1, DEVICE_ADD, 0, &[]);
                }
            }
            DEVICE_READY => warn!("virtio-serial: the driver failed to set up"),
            PORT_READY | PORT_OPEN => {
                let Some(index) = self.port_index(id) else {
                    warn!("virtio-serial: control message {event} for unknown port {id}");
                    return;
                };
                if event == PORT_OPEN {
                    self.ports[index].guest_open = value == 1;
                    debug!(
                        "virtio-serial: the guest {} port {id}",
                        if value == 1 { "opened" } else { "closed" }
                    );
                    self.process_port_rx(index);
                } else if value == 1 {
                    self.ports[index].ready = true;
                    let name = self.ports[index].name.clone().into_bytes();
                    self.send_control(id, PORT_NAME, 1, &name);
                    if self.ports[index].client.is_some() {
                        self.announce_open(index);
                    }
                    self.process_port_rx(index);
                } else {
                    warn!("virtio-serial: the driver could not add port {id}");
                }
            }
            other => debug!("virtio-serial: control event {other} ignored"),
        }
    }
}

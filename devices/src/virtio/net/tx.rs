//! Transmit: frames from the tx queue to the backend.

use std::io;

use virtio_bindings::virtio_net::*;
use virtio_queue::{QueueOwnedT, QueueT};

use super::backend::VNET_HDR_LEN;
use super::chain::{read_tx_chain, BadChain};
use super::device::{Net, TX_QUEUE};

impl Net {
    /// Hand one packet in `tx_buf` to the backend. Returns false if the backend is full.
    fn send_tx_packet(&mut self, len: usize) -> bool {
        let packet = &self.tx_buf[..len];
        let frame = if self.backend.has_vnet_hdr() {
            packet
        } else {
            // No offloads were offered, so a header asking for one breaks the negotiation.
            let (flags, gso) = (packet[0], packet[1]);
            if flags as u32 & VIRTIO_NET_HDR_F_NEEDS_CSUM != 0
                || gso as u32 != VIRTIO_NET_HDR_GSO_NONE
            {
                self.stats.tx_dropped += 1;
                Self::count_drop(
                    &mut self.stats,
                    format_args!(
                        "tx header asks for an offload that was not negotiated \
                         (flags {flags:#x}, gso {gso}); frame dropped"
                    ),
                );
                return true;
            }
            &packet[VNET_HDR_LEN..]
        };
        if !self.backend_alive {
            self.stats.tx_dropped += 1;
            return true;
        }
        match self.backend.send(frame) {
            Ok(()) => {
                self.stats.tx_packets += 1;
                self.stats.tx_bytes += frame.len() as u64;
                true
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                self.tx_pending = Some(len);
                false
            }
            Err(e) if is_fatal(&e) => {
                self.backend_died(&e);
                self.stats.tx_dropped += 1;
                true
            }
            Err(e) => {
                self.stats.tx_dropped += 1;
                Self::count_drop(
                    &mut self.stats,
                    format_args!("backend refused a {}-byte tx frame: {e}", frame.len()),
                );
                true
            }
        }
    }

    /// Move frames from the tx queue to the backend until the queue is empty or the
    /// backend is full (then the backend fd's writability resumes the work).
    pub fn process_tx(&mut self) {
        if let Some(len) = self.tx_pending.take() {
            if !self.send_tx_packet(len) {
                return;
            }
        }
        let mut used_any = false;
        loop {
            let Some(active) = self.active.as_mut().filter(|a| !a.broken) else {
                return;
            };
            if let Err(e) = active.tx.disable_notification(&active.mem) {
                return Self::queue_failed(active, "tx", e);
            }
            loop {
                let Some(active) = self.active.as_mut() else {
                    return;
                };
                let chain = match active.tx.iter(&active.mem) {
                    Ok(mut it) => it.next(),
                    Err(e) => {
                        Self::queue_failed(active, "tx", e);
                        break;
                    }
                };
                let Some(chain) = chain else { break };
                let head = chain.head_index();
                if head >= active.tx.size() {
                    // Not a descriptor index at all: nothing to return to the driver.
                    self.bad_chain("tx", head, BadChain::Empty);
                    continue;
                }
                let read = read_tx_chain(&active.mem, chain, &mut self.tx_buf);
                if let Err(e) = active.tx.add_used(&active.mem, head, 0) {
                    Self::queue_failed(active, "tx", e);
                    break;
                }
                used_any = true;
                match read {
                    Ok(len) => {
                        if !self.send_tx_packet(len) {
                            break;
                        }
                    }
                    Err(why) => self.bad_chain("tx", head, why),
                }
            }
            let Some(active) = self.active.as_mut() else {
                return;
            };
            if active.broken || self.tx_pending.is_some() {
                break;
            }
            match active.tx.enable_notification(&active.mem) {
                Ok(true) => continue,
                Ok(false) => break,
                Err(e) => {
                    Self::queue_failed(active, "tx", e);
                    break;
                }
            }
        }
        if used_any {
            self.notify(TX_QUEUE);
        }
    }

    /// The backend fd became writable: finish partial output, then resume tx.
    pub fn process_backend_writable(&mut self) {
        match self.backend.flush() {
            Ok(()) => self.process_tx(),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => {
                self.backend_died(&e);
                self.process_tx();
            }
        }
    }
}

/// Errors after which the backend cannot carry frames any more.
fn is_fatal(e: &io::Error) -> bool {
    use io::ErrorKind::*;
    matches!(
        e.kind(),
        BrokenPipe | ConnectionReset | ConnectionAborted | NotConnected | UnexpectedEof | WriteZero
    )
}

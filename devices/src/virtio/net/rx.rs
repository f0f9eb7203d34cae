//! Receive: packets from the backend into the rx queue's buffers.

use std::io;
use std::sync::atomic::{fence, Ordering};

use virtio_bindings::virtio_net::*;
use virtio_queue::QueueT;
use vm_memory::{Bytes, GuestAddress};

use super::backend::VNET_HDR_LEN;
use super::chain::{write_rx_packet, RxOutcome};
use super::device::{Net, RX_QUEUE};

impl Net {
    /// Read one packet from the backend into `rx_buf`; None when there is none now.
    fn recv_packet(&mut self) -> Option<usize> {
        if !self.backend_alive {
            return None;
        }
        let vnet = self.backend.has_vnet_hdr();
        let start = if vnet { 0 } else { VNET_HDR_LEN };
        loop {
            match self.backend.recv(&mut self.rx_buf[start..]) {
                Ok(n) if vnet && n < VNET_HDR_LEN => {
                    self.stats.rx_dropped += 1;
                    Self::count_drop(
                        &mut self.stats,
                        format_args!("backend gave a {n}-byte packet"),
                    );
                }
                Ok(n) => {
                    if !vnet {
                        self.rx_buf[..VNET_HDR_LEN].fill(0);
                        return Some(start + n);
                    }
                    if self.rx_header_allowed() {
                        return Some(n);
                    }
                    self.stats.rx_dropped += 1;
                    Self::count_drop(
                        &mut self.stats,
                        format_args!("backend gave a GSO packet the driver cannot take"),
                    );
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return None,
                Err(e) => {
                    self.backend_died(&e);
                    return None;
                }
            }
        }
    }

    /// Make a backend's rx header fit what the driver accepted (virtio 1.2 §5.1.6.3.1:
    /// flags must be zero without GUEST_CSUM). False: a GSO packet the driver cannot take.
    fn rx_header_allowed(&mut self) -> bool {
        if !self.has(VIRTIO_NET_F_GUEST_CSUM) {
            self.rx_buf[0] = 0;
        }
        let gso = u32::from(self.rx_buf[1]) & !VIRTIO_NET_HDR_GSO_ECN;
        match gso {
            VIRTIO_NET_HDR_GSO_NONE => true,
            VIRTIO_NET_HDR_GSO_TCPV4 => self.has(VIRTIO_NET_F_GUEST_TSO4),
            VIRTIO_NET_HDR_GSO_TCPV6 => self.has(VIRTIO_NET_F_GUEST_TSO6),
            _ => false,
        }
    }

    /// Move packets from the backend into rx buffers until either runs out. A packet
    /// that finds no buffers stays in `rx_buf` (and the rest in the backend) until the
    /// driver adds buffers.
    pub fn process_rx(&mut self) {
        let mergeable = self.has(VIRTIO_NET_F_MRG_RXBUF);
        let mut used_any = false;
        let mut rechecked = false;
        while self.active.as_ref().is_some_and(|a| !a.broken) {
            let Some(len) = self.rx_pending.take().or_else(|| self.recv_packet()) else {
                break;
            };
            let Some(active) = self.active.as_mut() else {
                break;
            };
            let mut bad = Vec::new();
            let outcome = write_rx_packet(
                &active.mem,
                &mut active.rx,
                &mut self.rx_buf[..len],
                mergeable,
                |head, why| bad.push((head, why)),
            );
            used_any |= !bad.is_empty();
            for (head, why) in bad {
                self.bad_chain("rx", head, why);
            }
            match outcome {
                Ok(RxOutcome::Delivered(_)) => {
                    used_any = true;
                    self.stats.rx_packets += 1;
                    self.stats.rx_bytes += (len - VNET_HDR_LEN) as u64;
                }
                Ok(RxOutcome::NoBuffers) => {
                    self.rx_pending = Some(len);
                    // Ask for a kick at the next buffer; if buffers came meanwhile, try
                    // once more (only once: a driver whose avail index runs ahead of
                    // what it really published would otherwise keep us here).
                    match self.want_rx_kick() {
                        Ok(true) if !rechecked => {
                            rechecked = true;
                            continue;
                        }
                        Ok(_) => break,
                        Err(e) => {
                            if let Some(active) = self.active.as_mut() {
                                Self::queue_failed(active, "rx", e);
                            }
                            break;
                        }
                    }
                }
                Ok(RxOutcome::TooBig) => {
                    self.stats.rx_dropped += 1;
                    Self::count_drop(
                        &mut self.stats,
                        format_args!(
                            "{len}-byte rx packet does not fit the driver's buffer; dropped"
                        ),
                    );
                }
                Err(e) => {
                    if let Some(active) = self.active.as_mut() {
                        Self::queue_failed(active, "rx", e);
                    }
                    self.rx_pending = Some(len);
                    break;
                }
            }
        }
        if used_any {
            self.notify(RX_QUEUE);
        }
    }
}

impl Net {
    /// Make sure the driver kicks when it adds the next rx buffer; true if there may be
    /// buffers rx has not tried (the avail index moved, or entries were left on the ring).
    ///
    /// With EVENT_IDX the driver kicks only when its avail index passes avail_event.
    /// virtio-queue's `enable_notification` puts avail_event at the device's next
    /// entry, but rx may leave entries unconsumed (a mergeable packet larger than the
    /// buffers there), and the driver's next buffer then lands past that index without
    /// a kick. So avail_event goes to the avail index itself. Without EVENT_IDX the
    /// driver always kicks: rx never sets VRING_USED_F_NO_NOTIFY.
    fn want_rx_kick(&self) -> Result<bool, virtio_queue::Error> {
        let Some(active) = self.active.as_ref() else {
            return Ok(false);
        };
        let (mem, rx) = (&active.mem, &active.rx);
        let seen = rx.avail_idx(mem, Ordering::Acquire)?;
        if rx.event_idx_enabled() {
            let at = rx.used_ring() + 4 + 8 * u64::from(rx.size());
            mem.store(seen.0.to_le(), GuestAddress(at), Ordering::Release)
                .map_err(virtio_queue::Error::GuestMemory)?;
        }
        // Pairs with the driver's barrier between publishing a buffer and reading
        // avail_event: either it sees our avail_event or we see its new index.
        fence(Ordering::SeqCst);
        let now = rx.avail_idx(mem, Ordering::Acquire)?;
        Ok(now != seen || now.0 != rx.next_avail())
    }
}

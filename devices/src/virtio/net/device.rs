//! The virtio-net device model: feature negotiation, configuration space, and the rx/tx
//! queue work. Event wiring is in `event_handler.rs`, descriptor handling in `chain.rs`.

use std::io;
use std::sync::Arc;

use log::{debug, error, warn};
use virtio_bindings::virtio_net::*;
use virtio_queue::{Queue, QueueOwnedT, QueueT};

use super::backend::{NetBackend, VNET_HDR_LEN};
use super::chain::{read_tx_chain, write_rx_packet, BadChain, RxOutcome, MAX_PACKET};
use super::config::MacAddr;
use crate::virtio::activation::Activation;
use crate::virtio::{
    device_type, ActivateContext, ActivateError, VirtioDevice, VirtioInterrupt, VIRTIO_F_VERSION_1,
};
use crate::GuestMemory;

pub const RX_QUEUE: usize = 0;
pub const TX_QUEUE: usize = 1;
/// Queue size offered to the driver.
pub const QUEUE_SIZE: u16 = 256;
const QUEUE_SIZES: [u16; 2] = [QUEUE_SIZE; 2];
/// Drops logged at warn level before the rest go to debug (a hostile guest can make many).
const LOUD_DROPS: u64 = 32;

/// Counters, for tests and benchmarks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NetStats {
    pub tx_packets: u64,
    pub tx_bytes: u64,
    pub tx_dropped: u64,
    pub rx_packets: u64,
    pub rx_bytes: u64,
    pub rx_dropped: u64,
    /// Descriptor chains returned unused because they were malformed.
    pub bad_chains: u64,
}

pub(super) struct Active {
    pub mem: GuestMemory,
    pub rx: Queue,
    pub tx: Queue,
    pub interrupt: Arc<dyn VirtioInterrupt>,
    /// A queue's rings turned out unusable; the device waits for a reset.
    pub broken: bool,
}

/// A virtio-net device over a [`NetBackend`].
pub struct Net {
    pub(super) backend: Box<dyn NetBackend>,
    pub(super) backend_alive: bool,
    mac: MacAddr,
    avail_features: u64,
    acked_features: u64,
    pub(super) activation: Activation,
    pub(super) active: Option<Active>,
    rx_buf: Box<[u8]>,
    /// Length of a packet in `rx_buf` waiting for rx buffers.
    pub(super) rx_pending: Option<usize>,
    tx_buf: Box<[u8]>,
    /// Length of a packet in `tx_buf` the backend has not taken yet.
    pub(super) tx_pending: Option<usize>,
    pub(super) stats: NetStats,
    pub(super) interest: Option<event_manager::EventSet>,
}

impl Net {
    /// A NIC with address `mac` on `backend`.
    pub fn new(backend: Box<dyn NetBackend>, mac: MacAddr) -> io::Result<Self> {
        let mut avail_features = VIRTIO_F_VERSION_1
            | (1 << VIRTIO_NET_F_MAC)
            | (1 << VIRTIO_NET_F_STATUS)
            | (1 << VIRTIO_NET_F_MRG_RXBUF);
        if backend.has_vnet_hdr() {
            avail_features |= backend.offload_features();
        }
        Ok(Net {
            backend,
            backend_alive: true,
            mac,
            avail_features,
            acked_features: 0,
            activation: Activation::new()?,
            active: None,
            rx_buf: vec![0; MAX_PACKET].into_boxed_slice(),
            rx_pending: None,
            tx_buf: vec![0; MAX_PACKET].into_boxed_slice(),
            tx_pending: None,
            stats: NetStats::default(),
            interest: None,
        })
    }

    pub fn mac(&self) -> MacAddr {
        self.mac
    }

    pub fn stats(&self) -> NetStats {
        self.stats
    }

    fn has(&self, bit: u32) -> bool {
        self.acked_features & (1 << bit) != 0
    }

    fn count_drop(stats: &mut NetStats, what: std::fmt::Arguments<'_>) {
        let n = stats.tx_dropped + stats.rx_dropped + stats.bad_chains;
        if n < LOUD_DROPS {
            warn!("virtio-net: {what}");
        } else {
            debug!("virtio-net: {what}");
        }
    }

    pub(super) fn backend_died(&mut self, e: &io::Error) {
        if !self.backend_alive {
            return;
        }
        error!("virtio-net: network backend failed, link down: {e}");
        self.backend_alive = false;
        self.rx_pending = None;
        self.tx_pending = None;
        if let Some(a) = &self.active {
            if let Err(e) = a.interrupt.signal_config_change() {
                warn!("virtio-net: cannot signal link change: {e}");
            }
        }
    }

    fn queue_failed(active: &mut Active, which: &str, e: virtio_queue::Error) {
        if !active.broken {
            error!("virtio-net: {which} queue unusable, waiting for a device reset: {e}");
        }
        active.broken = true;
    }

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
                Self::count_drop(&mut self.stats, format_args!("tx header asks for an offload that was not negotiated (flags {flags:#x}, gso {gso}); frame dropped"));
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

    fn bad_chain(&mut self, queue: &str, head: u16, why: BadChain) {
        self.stats.bad_chains += 1;
        Self::count_drop(
            &mut self.stats,
            format_args!("{queue} chain at descriptor {head} dropped: {why}"),
        );
    }

    fn notify(&mut self, index: usize) {
        let Some(active) = self.active.as_mut() else {
            return;
        };
        let queue = if index == RX_QUEUE {
            &mut active.rx
        } else {
            &mut active.tx
        };
        match queue.needs_notification(&active.mem) {
            Ok(false) => {}
            Ok(true) => {
                if let Err(e) = active.interrupt.signal_used_queue(index as u16) {
                    warn!("virtio-net: cannot interrupt the driver: {e}");
                }
            }
            Err(e) => Self::queue_failed(active, "used", e),
        }
    }

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
                    }
                    return Some(start + n);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return None,
                Err(e) => {
                    self.backend_died(&e);
                    return None;
                }
            }
        }
    }

    /// Move packets from the backend into rx buffers until either runs out. A packet
    /// that finds no buffers stays in `rx_buf` (and the rest in the backend) until the
    /// driver adds buffers.
    pub fn process_rx(&mut self) {
        let mergeable = self.has(VIRTIO_NET_F_MRG_RXBUF);
        let mut used_any = false;
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
                    break;
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

impl VirtioDevice for Net {
    fn device_type(&self) -> u32 {
        device_type::NET
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &QUEUE_SIZES
    }

    fn device_features(&self) -> u64 {
        self.avail_features
    }

    fn ack_features(&mut self, features: u64) {
        self.acked_features = features & self.avail_features;
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        // struct virtio_net_config: mac[6], status (le16); later fields are not offered.
        let mut config = [0u8; 8];
        config[..6].copy_from_slice(&self.mac.0);
        let status = if self.backend_alive {
            VIRTIO_NET_S_LINK_UP as u16
        } else {
            0
        };
        config[6..8].copy_from_slice(&status.to_le_bytes());
        for (i, byte) in data.iter_mut().enumerate() {
            *byte = usize::try_from(offset)
                .ok()
                .and_then(|o| o.checked_add(i))
                .and_then(|o| config.get(o).copied())
                .unwrap_or(0);
        }
    }

    fn write_config(&mut self, offset: u64, data: &[u8]) {
        debug!(
            "virtio-net: ignoring {}-byte config write at {offset}",
            data.len()
        );
    }

    fn activate(&mut self, ctx: ActivateContext) -> Result<(), ActivateError> {
        let ActivateContext {
            mem,
            queues,
            queue_events,
            interrupt,
        } = ctx;
        if queues.len() != 2 {
            return Err(ActivateError::QueueCount {
                got: queues.len(),
                want: 2,
            });
        }
        if let Some(i) = queues.iter().position(|q| !q.is_valid(&mem)) {
            return Err(ActivateError::InvalidQueue(i));
        }
        self.backend
            .set_offloads(self.acked_features)
            .map_err(|e| ActivateError::Backend(format!("cannot set offloads: {e}")))?;
        let mut queues = queues.into_iter();
        let (rx, tx) = (queues.next().unwrap(), queues.next().unwrap());
        self.active = Some(Active {
            mem,
            rx,
            tx,
            interrupt,
            broken: false,
        });
        self.activation.activate(queue_events);
        Ok(())
    }

    fn reset(&mut self) -> bool {
        self.active = None;
        self.acked_features = 0;
        self.rx_pending = None;
        self.tx_pending = None;
        true
    }
}

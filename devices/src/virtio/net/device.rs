//! The virtio-net device model: feature negotiation, configuration space, activation.
//! Queue work is in `tx.rs`/`rx.rs`, event wiring in `event_handler.rs`, descriptor
//! handling in `chain.rs`.

use std::io;
use std::sync::Arc;

use log::{debug, error, warn};
use virtio_bindings::virtio_net::*;
use virtio_bindings::virtio_ring::VIRTIO_RING_F_EVENT_IDX;
use virtio_queue::{Queue, QueueT};

use super::backend::NetBackend;
use super::chain::{BadChain, MAX_PACKET};
use super::config::MacAddr;
use crate::virtio::activation::Activation;
use crate::virtio::{
    device_type, notify, ActivateContext, ActivateError, VirtioDevice, VirtioInterrupt,
    VIRTIO_F_VERSION_1, VIRTIO_RING_F_INDIRECT,
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
    pub(super) rx_buf: Box<[u8]>,
    /// Length of a packet in `rx_buf` waiting for rx buffers.
    pub(super) rx_pending: Option<usize>,
    pub(super) tx_buf: Box<[u8]>,
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
            | (1 << VIRTIO_NET_F_MRG_RXBUF)
            | (1 << VIRTIO_RING_F_EVENT_IDX)
            | VIRTIO_RING_F_INDIRECT;
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

    pub(super) fn has(&self, bit: u32) -> bool {
        self.acked_features & (1 << bit) != 0
    }

    pub(super) fn count_drop(stats: &mut NetStats, what: std::fmt::Arguments<'_>) {
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

    pub(super) fn queue_failed(active: &mut Active, which: &str, e: virtio_queue::Error) {
        if !active.broken {
            error!("virtio-net: {which} queue unusable, waiting for a device reset: {e}");
        }
        active.broken = true;
    }
    pub(super) fn bad_chain(&mut self, queue: &str, head: u16, why: BadChain) {
        self.stats.bad_chains += 1;
        Self::count_drop(
            &mut self.stats,
            format_args!("{queue} chain at descriptor {head} dropped: {why}"),
        );
    }

    pub(super) fn notify(&mut self, index: usize) {
        let Some(active) = self.active.as_mut() else {
            return;
        };
        let queue = if index == RX_QUEUE {
            &mut active.rx
        } else {
            &mut active.tx
        };
        match notify::driver_wants_interrupt(queue, &active.mem) {
            Ok(false) => {}
            Ok(true) => {
                if let Err(e) = active.interrupt.signal_used_queue(index as u16) {
                    warn!("virtio-net: cannot interrupt the driver: {e}");
                }
            }
            Err(e) => Self::queue_failed(active, "used", e),
        }
    }
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

    fn activate(&mut self, mut ctx: ActivateContext) -> Result<(), ActivateError> {
        // (See rx.rs for where rx places avail_event.)
        let [rx, tx] = ctx.take_queue_array(self.has(VIRTIO_RING_F_EVENT_IDX))?;
        let ActivateContext {
            mem,
            queue_events,
            interrupt,
            ..
        } = ctx;
        if let Some(i) = [&rx, &tx].iter().position(|q| !q.is_valid(&mem)) {
            return Err(ActivateError::InvalidQueue(i));
        }
        self.backend
            .set_offloads(self.acked_features)
            .map_err(|e| ActivateError::Backend(format!("cannot set offloads: {e}")))?;
        log::info!(
            "virtio-net {}: activated, driver features {:#x}",
            self.mac,
            self.acked_features
        );
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

impl Drop for Net {
    fn drop(&mut self) {
        log::info!("virtio-net {}: {:?}", self.mac, self.stats);
    }
}

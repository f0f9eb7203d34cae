//! virtio-net (virtio 1.2 §5.1) with user-mode (passt) and TAP backends.
//!
//! Features offered: VERSION_1, MAC, STATUS (link up; down once the backend fails) and
//! MRG_RXBUF (a packet may span several rx descriptor chains). The header is always the
//! 12-byte `virtio_net_hdr_v1` with `num_buffers`.
//!
//! Offloads: only the TAP backend offers them, because only it passes the virtio-net
//! header to the host kernel (IFF_VNET_HDR): CSUM and HOST_TSO4/6 (the guest may send
//! partially checksummed packets and TCP super-frames), GUEST_CSUM and GUEST_TSO4/6
//! (the host kernel may hand the guest the same; enabled with TUNSETOFFLOAD from the
//! features the driver accepted). ECN and UFO are not offered. passt's stream carries
//! plain Ethernet frames, so with `--net user` no offload is offered, and a tx header
//! asking for one anyway is dropped.
//!
//! Building a NIC from the CLI option (`--net` absent means `NetConfig::default()`):
//! ```no_run
//! use kiln_devices::virtio::net::{Net, NetConfig};
//! let config: NetConfig = "user,hostfwd=tcp:8080-:80".parse().unwrap();
//! // Fix the random MAC once, so a device rebuilt after a guest reboot keeps it.
//! let config = config.with_fixed_mac().unwrap();
//! // In the VMM's device factory: starts passt / opens the TAP. None for `--net none`.
//! if let Some(net) = Net::from_config(&config).unwrap() {
//!     // Arc<Mutex<Net>>: it is both the VirtioDevice for MmioTransport and the
//!     // MutEventSubscriber for the event manager.
//! }
//! ```
//! Dropping the `Net` stops passt. On SIGINT the VMM must let the device drop (or simply
//! die: passt then exits by itself); see `backend/passt.rs`.
//!
//! Files: `device.rs` (features, config space, activation), `tx.rs` and `rx.rs` (queue
//! work), `chain.rs` (descriptor chains, hostile-input checks), `event_handler.rs`
//! (event-manager subscriber), `config.rs` (`--net` parsing), `backend/` (passt, TAP,
//! the stream framing).

pub mod backend;
pub(crate) mod chain;
pub mod config;
mod device;
mod event_handler;
mod rx;
#[cfg(test)]
mod tests;
mod tx;

pub use backend::{BackendError, NetBackend};
pub use config::{HostFwd, MacAddr, NetBackendConfig, NetConfig, NetConfigError};
pub use device::{Net, NetStats, QUEUE_SIZE, RX_QUEUE, TX_QUEUE};

/// Why a NIC could not be built.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error(transparent)]
    Backend(#[from] BackendError),
    #[error("cannot pick a random MAC address: {0}")]
    RandomMac(#[source] std::io::Error),
    #[error("cannot create virtio-net eventfd: {0}")]
    EventFd(#[source] std::io::Error),
}

impl Net {
    /// The NIC `config` asks for, or `None` for `--net none`.
    pub fn from_config(config: &NetConfig) -> Result<Option<Net>, NetError> {
        let NetConfig::Nic { backend, mac } = config else {
            return Ok(None);
        };
        let mac = match mac {
            Some(mac) => *mac,
            None => MacAddr::random().map_err(NetError::RandomMac)?,
        };
        let backend = backend::open(backend)?;
        Net::new(backend, mac).map(Some).map_err(NetError::EventFd)
    }
}

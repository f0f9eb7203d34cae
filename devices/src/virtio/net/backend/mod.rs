//! Where the guest's Ethernet frames go: one [`NetBackend`] per host-side mechanism.
//!
//! The device moves whole packets; a backend only moves them to and from the host.
//! All backend fds are non-blocking: "nothing now" is `io::ErrorKind::WouldBlock`, and the
//! device then waits for the fd in the event loop.

use std::io;
use std::os::fd::RawFd;

use super::config::NetBackendConfig;

pub mod passt;
pub mod stream;
pub mod tap;

pub use passt::PasstBackend;
pub use tap::TapBackend;

/// Largest Ethernet frame a backend moves: a 64 KiB GSO packet plus Ethernet and VLAN
/// headers. passt's largest frame (MTU 65520 + 14) and every TAP frame fit.
pub const MAX_FRAME_LEN: usize = 65_536 + 14 + 4;

/// Size of `struct virtio_net_hdr_v1` (virtio 1.2 §5.1.6), which includes `num_buffers`.
pub const VNET_HDR_LEN: usize = 12;

/// A host-side network endpoint for one NIC.
pub trait NetBackend: Send {
    /// True if packets carry a [`VNET_HDR_LEN`]-byte `virtio_net_hdr_v1` before the frame
    /// (TAP with IFF_VNET_HDR); false for plain Ethernet frames.
    fn has_vnet_hdr(&self) -> bool;

    /// virtio-net offload feature bits this backend can honour (needs `has_vnet_hdr`).
    fn offload_features(&self) -> u64 {
        0
    }

    /// Tell the backend which offload features the driver accepted.
    fn set_offloads(&mut self, _acked_features: u64) -> io::Result<()> {
        Ok(())
    }

    /// Send one packet. `WouldBlock` means it was not taken: retry when the fd is writable.
    fn send(&mut self, packet: &[u8]) -> io::Result<()>;

    /// Receive one packet into `buf` (at least `MAX_FRAME_LEN` + header bytes), returning
    /// its length. `WouldBlock`: nothing to receive now. Any other error: the backend is dead.
    fn recv(&mut self, buf: &mut [u8]) -> io::Result<usize>;

    /// Bytes of an accepted packet that are still waiting to be written.
    fn has_pending_output(&self) -> bool {
        false
    }

    /// Write pending output; `WouldBlock` if some is left.
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }

    /// The fd to poll: readable when `recv` may return a packet, writable when `send` or
    /// `flush` may make progress.
    fn raw_fd(&self) -> RawFd;
}

/// Why a backend could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error(
        "passt is not installed (needed for --net user); install it with: apt-get install passt"
    )]
    PasstMissing,
    #[error("cannot start passt: {0}")]
    PasstSpawn(#[source] io::Error),
    #[error("passt exited during start-up ({status}){}", stderr_suffix(.stderr))]
    PasstExited { status: String, stderr: String },
    #[error("passt did not finish start-up within {secs} s{}", stderr_suffix(.stderr))]
    PasstTimeout { secs: u64, stderr: String },
    #[error("hostfwd: host port {port} cannot be used: {source}")]
    HostPortBusy {
        port: u16,
        #[source]
        source: io::Error,
    },
    #[error("cannot set up passt: {0}")]
    PasstSetup(#[source] io::Error),
    #[error("TAP device {0:?} does not exist; create it (as root: ip tuntap add dev {0} mode tap user $USER) or pass create=on when running as root")]
    TapMissing(String),
    #[error("/dev/net/tun does not exist: load the tun module (modprobe tun) or create the node (mknod /dev/net/tun c 10 200)")]
    TunMissing,
    #[error("no permission to open /dev/net/tun: your user needs read and write access to it (it is usually mode 0666)")]
    TunAccess,
    #[error("creating TAP device {0:?} needs CAP_NET_ADMIN: run as root or create it beforehand with ip tuntap add")]
    TapCreateDenied(String),
    #[error("not allowed to use TAP device {name:?}: it belongs to {owner}; recreate it with `ip tuntap add dev {name} mode tap user $USER`, or run with CAP_NET_ADMIN")]
    TapDenied { name: String, owner: String },
    #[error("TAP device {0:?} is in use by another process")]
    TapBusy(String),
    #[error("{0:?} is not a TAP device (a TUN device or another kind of interface)")]
    NotTap(String),
    #[error("TAP device {name:?}: {what} failed: {source}")]
    Tap {
        name: String,
        what: &'static str,
        #[source]
        source: io::Error,
    },
}

fn stderr_suffix(stderr: &str) -> String {
    if stderr.trim().is_empty() {
        String::new()
    } else {
        format!("; passt said: {}", stderr.trim())
    }
}

/// Open the backend `config` asks for.
pub fn open(config: &NetBackendConfig) -> Result<Box<dyn NetBackend>, BackendError> {
    Ok(match config {
        NetBackendConfig::User { hostfwd } => Box::new(PasstBackend::start(hostfwd)?),
        NetBackendConfig::Tap { name, create } => Box::new(TapBackend::open(name, *create)?),
    })
}

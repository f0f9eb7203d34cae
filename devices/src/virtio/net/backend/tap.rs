//! A host TAP device opened through /dev/net/tun with IFF_VNET_HDR, so packets carry the
//! virtio-net header and checksum/TSO offloads pass between guest and host kernel.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::Path;

use log::{debug, info};
use virtio_bindings::virtio_net::*;

use super::{BackendError, NetBackend, VNET_HDR_LEN};
use crate::virtio::net::config::MAX_IFNAME_LEN;

const TUN_PATH: &str = "/dev/net/tun";

/// Offloads the guest may use towards a TAP: it hands the host kernel partial checksums
/// and TSO super-frames, and accepts the same from it.
const TAP_OFFLOADS: u64 = (1 << VIRTIO_NET_F_CSUM)
    | (1 << VIRTIO_NET_F_GUEST_CSUM)
    | (1 << VIRTIO_NET_F_HOST_TSO4)
    | (1 << VIRTIO_NET_F_HOST_TSO6)
    | (1 << VIRTIO_NET_F_GUEST_TSO4)
    | (1 << VIRTIO_NET_F_GUEST_TSO6);

/// An open TAP queue.
pub struct TapBackend {
    file: File,
    name: String,
}

fn ifreq_for(name: &str, flags: libc::c_int) -> libc::ifreq {
    // SAFETY: ifreq is plain old data; all-zero is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(name.bytes()) {
        *dst = src as libc::c_char;
    }
    req.ifr_ifru.ifru_flags = flags as libc::c_short;
    req
}

fn ioctl_with_ptr<T>(fd: RawFd, request: libc::Ioctl, arg: *mut T) -> io::Result<()> {
    // SAFETY: each caller passes a TUN ioctl whose argument is `*mut T` of the kernel's
    // expected type, pointing at a live value.
    let rc = unsafe { libc::ioctl(fd, request, arg) };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

fn ioctl_with_val(fd: RawFd, request: libc::Ioctl, arg: libc::c_ulong) -> io::Result<()> {
    // SAFETY: TUNSETOFFLOAD/TUNSETPERSIST take their argument by value; no memory is passed.
    let rc = unsafe { libc::ioctl(fd, request, arg) };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

impl TapBackend {
    /// Attach to TAP device `name`; with `create`, make it if it does not exist (it then
    /// vanishes when kiln closes it). The device is set up and its link brought up only
    /// when kiln created it.
    pub fn open(name: &str, create: bool) -> Result<Self, BackendError> {
        if name.is_empty() || name.len() > MAX_IFNAME_LEN || name.contains('/') {
            return Err(BackendError::NotTap(name.to_string()));
        }
        let exists = interface_exists(name);
        let sys = Path::new("/sys/class/net").join(name);
        if !exists && !create {
            return Err(BackendError::TapMissing(name.to_string()));
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open(TUN_PATH)
            .map_err(|e| match e.kind() {
                io::ErrorKind::NotFound => BackendError::TunMissing,
                io::ErrorKind::PermissionDenied => BackendError::TunAccess,
                _ => tap_err(name, "open /dev/net/tun", e),
            })?;
        let fd = file.as_raw_fd();
        let mut features: libc::c_uint = 0;
        ioctl_with_ptr(fd, libc::TUNGETFEATURES, &mut features)
            .map_err(|e| tap_err(name, "TUNGETFEATURES", e))?;
        let flags = libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR;
        if features & flags as libc::c_uint != flags as libc::c_uint {
            return Err(tap_err(
                name,
                "IFF_VNET_HDR support check",
                io::Error::from(io::ErrorKind::Unsupported),
            ));
        }
        let mut req = ifreq_for(name, flags);
        if let Err(e) = ioctl_with_ptr(fd, libc::TUNSETIFF, &mut req) {
            return Err(match e.raw_os_error() {
                Some(libc::EPERM) | Some(libc::EACCES) if exists => BackendError::TapDenied {
                    name: name.to_string(),
                    owner: owner_of(&sys),
                },
                Some(libc::EPERM) | Some(libc::EACCES) => {
                    BackendError::TapCreateDenied(name.to_string())
                }
                Some(libc::EBUSY) => BackendError::TapBusy(name.to_string()),
                Some(libc::EINVAL) => BackendError::NotTap(name.to_string()),
                _ => tap_err(name, "TUNSETIFF", e),
            });
        }
        let mut hdr_len = VNET_HDR_LEN as libc::c_int;
        ioctl_with_ptr(fd, libc::TUNSETVNETHDRSZ, &mut hdr_len)
            .map_err(|e| tap_err(name, "TUNSETVNETHDRSZ", e))?;
        // No offloads until the driver accepts some: the kernel then sends plain frames.
        ioctl_with_val(fd, libc::TUNSETOFFLOAD, 0)
            .map_err(|e| tap_err(name, "TUNSETOFFLOAD", e))?;
        if !exists {
            // Created by TUNSETIFF: make sure it is not persistent, so it goes with kiln.
            ioctl_with_val(fd, libc::TUNSETPERSIST, 0)
                .map_err(|e| tap_err(name, "TUNSETPERSIST", e))?;
            set_link_up(name).map_err(|e| tap_err(name, "bringing the link up", e))?;
            info!("created TAP device {name}");
        }
        debug!("attached to TAP device {name}");
        Ok(TapBackend {
            file,
            name: name.to_string(),
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }
}

/// Whether `name` exists in this thread's network namespace (sysfs may show another one).
fn interface_exists(name: &str) -> bool {
    let Ok(cname) = std::ffi::CString::new(name) else {
        return false;
    };
    // SAFETY: `cname` is a valid NUL-terminated string that outlives the call.
    unsafe { libc::if_nametoindex(cname.as_ptr()) != 0 }
}

fn tap_err(name: &str, what: &'static str, source: io::Error) -> BackendError {
    BackendError::Tap {
        name: name.to_string(),
        what,
        source,
    }
}

/// "uid N" / "group N" from sysfs, for permission errors.
fn owner_of(sys: &Path) -> String {
    let read = |f: &str| {
        std::fs::read_to_string(sys.join(f))
            .ok()
            .and_then(|s| s.trim().parse::<i64>().ok())
            .filter(|&v| v >= 0)
    };
    let me = std::fs::metadata("/proc/self")
        .map(|m| format!("you are uid {}", m.uid()))
        .unwrap_or_else(|_| "your uid is unknown".to_string());
    match (read("owner"), read("group")) {
        (Some(u), Some(g)) => format!("uid {u} and group {g} ({me})"),
        (Some(u), None) => format!("uid {u} ({me})"),
        (None, Some(g)) => format!("group {g} ({me})"),
        (None, None) => "no user (only CAP_NET_ADMIN may attach)".to_string(),
    }
}

fn set_link_up(name: &str) -> io::Result<()> {
    // SAFETY: plain socket(2) call; the result is checked and owned below.
    let sock = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if sock < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `sock` is a fresh fd we own; OwnedFd closes it.
    let sock = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(sock) };
    let mut req = ifreq_for(name, 0);
    ioctl_with_ptr(
        sock.as_raw_fd(),
        libc::SIOCGIFFLAGS as libc::Ioctl,
        &mut req,
    )?;
    // SAFETY: SIOCGIFFLAGS filled the flags member of the union.
    let flags = unsafe { req.ifr_ifru.ifru_flags };
    req.ifr_ifru.ifru_flags = flags | libc::IFF_UP as libc::c_short;
    ioctl_with_ptr(
        sock.as_raw_fd(),
        libc::SIOCSIFFLAGS as libc::Ioctl,
        &mut req,
    )
}

impl NetBackend for TapBackend {
    fn has_vnet_hdr(&self) -> bool {
        true
    }

    fn offload_features(&self) -> u64 {
        TAP_OFFLOADS
    }

    fn set_offloads(&mut self, acked: u64) -> io::Result<()> {
        // What the kernel may hand us is what the guest driver said it can receive.
        let mut tun = 0;
        if acked & (1 << VIRTIO_NET_F_GUEST_CSUM) != 0 {
            tun |= libc::TUN_F_CSUM;
            if acked & (1 << VIRTIO_NET_F_GUEST_TSO4) != 0 {
                tun |= libc::TUN_F_TSO4;
            }
            if acked & (1 << VIRTIO_NET_F_GUEST_TSO6) != 0 {
                tun |= libc::TUN_F_TSO6;
            }
        }
        ioctl_with_val(
            self.file.as_raw_fd(),
            libc::TUNSETOFFLOAD,
            tun as libc::c_ulong,
        )
    }

    fn send(&mut self, packet: &[u8]) -> io::Result<()> {
        loop {
            match self.file.write(packet) {
                Ok(_) => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }

    fn recv(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            match self.file.read(buf) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                other => return other,
            }
        }
    }

    fn raw_fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }
}

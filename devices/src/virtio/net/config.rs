//! `--net` option: what network a guest gets, parsed once from the CLI string.
//!
//! Syntax (one `--net` option; no option means `user`):
//! - `user[,hostfwd=tcp:[HOSTADDR]:HOSTPORT-:GUESTPORT]...[,mac=MAC]`: user-mode networking
//!   through passt; `hostfwd` may repeat.
//! - `tap=NAME[,create=on][,mac=MAC]`: an existing TAP device, or a new one with `create=on`.
//! - `none`: no network card.

use std::fmt;
use std::io::Read;
use std::net::IpAddr;
use std::str::FromStr;

/// An Ethernet MAC address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MacAddr(pub [u8; 6]);

impl MacAddr {
    /// A random locally administered unicast address (first octet: bit 1 set, bit 0 clear).
    pub fn random() -> std::io::Result<MacAddr> {
        let mut bytes = [0u8; 6];
        std::fs::File::open("/dev/urandom")?.read_exact(&mut bytes)?;
        bytes[0] = (bytes[0] | 0x02) & !0x01;
        Ok(MacAddr(bytes))
    }

    /// Locally administered (not a vendor-assigned) address.
    pub fn is_local(&self) -> bool {
        self.0[0] & 0x02 != 0
    }

    pub fn is_multicast(&self) -> bool {
        self.0[0] & 0x01 != 0
    }
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            b[0], b[1], b[2], b[3], b[4], b[5]
        )
    }
}

impl FromStr for MacAddr {
    type Err = NetConfigError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || NetConfigError::BadMac(s.to_string());
        let mut bytes = [0u8; 6];
        let mut parts = s.split(':');
        for byte in bytes.iter_mut() {
            let part = parts.next().ok_or_else(bad)?;
            if part.len() != 2 {
                return Err(bad());
            }
            *byte = u8::from_str_radix(part, 16).map_err(|_| bad())?;
        }
        if parts.next().is_some() {
            return Err(bad());
        }
        let mac = MacAddr(bytes);
        if mac.is_multicast() {
            return Err(NetConfigError::MulticastMac(s.to_string()));
        }
        Ok(mac)
    }
}

/// One TCP port forwarded from the host into the guest.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HostFwd {
    /// Host address to listen on; `None` listens on all addresses.
    pub host_addr: Option<IpAddr>,
    pub host_port: u16,
    pub guest_port: u16,
}

impl FromStr for HostFwd {
    type Err = NetConfigError;

    /// `tcp:[HOSTADDR]:HOSTPORT-:GUESTPORT` (QEMU's spelling; HOSTADDR may be omitted along
    /// with its colon). The guest address must be empty: passt forwards to the guest's address.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = |why: &str| NetConfigError::BadHostFwd(s.to_string(), why.to_string());
        let rest = s.strip_prefix("tcp:").ok_or_else(|| {
            bad("only tcp forwarding is supported; write tcp:HOSTPORT-:GUESTPORT")
        })?;
        let (host, guest) = rest
            .split_once('-')
            .ok_or_else(|| bad("missing '-' between host and guest part"))?;
        let (host_addr, host_port) = match host.rsplit_once(':') {
            Some(("", port)) => (None, port),
            Some((addr, port)) => {
                let addr = addr.trim_start_matches('[').trim_end_matches(']');
                let addr = addr
                    .parse::<IpAddr>()
                    .map_err(|_| bad("host address is not an IP address"))?;
                (Some(addr), port)
            }
            None => (None, host),
        };
        let guest_port = guest
            .strip_prefix(':')
            .ok_or_else(|| bad("guest part must be :GUESTPORT (no guest address)"))?;
        let port = |p: &str, what: &str| match p.parse::<u16>() {
            Ok(0) | Err(_) => Err(bad(&format!(
                "{what} port {p:?} is not a port number 1-65535"
            ))),
            Ok(n) => Ok(n),
        };
        Ok(HostFwd {
            host_addr,
            host_port: port(host_port, "host")?,
            guest_port: port(guest_port, "guest")?,
        })
    }
}

/// Which network backend the guest's NIC uses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NetBackendConfig {
    /// User-mode networking through a passt child process.
    User { hostfwd: Vec<HostFwd> },
    /// A host TAP device.
    Tap { name: String, create: bool },
}

/// The parsed `--net` option.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NetConfig {
    /// No network card.
    None,
    /// A virtio-net card; `mac: None` picks a random local address at device creation.
    Nic {
        backend: NetBackendConfig,
        mac: Option<MacAddr>,
    },
}

impl Default for NetConfig {
    /// No `--net` option: user-mode networking.
    fn default() -> Self {
        NetConfig::Nic {
            backend: NetBackendConfig::User {
                hostfwd: Vec::new(),
            },
            mac: None,
        }
    }
}

impl NetConfig {
    /// Pick the random MAC now if none was given, so every device built from this
    /// config (a VMM rebuilding devices on guest reboot) keeps one address.
    pub fn with_fixed_mac(self) -> std::io::Result<Self> {
        Ok(match self {
            NetConfig::Nic { backend, mac: None } => NetConfig::Nic {
                backend,
                mac: Some(MacAddr::random()?),
            },
            other => other,
        })
    }
}

/// Longest interface name Linux accepts (IFNAMSIZ - 1).
pub const MAX_IFNAME_LEN: usize = 15;

impl FromStr for NetConfig {
    type Err = NetConfigError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut items = s.split(',');
        let kind = items.next().unwrap_or_default();
        if kind == "none" {
            return match items.next() {
                None => Ok(NetConfig::None),
                Some(opt) => Err(NetConfigError::UnknownOption(opt.to_string(), "none")),
            };
        }
        let (mut backend, kind_name) = if kind == "user" {
            (
                NetBackendConfig::User {
                    hostfwd: Vec::new(),
                },
                "user",
            )
        } else if let Some(name) = kind.strip_prefix("tap=") {
            check_ifname(name)?;
            let name = name.to_string();
            (
                NetBackendConfig::Tap {
                    name,
                    create: false,
                },
                "tap",
            )
        } else {
            return Err(NetConfigError::UnknownKind(kind.to_string()));
        };
        let mut mac = None;
        for item in items {
            let (key, value) = item.split_once('=').unwrap_or((item, ""));
            match (key, &mut backend) {
                ("mac", _) => mac = Some(value.parse()?),
                ("hostfwd", NetBackendConfig::User { hostfwd }) => hostfwd.push(value.parse()?),
                ("create", NetBackendConfig::Tap { create, .. }) => {
                    *create = match value {
                        "on" => true,
                        "off" => false,
                        _ => return Err(NetConfigError::BadCreate(value.to_string())),
                    }
                }
                _ => return Err(NetConfigError::UnknownOption(item.to_string(), kind_name)),
            }
        }
        if let NetBackendConfig::User { hostfwd } = &backend {
            for (i, a) in hostfwd.iter().enumerate() {
                if hostfwd[..i].iter().any(|b| b.host_port == a.host_port) {
                    return Err(NetConfigError::DuplicateHostPort(a.host_port));
                }
            }
        }
        Ok(NetConfig::Nic { backend, mac })
    }
}

fn check_ifname(name: &str) -> Result<(), NetConfigError> {
    let ok = !name.is_empty()
        && name.len() <= MAX_IFNAME_LEN
        && name != "."
        && name != ".."
        && name
            .bytes()
            .all(|b| b.is_ascii_graphic() && b != b'/' && b != b':');
    if ok {
        Ok(())
    } else {
        Err(NetConfigError::BadTapName(name.to_string()))
    }
}

/// Why a `--net` string was rejected.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum NetConfigError {
    #[error("--net {0:?}: unknown network kind (expected user, tap=NAME or none)")]
    UnknownKind(String),
    #[error("--net: option {0:?} is not valid for {1}")]
    UnknownOption(String, &'static str),
    #[error("--net: mac {0:?} is not of the form xx:xx:xx:xx:xx:xx")]
    BadMac(String),
    #[error("--net: mac {0} is a multicast address (bit 0 of the first octet is set)")]
    MulticastMac(String),
    #[error("--net: hostfwd {0:?}: {1}")]
    BadHostFwd(String, String),
    #[error("--net: host port {0} is forwarded twice")]
    DuplicateHostPort(u16),
    #[error("--net: tap name {0:?} is not a valid interface name (1-15 characters, no '/', ':' or spaces)")]
    BadTapName(String),
    #[error("--net: create={0:?}: expected on or off")]
    BadCreate(String),
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fwd(host_port: u16, guest_port: u16) -> HostFwd {
        HostFwd {
            host_addr: None,
            host_port,
            guest_port,
        }
    }

    #[test]
    fn parses_user_with_repeated_hostfwd_and_mac() {
        let cfg: NetConfig =
            "user,hostfwd=tcp:8080-:80,hostfwd=tcp::2222-:22,mac=52:54:00:12:34:56"
                .parse()
                .unwrap();
        assert_eq!(
            cfg,
            NetConfig::Nic {
                backend: NetBackendConfig::User {
                    hostfwd: vec![fwd(8080, 80), fwd(2222, 22)]
                },
                mac: Some(MacAddr([0x52, 0x54, 0, 0x12, 0x34, 0x56])),
            }
        );
        let cfg: NetConfig = "user,hostfwd=tcp:127.0.0.1:8080-:80".parse().unwrap();
        let NetConfig::Nic {
            backend: NetBackendConfig::User { hostfwd },
            ..
        } = cfg
        else {
            panic!("not user: {cfg:?}");
        };
        assert_eq!(hostfwd[0].host_addr, Some("127.0.0.1".parse().unwrap()));
    }

    #[test]
    fn parses_tap_none_and_default() {
        assert_eq!(
            "tap=kiln0,create=on".parse::<NetConfig>().unwrap(),
            NetConfig::Nic {
                backend: NetBackendConfig::Tap {
                    name: "kiln0".into(),
                    create: true
                },
                mac: None
            }
        );
        assert_eq!("none".parse::<NetConfig>().unwrap(), NetConfig::None);
        assert_eq!("user".parse::<NetConfig>().unwrap(), NetConfig::default());
    }

    #[test]
    fn rejects_bad_input_naming_the_fault() {
        use NetConfigError::*;
        let err = |s: &str| s.parse::<NetConfig>().unwrap_err();
        assert!(matches!(err("slirp"), UnknownKind(k) if k == "slirp"));
        assert!(matches!(err("user,create=on"), UnknownOption(..)));
        assert!(matches!(err("tap=t0,hostfwd=tcp:1-:2"), UnknownOption(..)));
        assert!(matches!(
            err("none,mac=02:00:00:00:00:01"),
            UnknownOption(..)
        ));
        assert!(matches!(err("user,hostfwd=udp:53-:53"), BadHostFwd(..)));
        assert!(matches!(err("user,hostfwd=tcp:8080:80"), BadHostFwd(..)));
        assert!(matches!(err("user,hostfwd=tcp:0-:80"), BadHostFwd(..)));
        assert!(matches!(err("user,hostfwd=tcp:70000-:80"), BadHostFwd(..)));
        assert!(matches!(
            err("user,hostfwd=tcp:8080-10.0.2.15:80"),
            BadHostFwd(..)
        ));
        assert!(matches!(
            err("user,hostfwd=tcp:1-:2,hostfwd=tcp:1-:3"),
            DuplicateHostPort(1)
        ));
        assert!(matches!(err("user,mac=52:54:00:12:34"), BadMac(_)));
        assert!(matches!(err("user,mac=52:54:00:12:34:5g"), BadMac(_)));
        assert!(matches!(err("user,mac=01:00:5e:00:00:01"), MulticastMac(_)));
        assert!(matches!(err("tap="), BadTapName(_)));
        assert!(matches!(err("tap=a/b"), BadTapName(_)));
        assert!(matches!(err("tap=sixteen-chars-xx"), BadTapName(_)));
        assert!(matches!(err("tap=t0,create=yes"), BadCreate(_)));
    }

    #[test]
    fn with_fixed_mac_keeps_a_given_mac_and_fills_a_missing_one() {
        let given: NetConfig = "user,mac=52:54:00:00:00:01".parse().unwrap();
        assert_eq!(given.clone().with_fixed_mac().unwrap(), given);
        let NetConfig::Nic { mac, .. } = NetConfig::default().with_fixed_mac().unwrap() else {
            panic!("default is a NIC");
        };
        assert!(mac.is_some_and(|m| m.is_local()));
        assert_eq!(NetConfig::None.with_fixed_mac().unwrap(), NetConfig::None);
    }

    #[test]
    fn random_mac_is_local_unicast_and_varies() {
        let a = MacAddr::random().unwrap();
        let b = MacAddr::random().unwrap();
        assert!(a.is_local() && !a.is_multicast(), "{a}");
        assert!(b.is_local() && !b.is_multicast(), "{b}");
        assert_ne!(a, b);
        assert_eq!(a.to_string().parse::<MacAddr>().unwrap(), a);
    }
}

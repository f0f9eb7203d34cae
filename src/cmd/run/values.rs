//! Parsers of `kiln run`'s option values: clap calls them, and their errors name the
//! value at fault.

use std::path::PathBuf;
use std::time::Duration;

use kiln_devices::block::DiskConfig;
use kiln_devices::virtio::net::NetConfig;
use kiln_devices::virtio::rng::RateLimit;
use kiln_devices::virtio::serial::check_port_names;
use kiln_vmm::cpu::{CpuConfig, Topology};
use kiln_vmm::device_manager::{ChannelSpec, ConsoleOutput, ConsoleSpec};
use kiln_vmm::SerialOutput;

use crate::cmd::parse_size;

pub(super) fn parse_serial(s: &str) -> Result<SerialOutput, String> {
    match s {
        "stdio" => Ok(SerialOutput::Stdio),
        "none" => Ok(SerialOutput::None),
        _ => match s.strip_prefix("file=") {
            Some(path) if !path.is_empty() => Ok(SerialOutput::File(PathBuf::from(path))),
            _ => Err(format!("{s:?}: expected stdio, file=PATH or none")),
        },
    }
}

pub(super) fn parse_cpus(s: &str) -> Result<Topology, String> {
    let topology: Topology = s
        .parse()
        .map_err(|e: kiln_vmm::cpu::CpuError| e.to_string())?;
    if topology.cpus > 254 {
        return Err(format!("--cpus {s}: at most 254 vCPUs"));
    }
    Ok(topology)
}

pub(super) fn parse_cpu(s: &str) -> Result<CpuConfig, String> {
    s.parse()
        .map_err(|e: kiln_vmm::cpu::CpuError| e.to_string())
}

pub(super) fn parse_disk(s: &str) -> Result<DiskConfig, String> {
    s.parse()
        .map_err(|e: kiln_devices::block::config::DiskConfigError| e.to_string())
}

pub(super) fn parse_net(s: &str) -> Result<NetConfig, String> {
    s.parse()
        .map_err(|e: kiln_devices::virtio::net::NetConfigError| e.to_string())
}

pub(super) fn parse_channel(s: &str) -> Result<ChannelSpec, String> {
    let bad = || format!("{s:?}: expected name=NAME,socket=PATH[,server=on|off][,reconnect-ms=MS]");
    let (mut name, mut socket, mut server, mut reconnect) = (None, None, None, None);
    for part in s.split(',') {
        match part.split_once('=') {
            Some(("name", n)) if name.is_none() => name = Some(n),
            Some(("socket", p)) if socket.is_none() && !p.is_empty() => socket = Some(p),
            Some(("server", "on")) if server.is_none() => server = Some(true),
            Some(("server", "off")) if server.is_none() => server = Some(false),
            Some(("reconnect-ms", ms)) if reconnect.is_none() => {
                reconnect = Some(parse_reconnect_ms(s, ms)?)
            }
            _ => return Err(bad()),
        }
    }
    let (Some(name), Some(socket)) = (name, socket) else {
        return Err(bad());
    };
    check_port_names([name]).map_err(|e| e.to_string())?;
    let server = server.unwrap_or(true);
    if server && reconnect.is_some() {
        return Err(format!(
            "{s:?}: reconnect-ms is for a channel that connects (server=off)"
        ));
    }
    Ok(ChannelSpec {
        name: name.to_owned(),
        socket: socket.into(),
        server,
        reconnect: reconnect.flatten(),
    })
}

/// `reconnect-ms=MS` of option `s`: `None` for 0, QEMU's "never" (its default).
fn parse_reconnect_ms(s: &str, ms: &str) -> Result<Option<Duration>, String> {
    let ms: u64 = ms
        .parse()
        .map_err(|_| format!("{s:?}: reconnect-ms={ms:?} is not a whole number of milliseconds"))?;
    Ok((ms > 0).then(|| Duration::from_millis(ms)))
}

pub(super) fn parse_console(s: &str) -> Result<ConsoleSpec, String> {
    let bad = || {
        format!(
            "{s:?}: expected virtio, virtio,file=PATH or \
             virtio,socket=PATH[,server=on|off][,reconnect-ms=MS], \
             each optionally with ,size=COLSxROWS"
        )
    };
    let mut parts = s.split(',');
    if parts.next() != Some("virtio") {
        return Err(bad());
    }
    let (mut file, mut socket, mut server, mut size) = (None, None, None, None);
    let mut reconnect = None;
    for part in parts {
        match part.split_once('=') {
            Some(("reconnect-ms", ms)) if reconnect.is_none() => {
                reconnect = Some(parse_reconnect_ms(s, ms)?)
            }
            Some(("file", p)) if !p.is_empty() && file.is_none() => file = Some(p),
            Some(("socket", p)) if !p.is_empty() && socket.is_none() => socket = Some(p),
            Some(("server", "on")) if server.is_none() => server = Some(true),
            Some(("server", "off")) if server.is_none() => server = Some(false),
            Some(("size", v)) if size.is_none() => size = Some(parse_console_size(v)?),
            _ => return Err(bad()),
        }
    }
    let output = match (file, socket, server) {
        (None, None, None) => ConsoleOutput::Stdout,
        (Some(p), None, None) => ConsoleOutput::File(p.into()),
        (None, Some(p), Some(true)) => ConsoleOutput::SocketServer(p.into()),
        (None, Some(p), None | Some(false)) => match reconnect.flatten() {
            Some(every) => ConsoleOutput::SocketReconnect {
                path: p.into(),
                every,
            },
            None => ConsoleOutput::Socket(p.into()),
        },
        (_, _, Some(_)) if socket.is_none() => {
            return Err(format!("{s:?}: server= needs socket=PATH"))
        }
        _ => return Err(bad()),
    };
    if reconnect.is_some()
        && !matches!(
            output,
            ConsoleOutput::Socket(_) | ConsoleOutput::SocketReconnect { .. }
        )
    {
        return Err(format!(
            "{s:?}: reconnect-ms is for a console that connects (socket=PATH, server=off)"
        ));
    }
    Ok(ConsoleSpec { output, size })
}

/// `COLSxROWS`, each 1 to 65535.
pub(super) fn parse_console_size(v: &str) -> Result<(u16, u16), String> {
    let bad = || format!("size={v}: expected COLSxROWS, each 1 to 65535 (as 80x24)");
    let (cols, rows) = v.split_once('x').ok_or_else(bad)?;
    let cols: u16 = cols.parse().map_err(|_| bad())?;
    let rows: u16 = rows.parse().map_err(|_| bad())?;
    if cols == 0 || rows == 0 {
        return Err(bad());
    }
    Ok((cols, rows))
}

pub(super) fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(s.len());
    let value: f64 = s[..split]
        .parse()
        .map_err(|_| format!("{s:?} is not a duration"))?;
    let seconds = match &s[split..] {
        "" | "s" => value,
        "ms" => value / 1000.0,
        "m" | "min" => value * 60.0,
        "h" => value * 3600.0,
        other => {
            return Err(format!(
                "unknown duration unit {other:?} (use ms, s, m or h)"
            ))
        }
    };
    Duration::try_from_secs_f64(seconds).map_err(|e| format!("{s:?}: {e}"))
}

pub(super) fn parse_port(s: &str) -> Result<u16, String> {
    let parsed = match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        Some(hex) => u16::from_str_radix(hex, 16),
        None => s.parse(),
    };
    parsed.map_err(|_| format!("{s:?} is not an I/O port (0..=0xffff)"))
}

/// `max-bytes=N[,period=T]`, as QEMU's virtio-rng max-bytes and period. The period
/// needs a unit: QEMU's is a bare number of milliseconds, kiln's bare durations are
/// seconds, so a bare number would mean something else to whom it came from.
pub(super) fn parse_rng(s: &str) -> Result<RateLimit, String> {
    let bad = |why: &str| format!("{s:?}: {why} (expected max-bytes=N[,period=T])");
    let (mut max_bytes, mut period) = (None, None);
    for part in s.split(',') {
        match part.split_once('=') {
            Some(("max-bytes", v)) if max_bytes.is_none() => {
                max_bytes = Some(parse_size(v).map_err(|e| bad(&format!("max-bytes: {e}")))?)
            }
            Some(("period", v)) if period.is_none() => {
                if !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(bad(&format!(
                        "period={v} needs a unit, e.g. period={v}ms or period={v}s"
                    )));
                }
                period = Some(parse_duration(v).map_err(|e| bad(&format!("period: {e}")))?)
            }
            _ => return Err(bad(&format!("unexpected {part:?}"))),
        }
    }
    let max_bytes = max_bytes.ok_or_else(|| bad("max-bytes is missing"))?;
    if max_bytes == 0 {
        return Err(bad("max-bytes must be at least 1"));
    }
    let period = period.unwrap_or(RateLimit::DEFAULT_PERIOD);
    if period.is_zero() {
        return Err(bad("the period must be longer than 0"));
    }
    Ok(RateLimit { max_bytes, period })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_durations_ports_serial() {
        assert_eq!(parse_duration("1s"), Ok(Duration::from_secs(1)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert!(parse_duration("soon").is_err());
        assert_eq!(parse_port("0xf4"), Ok(0xf4));
        assert_eq!(parse_port("244"), Ok(244));
        assert!(parse_port("0x10000").is_err());
        assert_eq!(
            parse_serial("file=/tmp/x"),
            Ok(SerialOutput::File("/tmp/x".into()))
        );
        assert!(parse_serial("file=").is_err());
        assert!(parse_serial("pty").is_err());
    }

    #[test]
    fn channels() {
        assert_eq!(
            parse_channel("name=org.qemu.guest_agent.0,socket=/run/qga.sock"),
            Ok(ChannelSpec {
                name: "org.qemu.guest_agent.0".into(),
                socket: "/run/qga.sock".into(),
                server: true,
                reconnect: None,
            })
        );
        let connect = parse_channel("name=a,socket=/run/a.sock,server=off").unwrap();
        assert_eq!((connect.server, connect.reconnect), (false, None));
        let again = parse_channel("name=a,socket=s,server=off,reconnect-ms=250").unwrap();
        assert_eq!(again.reconnect, Some(Duration::from_millis(250)));
        let never = parse_channel("name=a,socket=s,reconnect-ms=0,server=off").unwrap();
        assert_eq!(never.reconnect, None, "0 is QEMU's never");
        for (bad, why) in [
            (
                "name=a,socket=s,reconnect-ms=5",
                "is for a channel that connects",
            ),
            (
                "name=a,socket=s,server=on,reconnect-ms=5",
                "is for a channel that connects",
            ),
            (
                "name=a,socket=s,server=off,reconnect-ms=1s",
                "\"1s\" is not a whole number",
            ),
            (
                "name=a,socket=s,server=off,reconnect-ms=-1",
                "\"-1\" is not a whole number",
            ),
        ] {
            let err = parse_channel(bad).unwrap_err();
            assert!(err.contains(why), "{bad}: {err}");
        }
        assert!(parse_channel("server=on,name=a,socket=s").unwrap().server);
        assert_eq!(
            parse_channel("socket=s,name=a-b_c").map(|c| c.name),
            Ok("a-b_c".into())
        );
        for bad in [
            "name=a",
            "socket=s",
            "name=a,socket=",
            "name=a,socket=s,socket=t",
            "name=a,name=b,socket=s",
            "name=a,socket=s,server=yes",
            "name=a,socket=s,server=on,server=off",
            "",
        ] {
            let want = format!(
                "{bad:?}: expected name=NAME,socket=PATH[,server=on|off][,reconnect-ms=MS]"
            );
            assert_eq!(parse_channel(bad), Err(want));
        }
        for (bad, name) in [("name=,socket=s", ""), ("name=a b,socket=s", "a b")] {
            let want = format!("port name {name:?} is not 1-255 letters, digits, '.', '_' or '-'");
            assert_eq!(parse_channel(bad), Err(want), "{bad}");
        }
    }

    #[test]
    fn console_cpus_and_cpu_options() {
        let out = |s: &str| parse_console(s).map(|c| c.output);
        assert_eq!(out("virtio"), Ok(ConsoleOutput::Stdout));
        assert_eq!(
            out("virtio,file=/tmp/c"),
            Ok(ConsoleOutput::File("/tmp/c".into()))
        );
        assert_eq!(
            out("virtio,socket=/tmp/s"),
            Ok(ConsoleOutput::Socket("/tmp/s".into()))
        );
        assert_eq!(
            out("virtio,socket=/tmp/s,server=on"),
            Ok(ConsoleOutput::SocketServer("/tmp/s".into()))
        );
        assert_eq!(
            out("virtio,socket=/tmp/s,server=off"),
            Ok(ConsoleOutput::Socket("/tmp/s".into()))
        );
        assert_eq!(
            out("virtio,socket=/tmp/s,reconnect-ms=500"),
            Ok(ConsoleOutput::SocketReconnect {
                path: "/tmp/s".into(),
                every: Duration::from_millis(500)
            })
        );
        assert_eq!(
            out("virtio,reconnect-ms=0,socket=/tmp/s,server=off"),
            Ok(ConsoleOutput::Socket("/tmp/s".into()))
        );
        for bad in [
            "virtio,socket=/tmp/s,server=on,reconnect-ms=5",
            "virtio,file=/tmp/c,reconnect-ms=5",
            "virtio,reconnect-ms=5",
        ] {
            let err = parse_console(bad).unwrap_err();
            assert!(
                err.contains("reconnect-ms is for a console that connects"),
                "{bad}: {err}"
            );
        }
        let err = parse_console("virtio,socket=/tmp/s,reconnect-ms=x").unwrap_err();
        assert!(err.contains("\"x\" is not a whole number"), "{err}");
        assert_eq!(parse_console("virtio").unwrap().size, None);
        let sized = parse_console("virtio,size=132x43,file=/tmp/c").unwrap();
        assert_eq!(
            (sized.output, sized.size),
            (ConsoleOutput::File("/tmp/c".into()), Some((132, 43)))
        );
        for bad in [
            "size=0x24",
            "size=80",
            "size=80x70000",
            "size=80x24,size=80x24",
            "size=ax b",
        ] {
            let err = parse_console(&format!("virtio,{bad}")).unwrap_err();
            assert!(err.contains("COLSxROWS"), "{bad}: {err}");
        }
        let err = parse_console("virtio,server=on").unwrap_err();
        assert!(err.contains("needs socket="), "{err}");
        assert!(parse_console("virtio,socket=/tmp/s,server=yes").is_err());
        assert!(parse_console("virtio,file=/a,socket=/b").is_err());
        assert!(parse_console("virtio,socket=/a,socket=/b").is_err());
        assert!(parse_console("virtio,file=").is_err());
        assert!(parse_console("serial").is_err());
        assert!(parse_console("virtio,pipe=x").is_err());
        let topo = parse_cpus("4,sockets=1,cores=2,threads=2").unwrap();
        assert_eq!((topo.cpus, topo.cores, topo.threads), (4, 2, 2));
        assert_eq!(parse_cpus("2").unwrap().sockets, 2);
        assert!(parse_cpus("255").is_err());
        assert!(parse_cpus("4,cores=3").is_err());
        assert!(parse_cpu("Nehalem,-sse4.2,check=enforce").is_ok());
        assert!(parse_cpu("Nehalem,+nosuchfeature").is_err());
        assert!(parse_disk("path=/x,format=vmdk").is_err());
    }

    #[test]
    fn rng_limits() {
        let limit = |max_bytes, ms| RateLimit {
            max_bytes,
            period: Duration::from_millis(ms),
        };
        assert_eq!(parse_rng("max-bytes=1024"), Ok(limit(1024, 1000)));
        assert_eq!(parse_rng("max-bytes=1K,period=250ms"), Ok(limit(1024, 250)));
        assert_eq!(parse_rng("period=2s,max-bytes=10"), Ok(limit(10, 2000)));
        for (bad, why) in [
            ("period=1s", "max-bytes is missing"),
            ("max-bytes=0", "max-bytes must be at least 1"),
            ("max-bytes=1,period=0ms", "the period must be longer than 0"),
            ("max-bytes=1,period=1000", "period=1000 needs a unit"),
            ("max-bytes=1,period=soon", "period: "),
            ("max-bytes=lots", "max-bytes: "),
            ("max-bytes=1,max-bytes=2", "unexpected \"max-bytes=2\""),
            ("max-bytes=1,rate=2", "unexpected \"rate=2\""),
            ("", "unexpected \"\""),
        ] {
            let err = parse_rng(bad).unwrap_err();
            assert!(err.starts_with(&format!("{bad:?}: ")), "{bad}: {err}");
            assert!(err.contains(why), "{bad}: {err}");
            assert!(
                err.contains("expected max-bytes=N[,period=T]"),
                "{bad}: {err}"
            );
        }
    }
}

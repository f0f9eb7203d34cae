//! The TAP backend in a network namespace this test creates (and always deletes).
//! Needs root, as on developer machines and CI here; anything missing fails loudly.

mod net_frames;

use std::fs::File;
use std::io;
use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use kiln_devices::virtio::net::backend::{
    BackendError, NetBackend, TapBackend, MAX_FRAME_LEN, VNET_HDR_LEN,
};
use net_frames::*;

const GUEST_MAC: [u8; 6] = [0x02, 0x6b, 0x69, 0x6c, 0x6e, 0x02];
const HOST_IP: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 1);
const GUEST_IP: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 2);

/// A network namespace deleted on drop, also when the test fails.
struct Netns(String);

impl Netns {
    fn new() -> Netns {
        static N: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "kiln-t{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        );
        run(&["ip", "netns", "add", &name]);
        Netns(name)
    }

    /// `ip -n NS ARGS...`, which must succeed.
    fn ip(&self, args: &[&str]) -> Output {
        let mut all = vec!["ip", "-n", &self.0];
        all.extend_from_slice(args);
        run(&all)
    }

    /// Run `f` on a thread inside the namespace (setns affects only the calling thread).
    fn enter<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        let path = format!("/var/run/netns/{}", self.0);
        std::thread::scope(|s| {
            s.spawn(|| {
                let ns = File::open(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
                // SAFETY: setns on an fd we own; it changes this thread's namespace only.
                let rc = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
                assert_eq!(rc, 0, "setns: {}", io::Error::last_os_error());
                f()
            })
            .join()
            .unwrap()
        })
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

fn run(args: &[&str]) -> Output {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("{args:?}: {e}"));
    assert!(
        out.status.success(),
        "{args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn send(b: &mut TapBackend, frame: &[u8]) {
    let mut packet = vec![0u8; VNET_HDR_LEN];
    packet.extend_from_slice(frame);
    b.send(&packet).expect("TAP send");
}

/// Frames from the TAP (virtio-net header stripped) until `f` picks one.
fn recv_until<T>(
    b: &mut TapBackend,
    secs: u64,
    mut f: impl FnMut(&mut TapBackend, &[u8]) -> Option<T>,
) -> Option<T> {
    let mut buf = vec![0u8; VNET_HDR_LEN + MAX_FRAME_LEN];
    let deadline = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < deadline {
        match b.recv(&mut buf) {
            Ok(n) => {
                let frame = buf[VNET_HDR_LEN..n].to_vec();
                if let Some(t) = f(b, &frame) {
                    return Some(t);
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(2))
            }
            Err(e) => panic!("TAP receive failed: {e}"),
        }
    }
    None
}

/// Play the guest's part for ARP and ping requests addressed to it.
fn answer_as_guest(b: &mut TapBackend, f: &[u8]) -> bool {
    if let Some((1, sha, spa, tpa)) = parse_arp(f) {
        if tpa == GUEST_IP {
            send(b, &arp(2, GUEST_MAC, GUEST_IP, sha, spa));
        }
        return false;
    }
    if let Some(icmp) = ipv4_payload(f, 1) {
        if icmp[0] == 8 {
            let reply = icmp_echo(
                0,
                u16::from_be_bytes([icmp[4], icmp[5]]),
                u16::from_be_bytes([icmp[6], icmp[7]]),
                &icmp[8..],
            );
            let src_mac: [u8; 6] = f[6..12].try_into().unwrap();
            let dst = ipv4_src(f).unwrap();
            send(
                b,
                &eth(
                    src_mac,
                    GUEST_MAC,
                    ETH_IPV4,
                    &ipv4(GUEST_IP, dst, 1, &reply),
                ),
            );
            return true;
        }
    }
    false
}

#[test]
fn tap_exchanges_frames_with_the_namespace_kernel_both_ways() {
    let ns = Netns::new();
    ns.ip(&["tuntap", "add", "dev", "ktap0", "mode", "tap"]);
    ns.ip(&["addr", "add", "10.77.0.1/24", "dev", "ktap0"]);
    ns.ip(&["link", "set", "ktap0", "up"]);
    let mut tap = ns
        .enter(|| TapBackend::open("ktap0", false))
        .expect("open TAP");
    assert!(tap.has_vnet_hdr());

    // Guest → host: ARP for the host address; the namespace's kernel answers. Asked
    // again each second, as a real stack would: one clean-clone CI run in four got no
    // reply to a single request within 5 s (the cause was not found; the request may
    // have gone out before the TAP's carrier was up).
    let host_mac = (0..5)
        .find_map(|_| {
            send(&mut tap, &arp(1, GUEST_MAC, GUEST_IP, [0; 6], HOST_IP));
            recv_until(&mut tap, 1, |_, f| match parse_arp(f) {
                Some((2, sha, spa, tpa)) if spa == HOST_IP && tpa == GUEST_IP => Some(sha),
                _ => None,
            })
        })
        .expect("no ARP reply from the namespace");

    // Guest → host: ping; the reply must carry our id, sequence and payload.
    let payload = b"kiln tap test payload".to_vec();
    let echo = icmp_echo(8, 0x4b4c, 1, &payload);
    send(
        &mut tap,
        &eth(
            host_mac,
            GUEST_MAC,
            ETH_IPV4,
            &ipv4(GUEST_IP, HOST_IP, 1, &echo),
        ),
    );
    let got = recv_until(&mut tap, 5, |b, f| {
        if answer_as_guest(b, f) {
            return None;
        }
        let icmp = ipv4_payload(f, 1)?;
        (icmp[0] == 0 && icmp[4..8] == [0x4b, 0x4c, 0, 1]).then(|| icmp[8..].to_vec())
    });
    assert_eq!(
        got.as_deref(),
        Some(&payload[..]),
        "no echo reply from the namespace"
    );

    // Host → guest → host: a UDP socket in the namespace sends to the guest address; the
    // test answers as the guest (ARP, then a UDP reply) and the socket must get it.
    let path = format!("/var/run/netns/{}", ns.0);
    let host = std::thread::spawn(move || -> io::Result<Vec<u8>> {
        let nsf = File::open(&path)?;
        // SAFETY: setns on an fd we own; it changes this thread's namespace only.
        if unsafe { libc::setns(nsf.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            return Err(io::Error::last_os_error());
        }
        let sock = std::net::UdpSocket::bind((HOST_IP, 0))?;
        sock.set_read_timeout(Some(Duration::from_secs(5)))?;
        sock.send_to(b"ping from the namespace", (GUEST_IP, 9999))?;
        let mut buf = [0u8; 256];
        let (n, from) = sock.recv_from(&mut buf)?;
        assert_eq!(from, (GUEST_IP, 9999).into());
        Ok(buf[..n].to_vec())
    });
    let got = recv_until(&mut tap, 6, |b, f| {
        if answer_as_guest(b, f) {
            return None;
        }
        let ip = ipv4_payload(f, 17)?;
        if ip[2..4] != 9999u16.to_be_bytes() {
            return None;
        }
        let sport = u16::from_be_bytes([ip[0], ip[1]]);
        let mut reply = b"pong: ".to_vec();
        reply.extend_from_slice(&ip[8..]);
        let src_mac: [u8; 6] = f[6..12].try_into().unwrap();
        let frame = eth(
            src_mac,
            GUEST_MAC,
            ETH_IPV4,
            &ipv4(GUEST_IP, HOST_IP, 17, &udp(9999, sport, &reply)),
        );
        send(b, &frame);
        Some(())
    });
    assert!(got.is_some(), "no UDP datagram from the namespace arrived");
    let answer = host.join().unwrap().expect("namespace socket");
    assert_eq!(answer, b"pong: ping from the namespace");
}

#[test]
fn tap_create_on_makes_a_transient_device_and_errors_name_the_fault() {
    let ns = Netns::new();
    let created = ns
        .enter(|| TapBackend::open("kcreate0", true))
        .expect("create TAP");
    let show = ns.ip(&["-o", "link", "show", "kcreate0"]);
    let line = String::from_utf8_lossy(&show.stdout).to_string();
    assert!(line.contains("UP"), "created TAP is not up: {line}");
    drop(created);
    // The device goes with the last open file of it. A process another test thread
    // forks at that moment holds a copy until it execs (the fd is close-on-exec), so
    // the device may outlive the drop by that long.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    let still_there = || {
        Command::new("ip")
            .args(["-n", &ns.0, "link", "show", "kcreate0"])
            .output()
            .unwrap()
            .status
            .success()
    };
    while still_there() {
        assert!(
            std::time::Instant::now() < deadline,
            "created TAP outlived the backend by 5 s"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }

    let err = ns
        .enter(|| TapBackend::open("kmissing0", false))
        .err()
        .expect("missing TAP must fail");
    assert!(matches!(err, BackendError::TapMissing(_)), "{err}");
    assert!(err.to_string().contains("create=on"), "{err}");

    ns.ip(&["tuntap", "add", "dev", "ktun0", "mode", "tun"]);
    let err = ns
        .enter(|| TapBackend::open("ktun0", false))
        .err()
        .expect("TUN must be refused");
    assert!(matches!(err, BackendError::NotTap(_)), "{err}");

    ns.ip(&["tuntap", "add", "dev", "kbusy0", "mode", "tap"]);
    let _first = ns
        .enter(|| TapBackend::open("kbusy0", false))
        .expect("first open");
    let err = ns
        .enter(|| TapBackend::open("kbusy0", false))
        .err()
        .expect("second open must fail");
    assert!(matches!(err, BackendError::TapBusy(_)), "{err}");
}

/// Child half of `tap_permission_errors_say_what_is_missing`, run as user nobody.
#[test]
#[ignore = "helper run by tap_permission_errors_say_what_is_missing"]
fn helper_open_tap_unprivileged() {
    let name = std::env::var("KILN_TEST_TAP").unwrap();
    let err = TapBackend::open(&name, false)
        .err()
        .expect("unprivileged open must fail");
    println!("ERROR={err}");
}

#[test]
fn tap_permission_errors_say_what_is_missing() {
    let ns = Netns::new();
    ns.ip(&["tuntap", "add", "dev", "kroot0", "mode", "tap", "user", "0"]);
    let exe = std::env::current_exe().unwrap();
    let out = Command::new("ip")
        .args([
            "netns",
            "exec",
            &ns.0,
            "setpriv",
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--inh-caps=-all",
        ])
        .arg(&exe)
        .args([
            "--exact",
            "helper_open_tap_unprivileged",
            "--ignored",
            "--nocapture",
        ])
        .env("KILN_TEST_TAP", "kroot0")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let msg = stdout
        .lines()
        .find_map(|l| l.strip_prefix("ERROR="))
        .unwrap_or_else(|| {
            panic!(
                "helper gave no error: {stdout} {}",
                String::from_utf8_lossy(&out.stderr)
            )
        });
    // /dev/net/tun is root-only here, so that is what the error must point at; with a
    // world-accessible /dev/net/tun it must name the device owner or CAP_NET_ADMIN.
    let tun_mode = std::fs::metadata("/dev/net/tun").map(|m| {
        use std::os::unix::fs::PermissionsExt;
        m.permissions().mode()
    });
    if tun_mode.map(|m| m & 0o006 == 0o006).unwrap_or(false) {
        assert!(
            msg.contains("CAP_NET_ADMIN") && msg.contains("uid"),
            "{msg}"
        );
    } else {
        assert!(
            msg.contains("/dev/net/tun") && msg.contains("access"),
            "{msg}"
        );
    }
}

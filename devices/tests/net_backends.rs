//! The passt backend against the real passt. Runs as root (as on developer machines and CI here);
//! anything missing fails the test loudly.

mod net_frames;

use std::io;
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use kiln_devices::virtio::net::backend::{
    BackendError, NetBackend, PasstBackend, MAX_FRAME_LEN, VNET_HDR_LEN,
};
use kiln_devices::virtio::net::HostFwd;
use net_frames::*;

const GUEST_MAC: [u8; 6] = [0x02, 0x6b, 0x69, 0x6c, 0x6e, 0x01];

/// Receive frames until `f` picks one or `timeout` passes.
fn recv_until<T>(
    b: &mut dyn NetBackend,
    timeout: Duration,
    mut f: impl FnMut(&mut dyn NetBackend, &[u8]) -> Option<T>,
) -> Option<T> {
    let mut buf = vec![0u8; VNET_HDR_LEN + MAX_FRAME_LEN];
    let deadline = Instant::now() + timeout;
    let skip = if b.has_vnet_hdr() { VNET_HDR_LEN } else { 0 };
    while Instant::now() < deadline {
        match b.recv(&mut buf) {
            Ok(n) => {
                let frame = buf[skip..n].to_vec();
                if let Some(t) = f(b, &frame) {
                    return Some(t);
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(2))
            }
            Err(e) => panic!("backend receive failed: {e}"),
        }
    }
    None
}

/// Send a frame, adding a zero virtio-net header for a TAP.
fn send(b: &mut dyn NetBackend, frame: &[u8]) {
    let mut packet = if b.has_vnet_hdr() {
        vec![0u8; VNET_HDR_LEN]
    } else {
        Vec::new()
    };
    packet.extend_from_slice(frame);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match b.send(&packet) {
            Ok(()) => return,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(1))
            }
            Err(e) => panic!("backend send failed: {e}"),
        }
    }
}

fn process_gone(pid: u32) -> bool {
    // Gone, or a zombie waiting for a reaper (it has exited either way).
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rsplit(')')
            .next()
            .is_some_and(|s| s.trim_start().starts_with('Z')),
    }
}

#[test]
fn passt_answers_dhcp_through_the_stream_and_dies_with_the_backend() {
    let mut b = PasstBackend::start(&[]).expect("start passt");
    let pid = b.pid();
    // Two requests back to back: both answers must come back as separate frames.
    send(&mut b, &dhcp_discover(GUEST_MAC, 0x1111_2222));
    send(&mut b, &dhcp_discover(GUEST_MAC, 0x3333_4444));
    let mut offers = Vec::new();
    recv_until(&mut b, Duration::from_secs(5), |_, f| {
        for xid in [0x1111_2222, 0x3333_4444] {
            if let Some(reply) = parse_dhcp_reply(f, xid) {
                offers.push((xid, reply));
            }
        }
        (offers.len() == 2).then_some(())
    })
    .unwrap_or_else(|| panic!("no DHCP OFFERs from passt (got {offers:?})"));
    for (xid, (kind, addr)) in &offers {
        assert_eq!(*kind, 2, "xid {xid:#x}: not a DHCPOFFER");
        assert!(!addr.is_unspecified(), "xid {xid:#x}: no address offered");
    }
    drop(b);
    assert!(
        process_gone(pid),
        "passt (pid {pid}) still running after drop"
    );
}

#[test]
fn passt_forwards_a_host_port_to_the_guest() {
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let fwd = HostFwd {
        host_addr: None,
        host_port: port,
        guest_port: 8080,
    };
    let mut b = PasstBackend::start(&[fwd]).expect("start passt");
    send(&mut b, &dhcp_discover(GUEST_MAC, 7));
    recv_until(&mut b, Duration::from_secs(5), |_, f| {
        parse_dhcp_reply(f, 7)
    })
    .expect("no DHCP reply");
    let connector = std::thread::spawn(move || TcpStream::connect(("127.0.0.1", port)));
    // passt turns the host connection into a SYN towards the guest's port 8080.
    let syn = recv_until(&mut b, Duration::from_secs(5), |_, f| {
        parse_tcp(f).filter(|&(_, dport, flags)| dport == 8080 && flags & 0x02 != 0)
    });
    assert!(
        syn.is_some(),
        "no SYN to guest port 8080 after connecting to host port {port}"
    );
    drop(connector);
}

#[test]
fn passt_errors_name_the_fault() {
    let err = PasstBackend::start_program(Path::new("/nonexistent/passt"), &[])
        .err()
        .expect("missing passt must fail");
    assert!(matches!(err, BackendError::PasstMissing));
    assert!(err.to_string().contains("apt-get install passt"), "{err}");

    let busy = TcpListener::bind("0.0.0.0:0").unwrap();
    let port = busy.local_addr().unwrap().port();
    let fwd = HostFwd {
        host_addr: None,
        host_port: port,
        guest_port: 22,
    };
    let err = PasstBackend::start(&[fwd])
        .err()
        .expect("busy port must fail");
    assert!(err.to_string().contains(&port.to_string()), "{err}");
}

/// Child half of `passt_exits_when_kiln_is_interrupted`: start passt, print its pid,
/// then die of SIGINT as a Ctrl-C would kill kiln.
#[test]
#[ignore = "helper run by passt_exits_when_kiln_is_interrupted"]
fn helper_start_passt_then_sigint() {
    let b = PasstBackend::start(&[]).expect("start passt");
    println!("PASST_PID={}", b.pid());
    // SAFETY: setting SIGINT back to its default action (a test run started in the
    // background of a shell inherits it ignored) and raising it on ourselves: the
    // default action ends the process, as Ctrl-C ends kiln.
    unsafe {
        libc::signal(libc::SIGINT, libc::SIG_DFL);
        libc::raise(libc::SIGINT);
    }
    unreachable!("SIGINT did not end the process");
}

#[test]
fn passt_exits_when_kiln_is_interrupted() {
    let out = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "helper_start_passt_then_sigint",
            "--ignored",
            "--nocapture",
        ])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let pid: u32 = stdout
        .lines()
        .find_map(|l| l.strip_prefix("PASST_PID="))
        .unwrap_or_else(|| {
            panic!(
                "helper printed no pid: {stdout} {}",
                String::from_utf8_lossy(&out.stderr)
            )
        })
        .trim()
        .parse()
        .unwrap();
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(
        out.status.signal(),
        Some(libc::SIGINT),
        "helper did not die of SIGINT"
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    while !process_gone(pid) {
        assert!(Instant::now() < deadline, "passt (pid {pid}) outlived kiln");
        std::thread::sleep(Duration::from_millis(20));
    }
}

//! End-to-end networking: the minimal-kernel guest on `--net user` (DHCP + HTTP from a
//! server on the host's loopback), `--net user,hostfwd=...` (host connects into the
//! guest), and `--net tap=` inside a network namespace the test creates.
//!
//! The host side is complete; the tests are ignored until `kiln run` takes `--net`
//! (issue 4): remove the `#[ignore]`s when it does.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use common::{initramfs_with_test, kernel_dir, run_kiln};

const WAIT: &str = "240s";

/// An HTTP/1.0 server on 127.0.0.1 that serves `body` at `/payload` to one client and
/// reports the request line it got.
fn serve_http_once(body: Vec<u8>) -> (u16, JoinHandle<std::io::Result<String>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let handle = std::thread::spawn(move || {
        let (mut conn, _) = listener.accept()?;
        conn.set_read_timeout(Some(Duration::from_secs(60)))?;
        let mut reader = BufReader::new(conn.try_clone()?);
        let mut request = String::new();
        reader.read_line(&mut request)?;
        let mut line = String::new();
        while reader.read_line(&mut line)? > 2 {
            line.clear();
        }
        let ok = request.starts_with("GET /payload ");
        let status = if ok { "200 OK" } else { "404 Not Found" };
        let body: &[u8] = if ok { &body } else { b"" };
        write!(
            conn,
            "HTTP/1.0 {status}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        )?;
        conn.write_all(body)?;
        Ok(request)
    });
    (port, handle)
}

/// Test content: not compressible, not guessable.
fn payload() -> Vec<u8> {
    let mut x: u32 = 0x1234_5678 ^ std::process::id();
    (0..100_000)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect()
}

fn sha256_hex(data: &[u8]) -> String {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("d");
    std::fs::write(&p, data).unwrap();
    let out = Command::new("sha256sum").arg(&p).output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}

/// The guest part: DHCP through the default udhcpc script, then prints its address.
const GUEST_DHCP: &str = "ip link set eth0 up
udhcpc -i eth0 -n -q -t 10 -T 3 || { echo KILN-NET-NO-LEASE; exit 1; }
echo KILN-NET-ADDR=$(ip -4 -o addr show dev eth0 | awk '{print $4}')
GW=$(ip route | awk '/^default/ {print $3}')";

fn run_guest(label: &str, net: &str, script: &str) -> common::Run {
    let dir = tempfile::tempdir().unwrap();
    let initrd = initramfs_with_test(dir.path(), script);
    let kernel = kernel_dir().join("bzImage");
    run_kiln(
        label,
        &[
            "run",
            "--kernel",
            kernel.to_str().unwrap(),
            "--initrd",
            initrd.to_str().unwrap(),
            "--net",
            net,
            "--timeout",
            WAIT,
        ],
    )
}

#[test]
#[ignore = "needs --net in kiln run"]
fn user_mode_guest_gets_dhcp_and_fetches_from_the_host() {
    let body = payload();
    let (port, server) = serve_http_once(body.clone());
    // passt maps the gateway address to the host's loopback.
    let script = format!(
        "{GUEST_DHCP}\nwget -q -O /tmp/payload http://$GW:{port}/payload || exit 2\n\
         echo KILN-NET-SHA=$(sha256sum /tmp/payload | cut -d' ' -f1)"
    );
    let run = run_guest("net-user", "user", &script);
    let out = run.stdout();
    assert!(
        out.contains("KILN-NET-ADDR="),
        "no DHCP lease:\n{out}\n{}",
        run.stderr()
    );
    assert!(
        out.contains("KILN-TEST-EXIT=0"),
        "guest script failed:\n{out}\n{}",
        run.stderr()
    );
    let request = server.join().unwrap().expect("HTTP server");
    assert!(request.starts_with("GET /payload"), "{request}");
    assert!(
        out.contains(&format!("KILN-NET-SHA={}", sha256_hex(&body))),
        "content differs:\n{out}"
    );
}

#[test]
#[ignore = "needs --net in kiln run"]
fn hostfwd_reaches_a_listener_in_the_guest() {
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let script =
        format!("{GUEST_DHCP}\necho KILN-NET-LISTENING\necho hello-from-guest | nc -l -p 8080");
    let net = format!("user,hostfwd=tcp:{port}-:8080");
    let client = std::thread::spawn(move || -> Option<String> {
        // Retry until the guest has booted and is listening.
        let deadline = Instant::now() + Duration::from_secs(240);
        while Instant::now() < deadline {
            if let Ok(mut c) = TcpStream::connect(("127.0.0.1", port)) {
                let _ = c.set_read_timeout(Some(Duration::from_secs(10)));
                let mut got = String::new();
                let _ = c.read_to_string(&mut got);
                if got.contains("hello-from-guest") {
                    return Some(got);
                }
            }
            std::thread::sleep(Duration::from_millis(500));
        }
        None
    });
    let run = run_guest("net-hostfwd", &net, &script);
    let got = client.join().unwrap();
    assert!(
        got.is_some(),
        "host never read from the guest listener:\n{}\n{}",
        run.stdout(),
        run.stderr()
    );
}

/// Child half of `tap_guest_and_namespace_exchange_data`: runs inside the namespace,
/// accepts one connection on 10.77.0.1:5555, answers and prints what it got.
#[test]
#[ignore = "helper run by tap_guest_and_namespace_exchange_data"]
fn helper_tap_namespace_server() {
    let listener = TcpListener::bind("10.77.0.1:5555").unwrap();
    println!("KILN-NS-LISTENING");
    let (mut conn, _) = listener.accept().unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    let mut line = String::new();
    BufReader::new(conn.try_clone().unwrap())
        .read_line(&mut line)
        .unwrap();
    conn.write_all(b"from-namespace\n").unwrap();
    println!("KILN-NS-GOT={}", line.trim());
}

struct Netns(String);

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

fn ip(args: &[&str]) {
    let out = Command::new("ip")
        .args(args)
        .output()
        .expect("run ip (iproute2)");
    assert!(
        out.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
#[ignore = "needs --net in kiln run"]
fn tap_guest_and_namespace_exchange_data() {
    static N: AtomicU32 = AtomicU32::new(0);
    let ns = Netns(format!(
        "kiln-e2e{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    ip(&["netns", "add", &ns.0]);
    ip(&["-n", &ns.0, "tuntap", "add", "dev", "ktap0", "mode", "tap"]);
    ip(&["-n", &ns.0, "addr", "add", "10.77.0.1/24", "dev", "ktap0"]);
    ip(&["-n", &ns.0, "link", "set", "ktap0", "up"]);
    let server = Command::new("ip")
        .args(["netns", "exec", &ns.0])
        .arg(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "helper_tap_namespace_server",
            "--ignored",
            "--nocapture",
        ])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let script = "ip link set eth0 up\nip addr add 10.77.0.2/24 dev eth0\n\
                  echo KILN-NET-GOT=$(echo from-guest | nc 10.77.0.1 5555)";
    let dir = tempfile::tempdir().unwrap();
    let initrd = initramfs_with_test(dir.path(), script);
    let kernel = kernel_dir().join("bzImage");
    let out = Command::new("ip")
        .args(["netns", "exec", &ns.0])
        .arg(env!("CARGO_BIN_EXE_kiln"))
        .args([
            "run",
            "--kernel",
            kernel.to_str().unwrap(),
            "--initrd",
            initrd.to_str().unwrap(),
        ])
        .args(["--net", "tap=ktap0", "--timeout", WAIT])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    // The server exits after one exchange; if the guest never connected, stop it.
    let mut server = server;
    let deadline = Instant::now() + Duration::from_secs(10);
    while server.try_wait().unwrap().is_none() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = server.kill();
    let server = server.wait_with_output().unwrap();
    let server_out = String::from_utf8_lossy(&server.stdout);
    assert!(
        stdout.contains("KILN-NET-GOT=from-namespace"),
        "guest did not hear the namespace:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        server_out.contains("KILN-NS-GOT=from-guest"),
        "namespace did not hear the guest:\n{server_out}"
    );
}

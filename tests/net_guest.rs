//! End-to-end networking on kiln's minimal kernel (vmlinux, 1 vCPU, 256 MiB). Each
//! Linux boot costs 60-100 s on PVM hosts, so the checks are batched into two boots:
//! - `user_mode_dhcp_http_and_hostfwd_in_one_boot` (`--net user,hostfwd=...`): the guest
//!   gets a DHCP lease from passt, fetches a file over HTTP from a server this test runs
//!   on the host's loopback (passt maps the gateway address to the host), then listens
//!   with busybox nc on a forwarded port and the host talks to it both ways. After kiln
//!   exits, its passt child must be gone.
//! - `tap_guest_and_namespace_exchange_data` (`--net tap=`): kiln runs inside a network
//!   namespace the test creates, on a TAP device there; the guest and the namespace's
//!   address exchange a line each way over TCP. (No ping: the test kernel has no POSIX
//!   timers, which busybox ping needs.)
//!
//! Two quick checks on the tiny hanging guest: passt ends when kiln ends (by
//! `--timeout` or SIGINT), and a missing passt is reported with how to install it.
//!
//! Traffic only goes to the host's loopback or the test's own namespace.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use common::{digest_hex, guest_value, initramfs_with_test, kernel_dir};

/// kiln's own limit per boot, and the test's (a little longer).
const KILN_TIMEOUT: &str = "400s";
const TEST_LIMIT: Duration = Duration::from_secs(420);

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

/// Test content: not compressible, not guessable, different per run.
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

/// A kiln process whose stdout arrives line by line, and which is killed if the test
/// fails before it ends.
struct LiveKiln {
    child: Child,
    lines: Receiver<String>,
    stdout: String,
    stderr: Option<JoinHandle<String>>,
    started: Instant,
}

impl LiveKiln {
    /// `prefix`: a wrapper command (`ip netns exec NS`), or empty.
    fn spawn(prefix: &[&str], args: &[&str]) -> LiveKiln {
        let kiln = env!("CARGO_BIN_EXE_kiln");
        let mut command = match prefix.split_first() {
            Some((program, rest)) => {
                let mut c = Command::new(program);
                c.args(rest).arg(kiln);
                c
            }
            None => Command::new(kiln),
        };
        let mut child = command
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start kiln");
        let (tx, lines) = mpsc::channel();
        let stdout = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut stderr_pipe = child.stderr.take().unwrap();
        let stderr = std::thread::spawn(move || {
            let mut s = String::new();
            let _ = stderr_pipe.read_to_string(&mut s);
            s
        });
        LiveKiln {
            child,
            lines,
            stdout: String::new(),
            stderr: Some(stderr),
            started: Instant::now(),
        }
    }

    /// Reads stdout until a line contains `marker` (true) or stdout ends (false).
    fn wait_for(&mut self, marker: &str) -> bool {
        self.read_until(Some(marker))
    }

    fn read_until(&mut self, marker: Option<&str>) -> bool {
        loop {
            let left = TEST_LIMIT.saturating_sub(self.started.elapsed());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    let found = marker.is_some_and(|m| line.contains(m));
                    self.stdout.push_str(&line);
                    self.stdout.push('\n');
                    if found {
                        return true;
                    }
                }
                Err(RecvTimeoutError::Disconnected) => return false,
                Err(RecvTimeoutError::Timeout) => {
                    let _ = self.child.kill();
                    return false;
                }
            }
        }
    }

    /// Reads the rest of stdout, waits for kiln; returns (exit code, stderr).
    fn finish(mut self) -> (Option<i32>, String, String) {
        self.read_until(None);
        let status = self.child.wait().unwrap();
        eprintln!(
            "kiln exited {:?} after {:.1} s",
            status.code(),
            self.started.elapsed().as_secs_f64()
        );
        let stderr = self.stderr.take().unwrap().join().unwrap();
        (status.code(), std::mem::take(&mut self.stdout), stderr)
    }

    /// passt processes started by this kiln, once there are any (up to 10 s).
    fn passt_children(&self) -> Vec<u32> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let found = self.passt_children_now();
            if !found.is_empty() || Instant::now() > deadline {
                return found;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// passt processes that are direct children of this kiln.
    fn passt_children_now(&self) -> Vec<u32> {
        let kiln = self.child.id().to_string();
        let mut found = Vec::new();
        for entry in std::fs::read_dir("/proc").unwrap().flatten() {
            let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
                continue;
            };
            let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
                continue;
            };
            // "pid (comm) state ppid ..."; comm may hold spaces, so split after ')'.
            let Some((head, tail)) = stat.rsplit_once(')') else {
                continue;
            };
            let ppid = tail.split_whitespace().nth(1);
            if head.contains("(passt") && ppid == Some(kiln.as_str()) {
                found.push(pid);
            }
        }
        found
    }
}

impl Drop for LiveKiln {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// True if process `pid` is still running (a zombie has ended; its parent, here
/// PID 1 once kiln is gone, has not reaped it yet).
fn process_running(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => false,
        Ok(stat) => {
            let state = stat.rsplit_once(')').map(|(_, t)| t.trim_start());
            !matches!(state.and_then(|s| s.chars().next()), Some('Z' | 'X'))
        }
    }
}

fn linux_args<'a>(kernel: &'a str, initrd: &'a str, net: &'a str) -> Vec<&'a str> {
    vec![
        "run",
        "--kernel",
        kernel,
        "--initrd",
        initrd,
        "--cpus",
        "1",
        "--memory",
        "256M",
        "--no-rng",
        "--net",
        net,
        "--timeout",
        KILN_TIMEOUT,
    ]
}

/// A port on 127.0.0.1 that was free a moment ago.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Connects to the forwarded port, sends a line, half-closes and reads the guest's
/// answer. Retries while passt finds nothing listening in the guest yet (it then
/// closes the host connection with no data).
fn talk_to_guest(port: u16, limit: Duration) -> Result<String, String> {
    let deadline = Instant::now() + limit;
    let mut last = String::from("no attempt");
    while Instant::now() < deadline {
        match TcpStream::connect(("127.0.0.1", port)) {
            Ok(mut conn) => {
                conn.set_read_timeout(Some(Duration::from_secs(30)))
                    .unwrap();
                let mut got = String::new();
                let result = conn
                    .write_all(b"hello-from-host\n")
                    .and_then(|_| conn.shutdown(Shutdown::Write))
                    .and_then(|_| conn.read_to_string(&mut got));
                match result {
                    Ok(_) if got.contains("hello-from-guest") => return Ok(got),
                    Ok(_) => last = format!("connection closed, got {got:?}"),
                    Err(e) => last = format!("{e} (got {got:?})"),
                }
            }
            Err(e) => last = format!("connect: {e}"),
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    Err(last)
}

#[test]
fn user_mode_dhcp_http_and_hostfwd_in_one_boot() {
    let body = payload();
    let (http_port, server) = serve_http_once(body.clone());
    let fwd_port = free_port();
    // Debian's busybox looks for /etc/udhcpc/default.script; the test initramfs installs
    // the script under upstream's path, so name it. No pipelines: on PVM hosts two
    // processes started side by side sometimes misbehave (see the README); one CI run
    // saw `ip route | grep` print a gateway of "%u.%u.%u.%u".
    let script = format!(
        "ip link set eth0 up
udhcpc -i eth0 -n -q -t 10 -T 3 -s /usr/share/udhcpc/default.script || {{ echo KILN-NET-NO-LEASE; exit 1; }}
ip -4 addr show dev eth0 > /tmp/addr
while read -r kind value rest; do if [ \"$kind\" = inet ]; then ADDR=$value; fi; done < /tmp/addr
echo KILN-NET-ADDR=$ADDR
echo KILN-NET-FEATURES=$(cat /sys/class/net/eth0/device/features)
ip route > /tmp/routes
while read -r dest via gw rest; do if [ \"$dest\" = default ]; then GW=$gw; fi; done < /tmp/routes
echo KILN-NET-GW=$GW
wget -q -O /tmp/payload http://$GW:{http_port}/payload || echo KILN-NET-WGET=failed
sha256sum /tmp/payload > /tmp/sha
read -r SHA rest < /tmp/sha
echo KILN-NET-SHA=$SHA
echo hello-from-guest > /tmp/hello
nc -l -p 8080 < /tmp/hello > /tmp/fwd &
sleep 1
echo KILN-NET-READY
wait $!
echo KILN-NET-FWD-GOT=$(cat /tmp/fwd)"
    );
    let dir = tempfile::tempdir().unwrap();
    let initrd = initramfs_with_test(dir.path(), &script);
    let kernel = kernel_dir().join("vmlinux");
    let net = format!("user,hostfwd=tcp:127.0.0.1:{fwd_port}-:8080");
    let args = linux_args(
        kernel.to_str().unwrap(),
        initrd.to_str().unwrap(),
        net.as_str(),
    );
    let mut kiln = LiveKiln::spawn(&[], &args);
    let passt = kiln.passt_children();
    let ready = kiln.wait_for("KILN-NET-READY");
    let exchange = if ready {
        talk_to_guest(fwd_port, Duration::from_secs(90))
    } else {
        Err("guest never said READY".into())
    };
    if exchange.is_err() {
        // The guest's nc would wait for the host until kiln's timeout.
        let _ = kiln.child.kill();
    }
    let (code, out, err) = kiln.finish();
    let context = format!("stdout:\n{out}\nstderr:\n{err}");
    assert_eq!(passt.len(), 1, "one passt per NIC: {passt:?}\n{context}");
    for pid in &passt {
        assert!(
            !process_running(*pid),
            "passt {pid} still runs after kiln exited"
        );
    }
    // Negotiated features, one character per bit: the driver took VIRTIO_RING_F_EVENT_IDX
    // and VIRTIO_RING_F_INDIRECT_DESC (tables for tx packets of more than one buffer;
    // small packets carry their header in the same buffer and need none).
    let features = guest_value(&out, "KILN-NET-FEATURES").unwrap_or_default();
    assert_eq!(features.chars().nth(29), Some('1'), "{context}");
    assert_eq!(features.chars().nth(28), Some('1'), "{context}");
    assert!(
        guest_value(&out, "KILN-NET-ADDR").is_some_and(|a| !a.is_empty()),
        "no DHCP lease\n{context}"
    );
    assert_eq!(
        guest_value(&out, "KILN-NET-SHA"),
        Some(digest_hex("sha256sum", &body).as_str()),
        "content differs\n{context}"
    );
    // Joined only now: with no request the server would wait forever.
    let request = server.join().unwrap().expect("HTTP server");
    assert!(request.starts_with("GET /payload"), "{request}");
    let got = exchange.unwrap_or_else(|e| panic!("hostfwd exchange failed: {e}\n{context}"));
    assert_eq!(got.trim(), "hello-from-guest");
    assert_eq!(
        guest_value(&out, "KILN-NET-FWD-GOT"),
        Some("hello-from-host"),
        "{context}"
    );
    assert_eq!(code, Some(0), "{context}");
    assert_eq!(guest_value(&out, "KILN-TEST-EXIT"), Some("0"), "{context}");
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

/// Deletes the namespace (and with it the TAP device in it) even when the test fails.
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
fn tap_guest_and_namespace_exchange_data() {
    let ns = Netns(format!("kiln-e2e{}", std::process::id()));
    ip(&["netns", "add", &ns.0]);
    ip(&["-n", &ns.0, "tuntap", "add", "dev", "ktap0", "mode", "tap"]);
    ip(&["-n", &ns.0, "addr", "add", "10.77.0.1/24", "dev", "ktap0"]);
    ip(&["-n", &ns.0, "link", "set", "ktap0", "up"]);
    let mut server = Command::new("ip")
        .args(["netns", "exec", &ns.0])
        .arg(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "helper_tap_namespace_server",
            "--ignored",
            "--nocapture",
        ])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    // The guest's nc connects once: start it only when the server listens.
    let mut server_stdout = BufReader::new(server.stdout.take().unwrap());
    let mut server_log = String::new();
    while !server_log.contains("KILN-NS-LISTENING") {
        let got = server_stdout.read_line(&mut server_log).unwrap();
        assert!(got > 0, "namespace server ended:\n{server_log}");
    }
    let script = "ip link set eth0 up
ip addr add 10.77.0.2/24 dev eth0
echo KILN-NET-GOT=$(echo from-guest | nc 10.77.0.1 5555)";
    let dir = tempfile::tempdir().unwrap();
    let initrd = initramfs_with_test(dir.path(), script);
    let kernel = kernel_dir().join("vmlinux");
    let args = linux_args(
        kernel.to_str().unwrap(),
        initrd.to_str().unwrap(),
        "tap=ktap0,mac=52:54:00:77:00:02",
    );
    let kiln = LiveKiln::spawn(&["ip", "netns", "exec", &ns.0], &args);
    let (code, out, err) = kiln.finish();
    // The server exits after one exchange; if the guest never connected, stop it.
    let deadline = Instant::now() + Duration::from_secs(10);
    while server.try_wait().unwrap().is_none() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = server.kill();
    let _ = server.wait();
    server_stdout.read_to_string(&mut server_log).unwrap();
    let server_out = server_log;
    let context = format!("stdout:\n{out}\nstderr:\n{err}\nnamespace server:\n{server_out}");
    assert_eq!(
        guest_value(&out, "KILN-NET-GOT"),
        Some("from-namespace"),
        "guest did not hear the namespace\n{context}"
    );
    assert!(
        server_out.contains("KILN-NS-GOT=from-guest"),
        "namespace did not hear the guest\n{context}"
    );
    assert_eq!(code, Some(0), "{context}");
}

/// passt must not outlive kiln: not after `--timeout`, not after Ctrl-C (SIGINT stops
/// the VM cleanly, exit 130, and dropping the device kills and reaps passt; were kiln
/// killed outright, passt, started with `--fd`, would quit when its socket closed).
/// Uses the tiny hanging guest, so it takes about five seconds.
#[test]
fn passt_stops_when_kiln_times_out_or_is_interrupted() {
    let guest = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("net-guest-hang.elf");
    std::fs::write(&guest, kiln_vmm::guests::HANG).unwrap();
    let guest = guest.to_str().unwrap();
    // Long enough for the /proc scan below to find passt on a loaded host.
    for (how, timeout) in [("timeout", "4s"), ("sigint", "60s")] {
        let args = ["run", "--kernel", guest, "--serial", "none"];
        let kiln = LiveKiln::spawn(&[], &[&args[..], &["--timeout", timeout]].concat());
        let passt = kiln.passt_children();
        assert_eq!(passt.len(), 1, "{how}: default --net user starts one passt");
        if how == "sigint" {
            let pid = kiln.child.id().to_string();
            let sent = Command::new("kill").args(["-INT", &pid]).status().unwrap();
            assert!(sent.success());
        }
        let (code, _, err) = kiln.finish();
        match how {
            "timeout" => assert_eq!(code, Some(124), "{err}"),
            _ => {
                assert_eq!(code, Some(130), "SIGINT stops the VM cleanly: {err}");
                assert!(err.contains("stopped by signal 2"), "{err}");
            }
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while process_running(passt[0]) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(
            !process_running(passt[0]),
            "{how}: passt {} still runs after kiln ended",
            passt[0]
        );
    }
}

/// Without passt on PATH, `--net user` (the default) fails before the guest runs, and
/// the message says how to install it.
#[test]
fn missing_passt_is_reported_with_how_to_install_it() {
    let guest = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("net-guest-nopasst.elf");
    std::fs::write(&guest, kiln_vmm::guests::HANG).unwrap();
    let empty = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args(["run", "--serial", "none", "--timeout", "5s", "--kernel"])
        .arg(&guest)
        .env("PATH", empty.path())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("virtio-net"), "{stderr}");
    assert!(stderr.contains("apt-get install passt"), "{stderr}");
}

//! User-mode networking: a `passt` child process per NIC.
//!
//! kiln creates a connected UNIX socket pair and hands one end to passt with `--fd`
//! (passt's man page: "Pass a pre-opened, connected socket to passt ... implies the
//! behaviour described for --one-off"), so there is no socket path to race on and
//! passt quits as soon as kiln's end closes.
//!
//! Lifetime: dropping the backend kills (SIGKILL) and reaps passt. If kiln itself dies
//! (Ctrl-C with the default SIGINT action, SIGKILL, abort) the kernel closes kiln's end
//! of the socket and passt exits on its own; init reaps it. passt runs in its own
//! process group, so a terminal Ctrl-C reaches kiln only. **What the VMM must do on
//! SIGINT:** either keep the default action (the socket-close path above cleans up) or,
//! if it installs a handler, only set a flag or write an eventfd there and leave its
//! event loop so the device, and with it this backend, is dropped normally. It must not
//! `exit()` from the handler or `std::process::exit` while the backend is alive, and it
//! must not leave the process waiting in a state where the socket stays open.
//!
//! Readiness: passt writes its pid file "once initialisation is done"; start-up waits
//! for that (or for passt to exit, returning its stderr as the error), then deletes the
//! file's private directory.

use std::collections::VecDeque;
use std::fs;
use std::io::{self, BufRead, BufReader};
use std::net::{IpAddr, Ipv4Addr, TcpListener};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use log::{debug, warn};

use super::stream::FrameStream;
use super::{BackendError, NetBackend};
use crate::virtio::net::config::HostFwd;

/// Program started for `--net user`.
pub const PASST_PROGRAM: &str = "passt";
const START_TIMEOUT: Duration = Duration::from_secs(10);
const STDERR_LINES_KEPT: usize = 20;

/// A running passt connected to kiln.
pub struct PasstBackend {
    stream: FrameStream,
    child: Child,
}

impl PasstBackend {
    /// Start `passt` from `PATH` with the given port forwards.
    pub fn start(hostfwd: &[HostFwd]) -> Result<Self, BackendError> {
        Self::start_program(Path::new(PASST_PROGRAM), hostfwd)
    }

    /// Start `program` as passt (tests use this to point at a missing binary).
    pub fn start_program(program: &Path, hostfwd: &[HostFwd]) -> Result<Self, BackendError> {
        for fwd in hostfwd {
            check_host_port(fwd)?;
        }
        let run_dir = make_run_dir().map_err(BackendError::PasstSetup)?;
        let result = spawn(program, hostfwd, &run_dir);
        // The pid file only signals readiness; nothing is left behind even if kiln dies.
        let _ = fs::remove_dir_all(&run_dir);
        let (stream, child) = result?;
        Ok(PasstBackend { stream, child })
    }

    /// passt's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

fn spawn(
    program: &Path,
    hostfwd: &[HostFwd],
    run_dir: &Path,
) -> Result<(FrameStream, Child), BackendError> {
    let (ours, theirs) = UnixStream::pair().map_err(BackendError::PasstSetup)?;
    let their_fd = theirs.as_raw_fd();
    let pid_file = run_dir.join("passt.pid");
    // passt drops to "nobody" when started as root and opens the pid file after that.
    fs::write(&pid_file, b"").map_err(BackendError::PasstSetup)?;
    fs::set_permissions(&pid_file, fs::Permissions::from_mode(0o666))
        .map_err(BackendError::PasstSetup)?;

    let mut cmd = Command::new(program);
    cmd.args(["-f", "-q", "--fd", &their_fd.to_string(), "-P"])
        .arg(&pid_file)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .process_group(0);
    for fwd in hostfwd {
        cmd.arg("-t").arg(tcp_spec(fwd));
    }
    // SAFETY: runs in the forked child before exec; fcntl is async-signal-safe and only
    // touches `their_fd`, which stays open in the parent until after spawn returns.
    unsafe {
        cmd.pre_exec(move || {
            if libc::fcntl(their_fd, libc::F_SETFD, 0) < 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn().map_err(|e| match e.kind() {
        io::ErrorKind::NotFound => BackendError::PasstMissing,
        _ => BackendError::PasstSpawn(e),
    })?;
    drop(theirs);
    let stderr_tail = forward_stderr(&mut child);

    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        match child.try_wait() {
            Ok(Some(status)) => {
                return Err(BackendError::PasstExited {
                    status: status.to_string(),
                    stderr: wait_for_tail(&stderr_tail),
                })
            }
            Ok(None) => {}
            Err(e) => {
                kill_and_reap(&mut child);
                return Err(BackendError::PasstSpawn(e));
            }
        }
        if fs::metadata(&pid_file)
            .map(|m| m.len() > 0)
            .unwrap_or(false)
        {
            break;
        }
        if Instant::now() > deadline {
            kill_and_reap(&mut child);
            let tail = wait_for_tail(&stderr_tail);
            return Err(BackendError::PasstTimeout {
                secs: START_TIMEOUT.as_secs(),
                stderr: tail,
            });
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    debug!("passt started, pid {}", child.id());
    match FrameStream::new(ours) {
        Ok(stream) => Ok((stream, child)),
        Err(e) => {
            kill_and_reap(&mut child);
            Err(BackendError::PasstSetup(e))
        }
    }
}

/// passt's `-t` spec: `[ADDR/]HOSTPORT:GUESTPORT`.
fn tcp_spec(fwd: &HostFwd) -> String {
    match fwd.host_addr {
        Some(addr) => format!("{addr}/{}:{}", fwd.host_port, fwd.guest_port),
        None => format!("{}:{}", fwd.host_port, fwd.guest_port),
    }
}

/// passt does not fail when a forwarded port is taken, so check first to name the fault.
fn check_host_port(fwd: &HostFwd) -> Result<(), BackendError> {
    let addr = fwd.host_addr.unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED));
    TcpListener::bind((addr, fwd.host_port))
        .map(drop)
        .map_err(|source| BackendError::HostPortBusy {
            port: fwd.host_port,
            source,
        })
}

fn make_run_dir() -> io::Result<PathBuf> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let base = std::env::temp_dir();
    loop {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let dir = base.join(format!("kiln-passt-{}-{n}", std::process::id()));
        match fs::DirBuilder::new().mode(0o700).create(&dir) {
            Ok(()) => {
                // Searchable (not listable) so passt can reach its pid file after it drops
                // privileges to "nobody".
                fs::set_permissions(&dir, fs::Permissions::from_mode(0o711))?;
                return Ok(dir);
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e),
        }
    }
}

type Tail = Arc<Mutex<(VecDeque<String>, bool)>>;

/// Log passt's stderr and keep its last lines for start-up errors. The thread ends at
/// EOF, when passt exits.
fn forward_stderr(child: &mut Child) -> Tail {
    let tail: Tail = Arc::new(Mutex::new((VecDeque::new(), false)));
    let Some(stderr) = child.stderr.take() else {
        return tail;
    };
    let keep = tail.clone();
    let spawned = std::thread::Builder::new()
        .name("passt-stderr".into())
        .spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                // passt reports every failed syslog write when there is no syslog daemon.
                if line.starts_with("Failed to send") && line.ends_with("to syslog") {
                    continue;
                }
                debug!("passt: {line}");
                let mut t = keep.lock().unwrap_or_else(|e| e.into_inner());
                if t.0.len() == STDERR_LINES_KEPT {
                    t.0.pop_front();
                }
                t.0.push_back(line);
            }
            keep.lock().unwrap_or_else(|e| e.into_inner()).1 = true;
        });
    if let Err(e) = spawned {
        warn!("cannot start passt stderr reader: {e}");
        tail.lock().unwrap_or_else(|e| e.into_inner()).1 = true;
    }
    tail
}

/// The kept stderr lines once the reader saw EOF (bounded wait).
fn wait_for_tail(tail: &Tail) -> String {
    let deadline = Instant::now() + Duration::from_secs(1);
    loop {
        let t = tail.lock().unwrap_or_else(|e| e.into_inner());
        if t.1 || Instant::now() > deadline {
            return t.0.iter().cloned().collect::<Vec<_>>().join("; ");
        }
        drop(t);
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn kill_and_reap(child: &mut Child) {
    // Fails only if it already exited; wait() reaps it either way.
    let _ = child.kill();
    if let Err(e) = child.wait() {
        warn!("cannot reap passt (pid {}): {e}", child.id());
    }
}

impl Drop for PasstBackend {
    fn drop(&mut self) {
        kill_and_reap(&mut self.child);
    }
}

impl NetBackend for PasstBackend {
    fn has_vnet_hdr(&self) -> bool {
        false
    }

    fn send(&mut self, packet: &[u8]) -> io::Result<()> {
        self.stream.send(packet)
    }

    fn recv(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.stream.recv(buf)
    }

    fn has_pending_output(&self) -> bool {
        self.stream.has_pending_output()
    }

    fn flush(&mut self) -> io::Result<()> {
        self.stream.flush()
    }

    fn raw_fd(&self) -> RawFd {
        self.stream.as_raw_fd()
    }
}

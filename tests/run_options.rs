//! `kiln run` device and CPU options, on the tiny virtio-probe guest (well under a
//! second per run): it reports the DeviceID at the first virtio-mmio window through
//! the debug-exit port, so the exit code is (DeviceID << 1) | 1, or 255 when the
//! window is empty.

mod common;

use std::path::PathBuf;

use common::run_kiln;

fn probe_guest(test: &str) -> PathBuf {
    let path = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("run-options-{test}.elf"));
    std::fs::write(&path, kiln_vmm::guests::VIRTIO_PROBE).unwrap();
    path
}

fn run_probe(test: &str, extra: &[&str]) -> common::Run {
    let guest = probe_guest(test);
    let mut args = vec![
        "run",
        "--kernel",
        guest.to_str().unwrap(),
        "--serial",
        "none",
        "--debug-exit",
        "0xf4",
        "--timeout",
        "20s",
    ];
    // No NIC (and no passt) per probe run unless the test asks for one.
    if !extra.contains(&"--net") {
        args.extend_from_slice(&["--net", "none"]);
    }
    args.extend_from_slice(extra);
    run_kiln(test, &args)
}

const EXIT_RNG: i32 = (4 << 1) | 1;
const EXIT_BLOCK: i32 = (2 << 1) | 1;
const EXIT_EMPTY: i32 = 0xff;

#[test]
fn virtio_rng_is_present_by_default_and_no_rng_drops_it() {
    let run = run_probe("rng-default", &[]);
    assert_eq!(run.code(), Some(EXIT_RNG), "{}", run.stderr());
    let run = run_probe("no-rng", &["--no-rng"]);
    assert_eq!(run.code(), Some(EXIT_EMPTY), "{}", run.stderr());
    // A capped rng is still the first device.
    let run = run_probe("rng-capped", &["--rng", "max-bytes=1K,period=500ms"]);
    assert_eq!(run.code(), Some(EXIT_RNG), "{}", run.stderr());
}

#[test]
fn a_bad_rng_cap_is_refused_by_name_before_the_vm_starts() {
    let run = run_probe("rng-bad", &["--rng", "max-bytes=1,period=1000"]);
    assert_eq!(run.code(), Some(2), "{}", run.stderr());
    assert!(
        run.stderr().contains("--rng") && run.stderr().contains("period=1000 needs a unit"),
        "{}",
        run.stderr()
    );
    let run = run_probe("rng-and-no-rng", &["--no-rng", "--rng", "max-bytes=1"]);
    assert_eq!(run.code(), Some(2), "{}", run.stderr());
    assert!(
        run.stderr().contains("cannot be used with"),
        "{}",
        run.stderr()
    );
}

#[test]
fn user_networking_is_on_by_default_after_rng() {
    const EXIT_NET: i32 = (1 << 1) | 1;
    let run = run_kiln(
        "net-default",
        &[
            "run",
            "--kernel",
            probe_guest("net-default").to_str().unwrap(),
            "--serial",
            "none",
            "--debug-exit",
            "0xf4",
            "--timeout",
            "20s",
            "--no-rng",
        ],
    );
    assert_eq!(run.code(), Some(EXIT_NET), "{}", run.stderr());
    let run = run_probe("net-tap-missing", &["--net", "tap=kilnabsent0"]);
    assert_ne!(run.code(), Some(0));
    assert!(run.stderr().contains("kilnabsent0"), "{}", run.stderr());
}

#[test]
fn disks_come_first() {
    let disk = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("run-options-disk.raw");
    std::fs::write(&disk, vec![0u8; 1 << 20]).unwrap();
    let spec = format!("path={},readonly=on", disk.display());
    let run = run_probe("disk-first", &["--disk", &spec]);
    assert_eq!(run.code(), Some(EXIT_BLOCK), "{}", run.stderr());
}

#[test]
fn disk_cache_modes_are_accepted_and_bad_ones_named() {
    let disk = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("run-options-cache.raw");
    std::fs::write(&disk, vec![0u8; 1 << 20]).unwrap();
    for cache in ["writeback", "unsafe", "none", "writethrough", "directsync"] {
        let spec = format!("path={},cache={cache}", disk.display());
        let run = run_probe(&format!("cache-{cache}"), &["--disk", &spec]);
        assert_eq!(run.code(), Some(EXIT_BLOCK), "{cache}: {}", run.stderr());
    }
    let spec = format!("path={},cache=directio", disk.display());
    let run = run_probe("cache-directio", &["--disk", &spec]);
    assert_eq!(run.code(), Some(2), "clap usage error");
    assert!(
        run.stderr().contains(
            "cache must be writeback, none, writethrough, directsync or unsafe, not `directio`"
        ),
        "{}",
        run.stderr()
    );
}

#[test]
fn bad_disks_fail_before_the_vm_starts_naming_the_file() {
    let run = run_probe(
        "disk-missing",
        &["--disk", "path=/nonexistent/kiln-disk.qcow2"],
    );
    assert_eq!(run.code(), Some(1));
    assert!(
        run.stderr().contains("/nonexistent/kiln-disk.qcow2"),
        "{}",
        run.stderr()
    );
    let bad = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("run-options-bad.qcow2");
    let mut header = b"QFI\xfb".to_vec();
    header.resize(512, 0xff);
    std::fs::write(&bad, header).unwrap();
    let spec = format!("path={}", bad.display());
    let run = run_probe("disk-corrupt", &["--disk", &spec]);
    assert_eq!(run.code(), Some(1));
    assert!(
        run.stderr().contains(bad.to_str().unwrap()),
        "{}",
        run.stderr()
    );
    // cache=none where the file system has no O_DIRECT (procfs; tmpfs before 6.6).
    let run = run_probe(
        "disk-no-direct-io",
        &[
            "--disk",
            "path=/proc/version,format=raw,readonly=on,cache=none",
        ],
    );
    assert_eq!(run.code(), Some(1));
    assert!(
        run.stderr()
            .contains("/proc/version: its file system has no direct I/O"),
        "{}",
        run.stderr()
    );
    let run = run_probe("disk-syntax", &["--disk", "path=x,format=vmdk"]);
    assert_eq!(run.code(), Some(2), "clap usage error");
    assert!(run.stderr().contains("vmdk"), "{}", run.stderr());
    // A 4Kn disk whose size is not whole 4 KiB blocks; the same disk with 512-byte
    // blocks runs.
    let odd = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("run-options-odd.raw");
    std::fs::write(&odd, vec![0u8; (1 << 20) + 512]).unwrap();
    let spec = format!("path={},logical_block_size=4096", odd.display());
    let run = run_probe("disk-partial-block", &["--disk", &spec]);
    assert_eq!(run.code(), Some(1), "{}", run.stderr());
    let want = format!(
        "--disk {}: the disk's 1049088 bytes are not whole 4096-byte logical blocks",
        odd.display()
    );
    assert!(run.stderr().contains(&want), "{}", run.stderr());
    let spec = format!("path={},physical_block_size=4096", odd.display());
    let run = run_probe("disk-512e", &["--disk", &spec]);
    assert_eq!(run.code(), Some(EXIT_BLOCK), "{}", run.stderr());
    // With 512-byte blocks a partial last sector is left out, as before.
    std::fs::write(&odd, vec![0u8; (1 << 20) + 100]).unwrap();
    let spec = format!("path={},format=raw", odd.display());
    let run = run_probe("disk-partial-sector", &["--disk", &spec]);
    assert_eq!(run.code(), Some(EXIT_BLOCK), "{}", run.stderr());
    let run = run_probe(
        "disk-block-syntax",
        &["--disk", "path=x,logical_block_size=3000"],
    );
    assert_eq!(run.code(), Some(2), "clap usage error");
    assert!(
        run.stderr()
            .contains("logical_block_size must be a power of two"),
        "{}",
        run.stderr()
    );
}

/// This host (PVM) lacks pni, ssse3, sse4.1, sse4.2 and popcnt, which Nehalem has.
const NEHALEM_MISSING: [&str; 5] = [
    "CPUID.01H:ECX.pni [bit 0]",
    "CPUID.01H:ECX.ssse3 [bit 9]",
    "CPUID.01H:ECX.sse4.1 [bit 19]",
    "CPUID.01H:ECX.sse4.2 [bit 20]",
    "CPUID.01H:ECX.popcnt [bit 23]",
];

#[test]
fn cpu_model_check_enforce_refuses_listing_every_missing_feature() {
    let run = run_probe("enforce", &["--cpu", "Nehalem,check=enforce"]);
    let stderr = run.stderr();
    assert_eq!(run.code(), Some(1), "{stderr}");
    assert!(stderr.contains("check=enforce"), "{stderr}");
    for f in NEHALEM_MISSING {
        let line = format!("host doesn't support requested feature: {f}");
        assert!(stderr.contains(&line), "missing {line:?} in {stderr}");
    }
}

#[test]
fn cpu_model_check_warn_warns_once_per_feature_and_boots() {
    let run = run_probe("warn", &["--cpu", "Nehalem", "--cpus", "2"]);
    let stderr = run.stderr();
    assert_eq!(run.code(), Some(EXIT_RNG), "{stderr}");
    for f in NEHALEM_MISSING {
        let line = format!("host doesn't support requested feature: {f}");
        assert_eq!(stderr.matches(&line).count(), 1, "{line:?} in {stderr}");
    }
}

#[test]
fn cpu_option_errors() {
    let run = run_probe("unknown-model", &["--cpu", "Nehalen"]);
    assert_eq!(run.code(), Some(2));
    assert!(
        run.stderr().contains("Nehalem"),
        "close match: {}",
        run.stderr()
    );
    let run = run_probe("topology", &["--cpus", "4,cores=3"]);
    assert_eq!(run.code(), Some(2));
    let run = run_probe("template", &["--cpu-template", "/nonexistent/t.json"]);
    assert_eq!(run.code(), Some(1));
    assert!(
        run.stderr().contains("/nonexistent/t.json"),
        "{}",
        run.stderr()
    );
}

#[test]
fn topology_boots_with_sockets_cores_threads() {
    let run = run_probe("topology-ok", &["--cpus", "4,sockets=1,cores=2,threads=2"]);
    assert_eq!(run.code(), Some(EXIT_RNG), "{}", run.stderr());
}

#[test]
fn nested_is_refused_on_a_host_that_cannot_nest() {
    // This development host's KVM is PVM, which has no VMX/SVM to give a guest.
    let run = run_probe("nested", &["--nested"]);
    let stderr = run.stderr();
    assert_eq!(run.code(), Some(1), "{stderr}");
    assert!(stderr.contains("nested virtualization:"), "{stderr}");
    assert!(stderr.contains("PVM"), "{stderr}");
}

fn template_file(test: &str, json: &str) -> PathBuf {
    let path = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("run-options-{test}.json"));
    std::fs::write(&path, json).unwrap();
    path
}

#[test]
fn cpu_template_msr_modifiers_are_checked_against_the_host_and_applied() {
    let bitmap = format!("0b{}1", "x".repeat(63));
    let absent = template_file(
        "template-absent-msr",
        &format!(r#"{{"msr_modifiers": [{{"addr": "0xdeadbeef", "bitmap": "{bitmap}"}}]}}"#),
    );
    let run = run_probe(
        "template-absent-msr",
        &["--cpu-template", absent.to_str().unwrap()],
    );
    assert_eq!(run.code(), Some(1), "{}", run.stderr());
    assert!(run.stderr().contains("0xdeadbeef"), "{}", run.stderr());
    // IA32_MISC_ENABLE bit 0 (fast strings): an MSR KVM always emulates.
    let present = template_file(
        "template-misc-enable",
        &format!(r#"{{"msr_modifiers": [{{"addr": "0x1a0", "bitmap": "{bitmap}"}}]}}"#),
    );
    let run = run_probe(
        "template-misc-enable",
        &["--cpu-template", present.to_str().unwrap()],
    );
    assert_eq!(run.code(), Some(EXIT_RNG), "{}", run.stderr());
}

#[test]
fn channels_make_one_virtio_serial_device_and_bad_ones_are_named() {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("run-options-channels");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let (a, b) = (dir.join("a.sock"), dir.join("b.sock"));
    let channel = |name: &str, path: &PathBuf| format!("name={name},socket={}", path.display());
    // The only device: virtio-mmio window 0 is a console (DeviceID 3), and the socket
    // files go with kiln.
    let spec_a = channel("org.qemu.guest_agent.0", &a);
    let spec_b = channel("org.kiln.b", &b);
    let args = ["--no-rng", "--channel", &spec_a, "--channel", &spec_b];
    let run = run_probe("channels", &args);
    assert_eq!(run.code(), Some((3 << 1) | 1), "{}", run.stderr());
    assert!(!a.exists() && !b.exists(), "socket files left behind");

    // server=off: kiln connects to a listener (two ports may share it), and a path
    // nobody listens on is refused, naming the port and the path.
    let agent = dir.join("agent.sock");
    let listener = std::os::unix::net::UnixListener::bind(&agent).unwrap();
    let connect = |name: &str| format!("name={name},socket={},server=off", agent.display());
    let (c1, c2) = (connect("org.kiln.c1"), connect("org.kiln.c2"));
    let run = run_probe(
        "channel-connect",
        &["--no-rng", "--channel", &c1, "--channel", &c2],
    );
    assert_eq!(run.code(), Some((3 << 1) | 1), "{}", run.stderr());
    listener.set_nonblocking(true).unwrap();
    for port in [&c1, &c2] {
        assert!(listener.accept().is_ok(), "kiln did not connect for {port}");
    }
    assert!(agent.exists(), "kiln removed a socket it does not own");
    drop(listener);
    std::fs::remove_file(&agent).unwrap();
    let run = run_probe("channel-connect-none", &["--channel", &c1]);
    assert_eq!(run.code(), Some(1), "{}", run.stderr());
    let want = format!("--channel org.kiln.c1: {}", agent.display());
    assert!(run.stderr().contains(&want), "{}", run.stderr());
    // With reconnect-ms the listener may come later: the VM starts without it. A path
    // too long for any socket is still refused.
    let later = format!("{c1},reconnect-ms=100");
    let run = run_probe("channel-reconnect-none", &["--no-rng", "--channel", &later]);
    assert_eq!(run.code(), Some((3 << 1) | 1), "{}", run.stderr());
    let long = dir.join("x".repeat(120));
    let spec = format!(
        "name=org.kiln.l,socket={},server=off,reconnect-ms=100",
        long.display()
    );
    let run = run_probe("channel-reconnect-long", &["--channel", &spec]);
    assert_eq!(run.code(), Some(1), "{}", run.stderr());
    assert!(
        run.stderr().contains("--channel org.kiln.l: "),
        "{}",
        run.stderr()
    );

    let spec = channel("a/b", &a);
    let run = run_probe("channel-bad-name", &["--channel", &spec]);
    assert_eq!(run.code(), Some(2), "clap usage error: {}", run.stderr());
    assert!(
        run.stderr()
            .contains("port name \"a/b\" is not 1-255 letters"),
        "{}",
        run.stderr()
    );
    let twice = channel("org.kiln.b", &a);
    let run = run_probe(
        "channel-twice",
        &["--channel", &spec_b, "--channel", &twice],
    );
    assert_eq!(run.code(), Some(1), "{}", run.stderr());
    assert!(
        run.stderr()
            .contains("--channel: port name \"org.kiln.b\" is given twice"),
        "{}",
        run.stderr()
    );
    // One path for two listeners: refused, naming both, before anything is bound.
    let console = format!("virtio,socket={},server=on", a.display());
    let run = run_probe(
        "channel-console-path",
        &["--console", &console, "--channel", &spec_a],
    );
    assert_eq!(run.code(), Some(1), "{}", run.stderr());
    let want = format!(
        "--channel org.qemu.guest_agent.0: socket {} is also --console's",
        a.display()
    );
    assert!(run.stderr().contains(&want), "{}", run.stderr());
    let same = channel("org.kiln.c", &a);
    let run = run_probe(
        "channel-same-path",
        &["--channel", &spec_a, "--channel", &same],
    );
    assert_eq!(run.code(), Some(1), "{}", run.stderr());
    assert!(
        run.stderr()
            .contains("is also --channel org.qemu.guest_agent.0's"),
        "{}",
        run.stderr()
    );
    assert!(!a.exists(), "a socket was bound");
    // Not a socket: refused, the file untouched.
    std::fs::write(&a, "keep").unwrap();
    let run = run_probe("channel-not-socket", &["--channel", &spec_a]);
    assert_eq!(run.code(), Some(1), "{}", run.stderr());
    let want = format!(
        "--channel org.qemu.guest_agent.0: {}: exists and is not a socket",
        a.display()
    );
    assert!(run.stderr().contains(&want), "{}", run.stderr());
    assert_eq!(std::fs::read_to_string(&a).unwrap(), "keep");
}

#[test]
fn console_server_socket_is_created_served_and_removed() {
    use std::io::Read;
    use std::os::unix::net::{UnixListener, UnixStream};
    use std::time::{Duration, Instant};
    const EXIT_CONSOLE: i32 = (3 << 1) | 1;
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("run-options-console");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let sock = dir.join("hvc0.sock");
    // A socket file left by an earlier run is replaced.
    drop(UnixListener::bind(&sock).unwrap());
    let spec = format!("virtio,socket={},server=on", sock.display());
    let run = run_probe("console-server", &["--no-rng", "--console", &spec]);
    assert_eq!(run.code(), Some(EXIT_CONSOLE), "{}", run.stderr());
    assert!(!sock.exists(), "socket file left behind");

    // While a guest runs, a client is accepted; kiln's exit closes the connection.
    let hang = dir.join("hang.elf");
    std::fs::write(&hang, kiln_vmm::guests::HANG).unwrap();
    let client = {
        let sock = sock.clone();
        std::thread::spawn(move || {
            let deadline = Instant::now() + Duration::from_secs(20);
            let mut stream = loop {
                match UnixStream::connect(&sock) {
                    Ok(s) => break s,
                    Err(_) if Instant::now() < deadline => {
                        std::thread::sleep(Duration::from_millis(20))
                    }
                    Err(e) => panic!("cannot connect to {}: {e}", sock.display()),
                }
            };
            let mut rest = Vec::new();
            stream.read_to_end(&mut rest).map(|_| rest.len())
        })
    };
    let run = run_kiln(
        "console-server-hang",
        &[
            "run",
            "--kernel",
            hang.to_str().unwrap(),
            "--serial",
            "none",
            "--net",
            "none",
            "--timeout",
            "3s",
            "--console",
            &spec,
            "-v",
        ],
    );
    assert_eq!(run.code(), Some(124), "{}", run.stderr());
    assert!(
        run.stderr().contains("client connected"),
        "{}",
        run.stderr()
    );
    assert_eq!(
        client.join().unwrap().unwrap(),
        0,
        "the idle guest wrote nothing"
    );
    assert!(!sock.exists(), "socket file left behind");

    // Not a socket: refused before the VM starts, the file untouched.
    let notes = dir.join("notes.txt");
    std::fs::write(&notes, "keep").unwrap();
    let spec = format!("virtio,socket={},server=on", notes.display());
    let run = run_probe("console-server-file", &["--console", &spec]);
    assert_eq!(run.code(), Some(1));
    assert!(
        run.stderr().contains(notes.to_str().unwrap()),
        "{}",
        run.stderr()
    );
    assert!(run.stderr().contains("not a socket"), "{}", run.stderr());
    assert_eq!(std::fs::read_to_string(&notes).unwrap(), "keep");
}

#[test]
fn console_socket_connects_to_a_listener_and_no_listener_is_an_error() {
    use std::io::Read;
    use std::os::unix::net::UnixListener;
    const EXIT_CONSOLE: i32 = (3 << 1) | 1;
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("run-options-console-connect");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let sock = dir.join("listener.sock");
    let listener = UnixListener::bind(&sock).unwrap();
    let spec = format!("virtio,socket={}", sock.display());
    let run = run_probe("console-connect", &["--no-rng", "--console", &spec]);
    assert_eq!(run.code(), Some(EXIT_CONSOLE), "{}", run.stderr());
    // kiln connected (the connection waits in the backlog), and closed it on exit.
    listener.set_nonblocking(true).unwrap();
    let (mut conn, _) = listener.accept().expect("kiln did not connect");
    conn.set_nonblocking(false).unwrap();
    let mut rest = Vec::new();
    conn.read_to_end(&mut rest).unwrap();
    assert!(rest.is_empty(), "the probe guest wrote nothing: {rest:?}");

    // Nobody listening: refused before the VM starts, naming the path.
    drop(listener);
    let run = run_probe("console-connect-none", &["--no-rng", "--console", &spec]);
    assert_eq!(run.code(), Some(1), "{}", run.stderr());
    assert!(
        run.stderr().contains(sock.to_str().unwrap()),
        "{}",
        run.stderr()
    );
    // Unless it reconnects: then the listener may come later.
    let later = format!("{spec},reconnect-ms=100");
    let run = run_probe("console-reconnect-none", &["--no-rng", "--console", &later]);
    assert_eq!(run.code(), Some(EXIT_CONSOLE), "{}", run.stderr());
}

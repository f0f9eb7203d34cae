//! `kiln run` on kiln's tiny test guests (resources/guests/): exit codes, serial
//! routing, the boot timer and resets. Each run takes milliseconds.

use std::path::PathBuf;
use std::process::{Command, Output};

fn guest(name: &str) -> PathBuf {
    let (_, bytes) = kiln_vmm::guests::ALL
        .iter()
        .find(|(n, _)| *n == name)
        .unwrap_or_else(|| panic!("no guest {name}"));
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("vmm-guests");
    std::fs::create_dir_all(&dir).unwrap();
    // Tests run in parallel and share guests: write a private copy, then
    // rename it into place, so no test ever reads a half-written file.
    let path = dir.join(name);
    let tmp = dir.join(format!("{name}.{:?}.tmp", std::thread::current().id()));
    std::fs::write(&tmp, bytes).unwrap();
    std::fs::rename(&tmp, &path).unwrap();
    path
}

fn kiln(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args(args)
        .output()
        .expect("run kiln")
}

fn run_guest(name: &str, extra: &[&str]) -> Output {
    let path = guest(name);
    let mut args = vec![
        "run",
        "--kernel",
        path.to_str().unwrap(),
        "--serial",
        "none",
    ];
    args.extend_from_slice(extra);
    kiln(&args)
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn debug_exit_value_becomes_the_exit_code() {
    let out = run_guest(
        "debug_exit.elf",
        &["--debug-exit", "0xf4", "--timeout", "10s"],
    );
    assert_eq!(out.status.code(), Some(67), "{}", stderr(&out));
    // Without the device the write goes nowhere and the guest halts: timeout.
    let out = run_guest("debug_exit.elf", &["--timeout", "300ms"]);
    assert_eq!(out.status.code(), Some(124), "{}", stderr(&out));
}

#[test]
fn timeout_exits_124_with_a_message() {
    let started = std::time::Instant::now();
    let out = run_guest("hang.elf", &["--timeout", "1s"]);
    assert_eq!(out.status.code(), Some(124), "{}", stderr(&out));
    assert!(stderr(&out).contains("timeout"), "{}", stderr(&out));
    let took = started.elapsed();
    // Stopped, not left to hang (the bound is loose: CI hosts stall).
    assert!(
        took.as_millis() >= 1000 && took.as_secs() < 30,
        "took {took:?}"
    );
}

#[test]
fn triple_fault_is_a_reset_exit_2() {
    let out = run_guest("triple_fault.elf", &["--timeout", "10s"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("triple fault"), "{}", stderr(&out));
}

#[test]
fn i8042_reset_exits_2_or_reboots() {
    let out = run_guest("i8042_reset.elf", &["--timeout", "10s"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("i8042"), "{}", stderr(&out));
    // With --on-reset reboot the guest resets again after every boot, until the
    // timeout.
    let out = run_guest(
        "i8042_reset.elf",
        &["--on-reset", "reboot", "--timeout", "1s"],
    );
    assert_eq!(out.status.code(), Some(124), "{}", stderr(&out));
    let reboots = stderr(&out).matches("rebooting").count();
    assert!(reboots >= 2, "{reboots} reboots: {}", stderr(&out));
}

#[test]
fn acpi_sleep_register_powers_off_with_0() {
    let out = run_guest("acpi_poweroff.elf", &["--timeout", "10s"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
}

#[test]
fn serial_output_goes_where_asked() {
    let path = guest("serial_hello.elf");
    let kernel = path.to_str().unwrap();
    let common = ["--debug-exit", "0xf4", "--timeout", "10s"];
    let out = kiln(
        &[
            &["run", "--kernel", kernel, "--serial", "stdio"][..],
            &common,
        ]
        .concat(),
    );
    assert_eq!(out.status.code(), Some(67));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "hello from kiln guest\n"
    );

    let file = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("serial-hello.log");
    let arg = format!("file={}", file.display());
    let out = kiln(&[&["run", "--kernel", kernel, "--serial", &arg][..], &common].concat());
    assert_eq!(out.status.code(), Some(67));
    assert!(out.stdout.is_empty());
    assert_eq!(
        std::fs::read_to_string(&file).unwrap(),
        "hello from kiln guest\n"
    );

    let out = kiln(
        &[
            &["run", "--kernel", kernel, "--serial", "none"][..],
            &common,
        ]
        .concat(),
    );
    assert_eq!(out.status.code(), Some(67));
    assert!(out.stdout.is_empty());
}

#[test]
fn a_serial_stdout_nobody_reads_holds_the_guest_for_five_seconds_only() {
    use std::io::Read;
    use std::process::Stdio;
    // 256 KiB to a pipe nobody reads yet (a paused pager): written directly, the
    // guest's vCPU would wait in write(2) for as long as nobody reads.
    let path = guest("serial_flood.elf");
    let mut child = Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args(["run", "--kernel", path.to_str().unwrap()])
        .args([
            "--serial",
            "stdio",
            "--debug-exit",
            "0xf4",
            "--timeout",
            "60s",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run kiln");
    let start = std::time::Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if start.elapsed() > std::time::Duration::from_secs(45) {
            child.kill().unwrap();
            panic!("kiln waited for its stdout to be read");
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    assert_eq!(status.code(), Some(67), "{err}");
    assert!(
        err.contains("serial: the output took nothing for 5s; dropping the guest's output"),
        "{err}"
    );
    // What the pipe held before the stall is intact: the guest's first lines.
    let mut out = Vec::new();
    child.stdout.take().unwrap().read_to_end(&mut out).unwrap();
    let line = b"kiln serial flood 0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHI\n";
    assert!(out.len() >= 32 << 10, "only {} bytes came out", out.len());
    assert!(out.len() < 256 << 10, "nothing was dropped");
    assert!(
        out.chunks(64).all(|c| line.starts_with(c)),
        "output mangled"
    );
}

#[test]
fn boot_timer_reports_milliseconds_on_stderr() {
    let out = run_guest("boot_timer.elf", &["--debug-exit", "0xf4", "--boot-timer"]);
    assert_eq!(out.status.code(), Some(67));
    let err = stderr(&out);
    let line = err
        .lines()
        .find(|l| l.starts_with("kiln: boot-timer: "))
        .unwrap_or_else(|| panic!("no boot-timer line in {err}"));
    let ms: u64 = line["kiln: boot-timer: ".len()..]
        .trim_end_matches(" ms")
        .parse()
        .unwrap();
    // Milliseconds, not some other unit.
    assert!(ms < 60_000, "{line}");
    // Without --boot-timer the port is not there.
    let out = run_guest("boot_timer.elf", &["--debug-exit", "0xf4"]);
    assert!(!stderr(&out).contains("boot-timer"));
}

#[test]
fn several_vcpus_start_and_the_bsp_runs() {
    // APs wait for INIT/SIPI; the BSP alone reports.
    let out = run_guest(
        "debug_exit.elf",
        &["--debug-exit", "0xf4", "--cpus", "4", "--timeout", "10s"],
    );
    assert_eq!(out.status.code(), Some(67), "{}", stderr(&out));
}

#[test]
fn pvm_profile_follows_the_host_and_the_flag() {
    let pvm_host = std::path::Path::new("/sys/module/kvm_pvm").exists();
    let out = run_guest("debug_exit.elf", &["-v", "--debug-exit", "0xf4"]);
    assert_eq!(out.status.code(), Some(67));
    assert_eq!(
        stderr(&out).contains("PVM profile: kernel parameters"),
        pvm_host,
        "{}",
        stderr(&out)
    );
    let out = run_guest(
        "debug_exit.elf",
        &["-v", "--debug-exit", "0xf4", "--no-host-quirks"],
    );
    assert_eq!(out.status.code(), Some(67));
    assert!(!stderr(&out).contains("PVM"), "{}", stderr(&out));
}

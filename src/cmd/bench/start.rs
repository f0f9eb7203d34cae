//! `kiln bench start`: time from process start to the guest's first I/O exit,
//! kiln against QEMU's microvm, on the same tiny PVH guest.
//!
//! The guest (`serial_hello.elf`) writes its first byte to COM1 as its very first
//! I/O instruction, then ends on the debug-exit port (exit status 67). Both VMMs
//! send the serial port to a pipe, so the time from spawning the VMM to the first
//! byte on that pipe is process start, VM set-up, the first KVM_RUN and the first
//! I/O exit, measured the same way for both without VM teardown. The time to
//! process exit is printed too.
//!
//! The timed kiln runs are plain `kiln run`, without logging. Extra `-v` runs
//! report kiln's own clock from `main` to the first I/O exit and its memory: peak
//! RSS (VmHWM, read at the end of the run) minus the resident guest RAM. wait4's
//! ru_maxrss cannot serve: for a child started with vfork semantics it also holds
//! the parent's RSS at the time of the spawn.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

#[derive(clap::Args)]
pub struct Args {
    /// Runs per VMM.
    #[arg(long, default_value_t = 9)]
    pub runs: usize,
    /// QEMU binary.
    #[arg(long, default_value = "qemu-system-x86_64")]
    pub qemu: String,
}

/// The guest's debug-exit value 0x21 gives exit status (0x21 << 1) | 1.
const EXPECTED_STATUS: i32 = 67;

fn median(times: &mut [Duration]) -> Duration {
    times.sort();
    times[times.len() / 2]
}

/// One run: spawn to the guest's first serial byte, and spawn to exit.
struct Timing {
    first_output: Duration,
    exit: Duration,
}

fn time_run(command: &mut Command, what: &str) -> anyhow::Result<(Timing, String)> {
    let start = Instant::now();
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot start {what}"))?;
    let mut stdout = child.stdout.take().context("no stdout pipe")?;
    let mut first = [0u8; 1];
    let got = stdout
        .read(&mut first)
        .context("reading the guest's serial output")?;
    let first_output = start.elapsed();
    let mut rest = Vec::new();
    let _ = stdout.read_to_end(&mut rest);
    let out = child
        .wait_with_output()
        .with_context(|| format!("waiting for {what}"))?;
    let exit = start.elapsed();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    if got == 0 || out.status.code() != Some(EXPECTED_STATUS) {
        bail!(
            "{what} ended with {} (serial output: {} bytes) instead of the guest's output and \
             debug-exit status {EXPECTED_STATUS}: {stderr}",
            out.status,
            got + rest.len()
        );
    }
    Ok((Timing { first_output, exit }, stderr))
}

/// `kiln run` on the guest; `verbose` adds `-v` for kiln's own memory and clock report.
fn kiln_command(guest: &Path, verbose: bool) -> anyhow::Result<Command> {
    let exe = std::env::current_exe().context("cannot find the kiln executable")?;
    let mut command = Command::new(exe);
    if verbose {
        command.arg("-v").env("RUST_LOG", "info");
    } else {
        command.env_remove("RUST_LOG");
    }
    command
        .args([
            "run",
            "--debug-exit",
            "0xf4",
            "--serial",
            "stdio",
            "--memory",
            "128M",
            "--net",
            "none",
        ])
        .arg("--kernel")
        .arg(guest);
    Ok(command)
}

fn qemu_command(qemu: &str, guest: &Path) -> Command {
    let mut command = Command::new(qemu);
    command
        .args([
            "-accel",
            "kvm",
            "-M",
            "microvm",
            "-nodefaults",
            "-no-user-config",
        ])
        .args(["-display", "none", "-m", "128M", "-serial", "stdio"])
        .args(["-device", "isa-debug-exit,iobase=0xf4"])
        .arg("-kernel")
        .arg(guest);
    command
}

/// The number after the first `label` in kiln's `-v` log.
fn number_after<T: std::str::FromStr>(stderr: &str, label: &str) -> Option<T> {
    let rest = stderr.split(label).nth(1)?;
    rest.split_whitespace().next()?.parse().ok()
}

/// "first I/O exit N ms" from kiln's `-v` log.
fn first_io_exit(stderr: &str) -> Option<f64> {
    number_after(stderr, "first I/O exit ")
}

/// kiln's memory as its `-v` report gives it.
struct MemoryReport {
    /// Peak RSS without guest RAM.
    non_guest_kib: u64,
    /// Resident guest RAM.
    guest_kib: u64,
    /// Anonymous memory that is not guest RAM.
    private_kib: u64,
}

fn memory_of(stderr: &str) -> Option<MemoryReport> {
    let non_guest_kib = number_after(stderr, "kiln itself at most ")?;
    let anon: u64 = number_after(stderr, "anonymous ")?;
    let guest_kib = number_after(stderr, "of which guest ")?;
    Some(MemoryReport {
        non_guest_kib,
        guest_kib,
        private_kib: anon.saturating_sub(guest_kib),
    })
}

/// Runs of kiln's own `-v` report after the timed runs.
const VERBOSE_RUNS: usize = 3;

pub fn exec(args: Args) -> anyhow::Result<ExitCode> {
    if args.runs == 0 {
        bail!("--runs must be at least 1");
    }
    let dir = std::env::temp_dir().join(format!("kiln-bench-start-{}", std::process::id()));
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let guest: PathBuf = dir.join("serial_hello.elf");
    std::fs::write(&guest, kiln_vmm::guests::SERIAL_HELLO)
        .with_context(|| format!("cannot write {}", guest.display()))?;
    let result = bench(&args, &guest);
    let _ = std::fs::remove_dir_all(&dir);
    result
}

fn bench(args: &Args, guest: &Path) -> anyhow::Result<ExitCode> {
    let mut kiln_first = Vec::with_capacity(args.runs);
    let mut kiln_exit = Vec::with_capacity(args.runs);
    let mut qemu_first = Vec::with_capacity(args.runs);
    let mut qemu_exit = Vec::with_capacity(args.runs);
    // Interleave, so both see the same machine load.
    for _ in 0..args.runs {
        let (t, _) = time_run(&mut kiln_command(guest, false)?, "kiln")?;
        kiln_first.push(t.first_output);
        kiln_exit.push(t.exit);
        let (t, _) = time_run(&mut qemu_command(&args.qemu, guest), &args.qemu)?;
        qemu_first.push(t.first_output);
        qemu_exit.push(t.exit);
    }
    let mut internal = Vec::with_capacity(VERBOSE_RUNS);
    let mut reports = Vec::with_capacity(VERBOSE_RUNS);
    for _ in 0..VERBOSE_RUNS {
        let (_, stderr) = time_run(&mut kiln_command(guest, true)?, "kiln -v")?;
        internal.push(first_io_exit(&stderr).context("kiln did not report its first I/O exit")?);
        reports.push(memory_of(&stderr).context("kiln did not report its memory use")?);
    }
    println!("{} runs each, tiny PVH guest, 128 MiB:", args.runs);
    print_pair(
        "spawn to the guest's first I/O exit (first serial byte)",
        &mut kiln_first,
        &mut qemu_first,
    );
    print_pair(
        "spawn to process exit (includes VM teardown)",
        &mut kiln_exit,
        &mut qemu_exit,
    );
    internal.sort_by(f64::total_cmp);
    println!(
        "  kiln's own clock (-v runs), main() to the first I/O exit: median {:.2} ms (min {:.2})",
        internal[internal.len() / 2],
        internal[0]
    );
    let peak = reports.iter().map(|r| r.non_guest_kib).max().unwrap_or(0);
    let guest_kib = reports.iter().map(|r| r.guest_kib).max().unwrap_or(0);
    let private = reports.iter().map(|r| r.private_kib).max().unwrap_or(0);
    println!(
        "kiln peak RSS without guest RAM (-v runs, worst of {VERBOSE_RUNS}): {peak} KiB \
         ({:.2} MiB; VmHWM minus {guest_kib} KiB of resident guest RAM)",
        peak as f64 / 1024.0
    );
    println!(
        "  of which private (anonymous, not guest RAM): {private} KiB; the rest is kiln's \
         file-backed code and data"
    );
    Ok(ExitCode::SUCCESS)
}

fn print_pair(what: &str, kiln: &mut [Duration], qemu: &mut [Duration]) {
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let (k, q) = (median(kiln), median(qemu));
    println!("{what}:");
    println!("  kiln: median {:.2} ms (min {:.2})", ms(k), ms(kiln[0]));
    println!(
        "  qemu microvm: median {:.2} ms (min {:.2})",
        ms(q),
        ms(qemu[0])
    );
    println!("  ratio qemu/kiln: {:.1}x", ms(q) / ms(k));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_kilns_memory_line_and_takes_medians() {
        let log = "[INFO  kiln_vmm::vm] memory: peak RSS 4144 KiB, guest RAM resident 44 KiB, \
                   kiln itself at most 4100 KiB (now: anonymous 500 KiB of which guest 44 KiB, \
                   file-backed 3600 KiB)\n";
        let report = memory_of(log).unwrap();
        assert_eq!(
            (report.non_guest_kib, report.guest_kib, report.private_kib),
            (4100, 44, 456)
        );
        assert!(memory_of("nothing").is_none());
        let log = "[INFO  kiln_vmm::vcpu_exit] vCPU 0: first I/O exit 1.836 ms after start";
        assert_eq!(first_io_exit(log), Some(1.836));
        let mut t = [3, 1, 2].map(Duration::from_millis);
        assert_eq!(median(&mut t), Duration::from_millis(2));
    }
}

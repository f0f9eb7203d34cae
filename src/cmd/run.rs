//! `kiln run`: boot a kernel. Parses the options into a typed `VmConfig` once;
//! everything below works on typed values.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use kiln_vmm::{EntryChoice, OnReset, SerialOutput, VmConfig, VmExitStatus};

#[derive(clap::Args)]
pub struct Args {
    /// Kernel image: bzImage or ELF vmlinux (PVH entry used when present).
    #[arg(long)]
    pub kernel: PathBuf,
    /// Initial ramdisk, loaded high in guest memory.
    #[arg(long)]
    pub initrd: Option<PathBuf>,
    /// ELF vmlinux entry: auto (PVH if the image has the note), linux64 or pvh.
    #[arg(long, value_enum, default_value = "auto")]
    pub entry: EntryArg,
    /// Extra kernel command line, after kiln's own parameters.
    #[arg(long, default_value = "")]
    pub append: String,
    /// Guest memory: bytes, or with a K/M/G suffix.
    #[arg(long, default_value = "512M", value_parser = parse_size)]
    pub memory: u64,
    /// Number of vCPUs.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(1..=254))]
    pub cpus: u8,
    /// Serial console: stdio, file=PATH or none.
    #[arg(long, default_value = "stdio", value_parser = parse_serial)]
    pub serial: SerialOutput,
    /// Stop the guest after this long (e.g. 30s, 500ms, 2m) and exit with 124.
    #[arg(long, value_parser = parse_duration)]
    pub timeout: Option<Duration>,
    /// On a guest reset: exit (code 2) or reboot.
    #[arg(long, value_enum, default_value = "exit")]
    pub on_reset: OnResetArg,
    /// I/O port of an isa-debug-exit-like device: a write of V exits with (V << 1) | 1.
    #[arg(long, value_parser = parse_port)]
    pub debug_exit: Option<u16>,
    /// Log the time from kiln's start to the guest's boot-timer write (port 0x440, value 123).
    #[arg(long)]
    pub boot_timer: bool,
    /// Do not apply host compatibility profiles (PVM).
    #[arg(long)]
    pub no_host_quirks: bool,
}

#[derive(Clone, Copy, clap::ValueEnum)]
pub enum EntryArg {
    Auto,
    Linux64,
    Pvh,
}

#[derive(Clone, Copy, clap::ValueEnum)]
pub enum OnResetArg {
    Exit,
    Reboot,
}

fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let (digits, shift) = match s.char_indices().find(|(_, c)| !c.is_ascii_digit()) {
        None => (s, 0),
        Some((i, _)) => {
            let shift = match s[i..].to_ascii_uppercase().as_str() {
                "K" | "KB" | "KIB" => 10,
                "M" | "MB" | "MIB" => 20,
                "G" | "GB" | "GIB" => 30,
                other => return Err(format!("unknown size suffix {other:?} (use K, M or G)")),
            };
            (&s[..i], shift)
        }
    };
    let n: u64 = digits.parse().map_err(|_| format!("{s:?} is not a size"))?;
    n.checked_mul(1 << shift)
        .ok_or_else(|| format!("size {s:?} is too large"))
}

fn parse_serial(s: &str) -> Result<SerialOutput, String> {
    match s {
        "stdio" => Ok(SerialOutput::Stdio),
        "none" => Ok(SerialOutput::None),
        _ => match s.strip_prefix("file=") {
            Some(path) if !path.is_empty() => Ok(SerialOutput::File(PathBuf::from(path))),
            _ => Err(format!("{s:?}: expected stdio, file=PATH or none")),
        },
    }
}

fn parse_duration(s: &str) -> Result<Duration, String> {
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

fn parse_port(s: &str) -> Result<u16, String> {
    let parsed = match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        Some(hex) => u16::from_str_radix(hex, 16),
        None => s.parse(),
    };
    parsed.map_err(|_| format!("{s:?} is not an I/O port (0..=0xffff)"))
}

impl Args {
    fn into_config(self) -> VmConfig {
        let mut config = VmConfig::new(self.kernel);
        config.initrd = self.initrd;
        config.entry = match self.entry {
            EntryArg::Auto => EntryChoice::Auto,
            EntryArg::Linux64 => EntryChoice::Linux64,
            EntryArg::Pvh => EntryChoice::Pvh,
        };
        config.append = self.append;
        config.memory_bytes = self.memory;
        config.vcpus = self.cpus;
        config.serial = self.serial;
        config.timeout = self.timeout;
        config.on_reset = match self.on_reset {
            OnResetArg::Exit => OnReset::Exit,
            OnResetArg::Reboot => OnReset::Reboot,
        };
        config.debug_exit_port = self.debug_exit;
        config.boot_timer = self.boot_timer;
        config.host_quirks = !self.no_host_quirks;
        config
    }
}

pub fn exec(args: Args) -> anyhow::Result<ExitCode> {
    // kiln's clock for "since process start": taken before any VM work, right
    // after argument parsing (well under a millisecond after exec).
    let start = Instant::now();
    run_config(args.into_config(), start)
}

/// Run a VM and turn its outcome into kiln's exit code and message.
pub fn run_config(config: VmConfig, start: Instant) -> anyhow::Result<ExitCode> {
    let status = kiln_vmm::run(&config, start)?;
    match status {
        VmExitStatus::PowerOff => {}
        VmExitStatus::Reset(source) => eprintln!("kiln: guest reset ({source})"),
        VmExitStatus::DebugExit(v) => log::info!("guest wrote {v:#x} to the debug-exit port"),
        VmExitStatus::Timeout(t) => eprintln!("kiln: timeout: guest still running after {t:?}"),
    }
    Ok(ExitCode::from(status.exit_code()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_durations_ports_serial() {
        assert_eq!(parse_size("512M"), Ok(512 << 20));
        assert_eq!(parse_size("2G"), Ok(2 << 30));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert!(parse_size("12X").is_err());
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
}

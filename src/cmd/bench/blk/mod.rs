//! `kiln bench blk`: kiln's disk path against `qemu-img bench` on the same files.
//!
//! Every line runs the same requests (size, offsets, count, depth) through four
//! runners and prints ops/s, MB/s and kiln's ratio to the better QEMU run:
//! - kiln: the `DiskBackend` engine directly, depth N as N threads sharing one open disk;
//! - device: kiln's virtio-blk device model behind an in-process virtqueue of depth N,
//!   through its avail ring, io_uring (raw) or worker pool (qcow2), completion event
//!   and used ring (see `kiln_devices::virtio::block::harness`). One thread plays the
//!   driver and the event loop, so the guest costs nothing, as in `qemu-img bench`;
//!   `--device-thread` puts the device on its own event-loop thread as in a VM;
//! - `qemu-img bench -t writeback` with `-i io_uring` and with `-i threads`.
//!
//! With `--cache none` every runner bypasses the host page cache: kiln's runners open
//! the image as `--disk ...,cache=none` does (O_DIRECT), QEMU's get `-t none`.
//! `--qemu-cache` sets QEMU's mode apart, to compare each side in its own best mode.
//!
//! `qemu-img bench` has no random mode, so "random" is a stride of 7919 blocks modulo
//! the image size (which visits every block once, scattered) for all runners. Reads
//! start with the image evicted from the page cache (cold; `--warm`: read through
//! once, so every read hits the cache); writes go to a freshly
//! created, empty image, so they include allocation (4k-rand-rewrite: into the filled
//! image, allocated already). Each runner runs `--repeat` times per line, in rotating
//! order, and its best run is reported; with two or more rounds, a row under the line
//! gives the median and range of kiln's ratio round by round (each round's runs back
//! to back, so they share the host's state: on a shared host that is steadier than
//! the ratio of two best runs). Under each line, the CPU
//! time (user + system, all threads) each runner's best run spent per request: on a
//! host with few cores that, not the disk, can be what limits depth-64 lines.

mod image;
mod line;
mod report;
mod runners;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context};
use kiln_devices::block::config::Cache;
use kiln_devices::block::ImageFormat;
use kiln_devices::virtio::block::harness::EventLoopHarness;

use line::{Line, Pattern, PATTERNS, RUNNER_NAMES};

#[derive(clap::Args)]
pub struct Args {
    /// Directory for the image files (on the disk to measure, not tmpfs). It needs
    /// --size free per format, and what one line's runs write (up to --size per run);
    /// the bench checks before it starts.
    #[arg(long, default_value = ".")]
    dir: PathBuf,
    /// Image size.
    #[arg(long, default_value = "1G", value_parser = super::super::img::parse_size)]
    size: u64,
    /// Requests per line for 4 KiB lines. 64 KiB lines use a quarter (four times the
    /// bytes), so that a cold sequential run lasts long enough to measure, and none
    /// runs past the image's end.
    #[arg(long, default_value_t = 65536)]
    count: u64,
    /// Queue depths to run, comma-separated or repeated (the device runner supports up
    /// to 85).
    #[arg(long, value_delimiter = ',', default_value = "1,64")]
    depth: Vec<u32>,
    /// Rounds per line: each runs every runner once, in rotating order. The best run
    /// of each runner is reported, and with two or more rounds the median and range
    /// of kiln's ratio round by round (the host is shared, so single runs are noisy
    /// and order-dependent).
    #[arg(long, default_value_t = 3)]
    repeat: u32,
    /// Formats to run, comma-separated or repeated.
    #[arg(long, value_delimiter = ',', default_value = "qcow2,raw")]
    format: Vec<String>,
    /// Patterns to run, comma-separated or repeated (default: 4k-rand-read,
    /// 4k-rand-write, 64k-seq-read and 64k-seq-write; also 4k-rand-rewrite: random
    /// writes into the filled image, where every cluster is allocated already).
    #[arg(long, value_delimiter = ',')]
    pattern: Vec<String>,
    /// Runners to run, comma-separated or repeated (default: all of kiln, device,
    /// io_uring, threads); the ratios are to the better of the QEMU runners that ran.
    #[arg(long, value_delimiter = ',')]
    runner: Vec<String>,
    /// Run the device on its own event-loop thread, driven from this one through
    /// EventFds, as in a VM (adds the guest's thread wake-ups, which `qemu-img bench`
    /// does not have); by default one thread plays driver and event loop.
    #[arg(long)]
    device_thread: bool,
    /// Start read lines with the image in the host page cache (read through once)
    /// instead of evicted from it: what a guest rereading its working set sees.
    #[arg(long)]
    warm: bool,
    /// Host page cache for every runner: writeback, or none (O_DIRECT: kiln's
    /// cache=none, qemu-img's -t none).
    #[arg(long, default_value = "writeback", value_parser = parse_cache)]
    cache: Cache,
    /// QEMU's runners' host page cache, when it differs from --cache (qemu-img -t).
    #[arg(long, value_parser = parse_cache)]
    qemu_cache: Option<Cache>,
    /// Print one JSON document at the end instead of the table.
    #[arg(long)]
    json: bool,
}

/// The modes every runner can take alike: kiln's engine never flushes, so the modes
/// that differ in flushing (writethrough, unsafe) would compare different things.
fn parse_cache(s: &str) -> Result<Cache, String> {
    [Cache::Writeback, Cache::None]
        .into_iter()
        .find(|c| c.name() == s)
        .ok_or_else(|| format!("`{s}`: expected writeback or none"))
}

/// Deepest queue without the device runner: kiln's engine starts a thread per unit.
const MAX_THREAD_DEPTH: u32 = 1024;

impl Args {
    /// Whether `--runner` (or its default, all) includes the runner `name`.
    fn runs(&self, name: &str) -> bool {
        self.runner.is_empty() || self.runner.iter().any(|r| r == name)
    }

    fn qemu_cache(&self) -> Cache {
        self.qemu_cache.unwrap_or(self.cache)
    }

    fn patterns(&self) -> impl Iterator<Item = Pattern> + '_ {
        PATTERNS.into_iter().filter(|p| {
            if self.pattern.is_empty() {
                p.default
            } else {
                self.pattern.iter().any(|n| n == p.name)
            }
        })
    }
}

/// Requests of a line of pattern `p`.
fn requests(args: &Args, p: Pattern) -> u64 {
    // At 2 GB/s a sixteenth (the same bytes as the 4 KiB lines) was over in tens of
    // milliseconds, and start-up dominated its ratio.
    let count = if p.block == 4096 {
        args.count
    } else {
        args.count / 4
    };
    count.min(args.size / p.block).max(1)
}

/// Refuse to start what the disk under `dir` cannot hold: the filled image of each
/// format (read lines) and one line's fresh images, which stay until the line ends
/// (see `Line::rounds`).
fn check_free_space(args: &Args) -> anyhow::Result<()> {
    let filled = args.size * args.format.len() as u64;
    let runners = RUNNER_NAMES.iter().filter(|n| args.runs(n)).count() as u64;
    let per_line = args
        .patterns()
        .filter(Pattern::fresh_image)
        .map(|p| requests(args, p) * p.block)
        .max()
        .map_or(0, |bytes| {
            bytes.min(args.size) * runners * u64::from(args.repeat.max(1))
        });
    let need = filled + per_line;
    let free = free_bytes(&args.dir)
        .with_context(|| format!("cannot tell the free space of {}", args.dir.display()))?;
    if free < need {
        bail!(
            "kiln bench blk needs about {} MiB free in {} ({} MiB of images to read, {} MiB \
             written by one line's runs), and {} MiB are free: give a smaller --size, \
             --count or --repeat, or another --dir",
            need >> 20,
            args.dir.display(),
            filled >> 20,
            per_line >> 20,
            free >> 20
        );
    }
    Ok(())
}

fn free_bytes(dir: &Path) -> std::io::Result<u64> {
    let path = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes())
        .map_err(std::io::Error::other)?;
    // SAFETY: an all-zero statvfs is a valid value of this plain C struct.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `path` is NUL-terminated and outlives the call; `st` is writable.
    if unsafe { libc::statvfs(path.as_ptr(), &mut st) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(st.f_bavail as u64 * st.f_frsize as u64)
}

pub fn exec(args: Args) -> anyhow::Result<ExitCode> {
    if args.size % 65536 != 0 || args.size < 64 << 20 {
        bail!("--size must be a multiple of 64 KiB and at least 64M");
    }
    if let Some(p) = args
        .pattern
        .iter()
        .find(|p| !PATTERNS.iter().any(|k| k.name == p.as_str()))
    {
        let known: Vec<_> = PATTERNS.iter().map(|k| k.name).collect();
        bail!("unknown --pattern {p}; known: {}", known.join(", "));
    }
    if let Some(r) = args
        .runner
        .iter()
        .find(|r| !RUNNER_NAMES.contains(&r.as_str()))
    {
        bail!("unknown --runner {r}; known: {}", RUNNER_NAMES.join(", "));
    }
    let max_depth = if args.runs("device") {
        EventLoopHarness::MAX_DEPTH as u32
    } else {
        MAX_THREAD_DEPTH
    };
    if let Some(d) = args.depth.iter().find(|&&d| d == 0 || d > max_depth) {
        bail!("--depth {d} is out of range: 1..={max_depth}");
    }
    std::fs::create_dir_all(&args.dir)
        .with_context(|| format!("cannot create {}", args.dir.display()))?;
    check_free_space(&args)?;
    let dir = args
        .dir
        .join(format!("kiln-bench-blk-{}", std::process::id()));
    std::fs::create_dir(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let result = run_all(&args, &dir);
    let _ = std::fs::remove_dir_all(&dir);
    result?;
    Ok(ExitCode::SUCCESS)
}

fn run_all(args: &Args, dir: &Path) -> anyhow::Result<()> {
    let mut results = Vec::new();
    if !args.json {
        report::print_header(args);
    }
    for fmt in &args.format {
        let format: ImageFormat = fmt.parse().map_err(|e| anyhow::anyhow!("{e}"))?;
        let filled = dir.join(format!("filled.{fmt}"));
        image::make_image(&filled, format, args.size)?;
        image::fill(&filled, args.size)?;
        for p in args.patterns() {
            for &depth in &args.depth {
                let line = Line {
                    pattern: p,
                    depth,
                    count: requests(args, p),
                    size: args.size,
                    format,
                    device_thread: args.device_thread,
                    warm: args.warm,
                    cache: args.cache,
                    qemu_cache: args.qemu_cache(),
                };
                let enabled = RUNNER_NAMES.map(|n| args.runs(n));
                let rounds = line.rounds(args.repeat, dir, &filled, enabled);
                let result = report::LineResult::new(line, rounds);
                if !args.json {
                    result.print();
                }
                results.push(result);
            }
        }
    }
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&report::to_json(args, &results))?
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: super::Args,
    }

    fn depths(argv: &[&str]) -> Vec<u32> {
        Cli::try_parse_from(std::iter::once("bench").chain(argv.iter().copied()))
            .map(|c| c.args.depth)
            .unwrap_or_default()
    }

    #[test]
    fn depths_default_to_1_and_64_and_take_lists_either_way() {
        assert_eq!(depths(&[]), [1, 64]);
        assert_eq!(depths(&["--depth", "1,8,64"]), [1, 8, 64]);
        assert_eq!(depths(&["--depth", "4", "--depth", "16"]), [4, 16]);
    }
}

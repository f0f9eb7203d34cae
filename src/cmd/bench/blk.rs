//! `kiln bench blk`: kiln's disk backends against `qemu-img bench` on the same files.
//!
//! Every line runs the same requests (size, offsets, count, depth) through kiln's
//! `DiskBackend` and through `qemu-img bench -t writeback` with `-i io_uring` and
//! `-i threads`, and prints ops/s, MB/s and kiln's ratio to the better QEMU run.
//! `qemu-img bench` has no random mode, so "random" is a stride of 7919 blocks
//! modulo the image size (which visits every block once, scattered) for both.
//! Reads start with the image evicted from the page cache (cold); writes go to a
//! freshly created, empty image, so they include allocation. Depth N for kiln is N
//! worker threads sharing one open disk. Each runner runs `--repeat` times per line,
//! in rotating order, and its best run is reported.

use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Context};
use kiln_devices::block::create::{create_image, CreateOptions};
use kiln_devices::block::{open_disk, DiskBackend, DiskConfig, ImageFormat};

#[derive(clap::Args)]
pub struct Args {
    /// Directory for the image files (on the disk to measure, not tmpfs).
    #[arg(long, default_value = ".")]
    dir: PathBuf,
    /// Image size.
    #[arg(long, default_value = "1G", value_parser = super::super::img::parse_size)]
    size: u64,
    /// Requests per line for 4 KiB lines (64 KiB lines use a sixteenth).
    #[arg(long, default_value_t = 65536)]
    count: u64,
    /// Queue depths to run.
    #[arg(long, value_delimiter = ',', default_values_t = vec![1u32, 64])]
    depth: Vec<u32>,
    /// Runs per line and runner, in rotating order; the best of each is reported (the
    /// host is shared, so single runs are noisy and order-dependent).
    #[arg(long, default_value_t = 3)]
    repeat: u32,
    /// Formats to run.
    #[arg(long, value_delimiter = ',', default_values_t = vec!["qcow2".to_string(), "raw".to_string()])]
    format: Vec<String>,
}

#[derive(Clone, Copy)]
struct Pattern {
    name: &'static str,
    block: u64,
    write: bool,
    random: bool,
}

const PATTERNS: [Pattern; 4] = [
    Pattern {
        name: "4k-rand-read",
        block: 4096,
        write: false,
        random: true,
    },
    Pattern {
        name: "4k-rand-write",
        block: 4096,
        write: true,
        random: true,
    },
    Pattern {
        name: "64k-seq-read",
        block: 65536,
        write: false,
        random: false,
    },
    Pattern {
        name: "64k-seq-write",
        block: 65536,
        write: true,
        random: false,
    },
];

/// Blocks between consecutive random requests (prime, so the walk covers the image).
const RANDOM_STRIDE: u64 = 7919;

struct Run {
    ops: u64,
    secs: f64,
}

impl Run {
    fn ops_per_sec(&self) -> f64 {
        self.ops as f64 / self.secs
    }
    fn mb_per_sec(&self, block: u64) -> f64 {
        self.ops_per_sec() * block as f64 / 1e6
    }
}

pub fn exec(args: Args) -> anyhow::Result<ExitCode> {
    if args.size % 65536 != 0 || args.size < 64 << 20 {
        bail!("--size must be a multiple of 64 KiB and at least 64M");
    }
    std::fs::create_dir_all(&args.dir)
        .with_context(|| format!("cannot create {}", args.dir.display()))?;
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
    println!(
        "{:<6} {:<14} {:>3} | {:>10} {:>8} | {:>10} {:>8} | {:>10} {:>8} | {:>6}",
        "format",
        "pattern",
        "QD",
        "kiln op/s",
        "MB/s",
        "io_uring",
        "MB/s",
        "threads",
        "MB/s",
        "ratio"
    );
    for fmt in &args.format {
        let format: ImageFormat = fmt.parse().map_err(|e| anyhow::anyhow!("{e}"))?;
        let filled = dir.join(format!("filled.{fmt}"));
        make_image(&filled, format, args.size)?;
        fill(&filled, args.size)?;
        for p in PATTERNS {
            for &depth in &args.depth {
                let count = if p.block == 4096 {
                    args.count
                } else {
                    args.count / 16
                };
                let count = count.min(args.size / p.block).max(1);
                let line = Line {
                    pattern: p,
                    depth,
                    count,
                    size: args.size,
                    format,
                };
                let [kiln, uring, threads] = line.best_of(args.repeat, dir, &filled);
                let (kiln, threads) = (kiln?, threads?);
                line.print(&kiln, uring.as_ref().ok(), &threads);
                if let Err(e) = uring {
                    println!("    (qemu-img bench -i io_uring unavailable: {e:#})");
                }
            }
        }
    }
    Ok(())
}

#[derive(Clone, Copy)]
enum Runner {
    Kiln,
    Qemu(&'static str),
}

struct Line {
    pattern: Pattern,
    depth: u32,
    count: u64,
    size: u64,
    format: ImageFormat,
}

impl Line {
    fn measure(&self, dir: &Path, filled: &Path, runner: Runner) -> anyhow::Result<Run> {
        let image = if self.pattern.write {
            // A new name each time: unlinking a big file can take seconds (ext4 with
            // online discard), so the files go only when the run is over.
            static FRESH: AtomicU64 = AtomicU64::new(0);
            let n = FRESH.fetch_add(1, Ordering::Relaxed);
            let fresh = dir.join(format!("fresh{n}.{}", self.format));
            make_image(&fresh, self.format, self.size)?;
            fresh
        } else {
            evict(filled)?;
            filled.to_owned()
        };
        match runner {
            Runner::Kiln => self.run_kiln(&image),
            Runner::Qemu(aio) => self.run_qemu(&image, aio),
        }
    }

    /// Best run of each runner (kiln, io_uring, threads) over `repeat` rounds, starting
    /// each round with a different runner.
    fn best_of(&self, repeat: u32, dir: &Path, filled: &Path) -> [anyhow::Result<Run>; 3] {
        let runners = [
            Runner::Kiln,
            Runner::Qemu("io_uring"),
            Runner::Qemu("threads"),
        ];
        let mut best: [anyhow::Result<Run>; 3] =
            std::array::from_fn(|_| Err(anyhow::anyhow!("not run")));
        for round in 0..repeat.max(1) as usize {
            for k in 0..runners.len() {
                let i = (round + k) % runners.len();
                let run = self.measure(dir, filled, runners[i]);
                best[i] = match (
                    std::mem::replace(&mut best[i], Err(anyhow::anyhow!("taken"))),
                    run,
                ) {
                    (Ok(old), Ok(new)) => Ok(if new.secs < old.secs { new } else { old }),
                    (_, Ok(new)) => Ok(new),
                    (Ok(old), Err(_)) => Ok(old),
                    (Err(_), Err(e)) => Err(e),
                };
            }
        }
        best
    }

    fn offset(&self, i: u64) -> u64 {
        let blocks = self.size / self.pattern.block;
        let step = if self.pattern.random {
            RANDOM_STRIDE
        } else {
            1
        };
        (i.wrapping_mul(step) % blocks) * self.pattern.block
    }

    fn run_kiln(&self, image: &Path) -> anyhow::Result<Run> {
        let disk = open_disk(&DiskConfig {
            path: image.to_owned(),
            format: Some(self.format),
            readonly: !self.pattern.write,
            serial: None,
        })?;
        let next = Arc::new(AtomicU64::new(0));
        let start = Instant::now();
        std::thread::scope(|s| -> anyhow::Result<()> {
            let workers: Vec<_> = (0..self.depth)
                .map(|_| s.spawn(|| self.worker(disk.as_ref(), &next)))
                .collect();
            for w in workers {
                w.join()
                    .map_err(|_| anyhow::anyhow!("bench worker panicked"))??;
            }
            Ok(())
        })?;
        let secs = start.elapsed().as_secs_f64();
        drop(disk); // qcow2: metadata written back before the next run
        Ok(Run {
            ops: self.count,
            secs,
        })
    }

    fn worker(&self, disk: &dyn DiskBackend, next: &AtomicU64) -> anyhow::Result<()> {
        let mut buf = vec![0x5au8; self.pattern.block as usize];
        loop {
            let i = next.fetch_add(1, Ordering::Relaxed);
            if i >= self.count {
                return Ok(());
            }
            let off = self.offset(i);
            if self.pattern.write {
                disk.write_at(&buf, off)?;
            } else {
                disk.read_at(&mut buf, off)?;
            }
        }
    }

    fn run_qemu(&self, image: &Path, aio: &str) -> anyhow::Result<Run> {
        let step = self.pattern.block
            * if self.pattern.random {
                RANDOM_STRIDE
            } else {
                1
            };
        let mut cmd = Command::new("qemu-img");
        cmd.args([
            "bench",
            "-f",
            self.format.name(),
            "-t",
            "writeback",
            "-i",
            aio,
        ])
        .args(["-d", &self.depth.to_string(), "-c", &self.count.to_string()])
        .args([
            "-s",
            &self.pattern.block.to_string(),
            "-S",
            &step.to_string(),
        ]);
        if self.pattern.write {
            cmd.arg("-w");
        }
        let out = cmd
            .arg(image)
            .output()
            .context("cannot run qemu-img (install qemu-utils)")?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        if !out.status.success() {
            bail!("qemu-img bench failed: {}", text.trim());
        }
        // "Run completed in 1.234 seconds."
        let secs = text
            .split("Run completed in ")
            .nth(1)
            .and_then(|r| r.split_whitespace().next())
            .and_then(|s| s.parse::<f64>().ok())
            .with_context(|| format!("unexpected qemu-img bench output: {}", text.trim()))?;
        Ok(Run {
            ops: self.count,
            secs,
        })
    }

    fn print(&self, kiln: &Run, uring: Option<&Run>, threads: &Run) {
        let b = self.pattern.block;
        let best = uring
            .map_or(0.0, Run::ops_per_sec)
            .max(threads.ops_per_sec());
        let (u_ops, u_mb) = uring.map_or(("n/a".into(), "n/a".into()), |u| {
            (
                format!("{:.0}", u.ops_per_sec()),
                format!("{:.1}", u.mb_per_sec(b)),
            )
        });
        println!(
            "{:<6} {:<14} {:>3} | {:>10.0} {:>8.1} | {:>10} {:>8} | {:>10.0} {:>8.1} | {:>6.2}",
            self.format.name(),
            self.pattern.name,
            self.depth,
            kiln.ops_per_sec(),
            kiln.mb_per_sec(b),
            u_ops,
            u_mb,
            threads.ops_per_sec(),
            threads.mb_per_sec(b),
            kiln.ops_per_sec() / best
        );
    }
}

fn make_image(path: &Path, format: ImageFormat, size: u64) -> anyhow::Result<()> {
    let opts = CreateOptions {
        format,
        size: Some(size),
        backing: None,
        cluster_size: None,
    };
    create_image(path, &opts).with_context(|| format!("cannot create {}", path.display()))
}

/// Write every byte once so reads hit allocated data.
fn fill(path: &Path, size: u64) -> anyhow::Result<()> {
    let disk = open_disk(&DiskConfig {
        path: path.to_owned(),
        format: None,
        readonly: false,
        serial: None,
    })?;
    let chunk: Vec<u8> = (0..1 << 20).map(|i: u32| (i % 253) as u8).collect();
    for off in (0..size).step_by(chunk.len()) {
        disk.write_at(&chunk[..chunk.len().min((size - off) as usize)], off)?;
    }
    disk.flush()?;
    drop(disk);
    // Read the file once: under a VM the first read after writing is slow at the host
    // level, and it must not be charged to whichever runner happens to go first.
    let mut f = std::fs::File::open(path)?;
    std::io::copy(&mut f, &mut std::io::sink())?;
    Ok(())
}

/// Drop the file's pages from the host page cache (cold-cache reads).
fn evict(path: &Path) -> anyhow::Result<()> {
    let f = std::fs::File::open(path)?;
    f.sync_all()?;
    // SAFETY: posix_fadvise only takes integers; the fd stays open for the call.
    let rc = unsafe { libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
    if rc != 0 {
        bail!(
            "posix_fadvise on {}: {}",
            path.display(),
            std::io::Error::from_raw_os_error(rc)
        );
    }
    Ok(())
}

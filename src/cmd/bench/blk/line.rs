//! One line of the table: a request pattern at a queue depth on one image format, run
//! by every runner in rotating order.

use std::os::unix::io::AsRawFd;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use kiln_devices::block::config::Cache;
use kiln_devices::block::ImageFormat;

use super::image::{evict, make_image, read_through};

#[derive(Clone, Copy)]
pub struct Pattern {
    pub name: &'static str,
    pub block: u64,
    pub write: bool,
    pub random: bool,
    /// Writes into the filled image (every cluster allocated) instead of a fresh one:
    /// a VM disk's steady state, where no write allocates.
    pub rewrite: bool,
    /// Run when no --pattern is given.
    pub default: bool,
}

pub const PATTERNS: [Pattern; 5] = [
    Pattern {
        name: "4k-rand-read",
        block: 4096,
        write: false,
        random: true,
        rewrite: false,
        default: true,
    },
    Pattern {
        name: "4k-rand-write",
        block: 4096,
        write: true,
        random: true,
        rewrite: false,
        default: true,
    },
    Pattern {
        name: "64k-seq-read",
        block: 65536,
        write: false,
        random: false,
        rewrite: false,
        default: true,
    },
    Pattern {
        name: "64k-seq-write",
        block: 65536,
        write: true,
        random: false,
        rewrite: false,
        default: true,
    },
    Pattern {
        name: "4k-rand-rewrite",
        block: 4096,
        write: true,
        random: true,
        rewrite: true,
        default: false,
    },
];

impl Pattern {
    /// Whether each run writes into a fresh, empty image (so that it allocates).
    pub fn fresh_image(&self) -> bool {
        self.write && !self.rewrite
    }
}

/// Blocks between consecutive random requests (prime, so the walk covers the image).
pub const RANDOM_STRIDE: u64 = 7919;

pub struct Run {
    pub ops: u64,
    pub secs: f64,
    /// CPU time (user + system, all threads) the runner spent on the requests.
    pub cpu_secs: f64,
}

impl Run {
    pub fn cpu_us_per_op(&self) -> f64 {
        self.cpu_secs * 1e6 / self.ops as f64
    }
    pub fn ops_per_sec(&self) -> f64 {
        self.ops as f64 / self.secs
    }
    pub fn mb_per_sec(&self, block: u64) -> f64 {
        self.ops_per_sec() * block as f64 / 1e6
    }
}

/// Who runs the requests.
#[derive(Clone, Copy)]
pub enum Runner {
    /// kiln's `DiskBackend`, one thread per unit of depth.
    Backend,
    /// kiln's virtio-blk device model behind an in-process virtqueue of that depth.
    Device,
    /// `qemu-img bench -t writeback|none -i <aio>`.
    Qemu(&'static str),
}

/// The runners of a line, in table order, and their `--runner` names.
pub const RUNNER_NAMES: [&str; 4] = ["kiln", "device", "io_uring", "threads"];
pub const RUNNERS: [Runner; 4] = [
    Runner::Backend,
    Runner::Device,
    Runner::Qemu("io_uring"),
    Runner::Qemu("threads"),
];

pub struct Line {
    pub pattern: Pattern,
    pub depth: u32,
    pub count: u64,
    pub size: u64,
    pub format: ImageFormat,
    /// The device runner puts the device on its own event-loop thread.
    pub device_thread: bool,
    /// Reads start with the image in the host page cache, not evicted from it.
    pub warm: bool,
    /// kiln's runners' host page cache mode (`Cache::None`: O_DIRECT).
    pub cache: Cache,
    /// QEMU's runners' (`-t none` or `-t writeback`).
    pub qemu_cache: Cache,
}

impl Line {
    fn measure(&self, dir: &Path, filled: &Path, runner: Runner) -> anyhow::Result<Run> {
        let image = if self.pattern.fresh_image() {
            // A new name each time: unlinking a big file can take seconds (ext4 with
            // online discard), so the files go only when the run is over.
            static FRESH: AtomicU64 = AtomicU64::new(0);
            let n = FRESH.fetch_add(1, Ordering::Relaxed);
            let fresh = dir.join(format!("fresh{n}.{}", self.format));
            make_image(&fresh, self.format, self.size)?;
            log::debug!("made write image {}", fresh.display());
            fresh
        } else {
            self.start_cache(filled)?;
            filled.to_owned()
        };
        match runner {
            Runner::Backend => self.run_backend(&image),
            Runner::Device => self.run_device(&image),
            Runner::Qemu(aio) => self.run_qemu(&image, aio),
        }
    }

    /// Put the filled image in the state a read run starts from: evicted from the host
    /// page cache, or (`warm`) read through once.
    fn start_cache(&self, filled: &Path) -> anyhow::Result<()> {
        if self.warm {
            read_through(filled)
        } else {
            evict(filled)
        }
    }

    /// `repeat` rounds of every runner of [`RUNNERS`] whose `enabled` entry is set,
    /// each round starting with a different runner; `None` for runners not enabled.
    pub fn rounds(
        &self,
        repeat: u32,
        dir: &Path,
        filled: &Path,
        enabled: [bool; 4],
    ) -> Vec<[Option<anyhow::Result<Run>>; 4]> {
        let rounds = (0..repeat.max(1) as usize)
            .map(|round| {
                let mut runs: [Option<anyhow::Result<Run>>; 4] = Default::default();
                for k in 0..RUNNERS.len() {
                    let i = (round + k) % RUNNERS.len();
                    if enabled[i] {
                        runs[i] = Some(self.measure(dir, filled, RUNNERS[i]));
                    }
                }
                runs
            })
            .collect();
        // The line's write images go now, not after every run (unlinking, with ext4's
        // online discard, keeps the disk busy for seconds and would slow the next
        // run) nor at the end (all lines' images together filled 36 GB at --size 512M).
        remove_fresh_images(dir);
        rounds
    }

    /// Byte offset of request `i`.
    pub fn offset(&self, i: u64) -> u64 {
        let blocks = self.size / self.pattern.block;
        let step = if self.pattern.random {
            RANDOM_STRIDE
        } else {
            1
        };
        (i.wrapping_mul(step) % blocks) * self.pattern.block
    }
}

/// Remove the fresh images [`Line::measure`] made in `dir`, and wait for the file
/// system to have freed them: syncfs commits the journal, and with ext4's online
/// discard that is when the freed blocks are discarded, which would otherwise keep the
/// disk busy under the next line's first runs.
fn remove_fresh_images(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        if e.file_name().to_string_lossy().starts_with("fresh") {
            match std::fs::remove_file(e.path()) {
                Ok(()) => log::debug!("removed write image {}", e.path().display()),
                Err(err) => log::warn!("removing {}: {err}", e.path().display()),
            }
        }
    }
    if let Ok(d) = std::fs::File::open(dir) {
        // SAFETY: syncfs takes the descriptor of `d`, open for the call's duration.
        if unsafe { libc::syncfs(d.as_raw_fd()) } != 0 {
            log::debug!("syncfs: {}", std::io::Error::last_os_error());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kiln_devices::test_support::cached_pages;

    #[test]
    fn read_runs_start_cold_or_warm_as_asked() {
        const LEN: u64 = 1 << 20;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("filled.raw");
        std::fs::write(&path, vec![7u8; LEN as usize]).unwrap();
        let mut line = Line {
            pattern: PATTERNS[0],
            depth: 1,
            count: 1,
            size: LEN,
            format: ImageFormat::Raw,
            device_thread: false,
            warm: false,
            cache: Cache::Writeback,
            qemu_cache: Cache::Writeback,
        };
        line.start_cache(&path).unwrap();
        assert_eq!(cached_pages(&path, 0, LEN), 0, "cold start");
        line.warm = true;
        line.start_cache(&path).unwrap();
        assert_eq!(
            cached_pages(&path, 0, LEN),
            (LEN / 4096) as usize,
            "warm start"
        );
        line.warm = false;
        line.start_cache(&path).unwrap();
        assert_eq!(cached_pages(&path, 0, LEN), 0, "cold again");
    }
}

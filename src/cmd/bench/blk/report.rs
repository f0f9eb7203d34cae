//! The results of `kiln bench blk`: a table row per line, or one JSON document.

use kiln_devices::block::config::Cache;
use serde_json::{json, Value};

use super::line::{Line, Run, RUNNER_NAMES};
use super::Args;

/// A line, the best run of each runner (or why it has none), and the spread of kiln's
/// ratios round by round.
pub struct LineResult {
    line: Line,
    runs: [Option<anyhow::Result<Run>>; 4],
    /// Per round, kiln's engine and device over the better QEMU run of the same round:
    /// runs back to back share the host's state, so these are steadier than the ratio
    /// of two best runs taken minutes apart.
    round_ratios: [Vec<f64>; 2],
}

/// The better QEMU ops/s among `runs` (0 if neither ran).
fn qemu_best(runs: &[Option<&Run>; 4]) -> f64 {
    runs[2..]
        .iter()
        .flatten()
        .map(|r| r.ops_per_sec())
        .fold(0.0, f64::max)
}

impl LineResult {
    /// `rounds` of runs in [`RUNNER_NAMES`] order, `None` for runners not enabled.
    pub fn new(line: Line, rounds: Vec<[Option<anyhow::Result<Run>>; 4]>) -> Self {
        let mut round_ratios: [Vec<f64>; 2] = Default::default();
        for round in &rounds {
            let ok = round
                .each_ref()
                .map(|r| r.as_ref().and_then(|r| r.as_ref().ok()));
            let best = qemu_best(&ok);
            for (i, ratios) in round_ratios.iter_mut().enumerate() {
                if let Some(r) = ok[i].filter(|_| best > 0.0) {
                    ratios.push(r.ops_per_sec() / best);
                }
            }
        }
        let mut runs: [Option<anyhow::Result<Run>>; 4] = Default::default();
        for round in rounds {
            for (best, run) in runs.iter_mut().zip(round) {
                let Some(run) = run else { continue };
                *best = Some(match (best.take(), run) {
                    (Some(Ok(old)), Ok(new)) => Ok(if new.secs < old.secs { new } else { old }),
                    (Some(Ok(old)), Err(_)) => Ok(old),
                    (_, run) => run,
                });
            }
        }
        LineResult {
            line,
            runs,
            round_ratios,
        }
    }

    fn run(&self, i: usize) -> Option<&Run> {
        self.runs[i].as_ref()?.as_ref().ok()
    }

    /// Runner `i`'s best ops/s over the better best QEMU run.
    fn ratio(&self, i: usize) -> Option<f64> {
        let best = qemu_best(&[0, 1, 2, 3].map(|k| self.run(k)));
        self.run(i)
            .filter(|_| best > 0.0)
            .map(|r| r.ops_per_sec() / best)
    }

    /// Median, lowest and highest of runner `i`'s (0 or 1) round-by-round ratios.
    fn round_spread(&self, i: usize) -> Option<(f64, f64, f64)> {
        let mut v = self.round_ratios[i].clone();
        if v.is_empty() {
            return None;
        }
        v.sort_by(f64::total_cmp);
        let n = v.len();
        let median = if n % 2 == 1 {
            v[n / 2]
        } else {
            (v[n / 2 - 1] + v[n / 2]) / 2.0
        };
        Some((median, v[0], v[n - 1]))
    }

    pub fn print(&self) {
        let l = &self.line;
        let cells = |i: usize| {
            self.run(i).map_or(("n/a".into(), "n/a".into()), |r| {
                (
                    format!("{:.0}", r.ops_per_sec()),
                    format!("{:.1}", r.mb_per_sec(l.pattern.block)),
                )
            })
        };
        let ratio = |i: usize| self.ratio(i).map_or("n/a".into(), |r| format!("{r:.2}"));
        let cpu = |i: usize| {
            self.run(i)
                .map_or("n/a".into(), |r| format!("{:.1}", r.cpu_us_per_op()))
        };
        let [(k_ops, k_mb), (d_ops, d_mb), (u_ops, u_mb), (t_ops, t_mb)] = [0, 1, 2, 3].map(cells);
        println!(
            "{:<6} {:<14} {:>3} | {:>10} {:>8} | {:>10} {:>8} | {:>10} {:>8} | {:>10} {:>8} | {:>6} {:>6}",
            l.format.name(),
            l.pattern.name,
            l.depth,
            k_ops,
            k_mb,
            d_ops,
            d_mb,
            u_ops,
            u_mb,
            t_ops,
            t_mb,
            ratio(0),
            ratio(1)
        );
        println!(
            "{:<6} {:<14} {:>3} | {:>19} | {:>19} | {:>19} | {:>19} |",
            "",
            "  CPU us/request",
            "",
            cpu(0),
            cpu(1),
            cpu(2),
            cpu(3)
        );
        if self.round_ratios.iter().any(|r| r.len() > 1) {
            let spread = |i: usize| {
                self.round_spread(i).map_or("n/a".into(), |(med, lo, hi)| {
                    format!(
                        "{} median {med:.2} ({lo:.2}-{hi:.2})",
                        ["kiln", "device"][i]
                    )
                })
            };
            println!(
                "{:<6} {:<14} {:>3} | ratio by round, {} rounds: {}, {}",
                "",
                "",
                "",
                self.round_ratios[0].len().max(self.round_ratios[1].len()),
                spread(0),
                spread(1)
            );
        }
        for (i, run) in self.runs.iter().enumerate() {
            if let Some(Err(e)) = run {
                println!("    ({} runner failed: {e:#})", RUNNER_NAMES[i]);
            }
        }
    }

    fn to_json(&self) -> Value {
        let l = &self.line;
        let runner = |i: usize| match &self.runs[i] {
            None => Value::Null,
            Some(Err(e)) => json!({ "error": format!("{e:#}") }),
            Some(Ok(r)) => json!({
                "ops-per-sec": r.ops_per_sec(),
                "mb-per-sec": r.mb_per_sec(l.pattern.block),
                "cpu-us-per-request": r.cpu_us_per_op(),
                "seconds": r.secs,
            }),
        };
        json!({
            "format": l.format.name(),
            "pattern": l.pattern.name,
            "depth": l.depth,
            "requests": l.count,
            "runners": {
                "kiln": runner(0),
                "device": runner(1),
                "io_uring": runner(2),
                "threads": runner(3),
            },
            "ratio-kiln": self.ratio(0),
            "ratio-device": self.ratio(1),
            "round-ratios-kiln": self.round_ratios[0],
            "round-ratios-device": self.round_ratios[1],
            "round-ratio-median-kiln": self.round_spread(0).map(|s| s.0),
            "round-ratio-median-device": self.round_spread(1).map(|s| s.0),
        })
    }
}

pub fn print_header(args: &Args) {
    let qemu_cache = args.qemu_cache();
    if (args.cache, qemu_cache) != (Cache::Writeback, Cache::Writeback) {
        println!(
            "host page cache: kiln cache={}, qemu-img -t {}",
            args.cache.name(),
            qemu_cache.name()
        );
    }
    if args.warm {
        println!("reads: the image is in the host page cache when each run starts (--warm)");
    }
    if args.device_thread {
        println!("device: on its own event-loop thread, driven from another (--device-thread)");
    }
    println!(
        "{:<6} {:<14} {:>3} | {:>10} {:>8} | {:>10} {:>8} | {:>10} {:>8} | {:>10} {:>8} | {:>6} {:>6}",
        "format",
        "pattern",
        "QD",
        "kiln op/s",
        "MB/s",
        "device",
        "MB/s",
        "io_uring",
        "MB/s",
        "threads",
        "MB/s",
        "ratio",
        "device"
    );
}

/// The whole run: its settings and every line. Ratios are to the better QEMU run
/// (null where no QEMU runner ran); runners not asked for are null.
pub fn to_json(args: &Args, lines: &[LineResult]) -> Value {
    json!({
        "size": args.size,
        "repeat": args.repeat,
        "device-thread": args.device_thread,
        "warm": args.warm,
        "cache": args.cache.name(),
        "qemu-cache": args.qemu_cache().name(),
        "lines": lines.iter().map(LineResult::to_json).collect::<Vec<_>>(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cmd::bench::blk::line::PATTERNS;
    use kiln_devices::block::ImageFormat;

    /// A run of `ops_per_sec` (one request).
    fn run(ops_per_sec: f64) -> Option<anyhow::Result<Run>> {
        Some(Ok(Run {
            ops: 1,
            secs: 1.0 / ops_per_sec,
            cpu_secs: 0.0,
        }))
    }

    #[test]
    fn round_ratios_pair_runs_of_the_same_round_and_best_runs_are_kept() {
        let line = Line {
            pattern: PATTERNS[0],
            depth: 1,
            count: 1,
            size: 1 << 30,
            format: ImageFormat::Raw,
            device_thread: false,
            warm: false,
            cache: Cache::Writeback,
            qemu_cache: Cache::Writeback,
        };
        let failed = Some(Err(anyhow::anyhow!("qemu-img failed")));
        let result = LineResult::new(
            line,
            vec![
                // QEMU's better run is io_uring's 100.
                [run(100.0), run(90.0), run(100.0), run(80.0)],
                // A slow round: threads' 50 is QEMU's better run.
                [run(50.0), run(60.0), run(40.0), run(50.0)],
                // io_uring failed: threads' 20 alone; the device did not run.
                [run(30.0), None, failed, run(20.0)],
            ],
        );
        assert_eq!(result.round_ratios[0], vec![1.0, 1.0, 1.5]);
        assert_eq!(result.round_ratios[1], vec![0.9, 1.2]);
        assert_eq!(result.round_spread(0), Some((1.0, 1.0, 1.5)));
        let (median, lo, hi) = result.round_spread(1).unwrap();
        assert!((median - 1.05).abs() < 1e-9 && lo == 0.9 && hi == 1.2);
        // Best runs: 100, 90, 100 (the failure does not replace it), 80.
        let best = [0, 1, 2, 3].map(|i| result.run(i).unwrap().ops_per_sec());
        assert!(best
            .iter()
            .zip([100.0, 90.0, 100.0, 80.0])
            .all(|(got, want)| (got - want).abs() < 1e-6));
        assert!((result.ratio(1).unwrap() - 0.9).abs() < 1e-9);
    }
}

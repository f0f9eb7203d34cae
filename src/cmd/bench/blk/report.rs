//! The results of `kiln bench blk`: a table row per line, or one JSON document.

use serde_json::{json, Value};

use super::line::{Line, Run, RUNNER_NAMES};
use super::Args;

/// A line and the best run of each runner (or why it has none).
pub struct LineResult {
    line: Line,
    runs: [Option<anyhow::Result<Run>>; 4],
}

impl LineResult {
    /// `runs` in [`RUNNER_NAMES`] order; runners not `enabled` are dropped.
    pub fn new(line: Line, enabled: [bool; 4], runs: [anyhow::Result<Run>; 4]) -> Self {
        let mut runs = runs.map(Some);
        for (run, on) in runs.iter_mut().zip(enabled) {
            if !on {
                *run = None;
            }
        }
        LineResult { line, runs }
    }

    fn run(&self, i: usize) -> Option<&Run> {
        self.runs[i].as_ref()?.as_ref().ok()
    }

    /// The better of the QEMU runs, in ops/s (0 if neither ran).
    fn qemu_best(&self) -> f64 {
        (2..4)
            .filter_map(|i| self.run(i))
            .map(Run::ops_per_sec)
            .fold(0.0, f64::max)
    }

    /// Runner `i`'s ops/s over the better QEMU run.
    fn ratio(&self, i: usize) -> Option<f64> {
        let best = self.qemu_best();
        self.run(i)
            .filter(|_| best > 0.0)
            .map(|r| r.ops_per_sec() / best)
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
        })
    }
}

pub fn print_header(device_thread: bool) {
    if device_thread {
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
        "lines": lines.iter().map(LineResult::to_json).collect::<Vec<_>>(),
    })
}

//! kiln's logger: env_logger's filter (`RUST_LOG`, `-v`) and format, with each place
//! in the device models that logs at info level or above limited to a burst of lines
//! per window. A broken or hostile guest can make a device warn for every request it
//! sends, millions a second, which would bury everything else on stderr and fill CI
//! logs. The lines left out are counted; the count is reported before the call
//! site's next line in a later window, and at exit. The rest of kiln is not limited:
//! a CPU model's list of features the host lacks is shown whole, however long. Debug
//! and trace lines, asked for with `-vv`, are all kept.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use log::{Level, Log, Metadata, Record};

/// Lines one call site may log per window before the rest are counted, not shown.
const BURST: u32 = 10;
const WINDOW: Duration = Duration::from_secs(10);
/// Log targets (module paths) of the code that handles what guests send: kiln's
/// device models and the rust-vmm crates under them.
const GUEST_FACING: &[&str] = &["kiln_devices", "virtio_queue", "vm_superio", "vm_memory"];

fn guest_facing(target: &str) -> bool {
    GUEST_FACING.iter().any(|crate_name| {
        target
            .strip_prefix(crate_name)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with("::"))
    })
}

/// Install the logger at `level` unless `RUST_LOG` says otherwise.
pub fn init(level: &str) {
    let inner = env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(level))
        .format_timestamp(None)
        .build();
    let max = inner.filter();
    if log::set_boxed_logger(Box::new(RateLimited::new(inner, BURST, WINDOW))).is_ok() {
        log::set_max_level(max);
    }
}

/// A call site: the file and line of the `log!`.
type Site = (&'static str, u32);

struct SiteState {
    window_start: Instant,
    shown: u32,
    left_out: u64,
    /// Of the lines left out, for reporting them at exit.
    level: Level,
    target: &'static str,
}

/// What to do with one record.
#[derive(Debug, PartialEq, Eq)]
struct Verdict {
    /// Lines this site had left out in its last window, to report first.
    report_left_out: u64,
    show: bool,
    /// This is the last line shown in this window: say that more will be left out.
    last_in_window: bool,
}

pub struct RateLimited<L> {
    inner: L,
    burst: u32,
    window: Duration,
    sites: Mutex<HashMap<Site, SiteState>>,
}

impl<L: Log> RateLimited<L> {
    pub fn new(inner: L, burst: u32, window: Duration) -> Self {
        RateLimited {
            inner,
            burst,
            window,
            sites: Mutex::new(HashMap::new()),
        }
    }

    fn judge(&self, site: Site, record: &Record, now: Instant) -> Verdict {
        let mut sites = self.sites.lock().unwrap_or_else(|e| e.into_inner());
        let fresh = || SiteState {
            window_start: now,
            shown: 0,
            left_out: 0,
            level: record.level(),
            target: record.module_path_static().unwrap_or("kiln"),
        };
        let state = sites.entry(site).or_insert_with(fresh);
        let mut report_left_out = 0;
        if now.saturating_duration_since(state.window_start) >= self.window {
            report_left_out = state.left_out;
            *state = fresh();
        }
        let show = state.shown < self.burst;
        if show {
            state.shown += 1;
        } else {
            state.left_out += 1;
        }
        Verdict {
            report_left_out,
            show,
            last_in_window: show && state.shown == self.burst,
        }
    }

    fn log_at(&self, record: &Record, now: Instant) {
        if !self.inner.enabled(record.metadata()) {
            return;
        }
        let site = record.file_static().zip(record.line());
        let limited = record.level() <= Level::Info && guest_facing(record.target());
        let Some(site) = site.filter(|_| limited) else {
            self.inner.log(record);
            return;
        };
        let verdict = self.judge(site, record, now);
        let note = |text: std::fmt::Arguments| {
            self.inner.log(
                &Record::builder()
                    .args(text)
                    .level(record.level())
                    .target(record.target())
                    .module_path_static(record.module_path_static())
                    .file_static(record.file_static())
                    .line(record.line())
                    .build(),
            )
        };
        if verdict.report_left_out > 0 {
            note(format_args!(
                "({} more lines like the next were left out)",
                verdict.report_left_out
            ));
        }
        if verdict.show {
            self.inner.log(record);
        }
        if verdict.last_in_window {
            note(format_args!(
                "(more lines like this within {} s are left out, and counted)",
                self.window.as_secs()
            ));
        }
    }
}

impl<L: Log> Log for RateLimited<L> {
    fn enabled(&self, metadata: &Metadata) -> bool {
        self.inner.enabled(metadata)
    }

    fn log(&self, record: &Record) {
        self.log_at(record, Instant::now());
    }

    /// Reports, per call site, the lines left out since its last report; `main` calls
    /// it before kiln exits.
    fn flush(&self) {
        let mut sites = self.sites.lock().unwrap_or_else(|e| e.into_inner());
        for (&(file, line), state) in sites.iter_mut().filter(|(_, s)| s.left_out > 0) {
            self.inner.log(
                &Record::builder()
                    .args(format_args!(
                        "({} more lines from {file}:{line} were left out)",
                        state.left_out
                    ))
                    .level(state.level)
                    .target(state.target)
                    .file_static(Some(file))
                    .line(Some(line))
                    .build(),
            );
            state.left_out = 0;
        }
        drop(sites);
        self.inner.flush();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Keeps the lines it is given.
    #[derive(Default)]
    struct Lines(Mutex<Vec<String>>);

    impl Log for Lines {
        fn enabled(&self, metadata: &Metadata) -> bool {
            metadata.level() <= Level::Debug && metadata.target() != "muted"
        }
        fn log(&self, record: &Record) {
            let line = format!("{} {}", record.level(), record.args());
            self.0.lock().unwrap().push(line);
        }
        fn flush(&self) {}
    }

    fn emit(logger: &RateLimited<Lines>, level: Level, line: u32, text: &str, at: Instant) {
        emit_to(
            logger,
            "kiln_devices::virtio::block::io",
            level,
            line,
            text,
            at,
        );
    }

    fn emit_to(
        logger: &RateLimited<Lines>,
        target: &str,
        level: Level,
        line: u32,
        text: &str,
        at: Instant,
    ) {
        let args = format_args!("{text}");
        let record = Record::builder()
            .args(args)
            .target(target)
            .level(level)
            .file_static(Some("devices/src/virtio/block/io.rs"))
            .line(Some(line))
            .build();
        logger.log_at(&record, at);
    }

    fn lines(logger: &RateLimited<Lines>) -> Vec<String> {
        std::mem::take(&mut *logger.inner.0.lock().unwrap())
    }

    #[test]
    fn a_flood_from_one_site_is_cut_to_a_burst_and_counted() {
        let logger = RateLimited::new(Lines::default(), 3, Duration::from_secs(10));
        let t0 = Instant::now();
        for i in 0..1000 {
            emit(&logger, Level::Warn, 57, &format!("bad request {i}"), t0);
        }
        // Another site, at the same time, is not held back by the first.
        emit(&logger, Level::Warn, 99, "other", t0);
        assert_eq!(
            lines(&logger),
            [
                "WARN bad request 0",
                "WARN bad request 1",
                "WARN bad request 2",
                "WARN (more lines like this within 10 s are left out, and counted)",
                "WARN other",
            ]
        );
        // Within the window: still left out.
        emit(
            &logger,
            Level::Warn,
            57,
            "bad request late",
            t0 + Duration::from_secs(9),
        );
        assert!(lines(&logger).is_empty());
        // At exit, what was left out is reported, once.
        logger.flush();
        assert_eq!(
            lines(&logger),
            ["WARN (998 more lines from devices/src/virtio/block/io.rs:57 were left out)"]
        );
        logger.flush();
        assert!(lines(&logger).is_empty());
        let late = t0 + Duration::from_secs(9);
        emit(&logger, Level::Warn, 57, "bad request later", late);
        // The next window says how many went, then shows a new burst.
        emit(
            &logger,
            Level::Warn,
            57,
            "bad request new",
            t0 + Duration::from_secs(10),
        );
        assert_eq!(
            lines(&logger),
            [
                "WARN (1 more lines like the next were left out)",
                "WARN bad request new",
            ]
        );
    }

    #[test]
    fn only_the_device_models_lines_above_debug_are_limited_and_filtered_ones_not_counted() {
        let logger = RateLimited::new(Lines::default(), 2, Duration::from_secs(10));
        let t0 = Instant::now();
        for _ in 0..5 {
            emit(&logger, Level::Debug, 1, "detail", t0);
            emit_to(&logger, "muted", Level::Warn, 2, "filtered", t0);
            emit_to(
                &logger,
                "kiln_vmm::vcpu",
                Level::Warn,
                3,
                "not a device",
                t0,
            );
            emit_to(&logger, "kiln_devicesx", Level::Warn, 4, "nor this", t0);
        }
        let want: Vec<String> = ["DEBUG detail", "WARN not a device", "WARN nor this"]
            .repeat(5)
            .iter()
            .map(|s| s.to_string())
            .collect();
        assert_eq!(lines(&logger), want);
        for _ in 0..2 {
            emit(&logger, Level::Error, 2, "shown", t0);
        }
        assert_eq!(lines(&logger).len(), 3, "two lines and the note");
    }
}

//! `kiln bench blk` end to end on tiny images: the JSON report, the runners it was
//! asked for (QEMU's through the real qemu-img), clean-up, and bad options.

mod common;

use common::kiln;
use serde_json::Value;

fn bench(dir: &std::path::Path, extra: &[&str]) -> std::process::Output {
    let dir = dir.to_str().unwrap();
    let mut args = vec![
        "bench", "blk", "--dir", dir, "--size", "64M", "--repeat", "1",
    ];
    args.extend_from_slice(extra);
    kiln().args(&args).output().expect("run kiln")
}

fn ops(runner: &Value) -> f64 {
    runner["ops-per-sec"].as_f64().unwrap_or(0.0)
}

#[test]
fn json_report_has_every_line_and_only_the_runners_asked_for() {
    let dir = tempfile::tempdir().unwrap();
    let out = bench(
        dir.path(),
        &[
            "--count",
            "256",
            "--depth",
            "1,4",
            "--format",
            "raw,qcow2",
            "--pattern",
            "4k-rand-read,4k-rand-write",
            "--runner",
            "kiln,device",
            "--json",
        ],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let report: Value = serde_json::from_slice(&out.stdout).expect("stdout is one JSON document");
    assert_eq!(report["size"], 64 << 20);
    assert_eq!(report["warm"], false);
    let lines = report["lines"].as_array().unwrap();
    let mut seen: Vec<String> = lines
        .iter()
        .map(|l| format!("{} {} {}", l["format"], l["pattern"], l["depth"]))
        .collect();
    seen.sort();
    assert_eq!(seen.len(), 8, "{seen:?}");
    seen.dedup();
    assert_eq!(seen.len(), 8, "a line twice: {seen:?}");
    for l in lines {
        assert_eq!(l["requests"], 256);
        for name in ["kiln", "device"] {
            let r = &l["runners"][name];
            assert!(ops(r) > 0.0, "{name} in {l}");
            assert!(r["cpu-us-per-request"].as_f64().unwrap() > 0.0, "{l}");
        }
        for name in ["io_uring", "threads"] {
            assert!(l["runners"][name].is_null(), "{name} ran unasked: {l}");
        }
        assert!(l["ratio-device"].is_null(), "a ratio without QEMU: {l}");
    }
    // The work directory and its images are gone.
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
}

#[test]
fn ratios_are_to_the_qemu_run() {
    let dir = tempfile::tempdir().unwrap();
    let out = bench(
        dir.path(),
        &[
            "--count",
            "512",
            "--depth",
            "4",
            "--format",
            "raw",
            "--pattern",
            "4k-rand-read",
            "--runner",
            "device,io_uring",
            "--json",
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    let line = &report["lines"][0];
    let (device, qemu) = (
        ops(&line["runners"]["device"]),
        ops(&line["runners"]["io_uring"]),
    );
    assert!(device > 0.0 && qemu > 0.0, "{line}");
    let ratio = line["ratio-device"].as_f64().unwrap();
    assert!((ratio - device / qemu).abs() < 1e-9, "{line}");
    // One round: its ratio is the same pair of runs.
    let rounds = line["round-ratios-device"].as_array().unwrap();
    assert_eq!(rounds.len(), 1, "{line}");
    assert!((rounds[0].as_f64().unwrap() - ratio).abs() < 1e-9, "{line}");
    assert_eq!(line["round-ratio-median-device"], rounds[0]);
    assert!(line["runners"]["kiln"].is_null());
}

#[test]
fn cache_none_runs_every_runner_and_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    for (extra, qemu_cache) in [
        (&["--cache", "none"][..], "none"),
        (
            &["--cache", "none", "--qemu-cache", "writeback"][..],
            "writeback",
        ),
    ] {
        let mut args = vec![
            "--count",
            "256",
            "--depth",
            "4",
            "--format",
            "raw,qcow2",
            "--pattern",
            "4k-rand-read,4k-rand-write",
            "--json",
        ];
        args.extend_from_slice(extra);
        let out = bench(dir.path(), &args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{extra:?}: {stderr}");
        let report: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(report["cache"], "none");
        assert_eq!(report["qemu-cache"], qemu_cache);
        let lines = report["lines"].as_array().unwrap();
        assert_eq!(lines.len(), 4);
        for l in lines {
            for name in ["kiln", "device", "io_uring", "threads"] {
                assert!(ops(&l["runners"][name]) > 0.0, "{name} in {l}");
            }
        }
    }
}

#[test]
fn bad_options_are_refused_by_name_and_leave_nothing_behind() {
    let dir = tempfile::tempdir().unwrap();
    for (extra, named) in [
        (&["--pattern", "4k-rand-nope"][..], "4k-rand-nope"),
        (&["--runner", "fio"][..], "fio"),
        (&["--format", "vmdk"][..], "vmdk"),
        (&["--depth", "86", "--runner", "device"][..], "86"),
        (&["--cache", "directsync"][..], "directsync"),
        (&["--qemu-cache", "unsafe"][..], "unsafe"),
    ] {
        let out = bench(dir.path(), extra);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{extra:?} accepted");
        assert!(stderr.contains(named), "{extra:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
    let out = kiln()
        .args([
            "bench",
            "blk",
            "--dir",
            dir.path().to_str().unwrap(),
            "--size",
            "1M",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--size"));
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    // More than the disk holds: refused before any image is made, the need named.
    let out = kiln()
        .args(["bench", "blk", "--dir", dir.path().to_str().unwrap()])
        .args(["--size", "1P", "--pattern", "64k-seq-write"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("needs about 2147495936 MiB free"),
        "{stderr}"
    );
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
}

#[test]
fn each_line_removes_its_write_images_before_the_next() {
    let dir = tempfile::tempdir().unwrap();
    // Two write lines with every runner: by the second, the first's images are gone,
    // so the work directory never holds more than the filled image and one line's.
    // Followed through kiln's debug log, which names each image as it is made and
    // removed: watching the directory missed images that lived under a millisecond.
    let out = kiln()
        .env("RUST_LOG", "kiln::cmd::bench=debug")
        .args(["bench", "blk", "--dir", dir.path().to_str().unwrap()])
        .args(["--size", "64M", "--repeat", "1", "--count", "64"])
        .args([
            "--depth",
            "1,2,4",
            "--format",
            "raw",
            "--pattern",
            "4k-rand-write",
        ])
        .args(["--runner", "kiln,device", "--json"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let (mut live, mut most, mut made) = (0, 0, 0);
    for line in stderr.lines() {
        if line.contains("made write image") {
            (live, made) = (live + 1, made + 1);
            most = std::cmp::max(most, live);
        } else if line.contains("removed write image") {
            live -= 1;
        }
    }
    // Three lines of 2 runners each; one line's 2 at most at once, none left over.
    assert_eq!(made, 6, "{stderr}");
    assert_eq!(most, 2, "{stderr}");
    assert_eq!(live, 0, "{stderr}");
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
}

#[test]
fn device_thread_and_warm_run_every_line_through_the_event_loop() {
    let dir = tempfile::tempdir().unwrap();
    let out = bench(
        dir.path(),
        &[
            "--count",
            "256",
            "--depth",
            "1,8",
            "--format",
            "raw,qcow2",
            "--pattern",
            "4k-rand-write,64k-seq-read",
            "--runner",
            "device",
            "--device-thread",
            "--warm",
            "--json",
        ],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["device-thread"], true);
    assert_eq!(report["warm"], true);
    let lines = report["lines"].as_array().unwrap();
    assert_eq!(lines.len(), 8);
    for l in lines {
        assert!(ops(&l["runners"]["device"]) > 0.0, "{l}");
        // 64 KiB lines run a quarter of --count; 4 KiB lines all of it.
        let expected = if l["pattern"] == "64k-seq-read" {
            64
        } else {
            256
        };
        assert_eq!(l["requests"], expected, "{l}");
    }
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
}

//! Helpers for the qcow2 tests that check kiln's backend against QEMU's tools.
#![allow(dead_code)] // each test binary uses a subset

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Arc;

use kiln_devices::block::{open_disk, DiskBackend, DiskConfig, ImageFormat};

mod holding;
#[allow(unused_imports)] // each test binary uses a subset
pub use holding::QemuHolding;

/// A loop device over a file, detached when dropped. Needs root and loop devices;
/// without them the test fails, naming what is missing.
pub struct LoopDevice(PathBuf);

impl LoopDevice {
    pub fn over(file: &Path) -> LoopDevice {
        let out = Command::new("losetup")
            .args(["--find", "--show", s(file)])
            .output()
            .expect("losetup (util-linux) must be installed");
        assert!(
            out.status.success(),
            "these tests need root and loop devices: losetup failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        LoopDevice(PathBuf::from(String::from_utf8(out.stdout).unwrap().trim()))
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for LoopDevice {
    fn drop(&mut self) {
        let _ = Command::new("losetup").arg("-d").arg(&self.0).status();
    }
}

/// Bytes the file system holds for `path` (its blocks, not its length).
pub fn allocated(path: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).unwrap().blocks() * 512
}

/// A path as command lines take it.
pub fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// `kiln ARGS`: what it did, which must not be a panic whatever it answers.
pub fn kiln(args: &[&str]) -> Output {
    let out = run(env!("CARGO_BIN_EXE_kiln"), args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    out
}

/// Run kiln, fail the test unless it succeeds; its stdout.
pub fn kiln_ok(args: &[&str]) -> String {
    let out = kiln(args);
    assert!(
        out.status.success(),
        "kiln {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// An empty directory `PREFIX-NAME` in the tests' scratch space.
pub fn fresh_dir(prefix: &str, name: &str) -> PathBuf {
    let d = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("{prefix}-{name}"));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// The ranges the image decides itself (data or zero clusters, not what its backing
/// file shows; adjacent ones merged, as map splits where host offsets jump), and how
/// many bytes of them are data, as `qemu-img map` sees them.
pub fn own_layer(image: &Path) -> (Vec<(u64, u64)>, u64) {
    let map: serde_json::Value =
        serde_json::from_str(&qemu_img(&["map", "--output=json", "-U", s(image)])).unwrap();
    let own: Vec<&serde_json::Value> = map
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["depth"] == 0 && e["present"] == true)
        .collect();
    let field = |e: &serde_json::Value, f: &str| e[f].as_u64().unwrap();
    let mut ranges: Vec<(u64, u64)> = Vec::new();
    for (start, len) in own.iter().map(|e| (field(e, "start"), field(e, "length"))) {
        match ranges.last_mut() {
            Some((s, l)) if *s + *l == start => *l += len,
            _ => ranges.push((start, len)),
        }
    }
    let data = own.iter().filter(|e| e["data"] == true);
    (ranges, data.map(|e| field(e, "length")).sum())
}

/// qemu-img's map of `image` without host offsets (layouts differ; the answers must not).
pub fn map_without_offsets(image: &Path) -> Vec<serde_json::Value> {
    let map: serde_json::Value =
        serde_json::from_str(&qemu_img(&["map", "--output=json", s(image)])).unwrap();
    let mut entries = map.as_array().unwrap().clone();
    for e in &mut entries {
        e.as_object_mut().unwrap().remove("offset");
    }
    entries
}

/// The ranges (start, length) `qemu-img map` reports without data: a raw file's holes.
pub fn holes_of(image: &Path) -> Vec<(u64, u64)> {
    let map: serde_json::Value =
        serde_json::from_str(&qemu_img(&["map", "--output=json", s(image)])).unwrap();
    map.as_array()
        .unwrap()
        .iter()
        .filter(|e| e["data"] == false)
        .map(|e| (e["start"].as_u64().unwrap(), e["length"].as_u64().unwrap()))
        .collect()
}

/// kiln's image `ours` has unwritten extents where qemu-img's `theirs` has them (see
/// [`has_unwritten_extents`]).
pub fn assert_same_unwritten_extents(ours: &Path, theirs: &Path, case: &str) {
    assert_eq!(
        has_unwritten_extents(ours),
        has_unwritten_extents(theirs),
        "{case}: unwritten extents"
    );
}

/// Whether `path` has unwritten extents (blocks reserved by fallocate, not written):
/// what tells preallocation=falloc from full, on file systems that have them.
/// `filefrag -v` reports FIEMAP's flags.
pub fn has_unwritten_extents(path: &Path) -> bool {
    tool("filefrag", &["-v", s(path)]).contains("unwritten")
}

/// Run `program` and return what it did; panics only when it cannot start.
pub fn run(program: &str, args: &[&str]) -> Output {
    Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| {
            panic!("cannot run {program} ({e}); install qemu-utils with scripts/setup-host.sh")
        })
}

/// Run a QEMU tool; panics (test failure) with its output when it fails or is missing.
pub fn tool(program: &str, args: &[&str]) -> String {
    let out = run(program, args);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "{program} {args:?} failed: {}\n{text}",
        out.status
    );
    text
}

pub fn qemu_img(args: &[&str]) -> String {
    tool("qemu-img", args)
}

/// `qemu-img create -f qcow2 [-o OPTIONS] PATH SIZE`.
pub fn qemu_create(path: &Path, options: &str, size: &str) {
    let mut args = vec!["create", "-q", "-f", "qcow2"];
    if !options.is_empty() {
        args.extend(["-o", options]);
    }
    qemu_img(&[&args[..], &[path.to_str().unwrap(), size]].concat());
}

/// `qemu-img create -f qcow2 -b BACKING -F BACKING_FORMAT OVERLAY`, with the backing file
/// named relative to the overlay, as a chain built in one directory would be.
pub fn qemu_overlay(backing_name: &str, backing_format: &str, overlay: &Path) {
    qemu_overlay_with("", backing_name, backing_format, overlay);
}

/// [`qemu_overlay`] with `-o OPTIONS` (as "compat=0.10,cluster_size=512") unless empty.
pub fn qemu_overlay_with(options: &str, backing_name: &str, backing_format: &str, overlay: &Path) {
    let mut args = vec!["create", "-q", "-f", "qcow2"];
    if !options.is_empty() {
        args.extend(["-o", options]);
    }
    args.extend(["-b", backing_name, "-F", backing_format]);
    qemu_img(&[&args[..], &[overlay.to_str().unwrap()]].concat());
}

pub fn qemu_io(image: &Path, commands: &[&str]) -> String {
    qemu_io_as("qcow2", image, commands)
}

/// As [`qemu_io`], for an image of `format`.
pub fn qemu_io_as(format: &str, image: &Path, commands: &[&str]) -> String {
    let mut args = vec!["-f", format];
    for c in commands {
        args.push("-c");
        args.push(c);
    }
    args.push(image.to_str().unwrap());
    let out = tool("qemu-io", &args);
    assert!(
        !out.contains("failed") && !out.contains("error"),
        "qemu-io reported a failure: {out}"
    );
    out
}

pub fn open(path: &Path, format: Option<ImageFormat>, readonly: bool) -> Arc<dyn DiskBackend> {
    open_disk(&DiskConfig {
        format,
        readonly,
        ..DiskConfig::new(path.to_owned())
    })
    .unwrap_or_else(|e| panic!("kiln cannot open {}: {e}", path.display()))
}

/// The whole disk as kiln reads it.
pub fn read_all(disk: &dyn DiskBackend) -> Vec<u8> {
    let mut buf = vec![0u8; disk.size() as usize];
    // Uneven chunks so reads straddle cluster boundaries.
    let mut pos = 0;
    let mut step = 512 * 7;
    while pos < buf.len() {
        let n = step.min(buf.len() - pos);
        disk.read_at(&mut buf[pos..pos + n], pos as u64).unwrap();
        pos += n;
        step = (step * 3) % (300 * 1024) + 512;
    }
    buf
}

/// What qemu-img says the image contains.
pub fn qemu_contents(image: &Path, dir: &Path) -> Vec<u8> {
    let out = dir.join(format!(
        "{}.qemu-raw",
        image.file_name().unwrap().to_string_lossy()
    ));
    qemu_img(&[
        "convert",
        "-O",
        "raw",
        image.to_str().unwrap(),
        out.to_str().unwrap(),
    ]);
    let data = std::fs::read(&out).unwrap();
    std::fs::remove_file(out).unwrap();
    data
}

/// `qemu-img check` must find nothing wrong, and neither must kiln's own count.
pub fn assert_check_clean(image: &Path) {
    use kiln_devices::block::check::{check_image, CheckOptions, CheckOutcome, Findings};
    let out = qemu_img(&["check", "-f", "qcow2", image.to_str().unwrap()]);
    assert!(
        out.contains("No errors were found"),
        "qemu-img check: {out}"
    );
    assert!(!out.contains("leaked"), "qemu-img check found leaks: {out}");
    match check_image(image, CheckOptions::default()) {
        Ok(CheckOutcome::Qcow2(c)) => match c.findings {
            Findings::Counted(scan) => assert!(
                scan.corruptions.is_empty()
                    && scan.leaks.is_empty()
                    && scan.copied_flag_errors.is_empty(),
                "kiln img check disagrees with qemu-img check: {scan:?}"
            ),
            Findings::BadMetadata(e) => panic!("kiln img check: {e}"),
        },
        other => panic!("kiln img check: {other:?}"),
    }
}

/// Deterministic pseudo-random numbers (xorshift64*), so failures reproduce.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed | 1)
    }
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

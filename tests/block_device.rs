//! Images on block devices (LVM volumes, loop and nbd devices), raw and qcow2: a
//! device's length is not in its metadata (which says 0), so kiln must ask the device.
//! Checked on a loop device against qemu-img. Needs root and loop devices, as CI has;
//! without them the tests fail, naming what is missing.

mod qcow2_support;

use std::path::{Path, PathBuf};

use kiln_devices::block::config::Cache;
use kiln_devices::block::dio::AlignedBuf;
use kiln_devices::block::{open_disk, DiskConfig, ImageFormat};
use qcow2_support::*;

const SIZE: usize = 8 << 20;

/// A loop device over a new file of `SIZE` bytes of a pattern (`backing`).
struct PatternDevice {
    device: LoopDevice,
    backing: PathBuf,
}

impl PatternDevice {
    fn new(name: &str) -> Self {
        let dir = fresh_dir("block-device", name);
        let backing = dir.join("backing.raw");
        let content: Vec<u8> = (0..SIZE).map(|i| (i / 512 % 251) as u8).collect();
        std::fs::write(&backing, content).unwrap();
        let device = LoopDevice::over(&backing);
        PatternDevice { device, backing }
    }

    fn path(&self) -> &Path {
        self.device.path()
    }
}

#[test]
fn a_block_device_has_its_size_in_info_and_map_as_qemu_img_says() {
    let dev = PatternDevice::new("info");
    let json = |out: String| -> serde_json::Value { serde_json::from_str(&out).unwrap() };
    let kiln_info = json(kiln_ok(&["img", "info", "--output", "json", s(dev.path())]));
    let qemu_info = json(qemu_img(&["info", "--output=json", s(dev.path())]));
    assert_eq!(kiln_info["virtual-size"], SIZE as u64);
    assert_eq!(kiln_info["virtual-size"], qemu_info["virtual-size"]);
    let kiln_map = json(kiln_ok(&["img", "map", "--output", "json", s(dev.path())]));
    let qemu_map = json(qemu_img(&["map", "--output=json", s(dev.path())]));
    assert_eq!(kiln_map, qemu_map);
}

#[test]
fn a_block_device_reads_whole_through_kiln_with_and_without_direct_io() {
    let dev = PatternDevice::new("read");
    let out = fresh_dir("block-device", "read-out").join("copy.qcow2");
    kiln_ok(&["img", "convert", "-O", "qcow2", s(dev.path()), s(&out)]);
    let cmp = qemu_img(&[
        "compare",
        "-f",
        "raw",
        "-F",
        "qcow2",
        s(&dev.backing),
        s(&out),
    ]);
    assert!(cmp.contains("Images are identical"), "{cmp}");
    let disk = open_disk(&DiskConfig {
        format: Some(ImageFormat::Raw),
        readonly: true,
        cache: Cache::None,
        ..DiskConfig::new(dev.path())
    })
    .unwrap();
    assert_eq!(disk.size(), SIZE as u64);
    // A page-aligned buffer, so that the read goes through O_DIRECT.
    let mut buf = AlignedBuf::new(SIZE, 0);
    disk.read_at(&mut buf, 0).unwrap();
    assert!(buf[..] == std::fs::read(&dev.backing).unwrap()[..]);
}

#[test]
fn a_block_device_keeps_its_size_and_its_data_on_resize() {
    let dev = PatternDevice::new("resize");
    let before = std::fs::read(&dev.backing).unwrap();
    kiln_ok(&["img", "resize", "-f", "raw", s(dev.path()), "8M"]);
    for size in ["16M", "4M"] {
        let out = kiln(&[
            "img",
            "resize",
            "--shrink",
            "-f",
            "raw",
            s(dev.path()),
            size,
        ]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{size}: {stderr}");
        assert!(
            stderr.contains("a block device cannot be resized"),
            "{stderr}"
        );
    }
    assert!(std::fs::read(&dev.backing).unwrap() == before);
}

#[test]
fn a_qcow2_image_on_a_block_device_opens_checks_maps_and_writes() {
    let dev = PatternDevice::new("qcow2");
    let d = s(dev.path());
    qemu_img(&["create", "-q", "-f", "qcow2", d, "4M"]);
    qemu_io(dev.path(), &["write -P 0x5a 64k 1M"]);
    let info: serde_json::Value =
        serde_json::from_str(&kiln_ok(&["img", "info", "--output", "json", d])).unwrap();
    assert_eq!(
        (info["format"].as_str(), info["virtual-size"].as_u64()),
        (Some("qcow2"), Some(4 << 20))
    );
    assert!(kiln_ok(&["img", "check", d]).contains("No errors were found"));
    assert_eq!(
        kiln_ok(&["img", "map", "--output", "json", d]).trim(),
        qemu_img(&["map", "--output=json", d]).trim()
    );
    let out = fresh_dir("block-device", "qcow2-out").join("copy.raw");
    kiln_ok(&["img", "convert", "-O", "raw", d, s(&out)]);
    let cmp = qemu_img(&["compare", "-f", "qcow2", "-F", "raw", d, s(&out)]);
    assert!(cmp.contains("Images are identical"), "{cmp}");
    // Written through kiln's backend: QEMU reads it back, and the image stays clean.
    let disk = open_disk(&DiskConfig {
        format: Some(ImageFormat::Qcow2),
        ..DiskConfig::new(dev.path())
    })
    .unwrap();
    disk.write_at(&[0x6b; 65536], 2 << 20).unwrap();
    disk.flush().unwrap();
    drop(disk);
    assert_check_clean(dev.path());
    let read = qemu_io(dev.path(), &["read -P 0x6b 2M 64k", "read -P 0x5a 64k 1M"]);
    assert!(!read.contains("Pattern verification failed"), "{read}");
}

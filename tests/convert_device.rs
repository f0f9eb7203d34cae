//! `kiln img convert` onto devices: a disk (a loop device) is written in place, old
//! contents zeroed where the image reads zero and left alone past its end; the device
//! node stays a device; a device too small, qcow2 output onto a device, and pipes are
//! refused before anything is written. Needs root and loop devices (losetup).

mod qcow2_support;

use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use qcow2_support::*;

fn is_block_device(p: &Path) -> bool {
    std::fs::metadata(p).unwrap().file_type().is_block_device()
}

/// A 6 MiB qcow2: 64 KiB of 0x11 at 1 MiB, a zero cluster at 2 MiB, the rest
/// unallocated.
fn image(dir: &Path) -> PathBuf {
    let image = dir.join("in.qcow2");
    qemu_create(&image, "", "6M");
    qemu_io(&image, &["write -P 0x11 1M 64k", "write -z 2M 64k"]);
    image
}

#[test]
fn a_disk_is_written_in_place_and_its_old_contents_zeroed() {
    let dir = fresh_dir("convert-device", "disk");
    let input = image(&dir);
    let backing = dir.join("disk.img");
    std::fs::write(&backing, vec![0xeeu8; 8 << 20]).unwrap();
    let disk = LoopDevice::over(&backing);
    let out = kiln(&["img", "convert", "-O", "raw", s(&input), s(disk.path())]);
    assert!(out.status.success(), "{out:?}");
    assert!(is_block_device(disk.path()), "the device node was replaced");
    drop(disk);
    let written = std::fs::read(&backing).unwrap();
    let expected = qemu_contents(&input, &dir);
    assert!(
        written[..6 << 20] == expected[..],
        "the first 6 MiB differ from the image"
    );
    assert!(
        written[6 << 20..].iter().all(|b| *b == 0xee),
        "bytes past the image's end were touched"
    );
}

#[test]
fn what_cannot_go_onto_a_device_is_refused_before_writing() {
    let dir = fresh_dir("convert-device", "refused");
    let input = image(&dir);
    let backing = dir.join("small.img");
    std::fs::write(&backing, vec![0xeeu8; 4 << 20]).unwrap();
    let disk = LoopDevice::over(&backing);
    for (args, named) in [
        (
            &["-O", "raw"][..],
            "the device holds 4194304 bytes, the image needs 6291456",
        ),
        (&["-O", "qcow2"], "only raw images"),
    ] {
        let out = kiln(&[&["img", "convert"], args, &[s(&input), s(disk.path())]].concat());
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} accepted");
        assert!(stderr.contains(named), "{args:?}: {stderr}");
        assert!(is_block_device(disk.path()));
    }
    drop(disk);
    assert!(
        std::fs::read(&backing).unwrap().iter().all(|b| *b == 0xee),
        "written"
    );

    // A pipe is refused; it stays a pipe.
    let fifo = dir.join("fifo");
    assert!(Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap()
        .success());
    let out = kiln(&["img", "convert", "-O", "raw", s(&input), s(&fifo)]);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("pipe"),
        "{out:?}"
    );
    assert!(std::fs::metadata(&fifo).unwrap().file_type().is_fifo());
}

#[test]
fn a_character_device_through_a_link_stays_a_device() {
    let dir = fresh_dir("convert-device", "null");
    let input = image(&dir);
    // A private node for the null device (1, 3): were it replaced, /dev/null would not be.
    let null = dir.join("null-device");
    let made = Command::new("mknod")
        .arg(&null)
        .args(["c", "1", "3"])
        .status()
        .unwrap();
    assert!(made.success(), "mknod (root) is needed");
    let link = dir.join("null");
    std::os::unix::fs::symlink(&null, &link).unwrap();
    let out = kiln(&["img", "convert", "-O", "raw", s(&input), s(&link)]);
    assert!(out.status.success(), "{out:?}");
    assert!(std::fs::symlink_metadata(&link)
        .unwrap()
        .file_type()
        .is_symlink());
    let kind = std::fs::metadata(&null).unwrap().file_type();
    assert!(kind.is_char_device(), "the device node was replaced");
}

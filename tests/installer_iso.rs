//! `kiln installer extract --location ISO`: kernel and initrd found and copied byte for
//! byte from ISOs that xorriso builds from the real Debian installer kernel and initrd,
//! in the Debian, Fedora and Ubuntu layouts, with and without Joliet / Rock Ridge.

mod imagebuild_support;

use std::path::{Path, PathBuf};
use std::process::Command;

use imagebuild_support::*;

/// How the ISO's names are recorded.
#[derive(Clone, Copy, Debug)]
enum Names {
    /// Plain ISO 9660 only (upper case, `.` in directory names mapped to `_`).
    Plain,
    RockRidgeAndJoliet,
    RockRidgeOnly,
    JolietOnly,
}

/// Builds an ISO with `kernel` and `initrd` at the given paths (plus a decoy file).
fn build_iso(dir: &Path, kernel_at: &str, initrd_at: &str, names: Names) -> PathBuf {
    require_tool("xorriso", "xorriso");
    let di = debian_installer_dir();
    let tree = dir.join(format!("tree-{names:?}"));
    for (src, at) in [("linux", kernel_at), ("initrd.gz", initrd_at)] {
        let dest = tree.join(at.trim_start_matches('/'));
        std::fs::create_dir_all(dest.parent().unwrap()).unwrap();
        // Hard links keep the test from copying ~40 MB per ISO; fall back to a copy.
        if std::fs::hard_link(di.join(src), &dest).is_err() {
            std::fs::copy(di.join(src), &dest).unwrap();
        }
    }
    std::fs::write(tree.join("README.txt"), "decoy\n").unwrap();
    let iso = dir.join(format!("{names:?}.iso"));
    let mut cmd = Command::new("xorriso");
    match names {
        Names::RockRidgeAndJoliet => {
            cmd.args(["-as", "mkisofs", "-R", "-J", "-quiet", "-o"])
                .arg(&iso)
                .arg(&tree);
        }
        Names::Plain | Names::RockRidgeOnly | Names::JolietOnly => {
            let (rr, joliet) = match names {
                Names::Plain => ("off", "off"),
                Names::RockRidgeOnly => ("on", "off"),
                _ => ("off", "on"),
            };
            cmd.args(["-report_about", "SORRY", "-outdev"])
                .arg(&iso)
                .args(["-rockridge", rr, "-joliet", joliet, "-map"])
                .arg(&tree)
                .arg("/");
        }
    }
    run_ok(&mut cmd);
    std::fs::remove_dir_all(&tree).unwrap();
    iso
}

fn extract_and_compare(iso: &Path, out: &Path, layout: &str, kernel_name: &str, initrd_name: &str) {
    let o = run_ok(
        kiln()
            .args(["installer", "extract", "--location"])
            .arg(iso)
            .arg("--output")
            .arg(out),
    );
    let stdout = String::from_utf8(o.stdout).unwrap();
    assert!(stdout.contains(&format!("layout: {layout}\n")), "{stdout}");
    let di = debian_installer_dir();
    let k = std::fs::read(out.join(kernel_name)).unwrap();
    let i = std::fs::read(out.join(initrd_name)).unwrap();
    assert!(
        k == std::fs::read(di.join("linux")).unwrap(),
        "kernel bytes differ ({})",
        iso.display()
    );
    assert!(
        i == std::fs::read(di.join("initrd.gz")).unwrap(),
        "initrd bytes differ ({})",
        iso.display()
    );
}

fn layout_case(kernel_at: &str, initrd_at: &str, layout: &str, names: &[Names]) {
    for &n in names {
        let dir = tempdir();
        let iso = build_iso(dir.path(), kernel_at, initrd_at, n);
        let k = kernel_at.rsplit('/').next().unwrap();
        let i = initrd_at.rsplit('/').next().unwrap();
        extract_and_compare(&iso, &dir.path().join("out"), layout, k, i);
    }
}

#[test]
fn debian_mini_iso_layout() {
    layout_case(
        "/linux",
        "/initrd.gz",
        "debian-mini",
        &[Names::Plain, Names::RockRidgeAndJoliet],
    );
}

#[test]
fn debian_netinst_layout() {
    layout_case(
        "/install.amd/vmlinuz",
        "/install.amd/initrd.gz",
        "debian",
        &[Names::Plain, Names::RockRidgeAndJoliet],
    );
}

#[test]
fn fedora_layout_in_every_naming() {
    layout_case(
        "/images/pxeboot/vmlinuz",
        "/images/pxeboot/initrd.img",
        "fedora",
        &[
            Names::Plain,
            Names::RockRidgeAndJoliet,
            Names::RockRidgeOnly,
            Names::JolietOnly,
        ],
    );
}

#[test]
fn ubuntu_layout() {
    layout_case(
        "/casper/vmlinuz",
        "/casper/initrd",
        "ubuntu",
        &[Names::Plain, Names::RockRidgeAndJoliet],
    );
}

#[test]
fn missing_garbage_truncated_and_unknown_isos_fail_clearly() {
    let dir = tempdir();
    let out = dir.path().join("out");
    let err = run_fail(
        kiln()
            .args(["installer", "extract", "--location"])
            .arg(dir.path().join("nope.iso"))
            .arg("--output")
            .arg(&out),
    );
    assert!(err.contains("nope.iso"), "{err}");

    let garbage = dir.path().join("garbage.iso");
    std::fs::write(&garbage, vec![0x5a; 64 * 2048]).unwrap();
    let err = run_fail(
        kiln()
            .args(["installer", "extract", "--location"])
            .arg(&garbage)
            .arg("--output")
            .arg(&out),
    );
    assert!(err.contains("not an ISO 9660 image"), "{err}");

    // An ISO cut short: descriptors and directories are there, the files' data is not.
    let iso = build_iso(
        dir.path(),
        "/images/pxeboot/vmlinuz",
        "/images/pxeboot/initrd.img",
        Names::RockRidgeAndJoliet,
    );
    let bytes = std::fs::read(&iso).unwrap();
    let cut = dir.path().join("cut.iso");
    std::fs::write(&cut, &bytes[..bytes.len() / 8]).unwrap();
    let err = run_fail(
        kiln()
            .args(["installer", "extract", "--location"])
            .arg(&cut)
            .arg("--output")
            .arg(&out),
    );
    assert!(
        err.contains("corrupt ISO 9660 image") && err.contains("past the end"),
        "{err}"
    );
    let left: Vec<_> = std::fs::read_dir(&out)
        .map(|d| d.count())
        .into_iter()
        .collect();
    assert!(
        left.is_empty() || left == [0],
        "partial output left in {}",
        out.display()
    );

    // A valid ISO without any installer layout.
    let tree = dir.path().join("plain-tree");
    std::fs::create_dir_all(tree.join("boot")).unwrap();
    std::fs::write(tree.join("boot/vmlinuz"), "k").unwrap();
    let other = dir.path().join("other.iso");
    run_ok(
        Command::new("xorriso")
            .args(["-as", "mkisofs", "-R", "-quiet", "-o"])
            .arg(&other)
            .arg(&tree),
    );
    let err = run_fail(
        kiln()
            .args(["installer", "extract", "--location"])
            .arg(&other)
            .arg("--output")
            .arg(&out),
    );
    assert!(
        err.contains("no installer kernel and initrd found") && err.contains("/casper/vmlinuz"),
        "{err}"
    );
}

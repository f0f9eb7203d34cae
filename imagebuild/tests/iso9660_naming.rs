//! The ISO reader picks Rock Ridge, Joliet or plain names as xorriso recorded them, and
//! reads files (including multi-sector ones) back exactly.

use std::path::Path;
use std::process::Command;

use kiln_imagebuild::iso9660::{IsoImage, Naming};

fn xorriso(iso: &Path, tree: &Path, rr: &str, joliet: &str) {
    let out = Command::new("xorriso")
        .args(["-report_about", "SORRY", "-outdev"])
        .arg(iso)
        .args(["-rockridge", rr, "-joliet", joliet, "-map"])
        .arg(tree)
        .arg("/")
        .output()
        .expect("xorriso is needed (Debian package xorriso)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn naming_is_detected_and_files_read_back() {
    let dir = tempfile::tempdir().unwrap();
    let tree = dir.path().join("tree");
    std::fs::create_dir_all(tree.join("Some.Dir/deeper")).unwrap();
    let big: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect();
    std::fs::write(tree.join("Some.Dir/deeper/Mixed-Case.File.bin"), &big).unwrap();
    // Many entries so the directory spans more than one sector.
    for i in 0..120 {
        std::fs::write(
            tree.join(format!("Some.Dir/file-number-{i:03}.txt")),
            format!("{i}"),
        )
        .unwrap();
    }
    for (rr, joliet, want) in [
        ("on", "on", Naming::RockRidge),
        ("on", "off", Naming::RockRidge),
        ("off", "on", Naming::Joliet),
        ("off", "off", Naming::Plain),
    ] {
        let iso_path = dir.path().join(format!("{rr}-{joliet}.iso"));
        xorriso(&iso_path, &tree, rr, joliet);
        let iso = IsoImage::open(&iso_path).unwrap();
        assert_eq!(iso.naming(), want);
        let dirent = iso.lookup("/Some.Dir").unwrap();
        let names: Vec<String> = iso
            .list(&dirent)
            .unwrap()
            .into_iter()
            .map(|e| e.name)
            .collect();
        assert_eq!(names.len(), 121, "{names:?}");
        if want != Naming::Plain {
            // Exact names only survive with Rock Ridge or Joliet.
            assert!(
                names.contains(&"file-number-119.txt".to_string()),
                "{names:?}"
            );
        }
        let e = iso.lookup("Some.Dir/deeper/Mixed-Case.File.bin").unwrap();
        let mut out = Vec::new();
        iso.copy_to(&e, &mut out).unwrap();
        assert!(out == big, "contents differ for {rr}/{joliet}");
        let seven = iso.lookup("/Some.Dir/file-number-007.txt").unwrap();
        let mut out = Vec::new();
        iso.copy_to(&seven, &mut out).unwrap();
        assert_eq!(out, b"7");
        assert!(iso.lookup("/Some.Dir/absent").is_err());
    }
}

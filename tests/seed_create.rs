//! `kiln seed create`: the FAT image is labelled `cidata` (blkid, fatlabel), fsck.vfat
//! finds it clean, mtools reads the files back, and generated user-data passes
//! `cloud-init schema`.

mod imagebuild_support;

use std::path::Path;
use std::process::Command;

use imagebuild_support::*;

fn check_fat(img: &Path) {
    require_tool("blkid", "util-linux");
    require_tool("fatlabel", "dosfstools");
    require_tool("mcopy", "mtools");
    let blkid = String::from_utf8(
        run_ok(Command::new("blkid").args(["-p", "-o", "export"]).arg(img)).stdout,
    )
    .unwrap();
    assert!(blkid.lines().any(|l| l == "LABEL=cidata"), "{blkid}");
    assert!(blkid.lines().any(|l| l == "TYPE=vfat"), "{blkid}");
    let label = run_ok(Command::new("fatlabel").arg(img)).stdout;
    assert_eq!(String::from_utf8(label).unwrap().trim(), "cidata");
    // -n: check only; exit 0 means no errors were found.
    let fsck = run_ok(Command::new("fsck.vfat").arg("-n").arg(img));
    let text = String::from_utf8_lossy(&fsck.stdout);
    assert!(
        !text.to_lowercase().contains("differ") && !text.contains("Free cluster summary"),
        "{text}"
    );
}

fn mcopy_out(img: &Path, name: &str, dir: &Path) -> Vec<u8> {
    let dest = dir.join(format!("out-{name}"));
    run_ok(
        Command::new("mcopy")
            .arg("-n")
            .arg("-i")
            .arg(img)
            .arg(format!("::{name}"))
            .arg(&dest),
    );
    std::fs::read(dest).unwrap()
}

#[test]
fn seed_from_files_reads_back_with_mtools_and_is_clean() {
    let dir = tempdir();
    // A user-data spanning many clusters, to exercise the FAT chains.
    let mut user =
        String::from("#cloud-config\nwrite_files:\n  - path: /etc/big\n    content: |\n");
    for i in 0..4000 {
        user.push_str(&format!(
            "      line {i} of a file big enough to need many clusters\n"
        ));
    }
    let files = [
        ("user-data", user.into_bytes()),
        (
            "meta-data",
            b"instance-id: test-1\nlocal-hostname: seeded\n".to_vec(),
        ),
        (
            "network-config",
            b"version: 2\nethernets:\n  all:\n    match: {name: \"e*\"}\n    dhcp4: true\n"
                .to_vec(),
        ),
    ];
    for (name, data) in &files {
        std::fs::write(dir.path().join(name), data).unwrap();
    }
    let img = dir.path().join("seed.img");
    run_ok(
        kiln()
            .args(["seed", "create"])
            .arg(&img)
            .arg("--user-data")
            .arg(dir.path().join("user-data"))
            .arg("--meta-data")
            .arg(dir.path().join("meta-data"))
            .arg("--network-config")
            .arg(dir.path().join("network-config")),
    );
    check_fat(&img);
    for (name, data) in &files {
        assert_eq!(&mcopy_out(&img, name, dir.path()), data, "{name} differs");
    }
    let listing = String::from_utf8(
        run_ok(Command::new("mdir").args(["-b", "-i"]).arg(&img).arg("::")).stdout,
    )
    .unwrap();
    assert_eq!(listing.lines().count(), 3, "{listing}");
}

#[test]
fn seed_from_recipe_has_valid_cloud_config() {
    require_tool("cloud-init", "cloud-init");
    let dir = tempdir();
    let recipe = dir.path().join("r.toml");
    std::fs::write(
        &recipe,
        r#"
[base]
image = "base.qcow2"
[seed]
hostname = "web01"
user = "admin"
password = "pw with \"quotes\": and colons"
ssh_authorized_keys = ["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIKiln admin@kiln"]
packages = ["htop", "curl"]
[output]
path = "x.qcow2"
"#,
    )
    .unwrap();
    let img = dir.path().join("seed.img");
    run_ok(
        kiln()
            .args(["seed", "create"])
            .arg(&img)
            .arg("--recipe")
            .arg(&recipe),
    );
    check_fat(&img);
    let user = mcopy_out(&img, "user-data", dir.path());
    let user_path = dir.path().join("user-data.yaml");
    std::fs::write(&user_path, &user).unwrap();
    run_ok(
        Command::new("cloud-init")
            .args(["schema", "--config-file"])
            .arg(&user_path),
    );
    let text = String::from_utf8(user).unwrap();
    assert!(text.starts_with("#cloud-config\n"));
    assert!(text.contains("hostname: \"web01\""), "{text}");
    assert!(text.contains("- name: \"admin\""), "{text}");
    assert!(text.contains("passwd: \"$6$"), "{text}");
    assert!(
        !text.contains("pw with"),
        "clear-text password in user-data"
    );
    assert!(text.contains("- \"curl\""), "{text}");
    let meta = String::from_utf8(mcopy_out(&img, "meta-data", dir.path())).unwrap();
    assert!(
        meta.contains("instance-id: \"kiln-") && meta.contains("local-hostname: \"web01\""),
        "{meta}"
    );

    // The schema check can fail: a wrong type is reported.
    let bad = dir.path().join("bad.yaml");
    std::fs::write(&bad, "#cloud-config\npackages: 5\n").unwrap();
    run_fail(
        Command::new("cloud-init")
            .args(["schema", "--config-file"])
            .arg(&bad),
    );
}

#[test]
fn missing_input_fails_without_output() {
    let dir = tempdir();
    let img = dir.path().join("seed.img");
    let err = run_fail(
        kiln()
            .args(["seed", "create"])
            .arg(&img)
            .arg("--user-data")
            .arg(dir.path().join("nope"))
            .arg("--meta-data")
            .arg(dir.path().join("nope2")),
    );
    assert!(err.contains("nope"), "{err}");
    assert!(!img.exists());
}

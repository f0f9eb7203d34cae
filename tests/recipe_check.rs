//! `kiln recipe check` on the shipped examples and on broken recipes; `kiln recipe
//! answer` renders a preseed that debconf accepts.

mod imagebuild_support;

use std::path::Path;
use std::process::Command;

use imagebuild_support::*;

#[test]
fn every_shipped_example_passes_check_and_prints_a_plan() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("resources/recipes");
    let mut n = 0;
    for e in std::fs::read_dir(&dir).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_none_or(|x| x != "toml") {
            continue;
        }
        n += 1;
        let out = run_ok(kiln().args(["recipe", "check"]).arg(&p));
        let plan = String::from_utf8(out.stdout).unwrap();
        assert!(plan.contains("base:") && plan.contains("output:"), "{plan}");
    }
    assert!(n >= 3, "only {n} examples");
}

#[test]
fn seed_flow_example_has_the_centos_flow_pieces() {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("resources/recipes/debian-12-cloud.toml");
    let plan = String::from_utf8(run_ok(kiln().args(["recipe", "check"]).arg(&p)).stdout).unwrap();
    for want in [
        "openssh-server",
        "cloud-init",
        "acpid",
        "virtio_mmio",
        "console=ttyS0",
        "nftables",
        "net-hwaddr",
        "udev-persistent-net",
    ] {
        let text = std::fs::read_to_string(&p).unwrap();
        assert!(plan.contains(want) || text.contains(want), "{want} missing");
    }
    assert!(plan.contains("installer debian-12"), "{plan}");
}

#[test]
fn misspelled_key_names_file_line_column_and_suggests() {
    let dir = tempdir();
    let f = dir.path().join("r.toml");
    std::fs::write(&f, "[base]\ninstaller = \"debian-12\"\n\n[install]\ntimezon = \"UTC\"\n\n[output]\npath = \"x.qcow2\"\n").unwrap();
    let err = run_fail(kiln().args(["recipe", "check"]).arg(&f));
    let want = format!("{}:5:1: unknown key `timezon`", f.display());
    assert!(err.contains(&want), "{err}");
    assert!(err.contains("did you mean `timezone`?"), "{err}");
}

#[test]
fn several_problems_are_all_reported() {
    let dir = tempdir();
    let f = dir.path().join("r.toml");
    std::fs::write(&f, "[base]\ninstaller = \"debain-12\"\n[sysprep]\ndisable = [\"machine-idd\"]\n[output]\npath = \"x.qcow2\"\n").unwrap();
    let err = run_fail(kiln().args(["recipe", "check"]).arg(&f));
    assert!(err.contains("2 problems"), "{err}");
    assert!(
        err.contains(":2:13: unknown installer `debain-12`"),
        "{err}"
    );
    assert!(
        err.contains(":4:12: unknown sysprep operation `machine-idd`"),
        "{err}"
    );
}

#[test]
fn recipe_answer_renders_valid_preseed_with_recipe_values() {
    let dir = tempdir();
    let out = dir.path().join("preseed.cfg");
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("resources/recipes/debian-12-cloud.toml");
    run_ok(
        kiln()
            .args(["recipe", "answer"])
            .arg(&p)
            .args(["--mirror", "http://mirror.invalid/debian", "--output"])
            .arg(&out),
    );
    run_ok(Command::new("debconf-set-selections").arg("-c").arg(&out));
    let text = std::fs::read_to_string(&out).unwrap();
    assert!(
        text.contains("d-i netcfg/get_hostname string debian12"),
        "{text}"
    );
    assert!(
        text.contains("d-i pkgsel/include string openssh-server cloud-init"),
        "{text}"
    );
    assert!(
        text.contains("d-i mirror/http/hostname string mirror.invalid"),
        "{text}"
    );
}

#[test]
fn recipe_kickstart_passes_ksvalidator() {
    require_ksvalidator();
    let dir = tempdir();
    let out = dir.path().join("ks.cfg");
    let p =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("resources/recipes/fedora-40-kickstart.toml");
    run_ok(
        kiln()
            .args(["recipe", "answer"])
            .arg(&p)
            .arg("--output")
            .arg(&out),
    );
    run_ok(&mut ksvalidator(&out));
    let text = std::fs::read_to_string(&out).unwrap();
    assert!(
        text.contains("user --name=builder --gecos=\"Image Builder\""),
        "{text}"
    );
    assert!(text.contains("rootpw --iscrypted $6$kilnsalt$"), "{text}");
}

//! Rendered answer files checked by their consumers: `debconf-set-selections -c` for the
//! Debian preseed, `ksvalidator` (pykickstart) for the kickstart.

mod imagebuild_support;

use std::process::Command;

use imagebuild_support::*;

fn render(kind: &str, mirror: &str, extra: &[&str], out: &std::path::Path) -> String {
    run_ok(
        kiln()
            .args(["installer", "answer", "--kind", kind, "--mirror", mirror])
            .args(["--hostname", "builder", "--timezone", "Europe/Paris"])
            .args([
                "--root-password",
                "s3cret",
                "--user",
                "alice",
                "--user-password",
                "pw",
            ])
            .args(["--package", "acpid", "--package", "cloud-init"])
            .args(extra)
            .arg("--output")
            .arg(out),
    );
    std::fs::read_to_string(out).unwrap()
}

#[test]
fn preseed_is_valid_debconf_input_with_recipe_values() {
    require_tool("debconf-set-selections", "debconf");
    let dir = tempdir();
    let out = dir.path().join("preseed.cfg");
    let text = render("preseed", "http://mirror.invalid/debian", &[], &out);
    run_ok(Command::new("debconf-set-selections").arg("-c").arg(&out));
    for want in [
        "d-i netcfg/get_hostname string builder",
        "d-i time/zone string Europe/Paris",
        "d-i mirror/http/hostname string mirror.invalid",
        "d-i mirror/http/directory string /debian",
        "d-i pkgsel/include string acpid cloud-init",
        "d-i passwd/username string alice",
        "d-i partman-auto/disk string /dev/vda",
        "d-i debian-installer/exit/poweroff boolean true",
        "console=ttyS0,115200",
    ] {
        assert!(text.contains(want), "missing {want:?} in\n{text}");
    }
    let hash_line = text
        .lines()
        .find(|l| l.contains("root-password-crypted"))
        .unwrap();
    let hash = hash_line.rsplit(' ').next().unwrap();
    assert!(hash.starts_with("$6$") && hash.len() > 90, "{hash}");
    assert!(!text.contains("s3cret"), "clear-text password leaked");
}

#[test]
fn debconf_check_catches_a_broken_preseed() {
    // Guards the check above: a malformed line must make debconf-set-selections -c fail.
    let dir = tempdir();
    let bad = dir.path().join("bad.cfg");
    std::fs::write(&bad, "d-i only-two-fields\n").unwrap();
    run_fail(Command::new("debconf-set-selections").arg("-c").arg(&bad));
}

#[test]
fn kickstart_passes_ksvalidator() {
    require_ksvalidator();
    let dir = tempdir();
    let out = dir.path().join("ks.cfg");
    let text = render(
        "kickstart",
        "http://mirror.invalid/fedora/releases/40/Everything/x86_64/os",
        &[],
        &out,
    );
    run_ok(&mut ksvalidator(&out));
    for want in [
        "url --url=http://mirror.invalid/fedora/releases/40/Everything/x86_64/os",
        "rootpw --iscrypted $6$",
        "user --name=alice",
        "timezone Europe/Paris --utc",
        "ignoredisk --only-use=vda",
        "console=ttyS0,115200",
        "poweroff",
        "\nacpid\ncloud-init\n%end",
    ] {
        assert!(text.contains(want), "missing {want:?} in\n{text}");
    }
    let bad = dir.path().join("bad.ks");
    std::fs::write(&bad, format!("{text}\nnot-a-command --x\n")).unwrap();
    run_fail(&mut ksvalidator(&bad));
}

#[test]
fn value_with_newline_is_refused() {
    let dir = tempdir();
    let out = dir.path().join("p.cfg");
    let err = run_fail(
        kiln()
            .args([
                "installer",
                "answer",
                "--kind",
                "preseed",
                "--mirror",
                "http://m.invalid/d",
            ])
            .args(["--hostname", "a\nd-i evil string x", "--output"])
            .arg(&out),
    );
    assert!(err.contains("hostname"), "{err}");
    assert!(!out.exists());
}

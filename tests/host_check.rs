//! `kiln host check` end to end: the real host, and a fake root through --root.

use std::process::Command;

fn kiln(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args(args)
        .output()
        .expect("run kiln")
}

#[test]
fn real_host_reports_its_kvm_flavour() {
    let o = kiln(&["host", "check", "--json"]);
    let checks: serde_json::Value = serde_json::from_slice(&o.stdout).expect("JSON");
    let find = |name: &str| {
        checks
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == name)
            .unwrap_or_else(|| panic!("{name}"))
            .clone()
    };
    let failed = checks
        .as_array()
        .unwrap()
        .iter()
        .any(|c| c["status"] == "FAIL");
    assert_eq!(o.status.code(), Some(if failed { 1 } else { 0 }));
    let flavour = find("KVM flavour");
    if std::path::Path::new("/sys/module/kvm_pvm").exists() {
        // The development and CI machines.
        assert_eq!(flavour["status"], "WARN");
        assert_eq!(flavour["detail"], "kvm_pvm (PVM)");
        assert!(flavour["hint"]
            .as_str()
            .unwrap()
            .contains("unmodified guests"));
        assert_eq!(find("hardware virtualization")["status"], "WARN");
        assert_eq!(find("KVM API")["detail"], "version 12");
        assert!(!failed, "{checks:#}");
    } else {
        assert!(
            flavour["detail"].as_str().unwrap().starts_with("kvm_"),
            "{flavour}"
        );
    }
    let text = String::from_utf8(kiln(&["host", "check"]).stdout).unwrap();
    assert!(
        text.lines().any(|l| l.starts_with("PASS  /dev/kvm exists")),
        "{text}"
    );
}

#[test]
fn fake_root_without_dev_kvm_fails() {
    let root = std::env::temp_dir().join(format!("kiln-host-cli-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    std::fs::create_dir_all(root.join("proc")).unwrap();
    std::fs::create_dir_all(root.join("sys/module/kvm_intel/parameters")).unwrap();
    std::fs::write(root.join("proc/cpuinfo"), "flags\t: fpu vmx lm\n").unwrap();
    std::fs::write(root.join("sys/module/kvm_intel/parameters/nested"), "Y\n").unwrap();
    let o = kiln(&["host", "check", "--root", root.to_str().unwrap()]);
    let text = String::from_utf8(o.stdout).unwrap();
    std::fs::remove_dir_all(&root).unwrap();
    assert_eq!(o.status.code(), Some(1), "{text}");
    assert!(text.contains("FAIL  /dev/kvm exists"), "{text}");
    assert!(
        text.contains("PASS  hardware virtualization  vmx (Intel VT-x)"),
        "{text}"
    );
    assert!(
        text.contains("PASS  nested virtualization    kvm_intel nested=Y"),
        "{text}"
    );
    assert!(text.contains("FAIL  /dev/net/tun"), "{text}");
}

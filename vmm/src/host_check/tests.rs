//! The host check against fake sysfs/dev/proc trees.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};

use super::*;
use crate::cpu::nested::check_nesting;

struct FakeRoot(PathBuf);

impl FakeRoot {
    fn new() -> FakeRoot {
        static N: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "kiln-host-check-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        FakeRoot(dir)
    }

    fn file(&self, rel: &str, text: &str) -> &Self {
        let p = self.0.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
        self
    }

    fn dir(&self, rel: &str) -> &Self {
        std::fs::create_dir_all(self.0.join(rel)).unwrap();
        self
    }

    /// A host with all devices and passt; `flags` for /proc/cpuinfo.
    fn host(flags: &str) -> FakeRoot {
        let r = FakeRoot::new();
        r.file(
            "proc/cpuinfo",
            &format!("processor\t: 0\nflags\t\t: fpu sse2 {flags} lm\n\n"),
        )
        .file("dev/kvm", "")
        .file("dev/net/tun", "")
        .file("dev/vhost-net", "")
        .file("usr/bin/passt", "");
        r
    }

    fn env(&self) -> HostEnv {
        HostEnv {
            root: self.0.clone(),
            uid: 0,
            gids: vec![0],
        }
    }
}

impl Drop for FakeRoot {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn good_kvm(nested_state: i32) -> KvmFacts {
    KvmFacts {
        open_error: None,
        api_version: 12,
        caps: NEEDED_CAPS.iter().map(|c| (c.0, true)).collect(),
        nested_state,
    }
}

fn find<'a>(checks: &'a [Check], name: &str) -> &'a Check {
    checks
        .iter()
        .find(|c| c.name == name)
        .unwrap_or_else(|| panic!("no check {name}"))
}

#[test]
fn intel_with_nested_enabled() {
    let r = FakeRoot::host("vmx");
    r.file("sys/module/kvm_intel/parameters/nested", "Y\n");
    let checks = run_checks(&r.env(), &good_kvm(8192), &CpuidProbe::default());
    for c in &checks {
        assert_eq!(c.status, Status::Pass, "{c:?}");
    }
    assert_eq!(find(&checks, "KVM flavour").detail, "kvm_intel (VT-x)");
    assert_eq!(
        find(&checks, "nested virtualization").detail,
        "kvm_intel nested=Y"
    );
    assert!(all_ok(&checks));
    assert!(check_nesting(&nesting_facts(&r.env(), &good_kvm(8192))).is_ok());
}

#[test]
fn amd_with_nested_disabled() {
    let r = FakeRoot::host("svm");
    r.file("sys/module/kvm_amd/parameters/nested", "0\n");
    let checks = run_checks(&r.env(), &good_kvm(8192), &CpuidProbe::default());
    assert_eq!(
        find(&checks, "hardware virtualization").detail,
        "svm (AMD-V)"
    );
    assert_eq!(find(&checks, "KVM flavour").detail, "kvm_amd (AMD-V)");
    let nested = find(&checks, "nested virtualization");
    assert_eq!(
        (nested.status, nested.detail.as_str()),
        (Status::Warn, "kvm_amd nested=0")
    );
    assert!(nested.hint.contains("nested=1"), "{}", nested.hint);
    assert!(all_ok(&checks), "a warning is not a failure");
    let err = check_nesting(&nesting_facts(&r.env(), &good_kvm(8192)))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("/sys/module/kvm_amd/parameters/nested is not 1"),
        "{err}"
    );
}

#[test]
fn pvm_host() {
    let r = FakeRoot::host("");
    r.file("sys/module/kvm_pvm/parameters/pvm_native", "Y\n")
        .dir("sys/module/kvm");
    let cpu = CpuidProbe {
        hypervisor_bit: true,
        signature: Some("KVMKVMKVM".into()),
    };
    let checks = run_checks(&r.env(), &good_kvm(0), &cpu);
    let hw = find(&checks, "hardware virtualization");
    assert_eq!(hw.status, Status::Warn);
    assert!(hw.detail.contains("PVM"));
    let flavour = find(&checks, "KVM flavour");
    assert_eq!(
        (flavour.status, flavour.detail.as_str()),
        (Status::Warn, "kvm_pvm (PVM)")
    );
    assert!(flavour.hint.contains("unmodified guests") && flavour.hint.contains("emulator"));
    assert_eq!(find(&checks, "nested virtualization").status, Status::Warn);
    assert_eq!(find(&checks, "KVM_CAP_NESTED_STATE").status, Status::Warn);
    let vm = find(&checks, "host is a VM");
    assert!(vm.status == Status::Warn && vm.detail.contains("KVMKVMKVM"));
    assert!(all_ok(&checks));
    let err = check_nesting(&nesting_facts(&r.env(), &good_kvm(0)))
        .unwrap_err()
        .to_string();
    assert!(err.contains("PVM"), "{err}");
}

#[test]
fn dev_kvm_missing() {
    let r = FakeRoot::host("vmx");
    std::fs::remove_file(r.0.join("dev/kvm")).unwrap();
    let kvm = KvmFacts {
        open_error: Some("/dev/kvm: No such file or directory".into()),
        ..Default::default()
    };
    let checks = run_checks(&r.env(), &kvm, &CpuidProbe::default());
    assert_eq!(find(&checks, "/dev/kvm exists").status, Status::Fail);
    assert_eq!(find(&checks, "/dev/kvm accessible").status, Status::Fail);
    assert_eq!(find(&checks, "KVM API").status, Status::Fail);
    assert_eq!(find(&checks, "KVM flavour").status, Status::Warn);
    assert!(!all_ok(&checks));
}

#[test]
fn dev_kvm_not_accessible() {
    let r = FakeRoot::host("vmx");
    r.file("sys/module/kvm_intel/parameters/nested", "N\n");
    let kvm_path = r.0.join("dev/kvm");
    std::fs::set_permissions(&kvm_path, std::fs::Permissions::from_mode(0o660)).unwrap();
    let meta = std::fs::metadata(&kvm_path).unwrap();
    // Someone who is neither the owner nor in the file's group.
    let env = HostEnv {
        uid: meta.uid() + 1000,
        gids: vec![meta.gid() + 1000],
        ..r.env()
    };
    let checks = run_checks(&env, &good_kvm(0), &CpuidProbe::default());
    let access = find(&checks, "/dev/kvm accessible");
    assert_eq!(access.status, Status::Fail);
    assert!(access.hint.contains("kvm group"));
    assert!(!all_ok(&checks));
    // In the file's group, it is accessible.
    let env = HostEnv {
        gids: vec![meta.gid()],
        ..env
    };
    let checks = run_checks(&env, &good_kvm(0), &CpuidProbe::default());
    assert_eq!(find(&checks, "/dev/kvm accessible").status, Status::Pass);
    assert_eq!(
        find(&checks, "nested virtualization").detail,
        "kvm_intel nested=N"
    );
}

#[test]
fn missing_tun_fails_and_missing_vhost_warns() {
    let r = FakeRoot::host("vmx");
    std::fs::remove_file(r.0.join("dev/net/tun")).unwrap();
    std::fs::remove_file(r.0.join("dev/vhost-net")).unwrap();
    std::fs::remove_file(r.0.join("usr/bin/passt")).unwrap();
    let mut kvm = good_kvm(0);
    kvm.caps[1].1 = false;
    let checks = run_checks(&r.env(), &kvm, &CpuidProbe::default());
    assert_eq!(find(&checks, "/dev/net/tun").status, Status::Fail);
    assert_eq!(find(&checks, "/dev/vhost-net").status, Status::Warn);
    assert_eq!(find(&checks, "passt").status, Status::Warn);
    let caps = find(&checks, "KVM capabilities");
    assert_eq!(
        (caps.status, caps.detail.as_str()),
        (Status::Fail, "missing KVM_CAP_USER_MEMORY")
    );
}

//! `kiln host check`: can this host run kiln's VMs, and how well?
//!
//! The checks virt-host-validate makes for QEMU/KVM (hardware virtualization flag,
//! /dev/kvm present and accessible, /dev/net/tun, /dev/vhost-net), plus what kiln needs
//! to know: KVM API and capabilities, the KVM flavour (PVM changes what guests can do),
//! nesting, whether this host is itself a guest, and passt. Every input comes through
//! [`HostEnv`], [`KvmFacts`] and [`CpuidProbe`], so tests use a fake root.

mod probe;
#[cfg(test)]
mod tests;

use serde::Serialize;

use crate::cpu::nested::NestingFacts;
pub use probe::{CpuidProbe, HostEnv, KvmFacts, NEEDED_CAPS};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Status {
    Pass,
    Warn,
    Fail,
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Status::Pass => "PASS",
            Status::Warn => "WARN",
            Status::Fail => "FAIL",
        })
    }
}

/// One line of the report.
#[derive(Clone, Debug, Serialize)]
pub struct Check {
    pub name: &'static str,
    pub status: Status,
    /// What was found.
    pub detail: String,
    /// One line on what to do (or what it means).
    pub hint: String,
}

fn check(
    name: &'static str,
    status: Status,
    detail: impl Into<String>,
    hint: impl Into<String>,
) -> Check {
    Check {
        name,
        status,
        detail: detail.into(),
        hint: hint.into(),
    }
}

/// What PVM means for guests, in one line.
pub const PVM_HINT: &str =
    "PVM runs PVM-enabled guest kernels natively; unmodified guests run ring 0 \
     under KVM's instruction emulator (~1000x slower), system calls from their user mode are \
     broken and CPUID feature leaves 1/7 are not honoured: kiln's own test/appliance kernels \
     work, a stock distro installer's userspace does not";

/// Runs every check.
pub fn run_checks(env: &HostEnv, kvm: &KvmFacts, cpu: &CpuidProbe) -> Vec<Check> {
    let flavour = env.kvm_flavour();
    let mut out = Vec::new();
    out.push(hardware_virt(env, flavour.as_deref()));
    out.extend(dev_kvm(env));
    out.push(if env.path("dev/net/tun").exists() {
        check(
            "/dev/net/tun",
            Status::Pass,
            "present",
            "TAP networking is available",
        )
    } else {
        check(
            "/dev/net/tun",
            Status::Fail,
            "missing",
            "load the tun module (modprobe tun)",
        )
    });
    out.push(if env.path("dev/vhost-net").exists() {
        check(
            "/dev/vhost-net",
            Status::Pass,
            "present",
            "vhost-net acceleration is available",
        )
    } else {
        check(
            "/dev/vhost-net",
            Status::Warn,
            "missing",
            "load vhost_net for faster TAP networking",
        )
    });
    out.extend(kvm_api(kvm));
    out.push(flavour_check(flavour.as_deref()));
    out.push(nested_param(env, flavour.as_deref()));
    out.push(if kvm.open_error.is_some() {
        check(
            "KVM_CAP_NESTED_STATE",
            Status::Warn,
            "unknown",
            "/dev/kvm could not be opened",
        )
    } else if kvm.nested_state > 0 {
        check(
            "KVM_CAP_NESTED_STATE",
            Status::Pass,
            format!("{} bytes", kvm.nested_state),
            "nested guests can be saved and restored",
        )
    } else {
        check(
            "KVM_CAP_NESTED_STATE",
            Status::Warn,
            "0 (unsupported)",
            "`kiln run --nested` is not available",
        )
    });
    out.push(match (&cpu.hypervisor_bit, &cpu.signature) {
        (false, _) => check(
            "host is a VM",
            Status::Pass,
            "no hypervisor bit",
            "bare metal",
        ),
        (true, sig) => check(
            "host is a VM",
            Status::Warn,
            format!(
                "CPUID.1:ECX.hypervisor set, signature {:?}",
                sig.clone().unwrap_or_default()
            ),
            "this host is itself a guest: kiln's VMs are nested and slower",
        ),
    });
    out.push(match env.find_program("passt") {
        Some(p) => check(
            "passt",
            Status::Pass,
            p.display().to_string(),
            "user-mode networking is available",
        ),
        None => check(
            "passt",
            Status::Warn,
            "not installed",
            "install passt for user-mode networking",
        ),
    });
    out
}

fn hardware_virt(env: &HostEnv, flavour: Option<&str>) -> Check {
    let name = "hardware virtualization";
    let Some(cpuinfo) = env.read("proc/cpuinfo") else {
        return check(
            name,
            Status::Fail,
            "cannot read /proc/cpuinfo",
            "is /proc mounted?",
        );
    };
    let flags: Vec<&str> = cpuinfo
        .lines()
        .filter(|l| l.starts_with("flags"))
        .flat_map(|l| l.split(':').nth(1).unwrap_or("").split_whitespace())
        .collect();
    if flags.contains(&"vmx") {
        check(
            name,
            Status::Pass,
            "vmx (Intel VT-x)",
            "hardware virtualization is available",
        )
    } else if flags.contains(&"svm") {
        check(
            name,
            Status::Pass,
            "svm (AMD-V)",
            "hardware virtualization is available",
        )
    } else if flavour == Some("kvm_pvm") {
        check(
            name,
            Status::Warn,
            "no vmx/svm flag; KVM is provided by PVM (software)",
            "guests run without VT-x/AMD-V: see the KVM flavour line",
        )
    } else {
        check(
            name,
            Status::Fail,
            "no vmx/svm flag in /proc/cpuinfo",
            "enable VT-x/AMD-V in the firmware, or expose it to this VM (nested)",
        )
    }
}

fn dev_kvm(env: &HostEnv) -> Vec<Check> {
    if !env.path("dev/kvm").exists() {
        return vec![
            check(
                "/dev/kvm exists",
                Status::Fail,
                "missing",
                "load kvm_intel or kvm_amd (modprobe), or enable virtualization in the firmware",
            ),
            check(
                "/dev/kvm accessible",
                Status::Fail,
                "missing",
                "/dev/kvm must exist first",
            ),
        ];
    }
    let exists = check("/dev/kvm exists", Status::Pass, "present", "KVM is loaded");
    let access = match env.can_read_write("dev/kvm") {
        Ok(true) => check(
            "/dev/kvm accessible",
            Status::Pass,
            "read/write",
            "kiln can open /dev/kvm",
        ),
        Ok(false) => check(
            "/dev/kvm accessible",
            Status::Fail,
            format!("no read/write permission for uid {}", env.uid),
            "add the user to the kvm group (usermod -aG kvm USER) and log in again",
        ),
        Err(e) => check(
            "/dev/kvm accessible",
            Status::Fail,
            e.to_string(),
            "check /dev/kvm",
        ),
    };
    vec![exists, access]
}

fn kvm_api(kvm: &KvmFacts) -> Vec<Check> {
    if let Some(e) = &kvm.open_error {
        return vec![check(
            "KVM API",
            Status::Fail,
            e.clone(),
            "kiln needs a usable /dev/kvm",
        )];
    }
    let api = if kvm.api_version == 12 {
        check("KVM API", Status::Pass, "version 12", "the stable KVM API")
    } else {
        check(
            "KVM API",
            Status::Fail,
            format!("version {}", kvm.api_version),
            "kiln needs KVM API version 12",
        )
    };
    let missing: Vec<&str> = kvm.caps.iter().filter(|c| !c.1).map(|c| c.0).collect();
    let caps = if missing.is_empty() {
        check(
            "KVM capabilities",
            Status::Pass,
            kvm.caps
                .iter()
                .map(|c| c.0.trim_start_matches("KVM_CAP_"))
                .collect::<Vec<_>>()
                .join(" "),
            "everything kiln needs",
        )
    } else {
        check(
            "KVM capabilities",
            Status::Fail,
            format!("missing {}", missing.join(", ")),
            "kiln cannot run VMs on this KVM; use a newer kernel",
        )
    };
    vec![api, caps]
}

fn flavour_check(flavour: Option<&str>) -> Check {
    let name = "KVM flavour";
    match flavour {
        Some("kvm_intel") => check(
            name,
            Status::Pass,
            "kvm_intel (VT-x)",
            "full hardware virtualization",
        ),
        Some("kvm_amd") => check(
            name,
            Status::Pass,
            "kvm_amd (AMD-V)",
            "full hardware virtualization",
        ),
        Some("kvm_pvm") => check(name, Status::Warn, "kvm_pvm (PVM)", PVM_HINT),
        _ => check(
            name,
            Status::Warn,
            "no kvm_intel, kvm_amd or kvm_pvm module",
            "KVM may be built in, or missing",
        ),
    }
}

fn nested_param(env: &HostEnv, flavour: Option<&str>) -> Check {
    let name = "nested virtualization";
    match flavour {
        Some(m @ ("kvm_intel" | "kvm_amd")) => {
            let want = if m == "kvm_intel" { "Y" } else { "1" };
            match env.nested_param(m) {
                Some((raw, true)) => check(
                    name,
                    Status::Pass,
                    format!("{m} nested={raw}"),
                    "`kiln run --nested` can expose VMX/SVM",
                ),
                Some((raw, false)) => check(
                    name,
                    Status::Warn,
                    format!("{m} nested={raw}"),
                    format!(
                        "reload with `modprobe -r {m}; modprobe {m} nested={want}` to use --nested"
                    ),
                ),
                None => check(
                    name,
                    Status::Warn,
                    format!("{m} has no nested parameter"),
                    "nesting unsupported",
                ),
            }
        }
        Some("kvm_pvm") => check(
            name,
            Status::Warn,
            "kvm_pvm has no nested support",
            "PVM cannot expose VMX/SVM: `kiln run --nested` is refused",
        ),
        _ => check(
            name,
            Status::Warn,
            "no vendor module",
            "nesting unavailable",
        ),
    }
}

/// What `--nested` needs to decide, from the same sources as the checks.
pub fn nesting_facts(env: &HostEnv, kvm: &KvmFacts) -> NestingFacts {
    let flavour = env.kvm_flavour();
    let nested_param = flavour
        .as_deref()
        .and_then(|m| env.nested_param(m))
        .map(|(_, on)| on);
    NestingFacts {
        flavour,
        nested_param,
        nested_state_size: kvm.nested_state,
    }
}

/// True when no check failed.
pub fn all_ok(checks: &[Check]) -> bool {
    checks.iter().all(|c| c.status != Status::Fail)
}

//! `kiln run --nested`: can this host nest, and the VMX capability MSRs to give the guest.

use kvm_bindings::{kvm_msr_entry, Msrs};
use kvm_ioctls::{Cap, Kvm};

use super::CpuError;

/// IA32_VMX_BASIC .. IA32_VMX_VMFUNC (Intel SDM vol. 3D, appendix A).
pub const VMX_MSR_FIRST: u32 = 0x480;
pub const VMX_MSR_LAST: u32 = 0x491;

/// KVM_CAP_NESTED_STATE (linux/kvm.h): the nested state size, 0 if unsupported.
pub const KVM_CAP_NESTED_STATE: u32 = 157;

/// What the host tells us about nesting; gathered by `host_check` from sysfs and KVM.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NestingFacts {
    /// "kvm_intel", "kvm_amd", "kvm_pvm" or None when no vendor module is loaded.
    pub flavour: Option<String>,
    /// The module's `nested` parameter, as a bool (Y/1 = true).
    pub nested_param: Option<bool>,
    /// KVM_CAP_NESTED_STATE.
    pub nested_state_size: i32,
}

/// Refuses `--nested` with the reason when the host cannot run a nested hypervisor.
pub fn check_nesting(facts: &NestingFacts) -> Result<(), CpuError> {
    let flavour = facts.flavour.as_deref();
    match flavour {
        Some("kvm_pvm") => {
            return Err(CpuError::Nested(
                "this host's KVM is PVM (kvm_pvm), which has no VMX/SVM to expose; run on a host \
                 with kvm_intel or kvm_amd and nested=Y/1"
                    .into(),
            ))
        }
        Some("kvm_intel") | Some("kvm_amd") => {}
        _ => {
            return Err(CpuError::Nested(
                "neither kvm_intel nor kvm_amd is loaded".into(),
            ))
        }
    }
    let param = if flavour == Some("kvm_intel") {
        "Y"
    } else {
        "1"
    };
    if facts.nested_param != Some(true) {
        return Err(CpuError::Nested(format!(
            "/sys/module/{}/parameters/nested is not {param}; load the module with nested={param}",
            flavour.unwrap_or_default()
        )));
    }
    if facts.nested_state_size <= 0 {
        return Err(CpuError::Nested(
            "KVM_CAP_NESTED_STATE is 0: this KVM cannot save nested state".into(),
        ));
    }
    Ok(())
}

/// Reads the VMX capability MSRs 0x480..=0x491 that KVM offers guests, through
/// KVM_GET_MSR_FEATURE_INDEX_LIST and the system KVM_GET_MSRS on the /dev/kvm fd.
/// MSRs that KVM does not list are left out. For KVM_SET_MSRS on each vCPU.
pub fn vmx_capability_msrs(kvm: &Kvm) -> Result<Vec<(u32, u64)>, CpuError> {
    let list = kvm
        .get_msr_feature_index_list()
        .map_err(|e| CpuError::Kvm(format!("KVM_GET_MSR_FEATURE_INDEX_LIST: {e}")))?;
    let wanted: Vec<kvm_msr_entry> = list
        .as_slice()
        .iter()
        .filter(|&&i| (VMX_MSR_FIRST..=VMX_MSR_LAST).contains(&i))
        .map(|&index| kvm_msr_entry {
            index,
            ..Default::default()
        })
        .collect();
    if wanted.is_empty() {
        return Ok(Vec::new());
    }
    let mut msrs = Msrs::from_entries(&wanted).map_err(|e| CpuError::Kvm(format!("{e:?}")))?;
    let n = kvm
        .get_msrs(&mut msrs)
        .map_err(|e| CpuError::Kvm(format!("KVM_GET_MSRS: {e}")))?;
    Ok(msrs.as_slice()[..n]
        .iter()
        .map(|e| (e.index, e.data))
        .collect())
}

/// `kiln run --nested` preflight: refuses with the reason on a host that cannot nest,
/// else returns the VMX capability MSRs to write with KVM_SET_MSRS on every vCPU
/// (empty on AMD, where SVM needs only CPUID). The CPUID side is
/// `GuestCpu { nested: true, .. }`.
pub fn prepare_nested(kvm: &Kvm) -> Result<Vec<(u32, u64)>, CpuError> {
    use crate::host_check::{nesting_facts, HostEnv, KvmFacts};
    let env = HostEnv::real();
    let facts = NestingFacts {
        nested_state_size: nested_state_size(kvm),
        ..nesting_facts(&env, &KvmFacts::default())
    };
    check_nesting(&facts)?;
    vmx_capability_msrs(kvm)
}

/// KVM_CAP_NESTED_STATE on /dev/kvm.
pub fn nested_state_size(kvm: &Kvm) -> i32 {
    kvm.check_extension_int(Cap::NestedState)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_with_the_reason() {
        let facts = |flavour: &str, param: Option<bool>, state: i32| NestingFacts {
            flavour: Some(flavour.to_string()),
            nested_param: param,
            nested_state_size: state,
        };
        let e = check_nesting(&facts("kvm_pvm", None, 0))
            .unwrap_err()
            .to_string();
        assert!(e.contains("PVM (kvm_pvm)"), "{e}");
        let e = check_nesting(&facts("kvm_intel", Some(false), 0))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("/sys/module/kvm_intel/parameters/nested is not Y"),
            "{e}"
        );
        let e = check_nesting(&facts("kvm_intel", Some(true), 0))
            .unwrap_err()
            .to_string();
        assert!(e.contains("KVM_CAP_NESTED_STATE is 0"), "{e}");
        assert!(check_nesting(&facts("kvm_amd", Some(true), 4096)).is_ok());
        let e = check_nesting(&NestingFacts::default())
            .unwrap_err()
            .to_string();
        assert!(e.contains("neither kvm_intel nor kvm_amd"), "{e}");
    }

    /// Needs /dev/kvm. On VT-x hosts KVM lists IA32_VMX_BASIC (0x480) among the feature
    /// MSRs; elsewhere (AMD, PVM) it lists none of 0x480..0x491.
    #[test]
    fn prepare_nested_refuses_on_pvm() {
        let kvm = Kvm::new().expect("this test needs /dev/kvm");
        let result = prepare_nested(&kvm);
        if std::path::Path::new("/sys/module/kvm_pvm").exists() {
            let e = result.unwrap_err().to_string();
            assert!(
                e.starts_with("nested virtualization: this host's KVM is PVM"),
                "{e}"
            );
        }
    }

    #[test]
    fn reads_vmx_msrs_from_dev_kvm() {
        let kvm = Kvm::new().expect("this test needs /dev/kvm");
        let msrs = vmx_capability_msrs(&kvm).unwrap();
        assert!(msrs
            .iter()
            .all(|(i, _)| (VMX_MSR_FIRST..=VMX_MSR_LAST).contains(i)));
        let intel = std::path::Path::new("/sys/module/kvm_intel").exists();
        assert_eq!(msrs.iter().any(|(i, _)| *i == 0x480), intel, "{msrs:x?}");
        if let Some((_, basic)) = msrs.iter().find(|(i, _)| *i == 0x480) {
            // IA32_VMX_BASIC[44:32]: VMXON region size, 1..=4096.
            assert!((1..=4096).contains(&((basic >> 32) & 0x1fff)), "{basic:#x}");
        }
    }
}

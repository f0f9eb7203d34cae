//! CPU models and CPUID: what the guest sees when it executes CPUID.
//!
//! The pipeline, for each vCPU (see [`vcpu_cpuid`]):
//! 1. expand the model (`--cpu MODEL,+feat,-feat`) against the host's supported CPUID
//!    (KVM_GET_SUPPORTED_CPUID) and filter out what the host lacks, QEMU's way
//!    (warnings in QEMU's wording, `check=enforce` refuses);
//! 2. apply a Firecracker-style custom template (`--cpu-template FILE`);
//! 3. normalize whatever the model: topology, caches, hypervisor leaves, XSAVE, brand.
//!
//! Everything here works on [`CpuidTable`], plain data, so it is tested with fixture host
//! tables and no /dev/kvm. Model and feature data are TOML files under resources/cpu/,
//! parsed and checked by vmm/build.rs (with `toml` and `serde`, the usual, well-kept
//! choice) into static tables, so `kiln run` parses nothing at start-up.

pub mod config;
pub mod expand;
pub mod features;
#[cfg(test)]
pub mod fixtures;
pub mod models;
pub mod nested;
pub mod normalize;
mod spelling;
pub mod table;
pub mod template;
pub mod verify;
pub mod xsave;

#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_models;
#[cfg(test)]
mod tests_template;

use thiserror::Error;

pub use config::{CheckMode, CpuConfig, Topology};
pub use features::{Feature, FeatureTable};
pub use table::{CpuidEntry, CpuidTable, Reg};
pub use template::CustomTemplate;

/// QEMU's warning prefix, kept verbatim so logs read the same as QEMU's.
pub const MISSING_PREFIX: &str = "host doesn't support requested feature";

#[derive(Debug, Error)]
pub enum CpuError {
    #[error(
        "unknown CPU model '{name}'{}; `kiln cpu list` shows the models",
        suggest(close)
    )]
    UnknownModel { name: String, close: Vec<String> },
    #[error("unknown CPU feature '{name}'{}", suggest(close))]
    UnknownFeature { name: String, close: Vec<String> },
    #[error("--cpu: {0}")]
    BadOption(String),
    #[error("{0}")]
    BadTopology(String),
    #[error("check=enforce: the host does not support {} requested feature(s):\n{}", missing.len(), missing.join("\n"))]
    Enforce { missing: Vec<String> },
    #[error("CPU template: {0}")]
    Template(String),
    #[error("vCPU index {index} out of range for {cpus} vCPUs")]
    VcpuIndex { index: u32, cpus: u32 },
    #[error("nested virtualization: {0}")]
    Nested(String),
    #[error("KVM: {0}")]
    Kvm(String),
}

fn suggest(close: &[String]) -> String {
    if close.is_empty() {
        String::new()
    } else {
        format!(" (did you mean: {}?)", close.join(", "))
    }
}

/// Everything that decides a guest's CPUID, except the host.
#[derive(Clone, Debug, Default)]
pub struct GuestCpu {
    pub config: CpuConfig,
    pub template: Option<CustomTemplate>,
    pub topology: Option<Topology>,
    pub nested: bool,
}

/// The CPUID of one vCPU and what kiln had to say about it.
#[derive(Clone, Debug)]
pub struct VcpuCpuid {
    pub table: CpuidTable,
    /// One line per requested feature the host lacks, in QEMU's wording (empty with
    /// check=none). The same for every vCPU: print those of vCPU 0.
    pub warnings: Vec<String>,
    /// Requested features the host lacks (cleared).
    pub missing: Vec<Feature>,
    /// Named features present in the final table.
    pub present: Vec<Feature>,
}

/// The CPUID entries for vCPU `vcpu_index`: the single entry point the VMM calls.
///
/// `host` is KVM_GET_SUPPORTED_CPUID (see [`CpuidTable::from_kvm`]); the result converts
/// to `kvm_bindings::CpuId` with [`CpuidTable::to_kvm`] for KVM_SET_CPUID2.
pub fn vcpu_cpuid(
    host: &CpuidTable,
    guest: &GuestCpu,
    vcpu_index: u32,
) -> Result<VcpuCpuid, CpuError> {
    let topology = guest.topology.unwrap_or(Topology::flat(1));
    if vcpu_index >= topology.cpus {
        return Err(CpuError::VcpuIndex {
            index: vcpu_index,
            cpus: topology.cpus,
        });
    }
    let expanded = expand::expand(host, &guest.config, guest.nested);
    let lines: Vec<String> = expanded
        .missing
        .iter()
        .map(|f| format!("{MISSING_PREFIX}: {f}"))
        .collect();
    if guest.config.check == CheckMode::Enforce && !lines.is_empty() {
        return Err(CpuError::Enforce { missing: lines });
    }
    let mut table = expanded.table;
    if let Some(t) = &guest.template {
        t.apply_cpuid(host, &mut table)?;
    }
    let cleared = normalize::normalize(
        &mut table,
        &normalize::NormalizeParams {
            topology,
            vcpu_index,
            nested: guest.nested,
            model_id: expanded.model_id.as_deref(),
        },
    );
    let mut lines = lines;
    for (feature, needs) in cleared {
        if expanded.requested.iter().any(|f| f.name == feature) {
            lines.push(format!(
                "requested feature {feature} needs {needs}, which is not enabled: cleared"
            ));
        }
    }
    let present = present_features(&table);
    Ok(VcpuCpuid {
        table,
        warnings: if guest.config.check == CheckMode::None {
            Vec::new()
        } else {
            lines
        },
        missing: expanded.missing,
        present,
    })
}

/// Named features set in a table.
pub fn present_features(table: &CpuidTable) -> Vec<Feature> {
    FeatureTable::get()
        .features()
        .iter()
        .filter(|f| table.bit(f.word.leaf, f.word.subleaf, f.word.reg, f.bit))
        .copied()
        .collect()
}

/// KVM_GET_SUPPORTED_CPUID of /dev/kvm.
pub fn kvm_supported_cpuid(kvm: &kvm_ioctls::Kvm) -> Result<CpuidTable, CpuError> {
    let cpuid = kvm
        .get_supported_cpuid(kvm_bindings::KVM_MAX_CPUID_ENTRIES)
        .map_err(|e| CpuError::Kvm(format!("KVM_GET_SUPPORTED_CPUID: {e}")))?;
    Ok(CpuidTable::from_kvm(&cpuid))
}

/// Opens /dev/kvm.
pub fn open_kvm() -> Result<kvm_ioctls::Kvm, CpuError> {
    kvm_ioctls::Kvm::new()
        .map_err(|e| CpuError::Kvm(format!("opening /dev/kvm: {e} (see `kiln host check`)")))
}

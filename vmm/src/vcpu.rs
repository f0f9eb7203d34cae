//! vCPU creation and start-up state: CPUID, boot registers for the BSP, LAPIC
//! LINT pins, and the multiprocessor state (APs wait for INIT/SIPI from the guest).

use kvm_bindings::{
    kvm_mp_state, kvm_msr_entry, Msrs, KVM_MP_STATE_RUNNABLE, KVM_MP_STATE_UNINITIALIZED,
};
use kvm_ioctls::{Kvm, VcpuFd, VmFd};

use crate::boot::{regs, BootEntry};
use crate::cpu::template::Bitmap;
use crate::cpu::{self, CpuError, CpuidTable, GuestCpu, Topology};

#[derive(Debug, thiserror::Error)]
pub enum VcpuError {
    #[error("cannot create vCPU {id}")]
    Create { id: u8, source: kvm_ioctls::Error },
    #[error("cannot set up vCPU {id} ({what})")]
    Setup {
        id: u8,
        what: &'static str,
        source: kvm_ioctls::Error,
    },
    #[error(transparent)]
    Cpu(#[from] CpuError),
    #[error("--cpus {cpus}: the topology describes {topology} vCPUs")]
    TopologyMismatch { cpus: u8, topology: u32 },
    #[error(
        "--cpus {cpus},sockets={sockets},cores={cores},threads={threads}: vCPU {index} would get \
         APIC ID {apic_id}; kiln gives vCPUs the APIC IDs 0..N-1 (KVM vCPU ids and the MADT), \
         so the topology must give contiguous IDs: use power-of-two cores and threads"
    )]
    SparseApicIds {
        cpus: u32,
        sockets: u32,
        cores: u32,
        threads: u32,
        index: u32,
        apic_id: u32,
    },
    #[error("vCPU {id}: KVM refused MSR {index:#x} ({what})")]
    MsrsRefused {
        id: u8,
        what: &'static str,
        index: u32,
    },
}

/// What every vCPU's CPUID and MSRs are computed from, prepared once per VM
/// before any vCPU exists, so a refused `--cpu ...,check=enforce` or
/// `--nested` stops kiln before the guest starts.
pub struct CpuSetup {
    host: CpuidTable,
    guest: GuestCpu,
    /// VMX capability MSRs for KVM_SET_MSRS (`--nested` on an Intel host).
    nested_msrs: Vec<(u32, u64)>,
    /// `--cpu-template` MSR modifiers, applied to each vCPU's initial values.
    template_msrs: Vec<(u32, Bitmap)>,
}

impl CpuSetup {
    /// Reads KVM's supported CPUID, checks `--nested`, and computes vCPU 0's table
    /// once so that errors and the QEMU-worded warnings come out here, once.
    pub fn prepare(kvm: &Kvm, guest: &GuestCpu, vcpus: u8) -> Result<Self, VcpuError> {
        let mut guest = guest.clone();
        let topology = guest
            .topology
            .unwrap_or_else(|| Topology::flat(u32::from(vcpus)));
        if topology.cpus != u32::from(vcpus) {
            return Err(VcpuError::TopologyMismatch {
                cpus: vcpus,
                topology: topology.cpus,
            });
        }
        check_dense_apic_ids(&topology)?;
        guest.topology = Some(topology);
        let nested_msrs = if guest.nested {
            cpu::nested::prepare_nested(kvm)?
        } else {
            Vec::new()
        };
        let template_msrs = match &guest.template {
            Some(t) => t.msr_bitmaps(&host_msr_indices(kvm)?)?,
            None => Vec::new(),
        };
        let host = cpu::kvm_supported_cpuid(kvm)?;
        let first = cpu::vcpu_cpuid(&host, &guest, 0)?;
        for line in &first.warnings {
            log::warn!("{line}");
        }
        Ok(CpuSetup {
            host,
            guest,
            nested_msrs,
            template_msrs,
        })
    }

    /// The CPUID table of vCPU `id`, ready for KVM_SET_CPUID2.
    pub fn cpuid(&self, id: u8) -> Result<kvm_bindings::CpuId, CpuError> {
        let computed = cpu::vcpu_cpuid(&self.host, &self.guest, u32::from(id))?;
        computed
            .table
            .to_kvm()
            .map_err(|e| CpuError::Kvm(format!("CPUID table for vCPU {id}: {e:?}")))
    }
}

/// LVT offsets in the LAPIC register page, and delivery modes.
const APIC_LVT0: usize = 0x350;
const APIC_LVT1: usize = 0x360;
const APIC_MODE_NMI: u32 = 0x4;
const APIC_MODE_EXTINT: u32 = 0x7;

fn set_apic_delivery_mode(reg: u32, mode: u32) -> u32 {
    (reg & !0x700) | (mode << 8)
}

/// Create vCPU `id` and give it its start-up state.
pub fn create_vcpu(
    vm: &VmFd,
    id: u8,
    cpus: &CpuSetup,
    entry: BootEntry,
) -> Result<VcpuFd, VcpuError> {
    let setup = |what| move |source| VcpuError::Setup { id, what, source };
    let vcpu = vm
        .create_vcpu(u64::from(id))
        .map_err(|source| VcpuError::Create { id, source })?;
    vcpu.set_cpuid2(&cpus.cpuid(id)?).map_err(setup("CPUID"))?;
    if !cpus.nested_msrs.is_empty() {
        set_msrs(&vcpu, id, &cpus.nested_msrs, "VMX capability MSRs")?;
    }
    if !cpus.template_msrs.is_empty() {
        apply_template_msrs(&vcpu, id, &cpus.template_msrs)?;
    }

    // LINT0 = ExtINT (the PIC), LINT1 = NMI, as firmware leaves them.
    let mut lapic = vcpu.get_lapic().map_err(setup("LAPIC"))?;
    for (offset, mode) in [(APIC_LVT0, APIC_MODE_EXTINT), (APIC_LVT1, APIC_MODE_NMI)] {
        let bytes: [u8; 4] = lapic.regs[offset..offset + 4]
            .iter()
            .map(|b| *b as u8)
            .collect::<Vec<u8>>()
            .try_into()
            .unwrap();
        let value = set_apic_delivery_mode(u32::from_le_bytes(bytes), mode);
        for (i, b) in value.to_le_bytes().iter().enumerate() {
            lapic.regs[offset + i] = *b as _;
        }
    }
    vcpu.set_lapic(&lapic).map_err(setup("LAPIC"))?;

    if id == 0 {
        let sregs = vcpu.get_sregs().map_err(setup("special registers"))?;
        vcpu.set_sregs(&regs::boot_sregs(sregs, entry))
            .map_err(setup("special registers"))?;
        vcpu.set_regs(&regs::boot_regs(entry))
            .map_err(setup("registers"))?;
        vcpu.set_fpu(&regs::boot_fpu()).map_err(setup("FPU"))?;
    }
    // The BSP runs; APs wait for the guest's INIT/SIPI on the in-kernel LAPIC.
    let mp_state = if id == 0 {
        KVM_MP_STATE_RUNNABLE
    } else {
        KVM_MP_STATE_UNINITIALIZED
    };
    vcpu.set_mp_state(kvm_mp_state { mp_state })
        .map_err(setup("MP state"))?;
    Ok(vcpu)
}

/// KVM's initial APIC ID is the vCPU id, and the MADT lists 0..N-1: the CPUID
/// topology leaves must describe the same IDs.
fn check_dense_apic_ids(t: &Topology) -> Result<(), VcpuError> {
    match (0..t.cpus).find(|&i| t.apic_id(i) != i) {
        None => Ok(()),
        Some(index) => Err(VcpuError::SparseApicIds {
            cpus: t.cpus,
            sockets: t.sockets,
            cores: t.cores,
            threads: t.threads,
            index,
            apic_id: t.apic_id(index),
        }),
    }
}

/// The MSRs KVM can save and restore plus its feature MSRs: what a template may touch.
fn host_msr_indices(kvm: &Kvm) -> Result<Vec<u32>, CpuError> {
    let mut list = kvm
        .get_msr_index_list()
        .map_err(|e| CpuError::Kvm(format!("KVM_GET_MSR_INDEX_LIST: {e}")))?
        .as_slice()
        .to_vec();
    let features = kvm
        .get_msr_feature_index_list()
        .map_err(|e| CpuError::Kvm(format!("KVM_GET_MSR_FEATURE_INDEX_LIST: {e}")))?;
    list.extend_from_slice(features.as_slice());
    Ok(list)
}

/// Read each templated MSR's initial value, apply its 0/1/x bitmap, write it back.
fn apply_template_msrs(vcpu: &VcpuFd, id: u8, bitmaps: &[(u32, Bitmap)]) -> Result<(), VcpuError> {
    let entries: Vec<kvm_msr_entry> = bitmaps
        .iter()
        .map(|&(index, _)| kvm_msr_entry {
            index,
            ..Default::default()
        })
        .collect();
    let mut msrs =
        Msrs::from_entries(&entries).map_err(|e| CpuError::Kvm(format!("template MSRs: {e:?}")))?;
    let read = vcpu
        .get_msrs(&mut msrs)
        .map_err(|source| VcpuError::Setup {
            id,
            what: "template MSRs (read)",
            source,
        })?;
    if read != entries.len() {
        let index = msrs.as_slice()[read].index;
        return Err(
            CpuError::Template(format!("KVM cannot read MSR {index:#x} on vCPU {id}")).into(),
        );
    }
    let values: Vec<(u32, u64)> = msrs
        .as_slice()
        .iter()
        .zip(bitmaps)
        .map(|(e, (_, bm))| (e.index, bm.apply(e.data)))
        .collect();
    set_msrs(vcpu, id, &values, "template MSRs")
}

fn set_msrs(
    vcpu: &VcpuFd,
    id: u8,
    values: &[(u32, u64)],
    what: &'static str,
) -> Result<(), VcpuError> {
    let entries: Vec<kvm_msr_entry> = values
        .iter()
        .map(|&(index, data)| kvm_msr_entry {
            index,
            data,
            ..Default::default()
        })
        .collect();
    let msrs = Msrs::from_entries(&entries).map_err(|e| CpuError::Kvm(format!("{what}: {e:?}")))?;
    let set = vcpu
        .set_msrs(&msrs)
        .map_err(|source| VcpuError::Setup { id, what, source })?;
    if set != entries.len() {
        return Err(VcpuError::MsrsRefused {
            id,
            what,
            index: entries[set].index,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topologies_must_give_apic_ids_0_to_n_minus_1() {
        let topo = |s: &str| s.parse::<Topology>().unwrap();
        assert!(check_dense_apic_ids(&topo("4,sockets=1,cores=2,threads=2")).is_ok());
        assert!(check_dense_apic_ids(&topo("3,sockets=1,cores=3")).is_ok());
        assert!(check_dense_apic_ids(&topo("7")).is_ok());
        let err = check_dense_apic_ids(&topo("6,sockets=2,cores=3")).unwrap_err();
        assert!(
            matches!(
                err,
                VcpuError::SparseApicIds {
                    index: 3,
                    apic_id: 4,
                    ..
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn lvt_delivery_mode_is_replaced() {
        assert_eq!(
            set_apic_delivery_mode(0x0001_0400, APIC_MODE_EXTINT),
            0x0001_0700
        );
    }
}

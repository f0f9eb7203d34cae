//! vCPU creation and start-up state: CPUID, boot registers for the BSP, LAPIC
//! LINT pins, and the multiprocessor state (APs wait for INIT/SIPI from the guest).

use kvm_bindings::{
    kvm_cpuid_entry2, kvm_mp_state, CpuId, KVM_CPUID_FLAG_SIGNIFCANT_INDEX, KVM_MP_STATE_RUNNABLE,
    KVM_MP_STATE_UNINITIALIZED,
};
use kvm_ioctls::{VcpuFd, VmFd};

use crate::boot::{regs, BootEntry};

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
}

/// CPUID leaves kiln adjusts.
const LEAF_FEATURES: u32 = 0x1;
const LEAF_EXT_TOPOLOGY: u32 = 0xb;
const LEAF_V2_EXT_TOPOLOGY: u32 = 0x1f;
const LEAF_KVM_SIGNATURE: u32 = 0x4000_0000;
const LEAF_KVM_FEATURES: u32 = 0x4000_0001;
const ECX_HYPERVISOR: u32 = 1 << 31;
const EDX_HTT: u32 = 1 << 28;

/// The CPUID one vCPU sees: KVM's supported table with the per-vCPU fix-ups a
/// guest needs (APIC ids, the hypervisor bit and KVM's signature so it finds
/// kvmclock). The CPU-model module (vmm/src/cpu/, issue 5) replaces this with
/// its model + host + topology entry point.
pub fn cpuid_for_vcpu(supported: &CpuId, vcpu_id: u8, vcpu_count: u8) -> CpuId {
    let mut cpuid = supported.clone();
    let mut has_signature = false;
    for entry in cpuid.as_mut_slice() {
        match entry.function {
            LEAF_FEATURES => {
                entry.ebx = (entry.ebx & 0x0000_ffff)
                    | (u32::from(vcpu_id) << 24)
                    | (u32::from(vcpu_count) << 16);
                entry.ecx |= ECX_HYPERVISOR;
                if vcpu_count > 1 {
                    entry.edx |= EDX_HTT;
                }
            }
            LEAF_EXT_TOPOLOGY | LEAF_V2_EXT_TOPOLOGY => entry.edx = u32::from(vcpu_id),
            LEAF_KVM_SIGNATURE => {
                has_signature = true;
                set_kvm_signature(entry);
            }
            _ => {}
        }
    }
    if !has_signature {
        let mut entry = kvm_cpuid_entry2 {
            function: LEAF_KVM_SIGNATURE,
            ..Default::default()
        };
        set_kvm_signature(&mut entry);
        // A full table keeps KVM's own; nothing better to do.
        let _ = cpuid.push(entry);
    }
    cpuid
}

fn set_kvm_signature(entry: &mut kvm_cpuid_entry2) {
    let sig = b"KVMKVMKVM\0\0\0";
    entry.eax = LEAF_KVM_FEATURES;
    entry.ebx = u32::from_le_bytes(sig[0..4].try_into().unwrap());
    entry.ecx = u32::from_le_bytes(sig[4..8].try_into().unwrap());
    entry.edx = u32::from_le_bytes(sig[8..12].try_into().unwrap());
    entry.flags &= !KVM_CPUID_FLAG_SIGNIFCANT_INDEX;
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
    count: u8,
    supported_cpuid: &CpuId,
    entry: BootEntry,
) -> Result<VcpuFd, VcpuError> {
    let setup = |what| move |source| VcpuError::Setup { id, what, source };
    let vcpu = vm
        .create_vcpu(u64::from(id))
        .map_err(|source| VcpuError::Create { id, source })?;
    vcpu.set_cpuid2(&cpuid_for_vcpu(supported_cpuid, id, count))
        .map_err(setup("CPUID"))?;

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

#[cfg(test)]
mod tests {
    use super::*;

    fn table() -> CpuId {
        let entries = [
            kvm_cpuid_entry2 {
                function: 1,
                ebx: 0xff00_0800,
                ..Default::default()
            },
            kvm_cpuid_entry2 {
                function: 0xb,
                index: 1,
                edx: 7,
                ..Default::default()
            },
        ];
        CpuId::from_entries(&entries).unwrap()
    }

    #[test]
    fn apic_ids_hypervisor_bit_and_kvm_signature() {
        let cpuid = cpuid_for_vcpu(&table(), 3, 4);
        let leaf1 = cpuid.as_slice().iter().find(|e| e.function == 1).unwrap();
        assert_eq!(leaf1.ebx >> 24, 3);
        assert_eq!((leaf1.ebx >> 16) & 0xff, 4);
        assert_eq!(leaf1.ebx & 0xffff, 0x0800, "CLFLUSH size kept");
        assert_ne!(leaf1.ecx & ECX_HYPERVISOR, 0);
        let topo = cpuid.as_slice().iter().find(|e| e.function == 0xb).unwrap();
        assert_eq!(topo.edx, 3);
        let sig = cpuid
            .as_slice()
            .iter()
            .find(|e| e.function == LEAF_KVM_SIGNATURE)
            .unwrap();
        assert_eq!(sig.ebx.to_le_bytes(), *b"KVMK");
        assert_eq!(sig.eax, LEAF_KVM_FEATURES);
    }

    #[test]
    fn lvt_delivery_mode_is_replaced() {
        assert_eq!(
            set_apic_delivery_mode(0x0001_0400, APIC_MODE_EXTINT),
            0x0001_0700
        );
    }
}

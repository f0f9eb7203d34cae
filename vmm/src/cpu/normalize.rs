//! Fix-ups applied whatever the model (after the template), as Firecracker's and
//! Cloud Hypervisor's CPUID normalization do: APIC IDs and topology, cache topology,
//! the hypervisor leaves, XSAVE sizes, the brand string and address sizes.

use super::config::Topology;
use super::expand::VENDOR_AMD;
use super::features::FeatureTable;
use super::table::{vendor_of, CpuidEntry, CpuidTable, Reg};
use super::xsave;

/// KVM's hypervisor signature (Documentation/virt/kvm/x86/cpuid.rst).
pub const KVM_SIGNATURE: &[u8; 12] = b"KVMKVMKVM\0\0\0";
/// QEMU's AMD alias mask: leaf 1 EDX bits that AMD CPUs repeat in 0x80000001 EDX.
const AMD_EXT2_ALIASES: u32 = 0x0183_f3ff;
const CLFLUSH_LINE_QWORDS: u32 = 8; // 64-byte lines

/// Per-vCPU inputs of normalization.
#[derive(Clone, Copy, Debug)]
pub struct NormalizeParams<'a> {
    pub topology: Topology,
    pub vcpu_index: u32,
    pub nested: bool,
    pub model_id: Option<&'a str>,
}

/// Returns the features cleared because a prerequisite is missing (feature, prerequisite).
pub fn normalize(
    table: &mut CpuidTable,
    p: &NormalizeParams<'_>,
) -> Vec<(&'static str, &'static str)> {
    let features = FeatureTable::get();
    let bit = |name: &str| features.lookup(name).expect("known feature");
    let hv = bit("hypervisor");
    table.set_bit(hv.word.leaf, hv.word.subleaf, hv.word.reg, hv.bit, true);
    // Dynamic bits that reflect guest control registers: KVM computes them.
    table.set_bit(1, 0, Reg::Ecx, 27, false); // OSXSAVE follows CR4.OSXSAVE
    table.set_bit(7, 0, Reg::Ecx, 4, false); // OSPKE follows CR4.PKE
    if !p.nested {
        for name in ["vmx", "svm"] {
            let f = bit(name);
            table.set_bit(f.word.leaf, f.word.subleaf, f.word.reg, f.bit, false);
        }
    }
    let svm = bit("svm");
    if !table.bit(svm.word.leaf, 0, svm.word.reg, svm.bit) {
        table.remove(0x8000_000a, 0);
    }
    let cleared = xsave::apply_dependencies(table);
    xsave::normalize_xsave(table);
    topology(table, &p.topology, p.vcpu_index);
    hypervisor_leaves(table);
    if let Some(id) = p.model_id {
        brand(table, id);
    }
    let amd = vendor_of(table) == VENDOR_AMD;
    if amd && table.get(0x8000_0001, 0).is_some() {
        let aliases = table.reg(1, 0, Reg::Edx) & AMD_EXT2_ALIASES;
        table.entry_mut(0x8000_0001, 0).edx |= aliases;
    }
    address_sizes(table, &p.topology, amd);
    cleared
}

/// Leaf 1 EBX, leaf 0xB/0x1F (x2APIC topology) and leaf 4 (cache sharing).
fn topology(table: &mut CpuidTable, topo: &Topology, index: u32) {
    let apic_id = topo.apic_id(index);
    let tb = topo.thread_bits();
    let cb = topo.core_bits();
    let per_package = 1u32 << (tb + cb);
    if let Some(e) = table.get_mut(1, 0) {
        e.ebx =
            ((apic_id & 0xff) << 24) | ((per_package & 0xff) << 16) | (CLFLUSH_LINE_QWORDS << 8);
        // HTT: more than one logical processor per package.
        if topo.cores * topo.threads > 1 {
            e.edx |= 1 << 28;
        } else {
            e.edx &= !(1 << 28);
        }
    }
    let level = table.reg(0, 0, Reg::Eax);
    for leaf in [0xb, 0x1f] {
        table.retain(|e| e.leaf != leaf);
        if level < leaf {
            continue;
        }
        // Level types: 1 = SMT, 2 = core; a level with type 0 ends the list.
        let levels = [
            (tb, topo.threads, 1u32),
            (tb + cb, topo.threads * topo.cores, 2u32),
        ];
        for (sub, (shift, count, kind)) in levels.iter().enumerate() {
            let sub = sub as u32;
            table.insert(CpuidEntry::new(
                leaf,
                sub,
                [*shift, *count, (kind << 8) | sub, apic_id],
            ));
        }
        table.insert(CpuidEntry::new(leaf, 2, [0, 0, 2, apic_id]));
    }
    // AMD extended APIC ID / compute-unit topology (AMD APM vol. 3, CPUID Fn8000_001E):
    // one node per socket.
    if let Some(e) = table.get_mut(0x8000_001e, 0) {
        let core = (index / topo.threads) % topo.cores;
        e.eax = apic_id;
        e.ebx = (((topo.threads - 1) & 0xff) << 8) | (core & 0xff);
        e.ecx = (index / (topo.threads * topo.cores)) & 0xff;
    }
    for sub in table.subleaves(4) {
        if let Some(e) = table.get_mut(4, sub) {
            if e.eax & 0x1f == 0 {
                continue; // no more caches
            }
            let cache_level = (e.eax >> 5) & 0x7;
            let sharing = if cache_level >= 3 {
                per_package
            } else {
                1 << tb
            };
            e.eax &= 0x3fff;
            e.eax |= ((sharing - 1) & 0xfff) << 14;
            e.eax |= (((1u32 << cb) - 1) & 0x3f) << 26;
        }
    }
}

/// 0x40000000: KVM signature and max hypervisor leaf; 0x40000001: KVM features (host's).
fn hypervisor_leaves(table: &mut CpuidTable) {
    // Unlike the vendor string of leaf 0, the hypervisor signature is in EBX, ECX, EDX order.
    let w = |i: usize| u32::from_le_bytes(KVM_SIGNATURE[i..i + 4].try_into().expect("4 bytes"));
    let (ebx, ecx, edx) = (w(0), w(4), w(8));
    table.retain(|e| !(0x4000_0002..0x4000_0100).contains(&e.leaf));
    table.insert(CpuidEntry::new(
        0x4000_0000,
        0,
        [0x4000_0001, ebx, ecx, edx],
    ));
    table.entry_mut(0x4000_0001, 0);
}

/// 0x80000002..4: the model-id, NUL-padded to 48 bytes.
fn brand(table: &mut CpuidTable, id: &str) {
    if table.reg(0x8000_0000, 0, Reg::Eax) < 0x8000_0004 {
        return;
    }
    let mut bytes = [0u8; 48];
    let n = id.len().min(47);
    bytes[..n].copy_from_slice(&id.as_bytes()[..n]);
    for i in 0..3u32 {
        let w = |j: usize| {
            let o = i as usize * 16 + j * 4;
            u32::from_le_bytes([bytes[o], bytes[o + 1], bytes[o + 2], bytes[o + 3]])
        };
        table.insert(CpuidEntry::new(
            0x8000_0002 + i,
            0,
            [w(0), w(1), w(2), w(3)],
        ));
    }
}

/// 0x80000008: physical bits as the host's, linear bits 48 or 57 (LA57); the AMD
/// core count in ECX.
fn address_sizes(table: &mut CpuidTable, topo: &Topology, amd: bool) {
    let la57 = table.bit(7, 0, Reg::Ecx, 16);
    if let Some(e) = table.get_mut(0x8000_0008, 0) {
        let phys = match e.eax & 0xff {
            0 => 36,
            n => n,
        };
        e.eax = (e.eax & !0xffff) | phys | (if la57 { 57 } else { 48 } << 8);
        if amd {
            e.ecx = (e.ecx & !0xff) | ((topo.cores * topo.threads - 1) & 0xff);
        }
    }
}

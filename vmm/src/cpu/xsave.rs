//! Feature dependencies and leaf 0xD (XSAVE) consistency: a masked AVX or AVX-512
//! must not leave its state components, or their sizes, advertised.

use super::features::FeatureTable;
use super::table::{CpuidTable, Reg};

/// (feature, features that cannot work without it). Applied in order, so chains
/// such as xsave -> avx -> avx2 resolve in one pass.
const DEPENDENCIES: &[(&str, &[&str])] = &[
    (
        "xsave",
        &[
            "avx", "xsaveopt", "xsavec", "xgetbv1", "xsaves", "xfd", "mpx", "pku",
        ],
    ),
    (
        "avx",
        &[
            "avx2",
            "fma",
            "f16c",
            "vaes",
            "vpclmulqdq",
            "avx-vnni",
            "avx512f",
        ],
    ),
    (
        "avx512f",
        &[
            "avx512dq",
            "avx512ifma",
            "avx512pf",
            "avx512er",
            "avx512cd",
            "avx512bw",
            "avx512vl",
            "avx512vbmi",
            "avx512vbmi2",
            "avx512vnni",
            "avx512bitalg",
            "avx512-vpopcntdq",
            "avx512-4vnniw",
            "avx512-4fmaps",
            "avx512-vp2intersect",
            "avx512-fp16",
            "avx512-bf16",
        ],
    ),
];

/// XSAVE state components (Intel SDM vol. 1, 13.1) and the feature that uses them.
pub const COMPONENTS: &[(u32, &str)] = &[
    (2, "avx"),
    (3, "mpx"),
    (4, "mpx"),
    (5, "avx512f"),
    (6, "avx512f"),
    (7, "avx512f"),
    (9, "pku"),
    (17, "amx-tile"),
    (18, "amx-tile"),
];

/// Legacy XSAVE area (512 bytes) plus the XSAVE header (64 bytes).
const XSAVE_BASE_SIZE: u32 = 576;

fn has(table: &CpuidTable, name: &str) -> bool {
    let f = FeatureTable::get().lookup(name).expect("known feature");
    table.bit(f.word.leaf, f.word.subleaf, f.word.reg, f.bit)
}

fn clear(table: &mut CpuidTable, name: &str) {
    let f = FeatureTable::get().lookup(name).expect("known feature");
    table.set_bit(f.word.leaf, f.word.subleaf, f.word.reg, f.bit, false);
}

/// Clears features whose prerequisite is absent; returns (cleared, prerequisite) for
/// each feature that was set.
pub fn apply_dependencies(table: &mut CpuidTable) -> Vec<(&'static str, &'static str)> {
    let mut cleared = Vec::new();
    for (base, dependents) in DEPENDENCIES {
        if !has(table, base) {
            for d in *dependents {
                if has(table, d) {
                    cleared.push((*d, *base));
                }
                clear(table, d);
            }
        }
    }
    cleared
}

/// Makes leaf 0xD describe exactly the state components the enabled features use.
pub fn normalize_xsave(table: &mut CpuidTable) {
    if !has(table, "xsave") {
        table.retain(|e| e.leaf != 0xd);
        return;
    }
    let mut allowed: u64 = 0b11; // x87 and SSE state are always there with XSAVE.
    for (component, feature) in COMPONENTS {
        if has(table, feature) {
            allowed |= 1 << component;
        }
    }
    let host_xcr0 =
        (u64::from(table.reg(0xd, 0, Reg::Edx)) << 32) | u64::from(table.reg(0xd, 0, Reg::Eax));
    let xcr0 = (host_xcr0 | 0b11) & allowed;
    let xss_allowed = has(table, "xsaves");
    // Drop the size/offset subleaves of components that are not enabled.
    table.retain(|e| {
        if e.leaf != 0xd || e.subleaf < 2 || e.subleaf > 63 {
            return true;
        }
        let user = xcr0 & (1 << e.subleaf) != 0;
        // ECX bit 0 of a component subleaf set = supervisor (IA32_XSS) state.
        let supervisor = e.ecx & 1 != 0;
        user || (supervisor && xss_allowed)
    });
    let mut size = XSAVE_BASE_SIZE;
    for c in 2..64 {
        if xcr0 & (1 << c) != 0 {
            if let Some(e) = table.get(0xd, c) {
                size = size.max(e.ebx.saturating_add(e.eax));
            }
        }
    }
    let e = table.entry_mut(0xd, 0);
    e.eax = xcr0 as u32;
    e.edx = (xcr0 >> 32) as u32;
    // ECX: size for every supported component. EBX: size for the components enabled
    // in XCR0; KVM recomputes it when the guest writes XCR0, and like QEMU under KVM
    // kiln starts it at the full size.
    e.ecx = size;
    e.ebx = size;
    if !xss_allowed {
        if let Some(e1) = table.get_mut(0xd, 1) {
            e1.ecx = 0;
            e1.edx = 0;
        }
    }
}

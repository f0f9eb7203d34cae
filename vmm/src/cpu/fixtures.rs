//! Fixture host tables for the unit tests: a host that supports every named feature
//! (with realistic cache, topology and XSAVE leaves), and a PVM-like host without SSE3.

use super::features::FeatureTable;
use super::table::{signature_regs, CpuidEntry, CpuidTable};

/// XSAVE components of the fixture: (component, size, offset), as on Skylake-SP.
pub const XSAVE_COMPONENTS: &[(u32, u32, u32)] = &[
    (2, 256, 576),
    (3, 64, 960),
    (4, 64, 1024),
    (5, 64, 1088),
    (6, 512, 1152),
    (7, 1024, 1664),
    (9, 8, 2688),
];

/// A host whose KVM supports every feature kiln knows.
pub fn full_host() -> CpuidTable {
    let mut t = CpuidTable::new();
    let (ebx, ecx, edx) = signature_regs(b"GenuineIntel");
    t.insert(CpuidEntry::new(0, 0, [0x1f, ebx, ecx, edx]));
    t.insert(CpuidEntry::new(1, 0, [0x50654, 0x0010_0800, 0, 0]));
    // Leaf 4: L1d, L1i, L2 (per core), L3 (per package), terminator.
    for (sub, eax) in [(0, 0x121), (1, 0x122), (2, 0x143), (3, 0x163), (4, 0)] {
        t.insert(CpuidEntry::new(4, sub, [eax, 0x01c0_003f, 0x3f, 0]));
    }
    t.insert(CpuidEntry::new(6, 0, [0, 0, 0, 0]));
    t.insert(CpuidEntry::new(7, 0, [1, 0, 0, 0]));
    t.insert(CpuidEntry::new(7, 1, [0, 0, 0, 0]));
    t.insert(CpuidEntry::new(0xb, 0, [1, 2, 0x100, 0]));
    t.insert(CpuidEntry::new(0xb, 1, [5, 32, 0x201, 0]));
    t.insert(CpuidEntry::new(0x1f, 0, [1, 2, 0x100, 0]));
    let xcr0: u32 = XSAVE_COMPONENTS.iter().fold(0b11, |m, c| m | 1 << c.0);
    t.insert(CpuidEntry::new(0xd, 0, [xcr0, 2696, 2696, 0]));
    t.insert(CpuidEntry::new(0xd, 1, [0, 2696, 0x100, 0]));
    for &(c, size, offset) in XSAVE_COMPONENTS {
        t.insert(CpuidEntry::new(0xd, c, [size, offset, 0, 0]));
    }
    t.insert(CpuidEntry::new(0x4000_0000, 0, [0x4000_0001, 0, 0, 0]));
    t.insert(CpuidEntry::new(0x4000_0001, 0, [0x0100_7afb, 0, 0, 0]));
    t.insert(CpuidEntry::new(0x8000_0000, 0, [0x8000_001e, 0, 0, 0]));
    t.insert(CpuidEntry::new(0x8000_0001, 0, [0, 0, 0, 0]));
    let brand = b"Fixture(R) CPU @ 2.00GHz\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0";
    for i in 0..3u32 {
        let w = |j: usize| {
            let o = i as usize * 16 + j * 4;
            u32::from_le_bytes([brand[o], brand[o + 1], brand[o + 2], brand[o + 3]])
        };
        t.insert(CpuidEntry::new(
            0x8000_0002 + i,
            0,
            [w(0), w(1), w(2), w(3)],
        ));
    }
    t.insert(CpuidEntry::new(0x8000_0006, 0, [0, 0, 0x0100_6040, 0]));
    t.insert(CpuidEntry::new(0x8000_0007, 0, [0, 0, 0, 0]));
    t.insert(CpuidEntry::new(0x8000_0008, 0, [0x302e, 0, 0, 0]));
    t.insert(CpuidEntry::new(0x8000_000a, 0, [1, 0x10, 0, 0]));
    t.insert(CpuidEntry::new(0x8000_001e, 0, [7, 0x103, 0x300, 0]));
    for f in FeatureTable::get().features() {
        t.set_bit(f.word.leaf, f.word.subleaf, f.word.reg, f.bit, true);
    }
    t
}

/// The PVM-like host of the development machines: no SSE3 (pni), no VMX/SVM.
pub fn pvm_like_host() -> CpuidTable {
    let mut t = full_host();
    let table = FeatureTable::get();
    for name in ["pni", "vmx", "svm"] {
        let f = table.lookup(name).unwrap();
        t.set_bit(f.word.leaf, f.word.subleaf, f.word.reg, f.bit, false);
    }
    t
}

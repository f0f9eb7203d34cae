//! The CPUID table kiln computes: plain data, independent of KVM, so the model,
//! filtering and normalization code can be unit-tested against fixture host tables.

use std::collections::BTreeMap;
use std::fmt;

use kvm_bindings::{kvm_cpuid_entry2, CpuId, KVM_CPUID_FLAG_SIGNIFCANT_INDEX};

/// One of the four CPUID output registers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Reg {
    Eax,
    Ebx,
    Ecx,
    Edx,
}

impl Reg {
    pub const ALL: [Reg; 4] = [Reg::Eax, Reg::Ebx, Reg::Ecx, Reg::Edx];

    pub fn name(self) -> &'static str {
        match self {
            Reg::Eax => "EAX",
            Reg::Ebx => "EBX",
            Reg::Ecx => "ECX",
            Reg::Edx => "EDX",
        }
    }

    /// Parses "eax".."edx", any case.
    pub fn parse(s: &str) -> Option<Reg> {
        match s.to_ascii_lowercase().as_str() {
            "eax" => Some(Reg::Eax),
            "ebx" => Some(Reg::Ebx),
            "ecx" => Some(Reg::Ecx),
            "edx" => Some(Reg::Edx),
            _ => None,
        }
    }
}

impl fmt::Display for Reg {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One CPUID leaf/subleaf with its output registers, as in `kvm_cpuid_entry2`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct CpuidEntry {
    pub leaf: u32,
    #[serde(default)]
    pub subleaf: u32,
    /// KVM_CPUID_FLAG_* bits; SIGNIFICANT_INDEX says the subleaf (ECX input) matters.
    #[serde(default)]
    pub flags: u32,
    pub eax: u32,
    pub ebx: u32,
    pub ecx: u32,
    pub edx: u32,
}

impl CpuidEntry {
    pub fn new(leaf: u32, subleaf: u32, regs: [u32; 4]) -> Self {
        CpuidEntry {
            leaf,
            subleaf,
            flags: if leaf_has_subleaves(leaf) {
                KVM_CPUID_FLAG_SIGNIFCANT_INDEX
            } else {
                0
            },
            eax: regs[0],
            ebx: regs[1],
            ecx: regs[2],
            edx: regs[3],
        }
    }

    pub fn reg(&self, reg: Reg) -> u32 {
        match reg {
            Reg::Eax => self.eax,
            Reg::Ebx => self.ebx,
            Reg::Ecx => self.ecx,
            Reg::Edx => self.edx,
        }
    }

    pub fn reg_mut(&mut self, reg: Reg) -> &mut u32 {
        match reg {
            Reg::Eax => &mut self.eax,
            Reg::Ebx => &mut self.ebx,
            Reg::Ecx => &mut self.ecx,
            Reg::Edx => &mut self.edx,
        }
    }

    pub fn regs(&self) -> [u32; 4] {
        [self.eax, self.ebx, self.ecx, self.edx]
    }
}

/// Leaves whose output depends on the subleaf in ECX (Intel SDM vol. 2A, CPUID;
/// AMD APM vol. 3, appendix E). Others are looked up with subleaf 0 only.
pub fn leaf_has_subleaves(leaf: u32) -> bool {
    matches!(
        leaf,
        0x4 | 0x7
            | 0xb
            | 0xd
            | 0xf
            | 0x10
            | 0x12
            | 0x14
            | 0x17
            | 0x18
            | 0x1d
            | 0x1e
            | 0x1f
            | 0x24
            | 0x8000001d
            | 0x80000020
    )
}

/// A set of CPUID entries keyed by (leaf, subleaf).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CpuidTable {
    entries: BTreeMap<(u32, u32), CpuidEntry>,
}

impl CpuidTable {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn from_entries(entries: impl IntoIterator<Item = CpuidEntry>) -> Self {
        let mut table = Self::new();
        for e in entries {
            table.insert(e);
        }
        table
    }

    pub fn insert(&mut self, entry: CpuidEntry) {
        self.entries.insert((entry.leaf, entry.subleaf), entry);
    }

    pub fn get(&self, leaf: u32, subleaf: u32) -> Option<&CpuidEntry> {
        self.entries.get(&(leaf, subleaf))
    }

    pub fn get_mut(&mut self, leaf: u32, subleaf: u32) -> Option<&mut CpuidEntry> {
        self.entries.get_mut(&(leaf, subleaf))
    }

    /// The entry, created with zero registers if absent.
    pub fn entry_mut(&mut self, leaf: u32, subleaf: u32) -> &mut CpuidEntry {
        self.entries
            .entry((leaf, subleaf))
            .or_insert_with(|| CpuidEntry::new(leaf, subleaf, [0; 4]))
    }

    pub fn remove(&mut self, leaf: u32, subleaf: u32) -> Option<CpuidEntry> {
        self.entries.remove(&(leaf, subleaf))
    }

    pub fn retain(&mut self, mut keep: impl FnMut(&CpuidEntry) -> bool) {
        self.entries.retain(|_, e| keep(e));
    }

    /// A register value; 0 when the entry is absent.
    pub fn reg(&self, leaf: u32, subleaf: u32, reg: Reg) -> u32 {
        self.get(leaf, subleaf).map_or(0, |e| e.reg(reg))
    }

    pub fn bit(&self, leaf: u32, subleaf: u32, reg: Reg, bit: u8) -> bool {
        self.reg(leaf, subleaf, reg) & (1 << bit) != 0
    }

    /// Sets or clears one bit, creating the entry when setting.
    pub fn set_bit(&mut self, leaf: u32, subleaf: u32, reg: Reg, bit: u8, on: bool) {
        if on {
            *self.entry_mut(leaf, subleaf).reg_mut(reg) |= 1 << bit;
        } else if let Some(e) = self.get_mut(leaf, subleaf) {
            *e.reg_mut(reg) &= !(1 << bit);
        }
    }

    pub fn iter(&self) -> impl Iterator<Item = &CpuidEntry> {
        self.entries.values()
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Subleaves present for `leaf`, in order.
    pub fn subleaves(&self, leaf: u32) -> Vec<u32> {
        self.entries
            .range((leaf, 0)..=(leaf, u32::MAX))
            .map(|(&(_, s), _)| s)
            .collect()
    }

    pub fn to_kvm(&self) -> Result<CpuId, vmm_sys_util::fam::Error> {
        let entries: Vec<kvm_cpuid_entry2> = self
            .iter()
            .map(|e| kvm_cpuid_entry2 {
                function: e.leaf,
                index: e.subleaf,
                flags: e.flags,
                eax: e.eax,
                ebx: e.ebx,
                ecx: e.ecx,
                edx: e.edx,
                ..Default::default()
            })
            .collect();
        CpuId::from_entries(&entries)
    }

    pub fn from_kvm(cpuid: &CpuId) -> Self {
        Self::from_entries(cpuid.as_slice().iter().map(|e| CpuidEntry {
            leaf: e.function,
            subleaf: e.index,
            flags: e.flags,
            eax: e.eax,
            ebx: e.ebx,
            ecx: e.ecx,
            edx: e.edx,
        }))
    }
}

/// Packs 12 ASCII bytes (a vendor or hypervisor signature) into EBX, EDX, ECX order
/// words as CPUID leaf 0 returns them: returns (ebx, ecx, edx).
pub fn signature_regs(sig: &[u8; 12]) -> (u32, u32, u32) {
    let w = |i: usize| u32::from_le_bytes([sig[i], sig[i + 1], sig[i + 2], sig[i + 3]]);
    (w(0), w(8), w(4))
}

/// The leaf-0 vendor string of a table, if printable.
pub fn vendor_of(table: &CpuidTable) -> String {
    let e = table.get(0, 0).copied().unwrap_or_default();
    let mut bytes = Vec::with_capacity(12);
    for r in [e.ebx, e.edx, e.ecx] {
        bytes.extend_from_slice(&r.to_le_bytes());
    }
    String::from_utf8_lossy(&bytes).into_owned()
}

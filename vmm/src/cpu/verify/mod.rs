//! `kiln cpu verify`: compare the CPUID a guest reads (ring 0 and ring 3) with the
//! table kiln programmed. The guest is resources/guests/cpuid.S; [`runner`] boots it.

pub mod runner;
#[cfg(test)]
mod tests;

use std::fmt::Write as _;

use super::features::{FeatureTable, FeatureWord};
use super::table::{CpuidEntry, CpuidTable, Reg};

/// The outcome of a verify run on this host.
#[derive(Debug)]
pub struct VerifyReport {
    pub programmed: crate::cpu::VcpuCpuid,
    pub leaves: usize,
    pub dump: Dump,
    pub mismatches: Vec<Mismatch>,
}

/// Computes vCPU 0's CPUID for `guest` on this host's KVM, boots the CPUID guest with
/// it and compares what the guest read.
pub fn verify_on_host(
    guest: &crate::cpu::GuestCpu,
    timeout: std::time::Duration,
) -> Result<VerifyReport, super::CpuError> {
    let kvm = crate::cpu::open_kvm()?;
    let host = crate::cpu::kvm_supported_cpuid(&kvm)?;
    let programmed = crate::cpu::vcpu_cpuid(&host, guest, 0)?;
    let leaves = leaf_list(&programmed.table);
    let output = runner::run(&kvm, &programmed.table, &leaves, timeout)?;
    let dump = parse_dump(&output.serial)
        .map_err(|e| super::CpuError::Kvm(format!("the CPUID guest's report: {e}")))?;
    if output.exit_value != Some(runner::EXIT_REPORTED) {
        return Err(super::CpuError::Kvm(format!(
            "the CPUID guest ended with {:?} instead of its report code",
            output.exit_value
        )));
    }
    let mismatches = compare(&programmed.table, &dump);
    Ok(VerifyReport {
        programmed,
        leaves: leaves.len(),
        dump,
        mismatches,
    })
}

/// Leaves the guest list can hold (cpuid.S MAX_LEAVES).
pub const MAX_LEAVES: usize = 256;

/// What the guest printed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Dump {
    pub ring0: Vec<CpuidEntry>,
    pub ring3: Vec<CpuidEntry>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DumpError {
    #[error("the guest output has no `KCPU BEGIN` line")]
    NoBegin,
    #[error("the guest output ends before `KCPU END`")]
    NoEnd,
    #[error("the guest reported a fault: {0}")]
    Fault(String),
    #[error("bad line in guest output: {0:?}")]
    BadLine(String),
    #[error(
        "the guest announced {announced} leaves but printed {ring0} (ring 0) and {ring3} (ring 3)"
    )]
    Count {
        announced: usize,
        ring0: usize,
        ring3: usize,
    },
}

/// Parses the guest's serial output (other lines, such as firmware noise, are skipped).
pub fn parse_dump(text: &str) -> Result<Dump, DumpError> {
    let mut lines = text.lines().map(str::trim);
    let announced = loop {
        let line = lines.next().ok_or(DumpError::NoBegin)?;
        if let Some(f) = line.strip_prefix("KCPU FAULT") {
            return Err(DumpError::Fault(format!("exception vector {}", f.trim())));
        }
        if let Some(n) = line.strip_prefix("KCPU BEGIN ") {
            break usize::from_str_radix(n.trim(), 16)
                .map_err(|_| DumpError::BadLine(line.to_string()))?;
        }
    };
    let mut dump = Dump::default();
    loop {
        let line = lines.next().ok_or(DumpError::NoEnd)?;
        if line == "KCPU END" {
            break;
        }
        let bad = || DumpError::BadLine(line.to_string());
        let mut words = line.split_whitespace();
        let ring = words.next().ok_or_else(bad)?;
        let nums: Vec<u32> = words
            .map(|w| u32::from_str_radix(w, 16).map_err(|_| bad()))
            .collect::<Result<_, _>>()?;
        if nums.len() != 6 {
            return Err(bad());
        }
        let entry = CpuidEntry {
            leaf: nums[0],
            subleaf: nums[1],
            flags: 0,
            eax: nums[2],
            ebx: nums[3],
            ecx: nums[4],
            edx: nums[5],
        };
        match ring {
            "R0" => dump.ring0.push(entry),
            "R3" => dump.ring3.push(entry),
            _ => return Err(bad()),
        }
    }
    if dump.ring0.len() != announced || dump.ring3.len() != announced {
        return Err(DumpError::Count {
            announced,
            ring0: dump.ring0.len(),
            ring3: dump.ring3.len(),
        });
    }
    Ok(dump)
}

/// The (leaf, subleaf) pairs to ask the guest for: every programmed entry.
pub fn leaf_list(table: &CpuidTable) -> Vec<(u32, u32)> {
    table
        .iter()
        .take(MAX_LEAVES)
        .map(|e| (e.leaf, e.subleaf))
        .collect()
}

/// Bits that legitimately differ from the programmed value because KVM or the CPU
/// computes them from guest state (Intel SDM vol. 2A, CPUID): OSXSAVE and OSPKE follow
/// CR4, and the XSAVE area sizes in leaf 0xD EBX follow XCR0 and IA32_XSS.
pub fn dynamic_mask(leaf: u32, subleaf: u32, reg: Reg) -> u32 {
    match (leaf, subleaf, reg) {
        (1, 0, Reg::Ecx) => 1 << 27,
        (7, 0, Reg::Ecx) => 1 << 4,
        (0xd, 0 | 1, Reg::Ebx) => u32::MAX,
        _ => 0,
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mismatch {
    pub ring: u8,
    pub leaf: u32,
    pub subleaf: u32,
    pub reg: Reg,
    pub programmed: u32,
    pub seen: u32,
}

impl Mismatch {
    /// `leaf 0x1.0 ECX: programmed 0x80802001, ring 0 read 0x76d81237 (+monitor -pni)`.
    pub fn describe(&self) -> String {
        let mut s = format!(
            "leaf {:#x}.{} {}: programmed {:#010x}, ring {} read {:#010x}",
            self.leaf, self.subleaf, self.reg, self.programmed, self.ring, self.seen
        );
        let word = FeatureWord {
            leaf: self.leaf,
            subleaf: self.subleaf,
            reg: self.reg,
        };
        let mask = !dynamic_mask(self.leaf, self.subleaf, self.reg);
        let diff = (self.programmed ^ self.seen) & mask;
        let table = FeatureTable::get();
        if table.words().contains(&word) {
            let names: Vec<String> = (0..32u8)
                .filter(|b| diff & (1 << b) != 0)
                .map(|b| {
                    let sign = if self.seen & (1 << b) != 0 { '+' } else { '-' };
                    let name = table
                        .at(word, b)
                        .map_or(format!("bit{b}"), |f| f.name.to_string());
                    format!("{sign}{name}")
                })
                .collect();
            let _ = write!(s, " ({})", names.join(" "));
        }
        s
    }
}

/// Compares the guest's view with the programmed table; empty means they match.
pub fn compare(programmed: &CpuidTable, dump: &Dump) -> Vec<Mismatch> {
    let mut out = Vec::new();
    for (ring, entries) in [(0u8, &dump.ring0), (3u8, &dump.ring3)] {
        for seen in entries {
            let want = programmed
                .get(seen.leaf, seen.subleaf)
                .copied()
                .unwrap_or(CpuidEntry {
                    leaf: seen.leaf,
                    subleaf: seen.subleaf,
                    ..Default::default()
                });
            for reg in Reg::ALL {
                let mask = !dynamic_mask(seen.leaf, seen.subleaf, reg);
                if (want.reg(reg) ^ seen.reg(reg)) & mask != 0 {
                    out.push(Mismatch {
                        ring,
                        leaf: seen.leaf,
                        subleaf: seen.subleaf,
                        reg,
                        programmed: want.reg(reg),
                        seen: seen.reg(reg),
                    });
                }
            }
        }
    }
    out
}

/// Leaves with at least one mismatch in `ring`, sorted.
fn leaves_of(mismatches: &[Mismatch], ring: u8) -> Vec<u32> {
    let mut leaves: Vec<u32> = mismatches
        .iter()
        .filter(|m| m.ring == ring)
        .map(|m| m.leaf)
        .collect();
    leaves.sort_unstable();
    leaves.dedup();
    leaves
}

fn hex_list(leaves: &[u32]) -> String {
    leaves
        .iter()
        .map(|l| format!("{l:#x}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// A per-leaf/register report with an explanation. `flavour` is the loaded KVM
/// module (kvm_intel, kvm_amd, kvm_pvm), from `host_check`; `dump` gives the vendor
/// the guest saw.
pub fn explain(mismatches: &[Mismatch], dump: &Dump, flavour: Option<&str>) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "MISMATCH: the guest does not see the CPUID kiln programmed."
    );
    for ring in [0u8, 3] {
        let leaves = leaves_of(mismatches, ring);
        if leaves.is_empty() {
            let _ = writeln!(s, "Ring {ring}: every leaf matches.");
            continue;
        }
        let _ = writeln!(s, "Ring {ring}: leaves {} differ:", hex_list(&leaves));
        for m in mismatches.iter().filter(|m| m.ring == ring) {
            let _ = writeln!(s, "  {}", m.describe());
        }
    }
    let ring0 = leaves_of(mismatches, 0);
    let ring3 = leaves_of(mismatches, 3);
    let feature_leaves_only = |l: &[u32]| !l.is_empty() && l.iter().all(|&x| x == 1 || x == 7);
    let _ = write!(s, "Explanation: ");
    if flavour == Some("kvm_pvm") {
        let _ = write!(
            s,
            "this host's KVM is PVM (kvm_pvm). It does NOT honour the feature leaves 1 and 7 that \
             kiln programs with KVM_SET_CPUID2: the guest sees the host's feature bits there."
        );
        if feature_leaves_only(&ring0) {
            let _ = write!(
                s,
                " In ring 0 (which PVM emulates) every other leaf (vendor, signature, topology, \
                 brand) is honoured."
            );
        }
        if ring3.contains(&0) {
            let vendor = dump
                .ring3
                .iter()
                .find(|e| e.leaf == 0 && e.subleaf == 0)
                .map(|e| {
                    let bytes: Vec<u8> = [e.ebx, e.edx, e.ecx]
                        .iter()
                        .flat_map(|r| r.to_le_bytes())
                        .collect();
                    String::from_utf8_lossy(&bytes).into_owned()
                })
                .unwrap_or_default();
            let _ = write!(
                s,
                " Guest ring 3 runs natively on the host CPU without CPUID interception, so user \
                 mode reads the physical CPU's CPUID (vendor {vendor:?}) whatever kiln programs."
            );
        }
        let _ = writeln!(
            s,
            " CPU-model masking cannot take effect on this host: keep guest kernels off \
             unsupported features with clearcpuid=, or run on a host with kvm_intel or kvm_amd."
        );
    } else {
        let _ = writeln!(
            s,
            "KVM accepted these values with KVM_SET_CPUID2, but the guest reads others, so the \
             host (KVM or the CPU) overrides them and masking them has no effect here{}.",
            if ring0.is_empty() && !ring3.is_empty() {
                "; only ring 3 is affected, so CPUID is not intercepted in user mode"
            } else {
                ""
            }
        );
    }
    s
}

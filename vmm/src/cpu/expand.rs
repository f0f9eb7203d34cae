//! Model expansion and host filtering, QEMU's way: the model asks for a feature set
//! and an identity; a feature the host cannot provide is cleared and reported.

use std::collections::BTreeSet;

use super::config::CpuConfig;
use super::features::{Feature, FeatureTable};
use super::models::Model;
use super::table::{signature_regs, CpuidTable, Reg};

/// Vendor strings kiln knows how to treat.
pub const VENDOR_INTEL: &str = "GenuineIntel";
pub const VENDOR_AMD: &str = "AuthenticAMD";

/// The model applied to the host table, before template and normalization.
#[derive(Clone, Debug)]
pub struct Expanded {
    pub table: CpuidTable,
    /// Named features the configuration asked for (model, +feat, -feat, nesting).
    pub requested: BTreeSet<Feature>,
    /// Requested features the host does not support; cleared in `table`.
    pub missing: Vec<Feature>,
    /// Brand string to program, if the model names one.
    pub model_id: Option<String>,
}

/// The requested feature set: the model's (or, for host/max, the host's) plus `+feat`
/// minus `-feat`; vmx and svm only when nested virtualization is asked for.
pub fn requested_features(
    host: &CpuidTable,
    config: &CpuConfig,
    nested: bool,
) -> BTreeSet<Feature> {
    let table = FeatureTable::get();
    let mut set: BTreeSet<Feature> = if config.model.passthrough.is_some() {
        table
            .features()
            .iter()
            .filter(|f| {
                host.bit(f.word.leaf, f.word.subleaf, f.word.reg, f.bit)
                    && leaf_in_range(host, f.word.leaf)
            })
            .copied()
            .collect()
    } else {
        config.model.feature_set().into_iter().collect()
    };
    set.extend(config.plus.iter().copied());
    for f in &config.minus {
        set.remove(f);
    }
    // Nested virtualization is a run-time decision (--nested), not a model property.
    let vmx = table.lookup("vmx").expect("vmx in table");
    let svm = table.lookup("svm").expect("svm in table");
    set.remove(&vmx);
    set.remove(&svm);
    // SVM's sub-features (leaf 0x8000000A) mean nothing without SVM.
    set.retain(|f| f.word.leaf != 0x8000_000a);
    if nested {
        let vendor = if config.model.passthrough.is_some() {
            super::table::vendor_of(host)
        } else {
            config.model.vendor.to_string()
        };
        if vendor == VENDOR_AMD {
            set.insert(svm);
            let wanted = |f: &&Feature| f.word.leaf == 0x8000_000a;
            match config.model.passthrough {
                Some(_) => set.extend(
                    table
                        .features()
                        .iter()
                        .filter(wanted)
                        .filter(|f| host.bit(f.word.leaf, 0, f.word.reg, f.bit)),
                ),
                None => set.extend(config.model.feature_set().iter().filter(wanted)),
            }
        } else {
            set.insert(vmx);
        }
    }
    set
}

/// Expands `config` against the host's supported CPUID and filters the result.
pub fn expand(host: &CpuidTable, config: &CpuConfig, nested: bool) -> Expanded {
    let requested = requested_features(host, config, nested);
    let model = config.model;
    let mut table = host.clone();
    let words = FeatureTable::get().words();
    if model.passthrough.is_none() {
        program_identity(&mut table, model, &requested);
    }
    // Every named feature word starts from zero: only requested bits come back.
    // For host/max the unnamed bits of those words are kept, as host-passthrough does.
    for w in words {
        if let Some(e) = table.get_mut(w.leaf, w.subleaf) {
            let keep = if model.passthrough.is_some() {
                !named_mask(w.leaf, w.subleaf, w.reg)
            } else {
                0
            };
            *e.reg_mut(w.reg) &= keep;
        }
    }
    let mut missing = Vec::new();
    for f in &requested {
        let (leaf, subleaf, reg) = (f.word.leaf, f.word.subleaf, f.word.reg);
        if host.bit(leaf, subleaf, reg, f.bit) && leaf_in_range(&table, leaf) {
            table.set_bit(leaf, subleaf, reg, f.bit, true);
        } else {
            missing.push(*f);
        }
    }
    // After the named features, as QEMU orders its feature words. host/max take the
    // host's features, which KVM reports together with their components.
    if model.passthrough.is_none() {
        missing.extend(missing_xsave_components(host, &requested));
    }
    Expanded {
        table,
        requested,
        missing,
        model_id: model.model_id.map(str::to_string),
    }
}

/// XSAVE state components that requested features need and the host lacks, as
/// unnamed bits of CPUID.0DH:EAX/EDX (QEMU's FEAT_XSAVE_XCR0_LO/HI words). The
/// components themselves are set during normalization, from the features.
fn missing_xsave_components(host: &CpuidTable, requested: &BTreeSet<Feature>) -> Vec<Feature> {
    if !requested.iter().any(|f| f.name == "xsave") {
        return Vec::new();
    }
    let mut out: Vec<Feature> = Vec::new();
    for &(component, feature) in super::xsave::COMPONENTS {
        if !requested.iter().any(|f| f.name == feature) {
            continue;
        }
        let (reg, bit) = if component < 32 {
            (Reg::Eax, component as u8)
        } else {
            (Reg::Edx, (component - 32) as u8)
        };
        let f = Feature {
            word: super::features::FeatureWord {
                leaf: 0xd,
                subleaf: 0,
                reg,
            },
            bit,
            name: "",
        };
        if !host.bit(0xd, 0, reg, bit) && !out.contains(&f) {
            out.push(f);
        }
    }
    out
}

/// Bits of a register that carry named features.
fn named_mask(leaf: u32, subleaf: u32, reg: Reg) -> u32 {
    FeatureTable::get()
        .features()
        .iter()
        .filter(|f| f.word.leaf == leaf && f.word.subleaf == subleaf && f.word.reg == reg)
        .fold(0, |m, f| m | f.mask())
}

/// Whether the (possibly lowered) max leaf of the table covers `leaf`.
fn leaf_in_range(table: &CpuidTable, leaf: u32) -> bool {
    let max = if leaf >= 0x8000_0000 {
        table.reg(0x8000_0000, 0, Reg::Eax)
    } else if leaf >= 0x4000_0000 {
        return true;
    } else {
        table.reg(0, 0, Reg::Eax)
    };
    leaf <= max
}

/// Vendor, signature and max leaves of a named model. Like QEMU's
/// full-cpuid-auto-level, the max leaves are raised to cover the requested features.
fn program_identity(table: &mut CpuidTable, model: &Model, requested: &BTreeSet<Feature>) {
    let mut level = model.level;
    let mut xlevel = model.xlevel;
    for f in requested {
        if f.word.leaf >= 0x8000_0000 {
            xlevel = xlevel.max(f.word.leaf);
        } else if f.word.leaf < 0x4000_0000 {
            level = level.max(f.word.leaf);
        }
        if f.name == "xsave" {
            level = level.max(0xd);
        }
    }
    // Leaves beyond the model's range are dropped; leaves the host lacks stay absent.
    table.retain(|e| {
        if e.leaf >= 0x8000_0000 {
            e.leaf <= xlevel
        } else if e.leaf >= 0x4000_0000 {
            true
        } else {
            e.leaf <= level
        }
    });
    let mut vendor = [0u8; 12];
    let bytes = model.vendor.as_bytes();
    vendor[..bytes.len().min(12)].copy_from_slice(&bytes[..bytes.len().min(12)]);
    let (ebx, ecx, edx) = signature_regs(&vendor);
    let e0 = table.entry_mut(0, 0);
    (e0.eax, e0.ebx, e0.ecx, e0.edx) = (level, ebx, ecx, edx);
    table.entry_mut(1, 0).eax = model.signature();
    if xlevel >= 0x8000_0000 {
        let e = table.entry_mut(0x8000_0000, 0);
        (e.eax, e.ebx, e.ecx, e.edx) = (xlevel, ebx, ecx, edx);
        if xlevel >= 0x8000_0001 {
            table.entry_mut(0x8000_0001, 0).eax = model.signature();
        }
    }
}

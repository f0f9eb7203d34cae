//! Every model's data against the reference facts (libvirt cpu_map, cumulative, and
//! QEMU's identities), with each deliberate difference spelled out.

use std::collections::BTreeSet;

use super::features::FeatureTable;
use super::models;

const BASE: &str = "apic clflush cmov cx16 cx8 de fpu fxsr lm mca mce mmx msr mtrr nx pae pat \
                    pge pni pse pse36 sep sse sse2 syscall tsc";

fn set(names: &str) -> BTreeSet<&'static str> {
    names
        .split_whitespace()
        .map(|n| {
            FeatureTable::get()
                .lookup(n)
                .unwrap_or_else(|| panic!("{n}"))
                .name
        })
        .collect()
}

fn union(a: &BTreeSet<&'static str>, b: &str) -> BTreeSet<&'static str> {
    a.union(&set(b)).copied().collect()
}

/// (model, reference set, kiln-only features, reference-only features). The deltas are
/// where QEMU 7.2's builtin_x86_defs (which kiln follows) differ from libvirt's cpu_map.
fn reference() -> Vec<(
    &'static str,
    BTreeSet<&'static str>,
    &'static str,
    &'static str,
)> {
    let base = set(BASE);
    let nehalem = union(&base, "lahf_lm popcnt sse4.1 sse4.2 ssse3");
    let sandy = union(
        &nehalem,
        "aes avx pclmuldq rdtscp tsc-deadline x2apic xsave",
    );
    let haswell = union(
        &sandy,
        "avx2 bmi1 bmi2 erms fma fsgsbase invpcid movbe pcid smep",
    );
    let skylake = union(
        &haswell,
        "3dnowprefetch abm adx arat avx512bw avx512cd avx512dq avx512f avx512vl clwb f16c hle \
         mpx pdpe1gb rdrand rdseed rtm smap vme xgetbv1 xsavec xsaveopt",
    );
    let mut icelake = skylake.clone();
    icelake.remove("mpx");
    let icelake = union(
        &icelake,
        "avx512-vpopcntdq avx512bitalg avx512vbmi avx512vbmi2 avx512vnni clflushopt gfni la57 \
         pku spec-ctrl ssbd umip vaes vpclmulqdq wbnoinvd",
    );
    let epyc = union(
        &base,
        "3dnowprefetch abm adx aes arat avx avx2 bmi1 bmi2 clflushopt cr8legacy f16c fma \
         fsgsbase fxsr_opt lahf_lm misalignsse mmxext monitor movbe osvw pclmuldq pdpe1gb popcnt \
         rdrand rdseed rdtscp sha-ni smap smep sse4.1 sse4.2 sse4a ssse3 svm vme xgetbv1 xsavec \
         xsaveopt",
    );
    vec![
        // QEMU's kvm64 and the Intel models have VME (QEMU clears it only under TCG).
        ("kvm64", base.clone(), "vme", ""),
        ("qemu64", union(&base, "svm lahf_lm"), "", ""),
        ("cpu64-rhel6", union(&base, "lahf_lm"), "", ""),
        ("Nehalem", nehalem, "vme", ""),
        ("SandyBridge", sandy, "vme arat xsaveopt", ""),
        (
            "Haswell-noTSX",
            haswell,
            "vme arat xsaveopt abm f16c rdrand",
            "",
        ),
        // QEMU 7.2's Skylake-Server has no MPX and has PKU and CLFLUSHOPT.
        ("Skylake-Server", skylake, "clflushopt pku", "mpx"),
        ("Icelake-Server", icelake, "", ""),
        // QEMU's EPYC has XSAVE (which its AVX needs), TOPOEXT and the SVM sub-features.
        ("EPYC", epyc, "xsave topoext npt nrip-save", ""),
    ]
}

#[test]
fn every_model_feature_set_matches_reference_data() {
    for (name, reference, kiln_only, ref_only) in reference() {
        let model = models::find(name).unwrap();
        let kiln: BTreeSet<&str> = model.feature_set().iter().map(|f| f.name).collect();
        let extra: BTreeSet<&str> = kiln.difference(&reference).copied().collect();
        let lacking: BTreeSet<&str> = reference.difference(&kiln).copied().collect();
        assert_eq!(
            extra,
            set(kiln_only),
            "{name}: features beyond the reference"
        );
        assert_eq!(
            lacking,
            set(ref_only),
            "{name}: reference features kiln lacks"
        );
    }
}

#[test]
fn model_identities_match_reference_data() {
    // (name, vendor, family, model, stepping, level, xlevel) from cpu-models.md.
    let rows = [
        ("qemu64", "AuthenticAMD", 15, 107, 1, 0xd, 0x8000_000a),
        ("kvm64", "GenuineIntel", 15, 6, 1, 0xd, 0x8000_0008),
        ("cpu64-rhel6", "AuthenticAMD", 6, 13, 3, 4, 0x8000_000a),
        ("Nehalem", "GenuineIntel", 6, 26, 3, 11, 0x8000_0008),
        ("SandyBridge", "GenuineIntel", 6, 42, 1, 0xd, 0x8000_0008),
        ("Haswell-noTSX", "GenuineIntel", 6, 60, 1, 0xd, 0x8000_0008),
        ("Skylake-Server", "GenuineIntel", 6, 85, 4, 0xd, 0x8000_0008),
        (
            "Icelake-Server",
            "GenuineIntel",
            6,
            134,
            0,
            0xd,
            0x8000_0008,
        ),
        ("EPYC", "AuthenticAMD", 23, 1, 2, 0xd, 0x8000_001e),
    ];
    for (name, vendor, family, model, stepping, level, xlevel) in rows {
        let m = models::find(name).unwrap();
        assert_eq!(
            (m.vendor, m.family, m.model, m.stepping, m.level, m.xlevel),
            (vendor, family, model, stepping, level, xlevel),
            "{name}"
        );
    }
    assert_eq!(
        models::find("cpu64-rhel6").unwrap().model_id,
        Some("QEMU Virtual CPU version (cpu64-rhel6)")
    );
}

#[test]
fn all_models_present_with_citation_and_known_features() {
    let wanted = [
        "qemu64",
        "kvm64",
        "cpu64-rhel6",
        "Nehalem",
        "Westmere",
        "SandyBridge",
        "IvyBridge",
        "Haswell-noTSX",
        "Broadwell-noTSX",
        "Skylake-Client",
        "Skylake-Server",
        "Cascadelake-Server",
        "Icelake-Server",
        "EPYC",
        "EPYC-Rome",
        "host",
        "max",
    ];
    let names: Vec<&str> = models::all().iter().map(|m| m.name).collect();
    assert_eq!(names, wanted);
    for m in models::all() {
        assert!(
            m.source.contains("QEMU") || m.source.contains("libvirt"),
            "{}: no citation",
            m.name
        );
        for f in m.features {
            assert!(
                FeatureTable::get().lookup(f).is_some(),
                "{}: unknown feature {f}",
                m.name
            );
        }
        if m.passthrough.is_none() {
            assert!(
                !m.features.is_empty() && m.level > 0 && m.xlevel >= 0x8000_0000,
                "{}",
                m.name
            );
        }
    }
}

#[test]
fn signature_encodes_extended_family_and_model() {
    // EPYC: family 23 = 0xf + 8, model 1: 0x00800f12.
    assert_eq!(models::find("EPYC").unwrap().signature(), 0x0080_0f12);
    // Icelake-Server: family 6, model 134 = 0x86 (extended model 8, model 6), stepping 0.
    assert_eq!(
        models::find("Icelake-Server").unwrap().signature(),
        0x0008_0660
    );
    assert_eq!(models::find("Nehalem").unwrap().signature(), 0x0001_06a3);
}

//! Behaviour of the CPUID pipeline against fixture host tables.

use super::fixtures::{full_host, pvm_like_host};
use super::*;

fn guest(spec: &str, cpus: &str) -> GuestCpu {
    GuestCpu {
        config: spec.parse().unwrap(),
        template: None,
        topology: Some(cpus.parse().unwrap()),
        nested: false,
    }
}

fn has(t: &CpuidTable, name: &str) -> bool {
    let f = FeatureTable::get().lookup(name).unwrap();
    t.bit(f.word.leaf, f.word.subleaf, f.word.reg, f.bit)
}

#[test]
fn feature_names_and_aliases() {
    let t = FeatureTable::get();
    let same = |a: &str, b: &str| assert_eq!(t.lookup(a), t.lookup(b), "{a} vs {b}");
    same("sse3", "pni");
    same("pclmuldq", "pclmulqdq");
    same("sse4_1", "sse4.1");
    same("sse4-1", "sse4.1");
    same("sse4_2", "sse4.2");
    same("lahf_lm", "lahf-lm");
    same("fxsr_opt", "fxsr-opt");
    same("ffxsr", "fxsr-opt");
    same("xd", "nx");
    same("i64", "lm");
    same("tsc_adjust", "tsc-adjust");
    let pni = t.lookup("pni").unwrap();
    assert_eq!((pni.word.leaf, pni.word.reg, pni.bit), (1, Reg::Ecx, 0));
    let f = t.lookup("avx512f").unwrap();
    assert_eq!(
        (f.word.leaf, f.word.subleaf, f.word.reg, f.bit),
        (7, 0, Reg::Ebx, 16)
    );
    assert_eq!(
        t.lookup("lahf_lm").unwrap().to_string(),
        "CPUID.80000001H:ECX.lahf-lm [bit 0]"
    );
    assert!(t.lookup("sse5").is_none());
}

#[test]
fn cpu_option_parsing() {
    let c: CpuConfig = "Nehalem,+avx,-sse4_2,check=enforce".parse().unwrap();
    assert_eq!(c.model.name, "Nehalem");
    assert_eq!(c.plus.iter().map(|f| f.name).collect::<Vec<_>>(), ["avx"]);
    assert_eq!(
        c.minus.iter().map(|f| f.name).collect::<Vec<_>>(),
        ["sse4.2"]
    );
    assert_eq!(c.check, CheckMode::Enforce);
    let c: CpuConfig = "haswell-notsx,avx2=off,+avx2".parse().unwrap();
    assert_eq!(c.model.name, "Haswell-noTSX");
    assert!(c.minus.is_empty() && c.plus.len() == 1, "last mention wins");
    assert_eq!(CpuConfig::default().model.name, "host");
    assert_eq!(CpuConfig::default().check, CheckMode::Warn);
    assert!("Nehalem,check=strict".parse::<CpuConfig>().is_err());
    assert!("Nehalem,avx".parse::<CpuConfig>().is_err());
}

#[test]
fn unknown_names_list_close_matches() {
    let e = "Nehalm".parse::<CpuConfig>().unwrap_err().to_string();
    assert!(
        e.contains("unknown CPU model 'Nehalm'") && e.contains("Nehalem"),
        "{e}"
    );
    let e = "Nehalem,+pnii"
        .parse::<CpuConfig>()
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("unknown CPU feature 'pnii'") && e.contains("pni"),
        "{e}"
    );
    let e = "Nehalem,-avx51f"
        .parse::<CpuConfig>()
        .unwrap_err()
        .to_string();
    assert!(e.contains("avx512f"), "{e}");
}

#[test]
fn filtering_warns_in_qemu_wording_and_clears() {
    let host = pvm_like_host();
    let out = vcpu_cpuid(&host, &guest("Nehalem", "1"), 0).unwrap();
    assert_eq!(
        out.warnings,
        ["host doesn't support requested feature: CPUID.01H:ECX.pni [bit 0]"]
    );
    assert!(!has(&out.table, "pni"));
    assert!(has(&out.table, "ssse3") && has(&out.table, "sse4.2") && has(&out.table, "lahf-lm"));
    // Features outside the model are not passed through from the host.
    assert!(!has(&out.table, "avx") && !has(&out.table, "avx512f"));
    // check=none clears silently.
    let out = vcpu_cpuid(&host, &guest("Nehalem,check=none", "1"), 0).unwrap();
    assert!(out.warnings.is_empty() && !has(&out.table, "pni"));
    assert_eq!(out.missing.len(), 1);
}

#[test]
fn warnings_cover_other_leaves() {
    let mut host = full_host();
    host.set_bit(0x8000_0001, 0, Reg::Ecx, 0, false);
    host.set_bit(7, 0, Reg::Ebx, 5, false);
    let out = vcpu_cpuid(&host, &guest("Haswell-noTSX", "1"), 0).unwrap();
    assert_eq!(
        out.warnings,
        [
            "host doesn't support requested feature: CPUID.07H:EBX.avx2 [bit 5]",
            "host doesn't support requested feature: CPUID.80000001H:ECX.lahf-lm [bit 0]",
        ]
    );
}

#[test]
fn missing_xsave_components_warn_like_qemu() {
    let mut host = full_host();
    host.set_bit(7, 0, Reg::Ecx, 3, false); // pku
    host.entry_mut(0xd, 0).eax &= !(1 << 9); // and its PKRU state component
    let out = vcpu_cpuid(&host, &guest("Skylake-Server", "1"), 0).unwrap();
    assert_eq!(
        out.warnings,
        [
            "host doesn't support requested feature: CPUID.07H:ECX.pku [bit 3]",
            "host doesn't support requested feature: CPUID.0DH:EAX [bit 9]",
        ]
    );
    assert_eq!(out.table.reg(0xd, 0, Reg::Eax) & (1 << 9), 0);
    let out = vcpu_cpuid(&host, &guest("Skylake-Server,-pku", "1"), 0).unwrap();
    assert!(out.warnings.is_empty(), "{:?}", out.warnings);
}

#[test]
fn enforce_refuses_and_lists_all() {
    let mut host = pvm_like_host();
    host.set_bit(1, 0, Reg::Ecx, 23, false); // popcnt
    let err = vcpu_cpuid(&host, &guest("Nehalem,check=enforce", "1"), 0).unwrap_err();
    match &err {
        CpuError::Enforce { missing } => assert_eq!(
            missing,
            &[
                "host doesn't support requested feature: CPUID.01H:ECX.pni [bit 0]",
                "host doesn't support requested feature: CPUID.01H:ECX.popcnt [bit 23]",
            ]
        ),
        other => panic!("{other}"),
    }
    assert!(err.to_string().contains("2 requested feature(s)"));
    // Without the missing features, enforce passes.
    assert!(vcpu_cpuid(&host, &guest("Nehalem,-pni,-popcnt,check=enforce", "1"), 0).is_ok());
}

#[test]
fn identity_brand_and_hypervisor_leaves() {
    let out = vcpu_cpuid(&full_host(), &guest("EPYC", "1"), 0).unwrap();
    let t = &out.table;
    assert_eq!(table::vendor_of(t), "AuthenticAMD");
    assert_eq!(t.reg(0, 0, Reg::Eax), 0xd);
    assert_eq!(t.reg(1, 0, Reg::Eax), 0x0080_0f12);
    assert_eq!(t.reg(0x8000_0000, 0, Reg::Eax), 0x8000_001e);
    let mut brand = Vec::new();
    for leaf in 0x8000_0002..=0x8000_0004 {
        for r in t.get(leaf, 0).unwrap().regs() {
            brand.extend_from_slice(&r.to_le_bytes());
        }
    }
    assert!(brand.starts_with(b"AMD EPYC Processor\0"));
    assert!(has(t, "hypervisor"));
    let sig = t.get(0x4000_0000, 0).unwrap();
    assert_eq!(sig.eax, 0x4000_0001);
    assert_eq!(
        &[sig.ebx, sig.ecx, sig.edx].map(u32::to_le_bytes).concat(),
        b"KVMKVMKVM\0\0\0"
    );
    // AMD repeats leaf 1 EDX features in 0x80000001 EDX (fpu = bit 0).
    assert_eq!(t.reg(0x8000_0001, 0, Reg::Edx) & 1, 1);
    // Leaves the model's level excludes are gone (0x1f > 0xd).
    assert!(t.get(0x1f, 0).is_none());
}

#[test]
fn vmx_and_svm_only_with_nested() {
    let host = full_host();
    let out = vcpu_cpuid(&host, &guest("qemu64", "1"), 0).unwrap();
    assert!(!has(&out.table, "svm") && out.warnings.is_empty());
    assert!(out.table.get(0x8000_000a, 0).is_none());
    let out = vcpu_cpuid(&host, &guest("host", "1"), 0).unwrap();
    assert!(!has(&out.table, "vmx") && !has(&out.table, "svm"));
    let mut g = guest("Nehalem", "1");
    g.nested = true;
    let out = vcpu_cpuid(&host, &g, 0).unwrap();
    assert!(has(&out.table, "vmx") && !has(&out.table, "svm"));
    let mut g = guest("EPYC", "1");
    g.nested = true;
    let out = vcpu_cpuid(&host, &g, 0).unwrap();
    assert!(has(&out.table, "svm") && out.table.get(0x8000_000a, 0).is_some());
    // Without --nested, SVM's sub-features (npt, nrip-save) are not requested either.
    let mut no_svm = pvm_like_host();
    no_svm.remove(0x8000_000a, 0);
    let out = vcpu_cpuid(&no_svm, &guest("EPYC", "1"), 0).unwrap();
    assert!(
        out.warnings.iter().all(|w| !w.contains("8000000AH")),
        "{:?}",
        out.warnings
    );
    // On a host without VMX, --nested with an Intel model warns like any other feature.
    let mut g = guest("Nehalem", "1");
    g.nested = true;
    let out = vcpu_cpuid(&pvm_like_host(), &g, 0).unwrap();
    assert!(out
        .warnings
        .iter()
        .any(|w| w.ends_with("CPUID.01H:ECX.vmx [bit 5]")));
}

#[test]
fn xsave_leaf_consistent_when_avx_masked() {
    let host = full_host();
    let with = vcpu_cpuid(&host, &guest("Haswell-noTSX", "1"), 0)
        .unwrap()
        .table;
    assert_eq!(with.reg(0xd, 0, Reg::Eax), 0b111, "x87, SSE, AVX");
    assert_eq!(with.reg(0xd, 0, Reg::Ecx), 576 + 256);
    assert_eq!(with.reg(0xd, 0, Reg::Ebx), 576 + 256);
    assert!(with.get(0xd, 2).is_some() && with.get(0xd, 5).is_none());
    assert!(has(&with, "xsaveopt") && !has(&with, "xsavec"));

    let without = vcpu_cpuid(&host, &guest("Haswell-noTSX,-avx", "1"), 0)
        .unwrap()
        .table;
    assert_eq!(without.reg(0xd, 0, Reg::Eax), 0b11);
    assert_eq!(without.reg(0xd, 0, Reg::Ecx), 576);
    assert!(without.get(0xd, 2).is_none());
    // What needs AVX goes with it.
    for f in ["avx", "avx2", "fma", "f16c"] {
        assert!(!has(&without, f), "{f}");
    }

    let sky = vcpu_cpuid(&host, &guest("Skylake-Server", "1"), 0)
        .unwrap()
        .table;
    assert_eq!(
        sky.reg(0xd, 0, Reg::Eax),
        0b10_1110_0111,
        "AVX, AVX-512 and PKRU"
    );
    assert_eq!(sky.reg(0xd, 0, Reg::Ecx), 2696);
    let no512 = vcpu_cpuid(&host, &guest("Skylake-Server,-avx512f", "1"), 0)
        .unwrap()
        .table;
    assert_eq!(no512.reg(0xd, 0, Reg::Eax), 0b10_0000_0111);
    assert_eq!(
        no512.reg(0xd, 0, Reg::Ecx),
        2696,
        "PKRU at offset 2688 still sets the size"
    );
    assert!(!has(&no512, "avx512bw") && !has(&no512, "avx512vl"));
    for c in 5..=7 {
        assert!(no512.get(0xd, c).is_none());
    }
    let noxsave = vcpu_cpuid(&host, &guest("SandyBridge,-xsave", "1"), 0).unwrap();
    assert!(noxsave.table.get(0xd, 0).is_none() && !has(&noxsave.table, "avx"));
    assert_eq!(
        noxsave.warnings,
        [
            "requested feature avx needs xsave, which is not enabled: cleared",
            "requested feature xsaveopt needs xsave, which is not enabled: cleared",
        ]
    );
}

fn apic_ids(spec: &str) -> Vec<(u32, u32, u32)> {
    let topo: Topology = spec.parse().unwrap();
    (0..topo.cpus)
        .map(|i| {
            let t = vcpu_cpuid(&full_host(), &guest("Skylake-Server", spec), i)
                .unwrap()
                .table;
            (
                t.reg(1, 0, Reg::Ebx) >> 24,
                t.reg(0xb, 0, Reg::Edx),
                t.reg(0xb, 1, Reg::Edx),
            )
        })
        .collect()
}

#[test]
fn topology_one_vcpu() {
    let t = vcpu_cpuid(&full_host(), &guest("Skylake-Server", "1"), 0)
        .unwrap()
        .table;
    assert_eq!(
        t.reg(1, 0, Reg::Ebx),
        0x0001_0800,
        "APIC 0, 1 logical, CLFLUSH 64"
    );
    assert_eq!(t.reg(1, 0, Reg::Edx) & (1 << 28), 0, "no HTT");
    assert_eq!(t.get(0xb, 0).unwrap().regs(), [0, 1, 0x100, 0]);
    assert_eq!(t.get(0xb, 1).unwrap().regs(), [0, 1, 0x201, 0]);
    assert_eq!(t.get(0xb, 2).unwrap().regs(), [0, 0, 2, 0]);
    assert_eq!(t.reg(4, 0, Reg::Eax) >> 14, 0, "no sharing, one core");
    assert!(vcpu_cpuid(&full_host(), &guest("Nehalem", "1"), 1).is_err());
}

#[test]
fn topology_two_vcpus() {
    assert_eq!(apic_ids("2"), [(0, 0, 0), (1, 1, 1)]);
    let t = vcpu_cpuid(
        &full_host(),
        &guest("Skylake-Server", "2,sockets=1,cores=2"),
        1,
    )
    .unwrap()
    .table;
    assert_eq!(t.get(0xb, 0).unwrap().regs(), [0, 1, 0x100, 1]);
    assert_eq!(t.get(0xb, 1).unwrap().regs(), [1, 2, 0x201, 1]);
    assert_eq!(t.reg(1, 0, Reg::Ebx), 0x0102_0800);
    assert_ne!(t.reg(1, 0, Reg::Edx) & (1 << 28), 0, "HTT");
    // L1 private, L3 shared by both cores; 2 cores addressable.
    assert_eq!(t.reg(4, 0, Reg::Eax) >> 14 & 0xfff, 0);
    assert_eq!(t.reg(4, 3, Reg::Eax) >> 14 & 0xfff, 1);
    assert_eq!(t.reg(4, 0, Reg::Eax) >> 26, 1);
}

#[test]
fn topology_four_vcpus() {
    assert_eq!(apic_ids("4"), [(0, 0, 0), (1, 1, 1), (2, 2, 2), (3, 3, 3)]);
    let spec = "4,sockets=1,cores=2,threads=2";
    assert_eq!(apic_ids(spec), [(0, 0, 0), (1, 1, 1), (2, 2, 2), (3, 3, 3)]);
    let t = vcpu_cpuid(&full_host(), &guest("Skylake-Server", spec), 3)
        .unwrap()
        .table;
    assert_eq!(t.get(0xb, 0).unwrap().regs(), [1, 2, 0x100, 3]);
    assert_eq!(t.get(0xb, 1).unwrap().regs(), [2, 4, 0x201, 3]);
    assert_eq!(
        t.reg(4, 0, Reg::Eax) >> 14 & 0xfff,
        1,
        "L1 shared by 2 threads"
    );
    assert_eq!(t.reg(4, 3, Reg::Eax) >> 14 & 0xfff, 3, "L3 shared by 4");
    // 3 cores per socket round up to 2 core bits: the second socket starts at APIC ID 8.
    let ids = apic_ids("6,sockets=2,cores=3");
    assert_eq!(
        ids.iter().map(|x| x.0).collect::<Vec<_>>(),
        [0, 1, 2, 4, 5, 6]
    );
    assert!("4,sockets=3,cores=2".parse::<Topology>().is_err());
    // AMD: 0x8000001E carries the APIC ID, threads per core and core ID; ECX the AMD core count.
    let t = vcpu_cpuid(
        &full_host(),
        &guest("EPYC", "8,sockets=2,cores=2,threads=2"),
        7,
    )
    .unwrap()
    .table;
    assert_eq!(t.get(0x8000_001e, 0).unwrap().regs()[..3], [7, 0x101, 1]);
    assert_eq!(t.reg(0x8000_0008, 0, Reg::Ecx) & 0xff, 3);
}

#[test]
fn host_passthrough_keeps_host_identity_and_features() {
    let host = pvm_like_host();
    let out = vcpu_cpuid(&host, &guest("host", "1"), 0).unwrap();
    assert!(out.warnings.is_empty());
    assert_eq!(out.table.reg(1, 0, Reg::Eax), 0x50654);
    assert_eq!(out.table.reg(0, 0, Reg::Eax), 0x1f);
    assert!(has(&out.table, "avx512f") && !has(&out.table, "pni"));
    let out = vcpu_cpuid(&host, &guest("host,+pni", "1"), 0).unwrap();
    assert_eq!(out.warnings.len(), 1);
}

#[test]
fn kvm_conversion_round_trips() {
    let t = vcpu_cpuid(&full_host(), &guest("Nehalem", "2"), 1)
        .unwrap()
        .table;
    let kvm = t.to_kvm().unwrap();
    assert_eq!(kvm.as_slice().len(), t.len());
    let e = kvm
        .as_slice()
        .iter()
        .find(|e| e.function == 0xb && e.index == 1)
        .unwrap();
    assert_eq!(e.flags, kvm_bindings::KVM_CPUID_FLAG_SIGNIFCANT_INDEX);
    assert_eq!(CpuidTable::from_kvm(&kvm), t);
}

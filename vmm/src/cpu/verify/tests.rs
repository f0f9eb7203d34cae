//! The verify comparison fed with hand-made guest dumps.

use super::*;
use crate::cpu::fixtures::full_host;
use crate::cpu::{vcpu_cpuid, GuestCpu};

fn programmed() -> CpuidTable {
    let g = GuestCpu {
        config: "Nehalem".parse().unwrap(),
        ..Default::default()
    };
    vcpu_cpuid(&full_host(), &g, 0).unwrap().table
}

/// The guest's output format, with `patch` applied to the values each ring reads.
fn dump_text(table: &CpuidTable, patch: impl Fn(u8, &mut CpuidEntry)) -> String {
    let leaves = leaf_list(table);
    let mut s = format!("SeaBIOS noise\nKCPU BEGIN {:08x}\n", leaves.len());
    for ring in [0u8, 3] {
        for &(leaf, subleaf) in &leaves {
            let mut e = *table.get(leaf, subleaf).unwrap();
            patch(ring, &mut e);
            s += &format!(
                "R{ring} {leaf:08x} {subleaf:08x} {:08x} {:08x} {:08x} {:08x}\n",
                e.eax, e.ebx, e.ecx, e.edx
            );
        }
    }
    s + "KCPU END\n"
}

#[test]
fn matching_dump_passes() {
    let t = programmed();
    // OSXSAVE and the XSAVE size follow guest state: not a mismatch.
    let text = dump_text(&t, |_, e| {
        if e.leaf == 1 {
            e.ecx |= 1 << 27;
        }
    });
    let dump = parse_dump(&text).unwrap();
    assert_eq!(dump.ring0.len(), t.len());
    assert!(compare(&t, &dump).is_empty());
}

#[test]
fn pvm_like_dump_is_reported_and_explained() {
    let t = programmed();
    // What the PVM host showed: its own feature bits in leaves 1 and 7, both rings.
    let text = dump_text(&t, |_, e| match (e.leaf, e.subleaf) {
        (1, 0) => {
            e.ecx = 0x76d8_1237;
            e.edx = 0x1f8b_ffff;
        }
        (7, 0) => e.ebx = 0xf1bf_2bfb,
        _ => {}
    });
    let dump = parse_dump(&text).unwrap();
    let m = compare(&t, &dump);
    let regs: Vec<_> = m.iter().map(|m| (m.ring, m.leaf, m.reg)).collect();
    assert_eq!(
        regs,
        [
            (0, 1, Reg::Ecx),
            (0, 1, Reg::Edx),
            (0, 7, Reg::Ebx),
            (3, 1, Reg::Ecx),
            (3, 1, Reg::Edx),
            (3, 7, Reg::Ebx),
        ]
    );
    assert_eq!(m[0].programmed, t.reg(1, 0, Reg::Ecx));
    assert_eq!(m[0].seen, 0x76d8_1237);
    let line = m[2].describe();
    assert!(
        line.starts_with(
            "leaf 0x7.0 EBX: programmed 0x00000000, ring 0 read 0xf1bf2bfb (+fsgsbase"
        ),
        "{line}"
    );
    assert!(
        m[0].describe().contains("+pclmulqdq"),
        "{}",
        m[0].describe()
    );
    let text = explain(&m, &dump, Some("kvm_pvm"));
    assert!(text.contains("Ring 0: leaves 0x1, 0x7 differ"), "{text}");
    assert!(
        text.contains("does NOT honour the feature leaves 1 and 7"),
        "{text}"
    );
    assert!(text.contains("every other leaf"), "{text}");
    let generic = explain(&m, &dump, Some("kvm_intel"));
    assert!(
        !generic.contains("PVM") && generic.contains("overrides"),
        "{generic}"
    );
}

#[test]
fn ring3_reading_the_physical_cpu_is_explained() {
    let t = programmed();
    let text = dump_text(&t, |ring, e| {
        if ring == 3 && e.leaf == 0 {
            (e.ebx, e.edx, e.ecx) = (0x6874_7541, 0x6974_6e65, 0x444d_4163); // AuthenticAMD
        }
    });
    let dump = parse_dump(&text).unwrap();
    let m = compare(&t, &dump);
    assert!(m.iter().all(|m| m.ring == 3 && m.leaf == 0));
    let text = explain(&m, &dump, Some("kvm_pvm"));
    assert!(text.contains("Ring 0: every leaf matches"), "{text}");
    assert!(text.contains("vendor \"AuthenticAMD\""), "{text}");
}

#[test]
fn malformed_dumps_are_errors() {
    assert_eq!(parse_dump("hello\n"), Err(DumpError::NoBegin));
    assert_eq!(
        parse_dump("KCPU BEGIN 00000001\nR0 0 0 0 0 0 0\n"),
        Err(DumpError::NoEnd)
    );
    assert!(matches!(
        parse_dump("KCPU FAULT 0000000d\n"),
        Err(DumpError::Fault(_))
    ));
    assert!(matches!(
        parse_dump("KCPU BEGIN 00000001\nR0 0 0 0 0 0\nKCPU END\n"),
        Err(DumpError::BadLine(_))
    ));
    assert!(matches!(
        parse_dump("KCPU BEGIN 00000002\nR0 0 0 0 0 0 0\nR3 0 0 0 0 0 0\nKCPU END\n"),
        Err(DumpError::Count { announced: 2, .. })
    ));
}

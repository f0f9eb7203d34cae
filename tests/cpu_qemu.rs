//! Cross-check of kiln's CPU models against QEMU (Debian qemu-system-x86 7.2).
//!
//! 1. TCG: the CPUID test guest runs under `qemu-system-x86_64 -accel tcg -cpu MODEL`;
//!    its feature bits in leaves 1, 7.0 and 0x80000001 must equal kiln's table for the
//!    same model computed against a host that supports everything. The only allowed
//!    differences, each checked to be exactly that:
//!    - vme: part of QEMU's model definitions, which kiln follows, but QEMU switches it
//!      off under TCG (tcg_default_props); on AMD models also its 0x80000001 EDX alias.
//!    - svm: kiln clears VMX/SVM unless `--nested`.
//!    - features QEMU's TCG cannot emulate, which QEMU itself names on stderr
//!      ("TCG doesn't support requested feature").
//!
//!    cpu64-rhel6 is not in QEMU 7.2: its nearest there is qemu64 with -svm and the
//!    cpu64-rhel6 identity set through properties.
//! 2. KVM (this host's /dev/kvm): QEMU's and kiln's "host doesn't support requested
//!    feature" lines must be the same.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use kiln_vmm::cpu::verify::parse_dump;
use kiln_vmm::cpu::{CpuidEntry, CpuidTable, FeatureTable, Reg};

const QEMU: &str = "qemu-system-x86_64";

fn scratch(name: &str) -> PathBuf {
    // Cargo's scratch space: reused by the next run instead of left in /tmp.
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("cpu-qemu");
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

fn kiln(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args(args)
        .output()
        .expect("run kiln")
}

/// A host table with every bit set in the feature leaves.
fn everything_host(model: &str) -> PathBuf {
    let leaves = [
        (0, 0),
        (1, 0),
        (6, 0),
        (7, 0),
        (7, 1),
        (0xd, 0),
        (0xd, 1),
        (0x8000_0000u32, 0),
        (0x8000_0001, 0),
        (0x8000_0007, 0),
        (0x8000_0008, 0),
        (0x8000_000a, 0),
    ];
    let entries: Vec<CpuidEntry> = leaves
        .iter()
        .map(|&(leaf, subleaf)| {
            let eax = match leaf {
                0 => 0x1f,
                0x8000_0000 => 0x8000_0021,
                _ => u32::MAX,
            };
            CpuidEntry {
                leaf,
                subleaf,
                flags: 0,
                eax,
                ebx: u32::MAX,
                ecx: u32::MAX,
                edx: u32::MAX,
            }
        })
        .collect();
    let path = scratch(&format!("everything-{model}.json"));
    std::fs::write(&path, serde_json::to_string(&entries).unwrap()).unwrap();
    path
}

fn kiln_table(model: &str, host: &Path) -> CpuidTable {
    let o = kiln(&[
        "cpu",
        "show",
        model,
        "--host-cpuid",
        host.to_str().unwrap(),
        "--json",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(
        v["warnings"],
        serde_json::json!([]),
        "{model}: the fixture host supports everything"
    );
    let entries: Vec<CpuidEntry> = serde_json::from_value(v["cpuid"].clone()).unwrap();
    CpuidTable::from_entries(entries)
}

/// Runs the guest under TCG; returns ring-0 CPUID and the (leaf, reg, bit) QEMU says
/// TCG cannot provide.
fn qemu_tcg(cpu: &str, guest: &Path) -> (CpuidTable, BTreeSet<(u32, Reg, u8)>) {
    let serial = scratch(&format!("serial-{}.txt", cpu.split(',').next().unwrap()));
    let o = Command::new(QEMU)
        .args([
            "-accel",
            "tcg",
            "-cpu",
            cpu,
            "-display",
            "none",
            "-nodefaults",
            "-no-user-config",
        ])
        .args(["-device", "isa-debug-exit,iobase=0xf4,iosize=4"])
        .arg("-serial")
        .arg(format!("file:{}", serial.display()))
        .arg("-kernel")
        .arg(guest)
        .output()
        .unwrap_or_else(|e| {
            panic!("{QEMU} is needed for this test (apt-get install qemu-system-x86): {e}")
        });
    let stderr = String::from_utf8_lossy(&o.stderr).into_owned();
    assert_eq!(
        o.status.code(),
        Some(33),
        "{cpu}: guest did not report (0x10 -> 33): {stderr}"
    );
    let dump = parse_dump(&std::fs::read_to_string(&serial).unwrap()).expect("guest dump");
    let tcg_missing = stderr
        .lines()
        .filter_map(|l| l.split("TCG doesn't support requested feature: ").nth(1))
        .map(parse_feature_warning)
        .collect();
    (CpuidTable::from_entries(dump.ring0), tcg_missing)
}

/// "CPUID.07H:EBX.hle [bit 4]" -> (7, EBX, 4).
fn parse_feature_warning(w: &str) -> (u32, Reg, u8) {
    let rest = w.strip_prefix("CPUID.").unwrap();
    let (leaf, rest) = rest.split_once("H:").unwrap();
    let reg = Reg::parse(&rest[..3]).unwrap();
    let bit = rest.rsplit_once("[bit ").unwrap().1.trim_end_matches(']');
    (
        u32::from_str_radix(leaf, 16).unwrap(),
        reg,
        bit.parse().unwrap(),
    )
}

const COMPARED: &[(u32, Reg)] = &[
    (1, Reg::Ecx),
    (1, Reg::Edx),
    (7, Reg::Ebx),
    (7, Reg::Ecx),
    (7, Reg::Edx),
    (0x8000_0001, Reg::Ecx),
    (0x8000_0001, Reg::Edx),
];

fn cross_check(model: &str, qemu_cpu: &str) {
    // Per-model files: the tests run in parallel.
    let host = everything_host(model);
    let guest = scratch(&format!("cpuid-{model}.elf"));
    assert!(kiln(&["cpu", "guest", guest.to_str().unwrap()])
        .status
        .success());
    let k = kiln_table(model, &host);
    let (q, tcg_missing) = qemu_tcg(qemu_cpu, &guest);
    let names = FeatureTable::get();
    let amd = kiln_vmm::cpu::table::vendor_of(&k) == "AuthenticAMD";
    assert_eq!(
        kiln_vmm::cpu::table::vendor_of(&q),
        kiln_vmm::cpu::table::vendor_of(&k),
        "{model}: vendor"
    );
    assert_eq!(
        q.reg(1, 0, Reg::Eax),
        k.reg(1, 0, Reg::Eax),
        "{model}: signature"
    );
    let mut unexplained = Vec::new();
    for &(leaf, reg) in COMPARED {
        if leaf == 7 && k.reg(0, 0, Reg::Eax) < 7 {
            // Beyond the model's max basic leaf: kiln has no leaf 7 and QEMU answers
            // with the highest basic leaf, as Intel CPUs do.
            assert!(k.get(7, 0).is_none(), "{model}");
            continue;
        }
        let (kv, qv) = (k.reg(leaf, 0, reg), q.reg(leaf, 0, reg));
        for bit in 0..32u8 {
            if (kv ^ qv) & (1 << bit) == 0 {
                continue;
            }
            let kiln_has = kv & (1 << bit) != 0;
            let explained = match (leaf, reg, bit, kiln_has) {
                (1, Reg::Edx, 1, true) => true,            // vme, TCG default off
                (0x8000_0001, Reg::Edx, 1, true) => amd,   // its AMD alias
                (0x8000_0001, Reg::Ecx, 2, false) => true, // svm only with --nested
                (_, _, _, true) => tcg_missing.contains(&(leaf, reg, bit)),
                _ => false,
            };
            if !explained {
                let name = names
                    .features()
                    .iter()
                    .find(|f| f.word.leaf == leaf && f.word.reg == reg && f.bit == bit)
                    .map_or(format!("bit {bit}"), |f| f.name.to_string());
                unexplained.push(format!(
                    "CPUID.{leaf:#x}:{reg}.{name}: kiln {}, QEMU {}",
                    u8::from(kiln_has),
                    u8::from(!kiln_has)
                ));
            }
        }
    }
    assert!(
        unexplained.is_empty(),
        "{model} differs from QEMU TCG:\n{}",
        unexplained.join("\n")
    );
}

#[test]
fn cpu64_rhel6_matches_qemu_nearest() {
    cross_check(
        "cpu64-rhel6",
        "qemu64,-svm,vendor=AuthenticAMD,family=6,model=13,stepping=3,level=4,xlevel=0x8000000a",
    );
}

#[test]
fn nehalem_matches_qemu() {
    cross_check("Nehalem", "Nehalem");
}

#[test]
fn sandybridge_matches_qemu() {
    cross_check("SandyBridge", "SandyBridge");
}

#[test]
fn haswell_notsx_matches_qemu() {
    cross_check("Haswell-noTSX", "Haswell-noTSX");
}

#[test]
fn other_models_match_qemu() {
    for m in [
        "qemu64",
        "kvm64",
        "Westmere",
        "IvyBridge",
        "Broadwell-noTSX",
        "Skylake-Client",
        "Skylake-Server",
        "Cascadelake-Server",
        "Icelake-Server",
        "EPYC",
        "EPYC-Rome",
    ] {
        cross_check(m, m);
    }
}

/// QEMU -accel kvm on this host and kiln print the same filtering warnings, except
/// that QEMU switches `monitor` off by default under KVM (kvm_default_props).
#[test]
fn warnings_match_qemu_kvm_on_this_host() {
    assert!(
        std::path::Path::new("/dev/kvm").exists(),
        "this test needs /dev/kvm"
    );
    for model in [
        "Nehalem",
        "SandyBridge",
        "Haswell-noTSX",
        "Skylake-Server",
        "EPYC",
    ] {
        let mut child = Command::new(QEMU)
            .args([
                "-accel",
                "kvm",
                "-machine",
                "pc",
                "-cpu",
                model,
                "-S",
                "-display",
                "none",
                "-nodefaults",
            ])
            .args(["-qmp", "stdio"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect(QEMU);
        use std::io::Write;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(b"{\"execute\":\"qmp_capabilities\"}\n{\"execute\":\"quit\"}\n")
            .unwrap();
        let o = child.wait_with_output().unwrap();
        let qemu: BTreeSet<String> = String::from_utf8_lossy(&o.stderr)
            .lines()
            .filter_map(|l| l.strip_prefix("qemu-system-x86_64: warning: "))
            .filter(|l| l.starts_with("host doesn't support"))
            .map(str::to_string)
            .collect();
        let k = kiln(&["cpu", "show", model]);
        assert!(k.status.success());
        let kiln_lines: BTreeSet<String> = String::from_utf8_lossy(&k.stderr)
            .lines()
            .filter_map(|l| l.strip_prefix("warning: "))
            .filter(|l| !l.ends_with("CPUID.01H:ECX.monitor [bit 3]"))
            .map(str::to_string)
            .collect();
        assert!(
            !kiln_lines.is_empty(),
            "{model}: this host lacks SSE3, so there are warnings"
        );
        assert_eq!(kiln_lines, qemu, "{model}");
    }
}

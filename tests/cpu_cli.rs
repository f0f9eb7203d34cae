//! `kiln cpu` end to end: list, show (against a fixture host table), diff, errors,
//! and `verify` on this machine's KVM.

use std::path::PathBuf;
use std::process::{Command, Output};

use tempfile::TempDir;

fn kiln(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args(args)
        .output()
        .expect("run kiln")
}

fn text(o: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

/// A host table whose KVM supports every feature except SSE3 (like the PVM hosts),
/// written into the test's own directory, which goes with the test.
fn host_without_pni(dir: &TempDir) -> PathBuf {
    let mut entries = Vec::new();
    for (leaf, sub) in [
        (0, 0),
        (1, 0),
        (6, 0),
        (7, 0),
        (0xd, 0),
        (0xd, 1),
        (0x8000_0000u32, 0),
        (0x8000_0001, 0),
        (0x8000_0008, 0),
    ] {
        let eax: u32 = match leaf {
            0 => 0xd,
            0x8000_0000 => 0x8000_0008,
            _ => u32::MAX,
        };
        let ecx: u32 = if leaf == 1 { !1 } else { u32::MAX };
        entries.push(serde_json::json!({"leaf": leaf, "subleaf": sub, "eax": eax, "ebx": u32::MAX, "ecx": ecx, "edx": u32::MAX}));
    }
    let path = dir.path().join("host-without-pni.json");
    std::fs::write(&path, serde_json::to_string(&entries).unwrap()).unwrap();
    path
}

#[test]
fn list_names_every_model() {
    let o = kiln(&["cpu", "list"]);
    assert!(o.status.success());
    let (out, _) = text(&o);
    for m in [
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
    ] {
        assert!(
            out.lines().any(|l| l.starts_with(&format!("{m} "))),
            "{m} missing:\n{out}"
        );
    }
    assert!(out.contains("AuthenticAMD  6/13/3"), "{out}");
}

#[test]
fn show_filters_with_qemu_wording() {
    let dir = TempDir::new().unwrap();
    let host = host_without_pni(&dir);
    let o = kiln(&[
        "cpu",
        "show",
        "Nehalem,+xsave,+avx",
        "--host-cpuid",
        host.to_str().unwrap(),
        "--json",
    ]);
    assert!(o.status.success(), "{:?}", text(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(
        v["warnings"],
        serde_json::json!(["host doesn't support requested feature: CPUID.01H:ECX.pni [bit 0]"])
    );
    assert_eq!(v["missing"], serde_json::json!(["pni"]));
    let present: Vec<&str> = v["present"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_str().unwrap())
        .collect();
    assert!(present.contains(&"sse4.2") && present.contains(&"avx") && !present.contains(&"pni"));
    let leaf1 = v["cpuid"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["leaf"] == 1)
        .unwrap();
    assert_eq!(leaf1["eax"], 0x106a3, "Nehalem signature 6/26/3");
    assert_eq!(leaf1["ecx"].as_u64().unwrap() & 1, 0, "pni cleared");

    // Plain text: warnings on stderr, the table and feature lists on stdout.
    let o = kiln(&[
        "cpu",
        "show",
        "Nehalem",
        "--host-cpuid",
        host.to_str().unwrap(),
    ]);
    let (out, err) = text(&o);
    assert_eq!(
        err.trim(),
        "warning: host doesn't support requested feature: CPUID.01H:ECX.pni [bit 0]"
    );
    assert!(
        out.contains("requested but missing on this host: pni"),
        "{out}"
    );
}

#[test]
fn enforce_refuses_and_lists_all() {
    let dir = TempDir::new().unwrap();
    let host = host_without_pni(&dir);
    let o = kiln(&[
        "cpu",
        "show",
        "Nehalem,+vmx,check=enforce",
        "--nested",
        "--host-cpuid",
        host.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(1));
    let (out, err) = text(&o);
    assert!(out.is_empty(), "no half-written output: {out}");
    assert!(
        err.contains("check=enforce: the host does not support 1 requested feature(s)"),
        "{err}"
    );
    assert!(err.contains("CPUID.01H:ECX.pni [bit 0]"), "{err}");
}

#[test]
fn unknown_names_suggest_close_matches() {
    let (_, err) = text(&kiln(&["cpu", "show", "Haswel-noTSX"]));
    assert!(
        err.contains("unknown CPU model 'Haswel-noTSX'") && err.contains("Haswell-noTSX"),
        "{err}"
    );
    let o = kiln(&[
        "cpu",
        "show",
        "Nehalem,+sse4_3",
        "--host-cpuid",
        "/nonexistent",
    ]);
    assert_eq!(o.status.code(), Some(1));
    let (_, err) = text(&o);
    assert!(
        err.contains("unknown CPU feature 'sse4_3'") && err.contains("sse4.1"),
        "{err}"
    );
}

#[test]
fn diff_lists_features_on_each_side() {
    let o = kiln(&["cpu", "diff", "Nehalem", "SandyBridge,-aes"]);
    assert!(o.status.success());
    let (out, _) = text(&o);
    assert!(out.contains("only in Nehalem: (none)"), "{out}");
    let line = out
        .lines()
        .find(|l| l.starts_with("only in SandyBridge,-aes:"))
        .unwrap();
    for f in ["pclmulqdq", "avx", "xsave", "x2apic"] {
        assert!(line.split_whitespace().any(|w| w == f), "{f}: {line}");
    }
    assert!(!line.split_whitespace().any(|w| w == "aes"), "{line}");
}

#[test]
fn template_file_is_applied() {
    let dir = TempDir::new().unwrap();
    let host = host_without_pni(&dir);
    let template = dir.path().join("no-avx2.json");
    let bitmap = format!("0b{}0{}", "x".repeat(26), "x".repeat(5)); // bit 5 = avx2
    std::fs::write(
        &template,
        format!(r#"{{"cpuid_modifiers": [{{"leaf": "0x7", "subleaf": "0x0", "flags": 1, "modifiers": [{{"register": "ebx", "bitmap": "{bitmap}"}}]}}], "msr_modifiers": []}}"#),
    )
    .unwrap();
    let o = kiln(&[
        "cpu",
        "show",
        "Haswell-noTSX",
        "--host-cpuid",
        host.to_str().unwrap(),
        "--cpu-template",
        template.to_str().unwrap(),
        "--json",
    ]);
    assert!(o.status.success(), "{:?}", text(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let present: Vec<&str> = v["present"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_str().unwrap())
        .collect();
    assert!(
        !present.contains(&"avx2") && present.contains(&"bmi2"),
        "{present:?}"
    );
}

/// On these machines (PVM) the guest does not see leaves 1 and 7 as programmed, and
/// verify must say so and exit 1. On a VT-x/AMD-V host it must pass.
#[test]
fn verify_nehalem_on_this_host() {
    assert!(
        std::path::Path::new("/dev/kvm").exists(),
        "this test needs /dev/kvm (see `kiln host check`)"
    );
    let o = kiln(&["cpu", "verify", "Nehalem"]);
    let (out, err) = text(&o);
    let pvm = std::path::Path::new("/sys/module/kvm_pvm").exists();
    if pvm {
        assert_eq!(o.status.code(), Some(1), "{out}\n{err}");
        assert!(out.contains("Ring 0: leaves 0x1, 0x7 differ"), "{out}");
        assert!(out.contains("leaf 0x1.0 ECX: programmed"), "{out}");
        assert!(
            out.contains("does NOT honour the feature leaves 1 and 7"),
            "{out}"
        );
    } else {
        assert_eq!(o.status.code(), Some(0), "{out}\n{err}");
        assert!(out.starts_with("PASS"), "{out}");
    }
}

//! Firecracker custom templates applied to a fixture host table.

use super::fixtures::full_host;
use super::*;

fn guest(spec: &str) -> GuestCpu {
    GuestCpu {
        config: spec.parse().unwrap(),
        template: None,
        topology: Some(Topology::flat(1)),
        nested: false,
    }
}

fn has(t: &CpuidTable, name: &str) -> bool {
    let f = FeatureTable::get().lookup(name).unwrap();
    t.bit(f.word.leaf, f.word.subleaf, f.word.reg, f.bit)
}

/// A bitmap string forcing `bits` (bit, value) and keeping the rest.
fn bitmap(width: usize, bits: &[(usize, char)]) -> String {
    let mut s = vec!['x'; width];
    for &(bit, c) in bits {
        s[width - 1 - bit] = c;
    }
    format!("0b{}", s.into_iter().collect::<String>())
}

/// T2-like: a Haswell-era signature, no AVX-512, no XSAVEC/XGETBV1/XSAVES, no 1G pages.
fn t2_like_template() -> String {
    format!(
        r#"{{
  "cpuid_modifiers": [
    {{"leaf": "0x1", "subleaf": "0x0", "flags": 0, "modifiers": [
      {{"register": "eax", "bitmap": "0bxxxx000000000011000001101111_0010"}}]}},
    {{"leaf": "0x7", "subleaf": "0x0", "flags": 1, "modifiers": [
      {{"register": "ebx", "bitmap": "{}"}}]}},
    {{"leaf": "0xd", "subleaf": 1, "flags": 1, "modifiers": [
      {{"register": "eax", "bitmap": "{}"}}]}},
    {{"leaf": 2147483649, "subleaf": "0x0", "modifiers": [
      {{"register": "EDX", "bitmap": "{}"}}]}}
  ],
  "msr_modifiers": [{{"addr": "0x10a", "bitmap": "{}"}}]
}}"#,
        bitmap(32, &[(16, '0')]),
        bitmap(32, &[(1, '0'), (2, '0'), (3, '0')]),
        bitmap(32, &[(26, '0')]),
        bitmap(64, &[(0, '1'), (1, '0')]),
    )
}

#[test]
fn firecracker_template_applied_before_normalization() {
    let template = CustomTemplate::from_json(&t2_like_template()).unwrap();
    let host = full_host();
    let g = GuestCpu {
        template: Some(template.clone()),
        ..guest("host")
    };
    let t = vcpu_cpuid(&host, &g, 0).unwrap().table;
    assert_eq!(t.reg(1, 0, Reg::Eax), 0x0003_06f2);
    assert!(!has(&t, "avx512f") && has(&t, "avx2") && has(&t, "bmi2"));
    // Normalization after the template: AVX-512 dependants and state components go too.
    assert!(!has(&t, "avx512bw"));
    assert!(t.get(0xd, 5).is_none() && t.reg(0xd, 0, Reg::Eax) & 0xe0 == 0);
    assert!(has(&t, "xsaveopt") && !has(&t, "xsavec") && !has(&t, "xsaves"));
    assert!(!has(&t, "pdpe1gb") && has(&t, "lm"));
    // Untouched bits keep the host's value: 0x80000001 ECX is all ones in the fixture.
    assert!(has(&t, "lahf-lm") && has(&t, "abm"));

    let msrs = template.msr_bitmaps(&[0x10, 0x10a]).unwrap();
    assert_eq!(msrs.len(), 1);
    assert_eq!(msrs[0].0, 0x10a);
    assert_eq!(msrs[0].1.apply(0xfff0), 0xfff1);
    let e = template.msr_bitmaps(&[0x10]).unwrap_err().to_string();
    assert!(e.contains("MSR 0x10a is not supported by the host"), "{e}");
}

#[test]
fn template_errors() {
    let mut host = full_host();
    host.remove(0xd, 1);
    let g = GuestCpu {
        template: Some(CustomTemplate::from_json(&t2_like_template()).unwrap()),
        ..guest("host")
    };
    let e = vcpu_cpuid(&host, &g, 0).unwrap_err().to_string();
    assert!(
        e.contains("CPUID leaf 0xd subleaf 0x1 is not supported by the host"),
        "{e}"
    );
    let bad = r#"{"cpuid_modifiers": [{"leaf": "0x1", "subleaf": "0x0", "flags": 0,
        "modifiers": [{"register": "eax", "bitmap": "0b0101"}]}]}"#;
    let e = CustomTemplate::from_json(bad).unwrap_err().to_string();
    assert!(e.contains("expected 32"), "{e}");
    let bad = r#"{"cpuid_modifiers": [{"leaf": "0x1", "subleaf": "0x0", "flags": 0,
        "modifiers": [{"register": "esi", "bitmap": "0b0"}]}]}"#;
    assert!(CustomTemplate::from_json(bad)
        .unwrap_err()
        .to_string()
        .contains("esi"));
    assert!(CustomTemplate::from_json("{\"cpuid\": []}").is_err());
}

//! Firecracker custom CPU templates (docs/cpu_templates/cpu-templates.md): JSON with
//! `cpuid_modifiers` and `msr_modifiers`, each bit given as 0, 1 or x (keep).

use serde::{Deserialize, Deserializer};

use super::table::{CpuidTable, Reg};
use super::CpuError;

/// A bitmap "0b..." of 0/1/x: `filter` has the bits to force, `value` their values.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Bitmap {
    pub filter: u64,
    pub value: u64,
}

impl Bitmap {
    pub fn parse(s: &str, width: usize) -> Result<Bitmap, String> {
        let digits = s
            .strip_prefix("0b")
            .ok_or_else(|| format!("bitmap {s:?} must start with 0b"))?;
        let digits: String = digits.chars().filter(|c| *c != '_').collect();
        if digits.len() != width {
            return Err(format!(
                "bitmap {s:?} has {} digits, expected {width}",
                digits.len()
            ));
        }
        let mut bm = Bitmap {
            filter: 0,
            value: 0,
        };
        for (i, c) in digits.chars().enumerate() {
            let bit = 1u64 << (width - 1 - i);
            match c {
                '0' => bm.filter |= bit,
                '1' => {
                    bm.filter |= bit;
                    bm.value |= bit;
                }
                'x' | 'X' => {}
                other => return Err(format!("bitmap {s:?}: {other:?} is not 0, 1 or x")),
            }
        }
        Ok(bm)
    }

    pub fn apply(&self, old: u64) -> u64 {
        (old & !self.filter) | (self.value & self.filter)
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegisterModifier {
    pub register: String,
    pub bitmap: String,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CpuidModifier {
    #[serde(deserialize_with = "number")]
    pub leaf: u32,
    #[serde(deserialize_with = "number")]
    pub subleaf: u32,
    #[serde(default)]
    pub flags: u32,
    pub modifiers: Vec<RegisterModifier>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MsrModifier {
    #[serde(deserialize_with = "number")]
    pub addr: u32,
    pub bitmap: String,
}

/// A parsed and validated custom template.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CustomTemplate {
    #[serde(default)]
    pub cpuid_modifiers: Vec<CpuidModifier>,
    #[serde(default)]
    pub msr_modifiers: Vec<MsrModifier>,
    /// Firecracker's field; kiln accepts it and ignores it (no vCPU features on x86).
    #[serde(default)]
    pub vcpu_features: Option<serde_json::Value>,
    #[serde(default)]
    pub kvm_capabilities: Option<serde_json::Value>,
}

/// Accepts numbers and strings in hex ("0x1"), binary ("0b1") or decimal.
fn number<'de, D: Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum N {
        Int(u32),
        Str(String),
    }
    let parse = |s: &str| {
        let s = s.trim();
        if let Some(h) = s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
            u32::from_str_radix(h, 16)
        } else if let Some(b) = s.strip_prefix("0b") {
            u32::from_str_radix(b, 2)
        } else {
            s.parse()
        }
    };
    match N::deserialize(d)? {
        N::Int(n) => Ok(n),
        N::Str(s) => parse(&s).map_err(|_| serde::de::Error::custom(format!("bad number {s:?}"))),
    }
}

impl CustomTemplate {
    /// Parses template JSON and checks every register name and bitmap.
    pub fn from_json(text: &str) -> Result<CustomTemplate, CpuError> {
        let t: CustomTemplate =
            serde_json::from_str(text).map_err(|e| CpuError::Template(e.to_string()))?;
        for m in &t.cpuid_modifiers {
            for r in &m.modifiers {
                Reg::parse(&r.register).ok_or_else(|| {
                    CpuError::Template(format!(
                        "leaf {:#x}: unknown register {:?}",
                        m.leaf, r.register
                    ))
                })?;
                Bitmap::parse(&r.bitmap, 32).map_err(|e| {
                    CpuError::Template(format!("leaf {:#x} {}: {e}", m.leaf, r.register))
                })?;
            }
        }
        for m in &t.msr_modifiers {
            Bitmap::parse(&m.bitmap, 64)
                .map_err(|e| CpuError::Template(format!("MSR {:#x}: {e}", m.addr)))?;
        }
        Ok(t)
    }

    /// Applies the CPUID modifiers. A leaf/subleaf the host does not report is an error.
    pub fn apply_cpuid(&self, host: &CpuidTable, table: &mut CpuidTable) -> Result<(), CpuError> {
        for m in &self.cpuid_modifiers {
            if host.get(m.leaf, m.subleaf).is_none() {
                return Err(CpuError::Template(format!(
                    "CPUID leaf {:#x} subleaf {:#x} is not supported by the host",
                    m.leaf, m.subleaf
                )));
            }
            let e = table.entry_mut(m.leaf, m.subleaf);
            for r in &m.modifiers {
                // Both were validated in from_json.
                let reg = Reg::parse(&r.register).expect("validated register");
                let bm = Bitmap::parse(&r.bitmap, 32).expect("validated bitmap");
                let v = e.reg_mut(reg);
                *v = bm.apply(u64::from(*v)) as u32;
            }
        }
        Ok(())
    }

    /// The MSR modifiers as (index, bitmap), checked against the host's MSR index list
    /// (KVM_GET_MSR_INDEX_LIST plus the feature MSR list).
    pub fn msr_bitmaps(&self, host_msrs: &[u32]) -> Result<Vec<(u32, Bitmap)>, CpuError> {
        self.msr_modifiers
            .iter()
            .map(|m| {
                if !host_msrs.contains(&m.addr) {
                    return Err(CpuError::Template(format!(
                        "MSR {:#x} is not supported by the host",
                        m.addr
                    )));
                }
                let bm = Bitmap::parse(&m.bitmap, 64).expect("validated bitmap");
                Ok((m.addr, bm))
            })
            .collect()
    }
}

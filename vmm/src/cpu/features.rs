//! The feature-name table (resources/cpu/features.toml): name -> CPUID bit, with
//! QEMU's aliases, and close-match suggestions for unknown names.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::OnceLock;

use serde::Deserialize;

use super::table::Reg;

const FEATURES_TOML: &str = include_str!("../../../resources/cpu/features.toml");

/// Where a feature lives in CPUID.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct FeatureWord {
    pub leaf: u32,
    pub subleaf: u32,
    pub reg: Reg,
}

impl fmt::Display for FeatureWord {
    /// QEMU's feature_word_description(): `CPUID.01H:ECX` (no subleaf).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CPUID.{:02X}H:{}", self.leaf, self.reg)
    }
}

/// One named CPUID feature bit.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Feature {
    pub word: FeatureWord,
    pub bit: u8,
    pub name: &'static str,
}

impl Feature {
    pub fn mask(&self) -> u32 {
        1 << self.bit
    }
}

impl fmt::Display for Feature {
    /// `CPUID.01H:ECX.pni [bit 0]`, as in QEMU's "host doesn't support" warning; an
    /// unnamed bit (an XSAVE state component) is `CPUID.0DH:EAX [bit 9]`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.name.is_empty() {
            write!(f, "{} [bit {}]", self.word, self.bit)
        } else {
            write!(f, "{}.{} [bit {}]", self.word, self.name, self.bit)
        }
    }
}

#[derive(Deserialize)]
struct FeaturesFile {
    word: Vec<WordFile>,
    aliases: BTreeMap<String, String>,
}

#[derive(Deserialize)]
struct WordFile {
    leaf: u32,
    subleaf: u32,
    reg: String,
    bits: BTreeMap<String, u8>,
}

/// All feature words and names, parsed once from the embedded TOML.
pub struct FeatureTable {
    features: Vec<Feature>,
    by_name: BTreeMap<&'static str, usize>,
    aliases: BTreeMap<&'static str, &'static str>,
    words: Vec<FeatureWord>,
}

impl FeatureTable {
    /// The table embedded in kiln.
    pub fn get() -> &'static FeatureTable {
        static TABLE: OnceLock<FeatureTable> = OnceLock::new();
        TABLE.get_or_init(|| {
            // The embedded file is part of the build; a parse error is a build defect that
            // every test catches, so panicking here cannot be reached by user input.
            FeatureTable::parse(FEATURES_TOML).expect("resources/cpu/features.toml is valid")
        })
    }

    fn parse(text: &str) -> Result<FeatureTable, String> {
        let file: FeaturesFile = toml::from_str(text).map_err(|e| e.to_string())?;
        let leak = |s: String| -> &'static str { Box::leak(s.into_boxed_str()) };
        let mut table = FeatureTable {
            features: Vec::new(),
            by_name: BTreeMap::new(),
            aliases: BTreeMap::new(),
            words: Vec::new(),
        };
        for w in file.word {
            let reg = Reg::parse(&w.reg).ok_or_else(|| format!("bad register {}", w.reg))?;
            let word = FeatureWord {
                leaf: w.leaf,
                subleaf: w.subleaf,
                reg,
            };
            table.words.push(word);
            for (name, bit) in w.bits {
                if bit > 31 {
                    return Err(format!("{name}: bit {bit} out of range"));
                }
                let name = leak(name);
                if table.by_name.insert(name, table.features.len()).is_some() {
                    return Err(format!("feature {name} defined twice"));
                }
                table.features.push(Feature { word, bit, name });
            }
        }
        for (alias, target) in file.aliases {
            if !table.by_name.contains_key(target.as_str()) {
                return Err(format!("alias {alias} -> unknown {target}"));
            }
            let target = table.features[table.by_name[target.as_str()]].name;
            table.aliases.insert(leak(alias), target);
        }
        Ok(table)
    }

    pub fn features(&self) -> &[Feature] {
        &self.features
    }

    /// Every (leaf, subleaf, register) that holds named features.
    pub fn words(&self) -> &[FeatureWord] {
        &self.words
    }

    /// Looks a name up as QEMU does: exact, then alias, with `_` and `-` equivalent.
    pub fn lookup(&self, name: &str) -> Option<Feature> {
        let try_one = |n: &str| {
            let n = self.aliases.get(n).copied().unwrap_or(n);
            self.by_name.get(n).map(|&i| self.features[i])
        };
        try_one(name)
            .or_else(|| try_one(&name.replace('_', "-")))
            .or_else(|| try_one(&name.replace('-', "_")))
    }

    /// The feature at a bit position, if named.
    pub fn at(&self, word: FeatureWord, bit: u8) -> Option<Feature> {
        self.features
            .iter()
            .find(|f| f.word == word && f.bit == bit)
            .copied()
    }

    /// Known names (canonical and aliases) closest to `name`, for error messages.
    pub fn close_matches(&self, name: &str) -> Vec<String> {
        let names = self.by_name.keys().chain(self.aliases.keys()).copied();
        close_matches(name, names)
    }
}

/// Names within a small edit distance of `wanted` (case-insensitive), best first.
pub fn close_matches<'a>(wanted: &str, names: impl Iterator<Item = &'a str>) -> Vec<String> {
    let wanted_lc = wanted.to_ascii_lowercase();
    let limit = (wanted.len() / 3).clamp(1, 3);
    let mut scored: Vec<(usize, &str)> = names
        .filter_map(|n| {
            let d = edit_distance(&wanted_lc, &n.to_ascii_lowercase());
            let prefix = n.to_ascii_lowercase().starts_with(&wanted_lc) && wanted.len() >= 3;
            (d <= limit || prefix).then_some((d, n))
        })
        .collect();
    scored.sort();
    scored.dedup_by(|a, b| a.1 == b.1);
    scored
        .into_iter()
        .take(5)
        .map(|(_, n)| n.to_string())
        .collect()
}

/// Levenshtein distance over bytes (names are ASCII).
pub fn edit_distance(a: &str, b: &str) -> usize {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, &ca) in a.iter().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, &cb) in b.iter().enumerate() {
            let subst = prev[j] + usize::from(ca != cb);
            cur[j + 1] = subst.min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

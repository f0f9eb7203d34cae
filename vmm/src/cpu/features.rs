//! The feature-name table (resources/cpu/features.toml): name -> CPUID bit, with
//! QEMU's aliases, and close-match suggestions for unknown names.

use std::fmt;

use super::spelling::spellings;
use super::table::Reg;

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

// WORDS, FEATURES (word order, names sorted within a word), and FEATURE_NAMES and
// ALIASES (sorted by name, with indices into FEATURES), checked by build.rs.
include!(concat!(env!("OUT_DIR"), "/cpu_features.rs"));

/// All feature words and names: static tables generated from the TOML at build time.
pub struct FeatureTable {
    features: &'static [Feature],
    /// Canonical name -> index into `features`, sorted by name.
    by_name: &'static [(&'static str, u16)],
    /// Alias -> index into `features`, sorted by alias.
    aliases: &'static [(&'static str, u16)],
    words: &'static [FeatureWord],
}

static TABLE: FeatureTable = FeatureTable {
    features: &FEATURES,
    by_name: &FEATURE_NAMES,
    aliases: &ALIASES,
    words: &WORDS,
};

impl FeatureTable {
    /// The table embedded in kiln.
    pub fn get() -> &'static FeatureTable {
        &TABLE
    }

    pub fn features(&self) -> &[Feature] {
        self.features
    }

    /// Every (leaf, subleaf, register) that holds named features.
    pub fn words(&self) -> &[FeatureWord] {
        self.words
    }

    /// Looks a name up as QEMU does: exact, then alias, with `_` and `-` equivalent.
    pub fn lookup(&self, name: &str) -> Option<Feature> {
        let find = |list: &[(&str, u16)], n: &str| {
            let i = list.binary_search_by(|(k, _)| (*k).cmp(n)).ok()?;
            Some(self.features[usize::from(list[i].1)])
        };
        spellings(name).find_map(|n| find(self.aliases, &n).or_else(|| find(self.by_name, &n)))
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
        let names = self.by_name.iter().chain(self.aliases).map(|&(n, _)| n);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_name_indexes_are_sorted_and_complete() {
        for list in [&FEATURE_NAMES[..], &ALIASES[..]] {
            // `lookup` binary-searches these.
            assert!(list.windows(2).all(|w| w[0].0 < w[1].0));
        }
        assert_eq!(FEATURE_NAMES.len(), FEATURES.len());
        for &(name, index) in &FEATURE_NAMES {
            assert_eq!(FEATURES[usize::from(index)].name, name);
        }
        let table = FeatureTable::get();
        for f in table.features() {
            assert_eq!(table.lookup(f.name), Some(*f), "{}", f.name);
            assert!(table.words().contains(&f.word), "{}", f.name);
        }
        for &(alias, index) in &ALIASES {
            assert_eq!(table.lookup(alias), Some(FEATURES[usize::from(index)]));
        }
    }

    #[test]
    fn features_keep_word_order_then_name_order() {
        // The order of `features()` is what `kiln cpu show` prints.
        let word_index = |w: &FeatureWord| WORDS.iter().position(|x| x == w).unwrap();
        assert!(FEATURES.windows(2).all(|p| {
            (word_index(&p[0].word), p[0].name) < (word_index(&p[1].word), p[1].name)
        }));
        let first = FEATURES[0];
        assert_eq!((first.word, first.name), (WORDS[0], "acpi"));
    }

    #[test]
    fn close_matches_cover_names_and_aliases() {
        let table = FeatureTable::get();
        assert!(table.close_matches("pnii").contains(&"pni".to_string()));
        assert!(table.close_matches("sse33").contains(&"sse3".to_string()));
        assert!(table.lookup("no-such-feature").is_none());
    }
}

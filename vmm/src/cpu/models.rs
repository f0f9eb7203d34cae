//! Named CPU models (resources/cpu/models.toml, turned into a static table by build.rs).

use super::features::{close_matches, Feature, FeatureTable};
use super::CpuError;

/// `host` and `max` take identity and features from the host table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Passthrough {
    Host,
    Max,
}

/// A model as build.rs generates it from the TOML, checked there: unique names
/// (ignoring case), known features, identities that fit CPUID.
#[derive(Clone, Debug)]
pub struct Model {
    pub name: &'static str,
    /// Citation: where the definition comes from.
    pub source: &'static str,
    /// Where kiln deliberately differs from another source.
    pub note: Option<&'static str>,
    pub passthrough: Option<Passthrough>,
    pub vendor: &'static str,
    pub family: u32,
    pub model: u32,
    pub stepping: u32,
    pub level: u32,
    pub xlevel: u32,
    pub model_id: Option<&'static str>,
    pub features: &'static [&'static str],
}

impl Model {
    /// The model's features, resolved against the feature table.
    pub fn feature_set(&self) -> Vec<Feature> {
        let table = FeatureTable::get();
        self.features
            .iter()
            // build.rs rejects unknown names.
            .filter_map(|n| table.lookup(n))
            .collect()
    }

    /// CPUID leaf 1 EAX: stepping, model, family with the extended fields
    /// (Intel SDM vol. 2A, "Processor Version Information").
    pub fn signature(&self) -> u32 {
        let (base_family, ext_family) = if self.family > 0xf {
            (0xf, self.family - 0xf)
        } else {
            (self.family, 0)
        };
        (self.stepping & 0xf)
            | (self.model & 0xf) << 4
            | (base_family & 0xf) << 8
            | ((self.model >> 4) & 0xf) << 16
            | (ext_family & 0xff) << 20
    }
}

// MODELS, in file order.
include!(concat!(env!("OUT_DIR"), "/cpu_models.rs"));

/// All models, in file order.
pub fn all() -> &'static [Model] {
    &MODELS
}

/// Finds a model by name (case-insensitive, as QEMU's -cpu is not).
pub fn find(name: &str) -> Result<&'static Model, CpuError> {
    MODELS
        .iter()
        .find(|m| m.name.eq_ignore_ascii_case(name))
        .ok_or_else(|| CpuError::UnknownModel {
            name: name.to_string(),
            close: close_matches(name, MODELS.iter().map(|m| m.name)),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn find_ignores_case() {
        for m in all() {
            let found = find(&m.name.to_ascii_uppercase()).unwrap();
            assert!(std::ptr::eq(found, m), "{}", m.name);
        }
    }

    #[test]
    fn every_listed_feature_resolves() {
        // build.rs resolves names with `FeatureTable::lookup`'s spelling rule.
        for m in all() {
            assert_eq!(m.feature_set().len(), m.features.len(), "{}", m.name);
        }
    }

    #[test]
    fn unknown_model_suggests_close_names() {
        match find("Skylake-Srver") {
            Err(CpuError::UnknownModel { name, close }) => {
                assert_eq!(name, "Skylake-Srver");
                assert!(close.contains(&"Skylake-Server".to_string()), "{close:?}");
            }
            other => panic!("{other:?}"),
        }
    }
}

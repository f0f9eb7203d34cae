//! Named CPU models (resources/cpu/models.toml, turned into a static table by build.rs).

use std::sync::OnceLock;

use super::features::{close_matches, Feature, FeatureTable};
use super::CpuError;

/// `host` and `max` take identity and features from the host table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Passthrough {
    Host,
    Max,
}

#[derive(Clone, Debug)]
pub struct Model {
    pub name: String,
    /// Citation: where the definition comes from.
    pub source: String,
    /// Where kiln deliberately differs from another source.
    pub note: Option<String>,
    pub passthrough: Option<Passthrough>,
    pub vendor: String,
    pub family: u32,
    pub model: u32,
    pub stepping: u32,
    pub level: u32,
    pub xlevel: u32,
    pub model_id: Option<String>,
    pub features: Vec<String>,
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

/// One model as build.rs generates it from the TOML; [`Model`] owns the same data.
struct ModelDef {
    name: &'static str,
    source: &'static str,
    note: Option<&'static str>,
    passthrough: Option<Passthrough>,
    vendor: &'static str,
    family: u32,
    model: u32,
    stepping: u32,
    level: u32,
    xlevel: u32,
    model_id: Option<&'static str>,
    features: &'static [&'static str],
}

// MODEL_COUNT and MODEL_DEFS, in file order, checked by build.rs: unique names (ignoring
// case), known features, identities that fit CPUID.
include!(concat!(env!("OUT_DIR"), "/cpu_models.rs"));

impl ModelDef {
    fn to_model(&self) -> Model {
        Model {
            name: self.name.to_string(),
            source: self.source.to_string(),
            note: self.note.map(str::to_string),
            passthrough: self.passthrough,
            vendor: self.vendor.to_string(),
            family: self.family,
            model: self.model,
            stepping: self.stepping,
            level: self.level,
            xlevel: self.xlevel,
            model_id: self.model_id.map(str::to_string),
            features: self.features.iter().map(|f| f.to_string()).collect(),
        }
    }
}

/// All models, in file order, built once.
pub fn all() -> &'static [Model] {
    static MODELS: OnceLock<Vec<Model>> = OnceLock::new();
    MODELS.get_or_init(|| MODEL_DEFS.iter().map(ModelDef::to_model).collect())
}

/// Finds a model by name (case-insensitive, as QEMU's -cpu is not).
///
/// Builds only the model asked for: `kiln run` looks up one model (`host` by default),
/// and building all of them would allocate every model's feature names.
pub fn find(name: &str) -> Result<&'static Model, CpuError> {
    static FOUND: [OnceLock<Model>; MODEL_COUNT] = [const { OnceLock::new() }; MODEL_COUNT];
    match MODEL_DEFS
        .iter()
        .position(|m| m.name.eq_ignore_ascii_case(name))
    {
        Some(i) => Ok(FOUND[i].get_or_init(|| MODEL_DEFS[i].to_model())),
        None => Err(CpuError::UnknownModel {
            name: name.to_string(),
            close: close_matches(name, MODEL_DEFS.iter().map(|m| m.name)),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn find_builds_the_same_model_as_all() {
        for m in all() {
            let found = find(&m.name.to_ascii_uppercase()).unwrap();
            assert_eq!(format!("{found:?}"), format!("{m:?}"));
        }
        assert_eq!(all().len(), MODEL_COUNT);
    }

    #[test]
    fn every_listed_feature_resolves() {
        // build.rs resolves names with its own copy of `FeatureTable::lookup`'s rules.
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

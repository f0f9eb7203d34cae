//! Named CPU models (resources/cpu/models.toml).

use std::sync::OnceLock;

use serde::Deserialize;

use super::features::{close_matches, Feature, FeatureTable};
use super::CpuError;

const MODELS_TOML: &str = include_str!("../../../resources/cpu/models.toml");

/// `host` and `max` take identity and features from the host table.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Passthrough {
    Host,
    Max,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct Model {
    pub name: String,
    /// Citation: where the definition comes from.
    pub source: String,
    /// Where kiln deliberately differs from another source.
    pub note: Option<String>,
    pub passthrough: Option<Passthrough>,
    #[serde(default)]
    pub vendor: String,
    #[serde(default)]
    pub family: u32,
    #[serde(default)]
    pub model: u32,
    #[serde(default)]
    pub stepping: u32,
    #[serde(default)]
    pub level: u32,
    #[serde(default)]
    pub xlevel: u32,
    pub model_id: Option<String>,
    #[serde(default)]
    pub features: Vec<String>,
}

impl Model {
    /// The model's features, resolved against the feature table.
    pub fn feature_set(&self) -> Vec<Feature> {
        let table = FeatureTable::get();
        self.features
            .iter()
            // Unknown names are rejected by the unit test
            // `all_models_present_with_citation_and_known_features`.
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

#[derive(Deserialize)]
struct ModelsFile {
    model: Vec<Model>,
}

/// All models, parsed once.
pub fn all() -> &'static [Model] {
    static MODELS: OnceLock<Vec<Model>> = OnceLock::new();
    MODELS.get_or_init(|| {
        // Embedded at build time and checked by the unit tests; not user input.
        toml::from_str::<ModelsFile>(MODELS_TOML)
            .expect("resources/cpu/models.toml is valid")
            .model
    })
}

/// Finds a model by name (case-insensitive, as QEMU's -cpu is not).
pub fn find(name: &str) -> Result<&'static Model, CpuError> {
    all()
        .iter()
        .find(|m| m.name.eq_ignore_ascii_case(name))
        .ok_or_else(|| CpuError::UnknownModel {
            name: name.to_string(),
            close: close_matches(name, all().iter().map(|m| m.name.as_str())),
        })
}

//! Build recipes (TOML): what to install, how to customize and sysprep it, and where the
//! image goes. [`load`] parses and validates; every problem is a [`RecipeError`] at a
//! `file:line:column`.

mod error;
mod model;
mod plan;
mod render;
pub mod sysprep;
mod validate;

use std::fmt;
use std::path::{Path, PathBuf};

pub use error::{line_column, suggest, RecipeError};
pub use model::*;
pub use plan::plan;
pub use render::{answer_inputs, RenderError};

/// A parsed, validated recipe and where it came from (relative paths in it are relative
/// to its directory).
#[derive(Debug)]
pub struct LoadedRecipe {
    pub path: PathBuf,
    pub recipe: Recipe,
}

impl LoadedRecipe {
    /// Resolves a path from the recipe against the recipe's directory.
    pub fn resolve(&self, p: &Path) -> PathBuf {
        match self.path.parent() {
            Some(dir) if p.is_relative() => dir.join(p),
            _ => p.to_path_buf(),
        }
    }
}

/// Everything wrong with a recipe (syntax errors stop at the first one).
#[derive(Debug)]
pub enum RecipeLoadError {
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    Invalid(Vec<RecipeError>),
}

impl std::error::Error for RecipeLoadError {}

impl fmt::Display for RecipeLoadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RecipeLoadError::Read { path, source } => {
                write!(f, "cannot read recipe {}: {source}", path.display())
            }
            RecipeLoadError::Invalid(errors) => {
                for (i, e) in errors.iter().enumerate() {
                    if i > 0 {
                        writeln!(f)?;
                    }
                    write!(f, "{e}")?;
                }
                Ok(())
            }
        }
    }
}

/// Reads, parses and validates the recipe at `path`.
pub fn load(path: &Path) -> Result<LoadedRecipe, RecipeLoadError> {
    let text = std::fs::read_to_string(path).map_err(|source| RecipeLoadError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    parse(path, &text)
}

/// Parses and validates recipe `text`, reporting errors against `path`.
pub fn parse(path: &Path, text: &str) -> Result<LoadedRecipe, RecipeLoadError> {
    let recipe: Recipe = toml::from_str(text)
        .map_err(|e| RecipeLoadError::Invalid(vec![RecipeError::from_toml(path, text, &e)]))?;
    let loaded = LoadedRecipe {
        path: path.to_path_buf(),
        recipe,
    };
    let errors = validate::validate(&loaded, text);
    if errors.is_empty() {
        Ok(loaded)
    } else {
        Err(RecipeLoadError::Invalid(errors))
    }
}

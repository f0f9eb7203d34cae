//! Turning a recipe's [install] section into answer-file variables.

use std::path::PathBuf;

use super::model::Install;
use super::LoadedRecipe;
use crate::answer::{AnswerKind, AnswerVars, UserVars};
use crate::installer::catalog;
use crate::mirror::Mirror;
use crate::password::{sha512_crypt, PasswordError};

#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    #[error("{recipe}: the recipe has no [install] section")]
    NoInstall { recipe: PathBuf },
    #[error("{recipe}: hashing install.{field}: {source}")]
    Password {
        recipe: PathBuf,
        field: &'static str,
        source: PasswordError,
    },
}

/// The answer kind (from `install.answer`, else the catalog entry, else preseed), the
/// variables, and the custom template path if any.
pub fn answer_inputs(
    loaded: &LoadedRecipe,
    mirror: Mirror,
) -> Result<(AnswerKind, AnswerVars, Option<PathBuf>), RenderError> {
    let r = &loaded.recipe;
    let install: &Install = r.install.as_ref().ok_or_else(|| RenderError::NoInstall {
        recipe: loaded.path.clone(),
    })?;
    let entry = r
        .base
        .get_ref()
        .installer
        .as_ref()
        .and_then(|n| catalog::find(n.get_ref()));
    let kind = match install.answer.as_ref().map(|a| a.get_ref().as_str()) {
        Some("kickstart") => AnswerKind::Kickstart,
        Some(_) => AnswerKind::Preseed,
        None => entry.map_or(AnswerKind::Preseed, |e| e.answer),
    };
    let hash = |field,
                clear: &Option<String>,
                hash: Option<&String>|
     -> Result<Option<String>, RenderError> {
        match (clear, hash) {
            (_, Some(h)) => Ok(Some(h.clone())),
            (Some(pw), None) => {
                sha512_crypt(pw)
                    .map(Some)
                    .map_err(|source| RenderError::Password {
                        recipe: loaded.path.clone(),
                        field,
                        source,
                    })
            }
            (None, None) => Ok(None),
        }
    };
    let mut vars = AnswerVars::new(mirror);
    if let Some(h) = &install.hostname {
        vars.hostname = h.clone();
    }
    if let Some(d) = &install.domain {
        vars.domain = d.clone();
    }
    if let Some(t) = &install.timezone {
        vars.timezone = t.clone();
    }
    if let Some(s) = install
        .suite
        .clone()
        .or_else(|| entry.and_then(|e| e.suite).map(str::to_string))
    {
        vars.suite = s;
    }
    vars.packages = install.packages.clone();
    vars.root_password_hash = hash(
        "root_password",
        &install.root_password,
        install.root_password_hash.as_ref().map(|h| h.get_ref()),
    )?;
    if let Some(u) = &install.user {
        let password_hash = hash(
            "user.password",
            &u.password,
            u.password_hash.as_ref().map(|h| h.get_ref()),
        )?
        .unwrap_or_default();
        vars.user = Some(UserVars {
            name: u.name.get_ref().clone(),
            full_name: u
                .full_name
                .clone()
                .unwrap_or_else(|| u.name.get_ref().clone()),
            password_hash,
        });
    }
    let template = install
        .template
        .as_ref()
        .map(|t| loaded.resolve(t.get_ref()));
    Ok((kind, vars, template))
}

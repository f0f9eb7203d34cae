//! `kiln recipe`: validate a build recipe and show its plan; render its answer file.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use kiln_imagebuild::answer::render_answer;
use kiln_imagebuild::fetch::sources::mirror_for_suite;
use kiln_imagebuild::mirror::Mirror;
use kiln_imagebuild::recipe::{self, answer_inputs, LoadedRecipe, RecipeLoadError};

#[derive(clap::Subcommand)]
pub enum Command {
    /// Validate a recipe and print the build plan.
    Check {
        /// Recipe file (TOML).
        file: PathBuf,
    },
    /// Render the recipe's answer file (preseed or kickstart).
    Answer {
        /// Recipe file (TOML).
        file: PathBuf,
        /// Mirror URL (default: the recipe's, else the host's apt sources).
        #[arg(long)]
        mirror: Option<String>,
        /// Output file (default: stdout).
        #[arg(long)]
        output: Option<PathBuf>,
    },
}

pub fn exec(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Check { file } => {
            let loaded = load(&file)?;
            print!("{}", recipe::plan(&loaded));
            Ok(ExitCode::SUCCESS)
        }
        Command::Answer {
            file,
            mirror,
            output,
        } => {
            let loaded = load(&file)?;
            let mirror = recipe_mirror(&loaded, mirror.as_deref())?;
            let (kind, vars, template) = answer_inputs(&loaded, mirror)?;
            let text = render_answer(kind, template.as_deref(), &vars)?;
            match output {
                Some(path) => kiln_imagebuild::atomic::write_atomically(&path, |f| {
                    std::io::Write::write_all(f, text.as_bytes())
                })
                .with_context(|| format!("cannot write {}", path.display()))?,
                None => print!("{text}"),
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Loads a recipe; validation errors are printed one per line.
pub fn load(file: &std::path::Path) -> anyhow::Result<LoadedRecipe> {
    recipe::load(file).map_err(|e| match e {
        RecipeLoadError::Invalid(errors) if errors.len() > 1 => {
            anyhow::anyhow!(
                "{} problems in the recipe:\n{}",
                errors.len(),
                RecipeLoadError::Invalid(errors)
            )
        }
        e => anyhow::Error::new(e),
    })
}

/// `--mirror`, else the recipe's `base.mirror`, else the host's apt sources for the suite.
pub fn recipe_mirror(loaded: &LoadedRecipe, flag: Option<&str>) -> anyhow::Result<Mirror> {
    if let Some(m) = flag {
        return Ok(Mirror::parse(m)?);
    }
    let base = loaded.recipe.base.get_ref();
    if let Some(m) = &base.mirror {
        return Ok(Mirror::parse(m.get_ref())?);
    }
    let suite = base
        .installer
        .as_ref()
        .and_then(|n| kiln_imagebuild::installer::catalog::find(n.get_ref()))
        .and_then(|e| e.suite)
        .context(
            "this recipe's installer has no Debian suite: set `mirror` in [base] or pass --mirror",
        )?;
    Ok(mirror_for_suite(std::path::Path::new("/etc/apt"), suite)?)
}

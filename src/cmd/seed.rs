//! `kiln seed`: cloud-init NoCloud seed images.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use kiln_imagebuild::cloudinit;
use kiln_imagebuild::seed::{create, SeedFiles};

#[derive(clap::Subcommand)]
pub enum Command {
    /// Write a FAT image labelled `cidata` with user-data, meta-data and network-config.
    Create(CreateArgs),
}

#[derive(clap::Args)]
pub struct CreateArgs {
    /// Output image.
    output: PathBuf,
    /// user-data file (#cloud-config or a script).
    #[arg(long, required_unless_present = "recipe", conflicts_with = "recipe")]
    user_data: Option<PathBuf>,
    /// meta-data file.
    #[arg(long, required_unless_present = "recipe", conflicts_with = "recipe")]
    meta_data: Option<PathBuf>,
    /// network-config file (optional).
    #[arg(long)]
    network_config: Option<PathBuf>,
    /// Generate user-data and meta-data from this recipe's [seed] section.
    #[arg(long)]
    recipe: Option<PathBuf>,
}

fn read(path: &std::path::Path) -> anyhow::Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))
}

pub fn exec(command: Command) -> anyhow::Result<ExitCode> {
    let Command::Create(args) = command;
    let network = args.network_config.as_deref().map(read).transpose()?;
    let (user_data, meta_data) = match &args.recipe {
        Some(recipe) => {
            let loaded = super::recipe::load(recipe)?;
            let seed = loaded.recipe.seed.as_ref().with_context(|| {
                format!("{}: the recipe has no [seed] section", recipe.display())
            })?;
            let hash = seed
                .password
                .as_deref()
                .map(super::installer::password_hash)
                .transpose()?;
            let user = cloudinit::user_data(seed, hash.as_deref());
            let id = instance_id(user.as_bytes());
            let meta = cloudinit::meta_data(&id, seed.hostname.as_deref());
            (user.into_bytes(), meta.into_bytes())
        }
        None => (
            read(
                args.user_data
                    .as_deref()
                    .context("--user-data is required")?,
            )?,
            read(
                args.meta_data
                    .as_deref()
                    .context("--meta-data is required")?,
            )?,
        ),
    };
    create(
        &args.output,
        &SeedFiles {
            user_data: &user_data,
            meta_data: &meta_data,
            network_config: network.as_deref(),
        },
    )?;
    eprintln!("kiln: wrote {}", args.output.display());
    Ok(ExitCode::SUCCESS)
}

/// A content-derived instance id: the same seed keeps its id, a changed one gets a new
/// id so cloud-init runs again.
fn instance_id(user_data: &[u8]) -> String {
    // FNV-1a: a stable, dependency-free fingerprint (not a security boundary).
    let mut h: u64 = 0xcbf29ce484222325;
    for b in user_data {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x100000001b3);
    }
    format!("kiln-{h:016x}")
}

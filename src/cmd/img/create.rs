//! `kiln img create FILE [SIZE] [--format qcow2|raw] [--backing BASE]`.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use kiln_devices::block::create::{create_image, CreateOptions};
use kiln_devices::block::ImageFormat;

use super::super::parse_size;
use super::parse_format;

#[derive(clap::Args)]
pub struct Args {
    /// Image file to create (must not exist).
    file: PathBuf,
    /// Virtual size in bytes, or with a K, M, G or T suffix (powers of 1024). Defaults
    /// to the backing image's size.
    #[arg(value_parser = parse_size)]
    size: Option<u64>,
    /// Image format.
    #[arg(short, long, default_value = "qcow2", value_parser = parse_format)]
    format: ImageFormat,
    /// Backing image (qcow2 only); a relative path is relative to FILE's directory.
    #[arg(short, long)]
    backing: Option<PathBuf>,
    /// qcow2 cluster size (512 to 2M, a power of two).
    #[arg(long, value_parser = parse_size)]
    cluster_size: Option<u64>,
}

pub fn exec(args: Args) -> anyhow::Result<ExitCode> {
    let opts = CreateOptions {
        format: args.format,
        size: args.size,
        backing: args.backing,
        cluster_size: args.cluster_size,
    };
    create_image(&args.file, &opts)
        .with_context(|| format!("cannot create {}", args.file.display()))?;
    Ok(ExitCode::SUCCESS)
}

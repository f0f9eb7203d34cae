//! `kiln img convert IN OUT [-O qcow2|raw] [-c]`, like `qemu-img convert`. Input is read
//! through kiln's block backends (raw or qcow2, probed); output is written by
//! kiln-imagebuild's converter (sparse raw, or qcow2 with optional deflate clusters).

use std::path::PathBuf;
use std::process::ExitCode;

use kiln_devices::block::ImageFormat;
use kiln_imagebuild::convert::{convert, ConvertOptions};

use super::parse_format;

#[derive(clap::Args)]
pub struct Args {
    /// Input image (raw or qcow2, detected from its contents).
    input: PathBuf,
    /// Output image (replaced atomically when the conversion succeeds).
    output: PathBuf,
    /// Output format.
    #[arg(short = 'O', long = "output-format", default_value = "qcow2", value_parser = parse_format)]
    format: ImageFormat,
    /// Compress data clusters (deflate; qcow2 output only).
    #[arg(short = 'c', long)]
    compress: bool,
}

pub fn exec(args: Args) -> anyhow::Result<ExitCode> {
    let stats = convert(
        &args.input,
        &args.output,
        &ConvertOptions {
            format: args.format,
            compress: args.compress,
        },
    )?;
    eprintln!(
        "kiln: wrote {} ({}, {} data clusters, {} zero clusters of 64 KiB)",
        args.output.display(),
        args.format,
        stats.data_clusters,
        stats.zero_clusters
    );
    Ok(ExitCode::SUCCESS)
}

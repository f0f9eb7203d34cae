//! `kiln img convert IN OUT [-f FMT] [-O qcow2|raw] [-c] [-p]`, like `qemu-img
//! convert`. Input is read through kiln's block backends (raw or qcow2, probed unless
//! `-f`); output is written by kiln-imagebuild's converter (sparse raw, or qcow2 with
//! optional deflate clusters).

use std::path::PathBuf;
use std::process::ExitCode;

use kiln_devices::block::ImageFormat;
use kiln_imagebuild::convert::{convert, ConvertOptions};

use super::parse_format;
use super::progress::Progress;

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
    /// Input format (detected from its contents when not given).
    #[arg(short = 'f', long = "format", value_parser = parse_format)]
    input_format: Option<ImageFormat>,
    /// Show a progress bar on stderr (when it is a terminal).
    #[arg(short = 'p', long)]
    progress: bool,
}

pub fn exec(args: Args) -> anyhow::Result<ExitCode> {
    let bar = Progress::new(args.progress, "converting");
    let mut report = |done: u64, total: u64| bar.report(done, total);
    let stats = convert(
        &args.input,
        &args.output,
        &mut ConvertOptions {
            format: args.format,
            compress: args.compress,
            input_format: args.input_format,
            progress: Some(&mut report),
        },
    );
    drop(bar);
    let stats = stats?;
    eprintln!(
        "kiln: wrote {} ({}, {} data clusters, {} zero clusters of 64 KiB)",
        args.output.display(),
        args.format,
        stats.data_clusters,
        stats.zero_clusters
    );
    Ok(ExitCode::SUCCESS)
}

//! `kiln img convert IN OUT [-f FMT] [-O qcow2|raw] [-c] [-p] [-o OPTIONS]
//! [-B BACKING [-F FMT]] [-n]`, like `qemu-img convert`. Input is read through kiln's block
//! backends (raw or qcow2, probed unless `-f`); output is written by kiln-imagebuild's
//! converter (sparse raw, or qcow2 with optional deflate clusters, any cluster size,
//! version 2 or 3, and a backing file).
//!
//! With a backing file, qemu-img copies the input's own layer and trusts the backing
//! file to match the rest. kiln compares instead: it writes every cluster whose
//! contents differ from the backing file's, so the output always shows the input's
//! bytes, whatever the two images' histories.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context};
use kiln_devices::block::{probe_format, ImageFormat};
use kiln_imagebuild::convert::{convert, ConvertOptions};

use super::progress::Progress;
use super::{options, parse_format, parse_size};

#[derive(clap::Args)]
pub struct Args {
    /// Input image (raw or qcow2, detected from its contents).
    input: PathBuf,
    /// Output image: replaced atomically when the conversion succeeds; written in
    /// place when it is a device, or with -n.
    output: PathBuf,
    /// Output format: qcow2 when not given; with -n, the existing image's.
    #[arg(short = 'O', long = "output-format", value_parser = parse_format)]
    format: Option<ImageFormat>,
    /// OUT exists: write into it in place (qemu-img's -n, "skip target creation"). It
    /// keeps its format, size and options, and must be at least the input's size;
    /// every byte of that is written or zeroed.
    #[arg(short = 'n')]
    existing: bool,
    /// Compress data clusters (deflate; qcow2 output only).
    #[arg(short = 'c', long)]
    compress: bool,
    /// Input format (detected from its contents when not given).
    #[arg(short = 'f', long = "format", value_parser = parse_format)]
    input_format: Option<ImageFormat>,
    /// Sparse size, as qemu-img's -S: raw output leaves runs of zeroes this long
    /// (aligned) as holes; qcow2 output never allocates clusters of zeroes. 0 writes
    /// every byte as data, for a fully allocated image. A multiple of 512 up to 16M.
    /// Above 2M, qemu-img (which reads 2 MiB at a time) may also leave 2 MiB pieces of
    /// shorter zero runs as holes; kiln leaves only runs of the full size.
    #[arg(short = 'S', value_name = "SIZE", default_value = "4k", value_parser = parse_size)]
    sparse_size: u64,
    /// Convert an image others are writing (a running VM's disk), as it is now.
    #[arg(short = 'U', long)]
    force_share: bool,
    /// Show a progress bar on stderr (when it is a terminal).
    #[arg(short = 'p', long)]
    progress: bool,
    /// Backing file of the output (qcow2); a relative name is relative to OUT's
    /// directory. Only clusters that differ from it are written.
    #[arg(short = 'B', long = "backing")]
    backing: Option<PathBuf>,
    /// The backing file's format (detected from its contents when not given).
    #[arg(short = 'F', long = "backing-format", value_parser = parse_format)]
    backing_format: Option<ImageFormat>,
    /// Creation options as qemu-img takes them, comma-separated: cluster_size,
    /// compat (1.1 or 0.10), backing_file, backing_fmt, preallocation (off, metadata,
    /// falloc, full; raw output takes off, falloc, full); and refcount_bits=16,
    /// lazy_refcounts=off, extended_l2=off, compression_type=zlib, which are what kiln
    /// writes. Repeatable.
    #[arg(short = 'o', value_name = "OPTIONS")]
    options: Vec<String>,
}

pub fn exec(args: Args) -> anyhow::Result<ExitCode> {
    let options = options::parse(&args.options, options::Command::Convert)?;
    if args.existing && !args.options.is_empty() {
        bail!("-o with -n: the existing image keeps its own options");
    }
    let format = match (args.format, args.existing) {
        (Some(f), _) => f,
        (None, false) => ImageFormat::Qcow2,
        (None, true) => probe_format(&args.output)
            .with_context(|| format!("cannot open {}", args.output.display()))?,
    };
    let bar = Progress::new(args.progress, "converting");
    let mut report = |done: u64, total: u64| bar.report(done, total);
    let stats = convert(
        &args.input,
        &args.output,
        &mut ConvertOptions {
            compress: args.compress,
            input_format: args.input_format,
            cluster_size: options.cluster_size,
            compat_v2: options.compat_v2,
            backing: options.backing_file.or(args.backing),
            backing_format: options.backing_fmt.or(args.backing_format),
            progress: Some(&mut report),
            existing: args.existing,
            preallocation: options.preallocation,
            force_share: args.force_share,
            sparse_size: args.sparse_size,
            ..ConvertOptions::new(format)
        },
    );
    drop(bar);
    let stats = stats?;
    let backing = match stats.backing_clusters {
        0 => String::new(),
        n => format!(", {n} left to the backing file"),
    };
    eprintln!(
        "kiln: wrote {} ({}, {} data clusters, {} zero clusters{backing}, of {} bytes)",
        args.output.display(),
        format,
        stats.data_clusters,
        stats.zero_clusters,
        stats.cluster_size
    );
    Ok(ExitCode::SUCCESS)
}

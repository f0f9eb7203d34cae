//! `kiln img create [-f FMT] [-b BASE [-F FMT]] [-o OPTIONS] FILE [SIZE]`, with
//! qemu-img's option names. `-o` takes the qcow2 creation options kiln can honour
//! (see [`options`]); version 2 images come from `kiln img convert` only.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use kiln_devices::block::create::{create_image, CreateOptions};
use kiln_devices::block::ImageFormat;

use super::super::parse_size;
use super::{options, parse_format};

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
    /// The backing image's format (detected from its contents when not given).
    #[arg(short = 'F', long = "backing-format", value_parser = parse_format)]
    backing_format: Option<ImageFormat>,
    /// qcow2 cluster size (512 to 2M, a power of two).
    #[arg(long, value_parser = parse_size)]
    cluster_size: Option<u64>,
    /// Creation options as qemu-img takes them, comma-separated: cluster_size,
    /// backing_file, backing_fmt, preallocation (off, metadata, falloc, full); and
    /// compat=1.1, refcount_bits=16, lazy_refcounts=off, extended_l2=off,
    /// compression_type=zlib, which are what kiln creates. Repeatable.
    #[arg(short = 'o', value_name = "OPTIONS")]
    options: Vec<String>,
}

pub fn exec(mut args: Args) -> anyhow::Result<ExitCode> {
    let options = options::parse(&args.options, options::Command::Create)?;
    args.cluster_size = options.cluster_size.or(args.cluster_size);
    args.backing = options.backing_file.or(args.backing);
    args.backing_format = options.backing_fmt.or(args.backing_format);
    let opts = CreateOptions {
        format: args.format,
        size: args.size,
        backing: args.backing,
        backing_format: args.backing_format,
        cluster_size: args.cluster_size,
        preallocation: options.preallocation,
    };
    create_image(&args.file, &opts)
        .with_context(|| format!("cannot create {}", args.file.display()))?;
    Ok(ExitCode::SUCCESS)
}

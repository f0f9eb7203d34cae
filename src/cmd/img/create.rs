//! `kiln img create [-f FMT] [-b BASE [-F FMT]] [-o OPTIONS] FILE [SIZE]`, with
//! qemu-img's option names. `-o` takes the qcow2 creation options kiln can honour;
//! values kiln cannot produce (version 2 images, other refcount widths, ...) are
//! refused by name rather than ignored, so a script never gets an image other than
//! the one it asked for.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context};
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
    /// The backing image's format (detected from its contents when not given).
    #[arg(short = 'F', long = "backing-format", value_parser = parse_format)]
    backing_format: Option<ImageFormat>,
    /// qcow2 cluster size (512 to 2M, a power of two).
    #[arg(long, value_parser = parse_size)]
    cluster_size: Option<u64>,
    /// Creation options as qemu-img takes them, comma-separated: cluster_size,
    /// backing_file, backing_fmt; and compat=1.1, refcount_bits=16,
    /// lazy_refcounts=off, preallocation=off, extended_l2=off,
    /// compression_type=zlib, which are what kiln creates. Repeatable.
    #[arg(short = 'o', value_name = "OPTIONS")]
    options: Vec<String>,
}

/// Values kiln's images always have: accepted when asked for, refused otherwise.
const FIXED: [(&str, &[&str]); 6] = [
    ("compat", &["1.1", "v3"]),
    ("refcount_bits", &["16"]),
    ("lazy_refcounts", &["off", "false"]),
    ("preallocation", &["off"]),
    ("extended_l2", &["off", "false"]),
    ("compression_type", &["zlib"]),
];

/// Apply `-o key=value,...` to `args`.
fn apply_options(args: &mut Args, options: &str) -> anyhow::Result<()> {
    for option in options.split(',').filter(|o| !o.is_empty()) {
        let Some((key, value)) = option.split_once('=') else {
            bail!("-o {option}: expected key=value");
        };
        match key {
            "cluster_size" => {
                args.cluster_size = Some(parse_size(value).map_err(anyhow::Error::msg)?)
            }
            "backing_file" => args.backing = Some(value.into()),
            "backing_fmt" => {
                args.backing_format = Some(parse_format(value).map_err(anyhow::Error::msg)?)
            }
            _ => match FIXED.iter().find(|(k, _)| *k == key) {
                Some((_, allowed)) if allowed.contains(&value) => {}
                Some((_, allowed)) => bail!(
                    "-o {key}={value}: kiln creates only {key}={} images",
                    allowed[0]
                ),
                None => {
                    let known: Vec<&str> = ["cluster_size", "backing_file", "backing_fmt"]
                        .into_iter()
                        .chain(FIXED.iter().map(|(k, _)| *k))
                        .collect();
                    bail!("-o {key}: unknown option (kiln knows {})", known.join(", "))
                }
            },
        }
    }
    Ok(())
}

pub fn exec(mut args: Args) -> anyhow::Result<ExitCode> {
    for options in std::mem::take(&mut args.options) {
        apply_options(&mut args, &options)?;
    }
    let opts = CreateOptions {
        format: args.format,
        size: args.size,
        backing: args.backing,
        backing_format: args.backing_format,
        cluster_size: args.cluster_size,
    };
    create_image(&args.file, &opts)
        .with_context(|| format!("cannot create {}", args.file.display()))?;
    Ok(ExitCode::SUCCESS)
}

//! `kiln img compare [-f FMT] [-F FMT] [-q] [-U] A B`, as `qemu-img compare` (without
//! its strict mode): exit 0 identical, 1 different, 2 the comparison could not run.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use kiln_devices::block::compare::compare_disks;
use kiln_devices::block::{open_disk, DiskConfig, ImageFormat};

use super::parse_format;

#[derive(clap::Args)]
pub struct Args {
    /// First image.
    first: PathBuf,
    /// Second image.
    second: PathBuf,
    /// Format of the first image (detected when not given).
    #[arg(short = 'f', value_parser = parse_format)]
    first_format: Option<ImageFormat>,
    /// Format of the second image (detected when not given).
    #[arg(short = 'F', value_parser = parse_format)]
    second_format: Option<ImageFormat>,
    /// Print nothing; the exit code says it.
    #[arg(short, long)]
    quiet: bool,
    /// Compare images others are writing (a running VM's disk), as they are now.
    #[arg(short = 'U', long)]
    force_share: bool,
}

const EXIT_DIFFERENT: u8 = 1;
const EXIT_ERROR: u8 = 2;

pub fn exec(args: Args) -> anyhow::Result<ExitCode> {
    match compare(&args) {
        Ok(code) => Ok(code),
        Err(e) => {
            // 1 means "different" here, so a failure exits 2, as qemu-img's does.
            eprintln!("kiln: error: {}", crate::error_chain(&e));
            Ok(ExitCode::from(EXIT_ERROR))
        }
    }
}

fn compare(args: &Args) -> anyhow::Result<ExitCode> {
    let open = |path: &PathBuf, format| {
        open_disk(&DiskConfig {
            format,
            readonly: true,
            force_share: args.force_share,
            ..DiskConfig::new(path)
        })
        .with_context(|| format!("cannot open {}", path.display()))
    };
    let a = open(&args.first, args.first_format)?;
    let b = open(&args.second, args.second_format)?;
    let first = (args.first.as_path(), a.as_ref());
    let result = compare_disks(first, (&args.second, b.as_ref()), args.force_share)
        .context("cannot compare the images")?;
    let say = |text: String| {
        if !args.quiet {
            println!("{text}");
        }
    };
    if result.size_mismatch {
        say("Warning: Image size mismatch!".into());
    }
    Ok(match result.mismatch {
        None => {
            say("Images are identical.".into());
            ExitCode::SUCCESS
        }
        Some(offset) => {
            say(format!("Content mismatch at offset {offset}!"));
            ExitCode::from(EXIT_DIFFERENT)
        }
    })
}

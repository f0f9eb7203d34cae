//! `kiln img compare [-f FMT] [-F FMT] [-q] [-s] [-U] A B`, as `qemu-img compare`:
//! exit 0 identical, 1 different, 2 the comparison could not run.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use kiln_devices::block::compare::{compare_disks, compare_disks_strict};
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
    /// Strict: the images also differ if their sizes differ, or if their maps do
    /// (allocated, zero or data ranges; see `kiln img map`).
    #[arg(short, long)]
    strict: bool,
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
            force_share: args.force_share,
            ..DiskConfig::read_only(path, format)
        })
        .with_context(|| format!("cannot open {}", path.display()))
    };
    let a = open(&args.first, args.first_format)?;
    let b = open(&args.second, args.second_format)?;
    let say = |text: String| {
        if !args.quiet {
            println!("{text}");
        }
    };
    let (first, second) = (
        (args.first.as_path(), a.as_ref()),
        (args.second.as_path(), b.as_ref()),
    );
    let (result, status_difference) = if args.strict {
        if a.size() != b.size() {
            say("Strict mode: Image size mismatch!".into());
            return Ok(ExitCode::from(EXIT_DIFFERENT));
        }
        compare_disks_strict(first, second, args.force_share)
    } else {
        compare_disks(first, second, args.force_share).map(|c| (c, None))
    }
    .context("cannot compare the images")?;
    if result.size_mismatch {
        say("Warning: Image size mismatch!".into());
    }
    // What qemu-img meets first, walking from the start, is what it reports (the
    // status first where both start together).
    let content = result
        .mismatch
        .filter(|&c| status_difference.is_none_or(|s| c < s));
    Ok(match (content, status_difference) {
        (Some(offset), _) => {
            say(format!("Content mismatch at offset {offset}!"));
            ExitCode::from(EXIT_DIFFERENT)
        }
        (None, Some(offset)) => {
            say(format!(
                "Strict mode: Offset {offset} block status mismatch!"
            ));
            ExitCode::from(EXIT_DIFFERENT)
        }
        (None, None) => {
            say("Images are identical.".into());
            ExitCode::SUCCESS
        }
    })
}

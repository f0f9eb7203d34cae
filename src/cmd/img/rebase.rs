//! `kiln img rebase [-u] [-p] -b BACKING [-F FMT] FILE`, as `qemu-img rebase`: the
//! qcow2 image FILE names another backing file (or none, with `-b ""`).
//! - By default (safe mode) the clusters FILE leaves to its backing file and where
//!   the old chain and the new file differ are first copied into FILE, so the guest
//!   sees the same data afterwards. The old chain must still be readable.
//! - With `-u` only the reference changes: for a backing file that was moved or
//!   copied, so already holds what the old one held.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use kiln_devices::block::qcow2::backing::set_backing_file;
use kiln_devices::block::rebase::{rebase_safe, NewBacking};
use kiln_devices::block::{probe_format, ImageFormat};

use super::parse_format;
use super::progress::Progress;

#[derive(clap::Args)]
pub struct Args {
    /// The qcow2 image whose backing file changes.
    file: PathBuf,
    /// The new backing file, relative to FILE's directory unless absolute; "" for none.
    #[arg(short = 'b', long)]
    backing: String,
    /// The new backing file's format (detected from it when not given).
    #[arg(short = 'F', long = "backing-format", value_parser = parse_format)]
    backing_format: Option<ImageFormat>,
    /// Change only the reference, copying no data.
    #[arg(short = 'u', long = "unsafe")]
    unsafe_mode: bool,
    /// Show a progress bar on stderr while comparing (safe mode).
    #[arg(short = 'p', long)]
    progress: bool,
}

pub fn exec(args: Args) -> anyhow::Result<ExitCode> {
    let backing = match args.backing.as_str() {
        "" => None,
        name => {
            let mut backing = NewBacking {
                name,
                format: ImageFormat::Raw,
            };
            backing.format = match args.backing_format {
                Some(f) => f,
                None => probe_format(&backing.path_from(&args.file)).with_context(|| {
                    format!("cannot detect the format of {name}; give it with -F")
                })?,
            };
            Some(backing)
        }
    };
    let failed = || format!("cannot rebase {}", args.file.display());
    if args.unsafe_mode {
        set_backing_file(&args.file, backing.as_ref().map(|b| (b.name, b.format)))
            .with_context(failed)?;
    } else {
        let bar = Progress::new(args.progress, "rebasing");
        let stats = rebase_safe(&args.file, backing.as_ref(), &mut |done, total| {
            bar.report(done, total)
        })
        .with_context(failed)?;
        log::info!(
            "rebase: {} clusters copied, {} made zero",
            stats.copied_clusters,
            stats.zeroed_clusters
        );
    }
    Ok(ExitCode::SUCCESS)
}

//! `kiln img commit [-d] [-b BASE] [-p] [-q] FILE`, as `qemu-img commit`: the qcow2
//! overlay FILE's own data goes into its backing file, and FILE is emptied unless
//! `-d`; with `-b`, FILE and every image down to BASE go into BASE, and nothing is
//! emptied.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use kiln_devices::block::commit::{commit, commit_into};

use super::progress::Progress;

#[derive(clap::Args)]
pub struct Args {
    /// The qcow2 overlay to commit into its backing file.
    file: PathBuf,
    /// Keep the overlay's data (do not empty it afterwards).
    #[arg(short = 'd')]
    keep: bool,
    /// Commit into this image of FILE's backing chain (further down than its backing
    /// file), through every image between; implies -d. The images between then no
    /// longer show what they showed.
    #[arg(short = 'b', value_name = "BASE")]
    base: Option<PathBuf>,
    /// Show a progress bar on stderr.
    #[arg(short = 'p', long)]
    progress: bool,
    /// Print nothing on success.
    #[arg(short = 'q', long)]
    quiet: bool,
}

pub fn exec(args: Args) -> anyhow::Result<ExitCode> {
    let bar = Progress::new(args.progress, "committing");
    let mut report = |done, total| bar.report(done, total);
    let done = match &args.base {
        Some(base) => commit_into(&args.file, base, &mut report),
        None => commit(&args.file, args.keep, &mut report),
    }
    .with_context(|| format!("cannot commit {}", args.file.display()))?;
    drop(bar);
    log::info!(
        "commit: {} bytes of data, {} bytes of zeroes{}",
        done.data_bytes,
        done.zero_bytes,
        if done.backing_grown {
            "; the backing file was grown"
        } else {
            ""
        }
    );
    if !args.quiet {
        println!("Image committed.");
    }
    Ok(ExitCode::SUCCESS)
}

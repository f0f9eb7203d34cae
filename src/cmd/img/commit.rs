//! `kiln img commit [-d] [-p] [-q] FILE`, as `qemu-img commit`: the qcow2 overlay
//! FILE's own data goes into its backing file, and FILE is emptied unless `-d`.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use kiln_devices::block::commit::commit;

use super::progress::Progress;

#[derive(clap::Args)]
pub struct Args {
    /// The qcow2 overlay to commit into its backing file.
    file: PathBuf,
    /// Keep the overlay's data (do not empty it afterwards).
    #[arg(short = 'd')]
    keep: bool,
    /// Show a progress bar on stderr.
    #[arg(short = 'p', long)]
    progress: bool,
    /// Print nothing on success.
    #[arg(short = 'q', long)]
    quiet: bool,
}

pub fn exec(args: Args) -> anyhow::Result<ExitCode> {
    let bar = Progress::new(args.progress, "committing");
    let done = commit(&args.file, args.keep, &mut |done, total| {
        bar.report(done, total)
    })
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

//! `kiln img`: disk image commands, named like qemu-img's.

use std::process::ExitCode;

mod check;
mod commit;
mod compare;
mod convert;
mod create;
mod info;
mod map;
mod measure;
mod options;
mod progress;
mod rebase;
mod resize;

pub(crate) use super::parse_size;

use kiln_devices::block::ImageFormat;

/// `--output` of the commands that print like qemu-img: its text or its JSON.
#[derive(Clone, Copy, clap::ValueEnum)]
enum Output {
    Human,
    Json,
}

/// `--format` / `-O` values: qcow2 or raw.
fn parse_format(s: &str) -> Result<ImageFormat, String> {
    s.parse().map_err(|e| format!("{e}"))
}

#[derive(clap::Subcommand)]
pub enum Command {
    /// Create a qcow2 or raw image.
    Create(create::Args),
    /// Show an image's format, sizes and backing chain.
    Info(info::Args),
    /// Show where each range of an image comes from (like `qemu-img map`).
    Map(map::Args),
    /// Convert between formats, optionally compressed.
    Convert(convert::Args),
    /// How big a file converting an image needs (like `qemu-img measure`).
    Measure(measure::Args),
    /// Check a qcow2 image's refcounts and repair them (like `qemu-img check [-r]`).
    Check(check::Args),
    /// Grow or shrink an image's virtual size (like `qemu-img resize`).
    Resize(resize::Args),
    /// Write a qcow2 overlay's data into its backing file and empty it (like
    /// `qemu-img commit`).
    Commit(commit::Args),
    /// Compare the contents two images show a guest (like `qemu-img compare`).
    Compare(compare::Args),
    /// Point a qcow2 image at another backing file, copying what differs first (like
    /// `qemu-img rebase`; `-u` copies nothing).
    Rebase(rebase::Args),
}

pub fn exec(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Create(args) => create::exec(args),
        Command::Info(args) => info::exec(args),
        Command::Map(args) => map::exec(args),
        Command::Convert(args) => convert::exec(args),
        Command::Measure(args) => measure::exec(args),
        Command::Check(args) => check::exec(args),
        Command::Resize(args) => resize::exec(args),
        Command::Commit(args) => commit::exec(args),
        Command::Compare(args) => compare::exec(args),
        Command::Rebase(args) => rebase::exec(args),
    }
}

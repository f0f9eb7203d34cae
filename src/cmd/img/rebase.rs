//! `kiln img rebase -u -b BACKING [-F FMT] FILE`, as `qemu-img rebase -u`: the image
//! names another backing file (or none, with `-b ""`), and no data moves. Only this
//! unsafe mode exists: kiln does not copy the clusters that differ between the old
//! and the new backing file, so the new one must already hold what the old one held.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context};
use kiln_devices::block::qcow2::backing::set_backing_file;
use kiln_devices::block::{probe_format, ImageFormat};

use super::parse_format;

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
    /// Change only the reference, copying no data (the only mode kiln has).
    #[arg(short = 'u', long = "unsafe")]
    unsafe_mode: bool,
}

pub fn exec(args: Args) -> anyhow::Result<ExitCode> {
    if !args.unsafe_mode {
        bail!(
            "only unsafe rebases (-u) are supported: kiln changes the backing file reference \
             and copies no data, so the new backing file must hold the old one's contents"
        );
    }
    let backing = match args.backing.as_str() {
        "" => None,
        name => {
            let format = match args.backing_format {
                Some(f) => f,
                None => {
                    let dir = args.file.parent().unwrap_or_else(|| ".".as_ref());
                    probe_format(&dir.join(name)).with_context(|| {
                        format!("cannot detect the format of {name}; give it with -F")
                    })?
                }
            };
            Some((name, format))
        }
    };
    set_backing_file(&args.file, backing)
        .with_context(|| format!("cannot rebase {}", args.file.display()))?;
    Ok(ExitCode::SUCCESS)
}

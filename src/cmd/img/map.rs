//! `kiln img map [-f FMT] [-U] [--output human|json] FILE`, as `qemu-img map`: where each
//! range of the guest's view comes from (which layer, data or zero, at which host
//! offset), in qemu-img's two formats.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context};
use kiln_devices::block::map::{map_image, MapEntry};
use kiln_devices::block::ImageFormat;

use super::{parse_format, Output};

#[derive(clap::Args)]
pub struct Args {
    /// The image to map (its whole backing chain is followed).
    file: PathBuf,
    /// The image's format (detected from its contents when not given).
    #[arg(short = 'f', long = "format", value_parser = parse_format)]
    format: Option<ImageFormat>,
    /// human: the data ranges and their host offsets; json: every range.
    #[arg(long, value_enum, default_value = "human")]
    output: Output,
    /// Map an image others are writing (a running VM's disk), as it is now.
    #[arg(short = 'U', long)]
    force_share: bool,
}

pub fn exec(args: Args) -> anyhow::Result<ExitCode> {
    let entries = map_image(&args.file, args.format, args.force_share)
        .with_context(|| format!("cannot map {}", args.file.display()))?;
    let text = match args.output {
        Output::Json => json(&entries),
        Output::Human => human(&entries)?,
    };
    print!("{text}");
    Ok(ExitCode::SUCCESS)
}

/// One entry per line, as qemu-img prints them (stable field order for diffs).
fn json(entries: &[MapEntry]) -> String {
    let mut s = String::new();
    for (i, e) in entries.iter().enumerate() {
        s += if i == 0 { "[" } else { ",\n" };
        s += &format!(
            "{{ \"start\": {}, \"length\": {}, \"depth\": {}, \"present\": {}, \"zero\": {}, \
             \"data\": {}",
            e.start, e.length, e.depth, e.present, e.zero, e.data
        );
        if let Some(offset) = e.offset {
            s += &format!(", \"offset\": {offset}");
        }
        s += "}";
    }
    s + "]\n"
}

/// The data ranges: guest offset, length, host offset, file.
fn human(entries: &[MapEntry]) -> anyhow::Result<String> {
    // C's "%#x": 0 has no prefix.
    let hex = |n: u64| {
        if n == 0 {
            "0".into()
        } else {
            format!("{n:#x}")
        }
    };
    let mut s = format!(
        "{:<16}{:<16}{:<16}{}\n",
        "Offset", "Length", "Mapped to", "File"
    );
    for e in entries.iter().filter(|e| e.data && !e.zero) {
        let Some(offset) = e.offset else {
            bail!(
                "the image has compressed clusters, which have no host offset; use --output json"
            );
        };
        s += &format!(
            "{:<16}{:<16}{:<16}{}\n",
            hex(e.start),
            hex(e.length),
            hex(offset),
            e.file.display()
        );
    }
    Ok(s)
}

//! `kiln img measure [-O qcow2|raw] [-o OPTIONS] [--output human|json] (--size SIZE |
//! [-f FMT] FILE)`, as `qemu-img measure`: the file size converting FILE (or creating
//! an empty image of SIZE) needs, with the same numbers and output.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context};
use kiln_devices::block::create::Preallocation;
use kiln_devices::block::measure::{measure, Measure, MeasureInput, MeasureTarget};
use kiln_devices::block::qcow2_layout::cluster_bits;
use kiln_devices::block::ImageFormat;

use super::super::parse_size;
use super::{options, parse_format, Output};

#[derive(clap::Args)]
pub struct Args {
    /// The image to measure (its whole backing chain is read); or give --size.
    #[arg(required_unless_present = "size", conflicts_with = "size")]
    file: Option<PathBuf>,
    /// Measure an empty image of this size instead of FILE.
    #[arg(long, value_parser = parse_size)]
    size: Option<u64>,
    /// Measure an image others are writing (a running VM's disk), as it is now
    /// (nothing to do with --size, as in qemu-img).
    #[arg(short = 'U', long)]
    force_share: bool,
    /// FILE's format (detected from its contents when not given).
    #[arg(short = 'f', long = "format", value_parser = parse_format)]
    format: Option<ImageFormat>,
    /// Format of the image to be made; raw by default, as in qemu-img.
    #[arg(short = 'O', long = "output-format", default_value = "raw", value_parser = parse_format)]
    output_format: ImageFormat,
    /// qcow2 creation options, as for `kiln img convert`: cluster_size, compat,
    /// backing_file (all data is then counted), preallocation (falloc and full count
    /// all data). Repeatable.
    #[arg(short = 'o', value_name = "OPTIONS")]
    options: Vec<String>,
    /// human: qemu-img's lines; json: qemu-img's JSON object.
    #[arg(long, value_enum, default_value = "human")]
    output: Output,
}

pub fn exec(args: Args) -> anyhow::Result<ExitCode> {
    let options = options::parse(&args.options, options::Command::Measure)?;
    if args.output_format == ImageFormat::Raw {
        if let Some(key) = options::keys(&args.options).find(|&k| k != "preallocation") {
            bail!("-o {key}: raw images take no such option (only preallocation)");
        }
    }
    let target = MeasureTarget {
        format: args.output_format,
        cluster_size: options.cluster_size.unwrap_or(64 << 10),
        version: if options.compat_v2 { 2 } else { 3 },
        has_backing: options.backing_file.is_some(),
        // As qemu-img: reserved or written data needs its whole size.
        data_reserved: matches!(
            options.preallocation,
            Preallocation::Falloc | Preallocation::Full
        ),
    };
    cluster_bits(target.cluster_size).map_err(|e| anyhow::anyhow!("-o cluster_size: {e}"))?;
    let input = match (&args.file, args.size) {
        (Some(path), _) => MeasureInput::Image {
            path,
            format: args.format,
            force_share: args.force_share,
        },
        (None, Some(size)) => MeasureInput::Size(size),
        (None, None) => bail!("give an image or --size"),
    };
    let m = measure(&input, &target).with_context(|| match &args.file {
        Some(path) => format!("cannot measure {}", path.display()),
        None => "cannot measure".to_string(),
    })?;
    print!("{}", render(&m, args.output));
    Ok(ExitCode::SUCCESS)
}

fn render(m: &Measure, output: Output) -> String {
    match output {
        Output::Human => {
            let mut s = format!(
                "required size: {}\nfully allocated size: {}\n",
                m.required, m.fully_allocated
            );
            if let Some(b) = m.bitmaps {
                s += &format!("bitmaps size: {b}\n");
            }
            s
        }
        // qemu-img's field order, so that the two can be diffed.
        Output::Json => {
            let mut s = String::from("{\n");
            if let Some(b) = m.bitmaps {
                s += &format!("    \"bitmaps\": {b},\n");
            }
            s += &format!(
                "    \"required\": {},\n    \"fully-allocated\": {}\n}}\n",
                m.required, m.fully_allocated
            );
            s
        }
    }
}

//! `kiln img resize [-f FMT] [--shrink] [--preallocation MODE] FILE [+|-]SIZE`, as
//! `qemu-img resize`.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use kiln_devices::block::create::Preallocation;
use kiln_devices::block::resize::{resize_image, NewSize};
use kiln_devices::block::ImageFormat;

use super::{parse_format, parse_size};

#[derive(clap::Args)]
pub struct Args {
    /// Image file.
    file: PathBuf,
    /// New virtual size, or `+SIZE` / `-SIZE` relative to the current one (bytes, or
    /// with a K, M, G or T suffix).
    #[arg(allow_hyphen_values = true, value_parser = parse_new_size)]
    size: NewSize,
    /// Image format (detected when not given).
    #[arg(short, long, value_parser = parse_format)]
    format: Option<ImageFormat>,
    /// Allow a smaller size: the data beyond it is lost.
    #[arg(long)]
    shrink: bool,
    /// Preallocate the grown range: off, metadata (qcow2), falloc or full, as
    /// `kiln img create -o preallocation=…`.
    #[arg(long, default_value = "off")]
    preallocation: Preallocation,
    /// Print nothing on success.
    #[arg(short, long)]
    quiet: bool,
}

fn parse_new_size(s: &str) -> Result<NewSize, String> {
    Ok(match s.as_bytes().first() {
        Some(b'+') => NewSize::Grow(parse_size(&s[1..])?),
        Some(b'-') => NewSize::Shrink(parse_size(&s[1..])?),
        _ => NewSize::Absolute(parse_size(s)?),
    })
}

pub fn exec(args: Args) -> anyhow::Result<ExitCode> {
    resize_image(
        &args.file,
        args.format,
        args.size,
        args.shrink,
        args.preallocation,
    )
    .with_context(|| format!("cannot resize {}", args.file.display()))?;
    if !args.quiet {
        println!("Image resized.");
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_as_absolute_or_relative() {
        assert_eq!(parse_new_size("1G"), Ok(NewSize::Absolute(1 << 30)));
        assert_eq!(parse_new_size("+64M"), Ok(NewSize::Grow(64 << 20)));
        assert_eq!(parse_new_size("-512"), Ok(NewSize::Shrink(512)));
        assert!(parse_new_size("+").is_err());
        assert!(parse_new_size("ten").is_err());
    }
}

//! `kiln img create FILE [SIZE] [--format qcow2|raw] [--backing BASE]`.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use kiln_devices::block::create::{create_image, CreateOptions};
use kiln_devices::block::ImageFormat;

#[derive(clap::Args)]
pub struct Args {
    /// Image file to create (must not exist).
    file: PathBuf,
    /// Virtual size in bytes, or with a K, M, G or T suffix (powers of 1024). Defaults
    /// to the backing image's size.
    #[arg(value_parser = parse_size)]
    size: Option<u64>,
    /// Image format.
    #[arg(short, long, default_value = "qcow2", value_parser = parse_format)]
    format: ImageFormat,
    /// Backing image (qcow2 only); a relative path is relative to FILE's directory.
    #[arg(short, long)]
    backing: Option<PathBuf>,
    /// qcow2 cluster size (512 to 2M, a power of two).
    #[arg(long, value_parser = parse_size)]
    cluster_size: Option<u64>,
}

fn parse_format(s: &str) -> Result<ImageFormat, String> {
    s.parse().map_err(|e| format!("{e}"))
}

/// "10G", "512M", "4096", "1.5G" (powers of 1024, as qemu-img).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let (num, mult) = match s.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => {
            let mult: u64 = match c.to_ascii_uppercase() {
                'B' => 1,
                'K' => 1 << 10,
                'M' => 1 << 20,
                'G' => 1 << 30,
                'T' => 1 << 40,
                'P' => 1 << 50,
                _ => {
                    return Err(format!(
                        "unknown size suffix `{c}` in `{s}` (use K, M, G or T)"
                    ))
                }
            };
            (&s[..i], mult)
        }
        _ => (s, 1),
    };
    let value: f64 = num
        .parse()
        .map_err(|_| format!("`{s}` is not a size (e.g. 10G, 512M, 1048576)"))?;
    let bytes = value * mult as f64;
    if !(0.0..=(1u64 << 62) as f64).contains(&bytes) || bytes.fract() != 0.0 {
        return Err(format!("`{s}` is not a whole number of bytes in range"));
    }
    Ok(bytes as u64)
}

pub fn exec(args: Args) -> anyhow::Result<ExitCode> {
    let opts = CreateOptions {
        format: args.format,
        size: args.size,
        backing: args.backing,
        cluster_size: args.cluster_size,
    };
    create_image(&args.file, &opts)
        .with_context(|| format!("cannot create {}", args.file.display()))?;
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::parse_size;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("64k"), Ok(65536));
        assert_eq!(parse_size("10G"), Ok(10 << 30));
        assert_eq!(parse_size("1.5M"), Ok(3 << 19));
        assert!(parse_size("10X").is_err());
        assert!(parse_size("-1").is_err());
        assert!(parse_size("abc").is_err());
        assert!(parse_size("0.3").is_err());
    }
}

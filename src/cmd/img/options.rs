//! qemu-img's `-o key=value,...` creation options, for the commands that create qcow2
//! images (`create`, `convert`). Values kiln cannot produce (other refcount widths,
//! version 2 from `create`, ...) are refused by name
//! rather than ignored, so a script never gets an image other than the one it asked for.

use std::path::PathBuf;

use anyhow::bail;
use kiln_devices::block::create::Preallocation;
use kiln_devices::block::ImageFormat;

use super::super::parse_size;
use super::parse_format;

/// The options kiln honours; `None` where `-o` did not name them.
#[derive(Debug, Default)]
pub struct CreationOptions {
    pub cluster_size: Option<u64>,
    pub backing_file: Option<PathBuf>,
    pub backing_fmt: Option<ImageFormat>,
    /// compat=0.10 (a version 2 image) was asked for.
    pub compat_v2: bool,
    pub preallocation: Preallocation,
}

/// The command taking the options, which decides what it can honour.
#[derive(Clone, Copy)]
pub enum Command {
    Create,
    Convert,
    Measure,
}

/// The keys named in `lists`, in order (for options only some formats take).
pub fn keys(lists: &[String]) -> impl Iterator<Item = &str> {
    lists
        .iter()
        .flat_map(|l| l.split(','))
        .filter(|o| !o.is_empty())
        .map(|o| o.split_once('=').map_or(o, |(k, _)| k))
}

/// Values kiln's images always have: accepted when asked for, refused otherwise.
const FIXED: [(&str, &[&str]); 4] = [
    ("refcount_bits", &["16"]),
    ("lazy_refcounts", &["off", "false"]),
    ("extended_l2", &["off", "false"]),
    ("compression_type", &["zlib"]),
];

const SETTABLE: [&str; 5] = [
    "cluster_size",
    "backing_file",
    "backing_fmt",
    "compat",
    "preallocation",
];

/// Parse every `-o` argument in order (a later value wins) for `command`.
pub fn parse(lists: &[String], command: Command) -> anyhow::Result<CreationOptions> {
    let mut opts = CreationOptions::default();
    for option in lists
        .iter()
        .flat_map(|l| l.split(','))
        .filter(|o| !o.is_empty())
    {
        let Some((key, value)) = option.split_once('=') else {
            bail!("-o {option}: expected key=value");
        };
        match key {
            "cluster_size" => {
                opts.cluster_size = Some(parse_size(value).map_err(anyhow::Error::msg)?)
            }
            "backing_file" => opts.backing_file = Some(value.into()),
            "backing_fmt" => {
                opts.backing_fmt = Some(parse_format(value).map_err(anyhow::Error::msg)?)
            }
            "compat" => {
                opts.compat_v2 = match (value, command) {
                    ("1.1" | "v3", _) => false,
                    ("0.10" | "v2", Command::Convert | Command::Measure) => true,
                    ("0.10" | "v2", Command::Create) => bail!(
                        "-o compat={value}: kiln img create creates only compat=1.1 \
                         images (kiln img convert -o compat=0.10 writes version 2)"
                    ),
                    _ => bail!("-o compat={value}: expected 1.1 or 0.10"),
                }
            }
            "preallocation" => {
                opts.preallocation = value
                    .parse()
                    .map_err(|e| anyhow::anyhow!("-o preallocation={value}: {e}"))?;
            }
            _ => match FIXED.iter().find(|(k, _)| *k == key) {
                Some((_, allowed)) if allowed.contains(&value) => {}
                Some((_, allowed)) => bail!(
                    "-o {key}={value}: kiln creates only {key}={} images",
                    allowed[0]
                ),
                None => {
                    let known: Vec<&str> = SETTABLE
                        .into_iter()
                        .chain(FIXED.iter().map(|(k, _)| *k))
                        .collect();
                    bail!("-o {key}: unknown option (kiln knows {})", known.join(", "))
                }
            },
        }
    }
    Ok(opts)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(list: &str, command: Command) -> anyhow::Result<CreationOptions> {
        parse(&[list.to_owned()], command)
    }

    #[test]
    fn settable_options_are_taken_and_later_ones_win() {
        let o = parse(
            &[
                "cluster_size=4k,backing_file=b.raw".into(),
                "backing_fmt=raw,,compat=0.10,refcount_bits=16,cluster_size=512".into(),
            ],
            Command::Convert,
        )
        .unwrap();
        assert_eq!(o.cluster_size, Some(512));
        assert_eq!(o.backing_file, Some(PathBuf::from("b.raw")));
        assert_eq!(o.backing_fmt, Some(ImageFormat::Raw));
        assert!(o.compat_v2);
        assert!(!one("compat=1.1", Command::Convert).unwrap().compat_v2);
        assert_eq!(o.preallocation, Preallocation::Off);
        let o = one(
            "preallocation=falloc,preallocation=metadata",
            Command::Create,
        )
        .unwrap();
        assert_eq!(o.preallocation, Preallocation::Metadata);
        let o = one("preallocation=full", Command::Convert).unwrap();
        assert_eq!(o.preallocation, Preallocation::Full);
    }

    #[test]
    fn what_kiln_cannot_make_is_refused_by_name() {
        use Command::{Convert, Create};
        for (list, command, named) in [
            ("compat=0.10", Create, "creates only compat=1.1"),
            ("compat=2.0", Convert, "expected 1.1 or 0.10"),
            ("refcount_bits=64", Convert, "refcount_bits=16"),
            ("encryption=on", Convert, "unknown option"),
            ("cluster_size", Convert, "key=value"),
            ("backing_fmt=vmdk", Convert, "vmdk"),
            (
                "preallocation=sparse",
                Create,
                "expected off, metadata, falloc, full",
            ),
        ] {
            let e = format!("{:#}", one(list, command).unwrap_err());
            assert!(e.contains(named), "{list}: {e}");
        }
    }
}

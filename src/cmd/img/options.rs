//! qemu-img's `-o key=value,...` creation options, for the commands that create qcow2
//! images (`create`, `convert`). Values kiln cannot produce (other refcount widths,
//! preallocation, ...) are refused by name rather than ignored, so a script never gets
//! an image other than the one it asked for.

use std::path::PathBuf;

use anyhow::bail;
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
}

/// Values kiln's images always have: accepted when asked for, refused otherwise.
const FIXED: [(&str, &[&str]); 5] = [
    ("refcount_bits", &["16"]),
    ("lazy_refcounts", &["off", "false"]),
    ("preallocation", &["off"]),
    ("extended_l2", &["off", "false"]),
    ("compression_type", &["zlib"]),
];

const SETTABLE: [&str; 4] = ["cluster_size", "backing_file", "backing_fmt", "compat"];

/// Parse every `-o` argument in order (a later value wins). `command` and `v2` say
/// whether it can write version 2 images, for the refusal's message.
pub fn parse(lists: &[String], command: &str, v2: bool) -> anyhow::Result<CreationOptions> {
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
                opts.compat_v2 = match value {
                    "1.1" | "v3" => false,
                    "0.10" | "v2" if v2 => true,
                    "0.10" | "v2" => bail!(
                        "-o compat={value}: kiln img {command} creates only compat=1.1 \
                         images (kiln img convert -o compat=0.10 writes version 2)"
                    ),
                    _ => bail!("-o compat={value}: expected 1.1 or 0.10"),
                }
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

    fn one(list: &str, v2: bool) -> anyhow::Result<CreationOptions> {
        parse(&[list.to_owned()], "create", v2)
    }

    #[test]
    fn settable_options_are_taken_and_later_ones_win() {
        let o = parse(
            &[
                "cluster_size=4k,backing_file=b.raw".into(),
                "backing_fmt=raw,,compat=0.10,refcount_bits=16,cluster_size=512".into(),
            ],
            "convert",
            true,
        )
        .unwrap();
        assert_eq!(o.cluster_size, Some(512));
        assert_eq!(o.backing_file, Some(PathBuf::from("b.raw")));
        assert_eq!(o.backing_fmt, Some(ImageFormat::Raw));
        assert!(o.compat_v2);
        assert!(!one("compat=1.1", true).unwrap().compat_v2);
    }

    #[test]
    fn what_kiln_cannot_make_is_refused_by_name() {
        for (list, v2, named) in [
            ("compat=0.10", false, "creates only compat=1.1"),
            ("compat=2.0", true, "expected 1.1 or 0.10"),
            ("refcount_bits=64", true, "refcount_bits=16"),
            ("encryption=on", true, "unknown option"),
            ("cluster_size", true, "key=value"),
            ("backing_fmt=vmdk", true, "vmdk"),
        ] {
            let e = format!("{:#}", one(list, v2).unwrap_err());
            assert!(e.contains(named), "{list}: {e}");
        }
    }
}

//! `kiln img convert -o preallocation=metadata|falloc|full`: the output is created
//! preallocated at a temporary path next to it (by `create_image`, as `kiln img create`
//! makes it), the input written into it as with -n (existing.rs), and the file renamed
//! into place. A new preallocated image reads zero everywhere, so zero ranges are not
//! written: their clusters stay allocated, as qemu-img leaves them.

use std::path::Path;

use kiln_devices::block::create::{create_image, CreateOptions};
use kiln_devices::block::known_zero::SparseReader;
use kiln_devices::block::{open_disk, DiskConfig};

use super::existing::{self, ZeroRanges};
use super::{ConvertError, ConvertOptions, ConvertStats};
use crate::atomic::{build_atomically, AtomicError};

pub fn convert(
    input: SparseReader,
    output: &Path,
    opts: &mut ConvertOptions,
) -> Result<ConvertStats, ConvertError> {
    let size = input.disk.size();
    let create = CreateOptions {
        cluster_size: opts.cluster_size,
        preallocation: opts.preallocation,
        ..CreateOptions::new(opts.format, Some(size))
    };
    // Errors name the output, not the temporary file that stands in for it.
    let target_err = |source| ConvertError::Target {
        path: output.to_owned(),
        source,
    };
    let result = build_atomically(output, |tmp: &Path| {
        create_image(tmp, &create).map_err(target_err)?;
        let target = open_disk(&DiskConfig {
            format: Some(opts.format),
            ..DiskConfig::new(tmp.to_owned())
        })
        .map_err(target_err)?;
        existing::copy_into(
            input,
            output,
            target.as_ref(),
            ZeroRanges::Skip,
            opts.progress.as_mut(),
        )
    });
    result.map_err(|e| match e {
        AtomicError::Write(e) => e,
        AtomicError::Create { source, .. } | AtomicError::Persist { source, .. } => {
            ConvertError::Write {
                path: output.to_owned(),
                source,
            }
        }
    })
}

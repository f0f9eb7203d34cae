//! Converting into an image that exists (`kiln img convert -n`, qemu-img's "skip target
//! creation"): a raw or qcow2 file made beforehand, for instance preallocated or with
//! options kiln's writer does not make, keeps its format, size and options, and the
//! input is written into it through kiln's block backends. Every byte of the input's
//! size is written or zeroed there (zeroes unmap, as qemu-img's write-zeroes do); what
//! lies past it is left alone.
//!
//! The target is written in place: it must be at least as large as the input (checked
//! before anything is written), and an I/O error during the copy leaves it partly
//! written, as with a device.

use std::path::Path;

use kiln_devices::block::known_zero::SparseReader;
use kiln_devices::block::{
    open_disk, probe_format, DiskBackend, DiskConfig, DiskError, ImageFormat,
};

use super::runs::runs;
use super::{ConvertError, ConvertStats, CHUNK};

/// Granularity of the zero test when zeroes are written: a run of zeroes this long
/// (aligned) is written as zeroes, anything else as data.
const PIECE: u64 = 64 << 10;
/// Granularity when zeroes are skipped: qemu-img convert's default (`-S 4k`), so a new
/// preallocated image holds data where qemu-img's does.
const SKIP_PIECE: u64 = 4 << 10;

/// Open the existing `output` (as `format`) for writing, and check it can take `size`
/// bytes.
pub fn open_target(
    output: &Path,
    format: ImageFormat,
    size: u64,
) -> Result<std::sync::Arc<dyn DiskBackend>, ConvertError> {
    // qemu-img would write raw bytes over a qcow2 image's metadata if asked; a
    // format other than the image's is almost always a slip, so it is refused.
    let found = probe_format(output).map_err(|source| ConvertError::Target {
        path: output.to_owned(),
        source,
    })?;
    if found != format {
        return Err(ConvertError::Invalid(format!(
            "{} is a {found} image: writing it as {format} would overwrite it \
             (give -O {found}, or leave -O out)",
            output.display()
        )));
    }
    let target = open_disk(&DiskConfig {
        format: Some(format),
        ..DiskConfig::new(output.to_owned())
    })
    .map_err(|source| ConvertError::Target {
        path: output.to_owned(),
        source,
    })?;
    if target.size() < size {
        return Err(ConvertError::Invalid(format!(
            "{} holds {} bytes, the input {size}: the output must not be smaller than \
             the input",
            output.display(),
            target.size()
        )));
    }
    Ok(target)
}

/// What becomes of the input's zero ranges in the target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ZeroRanges {
    /// Written as unmapping write-zeroes: the target held anything there.
    Unmap,
    /// Left alone: the target is new and reads zero everywhere.
    Skip,
}

impl ZeroRanges {
    fn piece(self) -> u64 {
        match self {
            ZeroRanges::Unmap => PIECE,
            ZeroRanges::Skip => SKIP_PIECE,
        }
    }
}

/// Copy `input` into `target` (see the module documentation).
pub fn copy_into(
    mut input: SparseReader,
    output: &Path,
    target: &dyn DiskBackend,
    zero_ranges: ZeroRanges,
    progress: Option<&mut &mut dyn FnMut(u64, u64)>,
) -> Result<ConvertStats, ConvertError> {
    let size = input.disk.size();
    let write_err = |source: DiskError| ConvertError::Target {
        path: output.to_owned(),
        source,
    };
    let mut stats = ConvertStats {
        virtual_size: size,
        cluster_size: zero_ranges.piece(),
        ..Default::default()
    };
    let mut progress = progress;
    let mut buf = vec![0u8; CHUNK as usize];
    let piece = zero_ranges.piece();
    let write_zeroes = |at, len| match zero_ranges {
        ZeroRanges::Unmap => target.write_zeroes(at, len, true).map_err(write_err),
        ZeroRanges::Skip => Ok(()),
    };
    let mut offset = 0;
    while offset < size {
        let n = (size - offset).min(CHUNK);
        if input.known_zero(offset, n) {
            write_zeroes(offset, n)?;
            stats.zero_clusters += n.div_ceil(piece);
        } else {
            let data = &mut buf[..n as usize];
            input
                .read(data, offset)
                .map_err(|source| ConvertError::Read {
                    path: input.path.to_owned(),
                    offset,
                    source,
                })?;
            for (at, len, zero) in runs(data, offset, piece) {
                let bytes = &data[(at - offset) as usize..][..len as usize];
                if zero {
                    write_zeroes(at, len)?;
                    stats.zero_clusters += len.div_ceil(piece);
                } else {
                    target.write_at(bytes, at).map_err(write_err)?;
                    stats.data_clusters += len.div_ceil(piece);
                }
            }
        }
        offset += n;
        if let Some(report) = progress.as_mut() {
            report(offset, size);
        }
    }
    target.flush().map_err(write_err)?;
    Ok(stats)
}

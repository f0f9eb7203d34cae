//! `kiln img check`: a qcow2 image's refcounts against the references to its clusters,
//! reported as `qemu-img check` reports them. Read-only: nothing is repaired.

use std::fs::File;
use std::path::{Path, PathBuf};

use super::lock::{Access, ImageLock};
use super::qcow2::header::HeaderError;
use super::qcow2::read_header;
use super::qcow2::refcheck::{scan_refcounts, RefcountError, RefcountScan};
use super::{probe_format, DiskError, ImageFormat};

/// What checking an image found.
#[derive(Debug)]
pub enum CheckOutcome {
    /// The format has no metadata to check (raw).
    Unsupported(ImageFormat),
    Qcow2(Qcow2Check),
}

/// A checked qcow2 image.
#[derive(Debug)]
pub struct Qcow2Check {
    pub filename: PathBuf,
    pub cluster_size: u64,
    /// Guest clusters (virtual size over cluster size, rounded up).
    pub total_clusters: u64,
    pub findings: Findings,
}

/// The count, or the metadata that could not be followed to finish it.
#[derive(Debug)]
pub enum Findings {
    Counted(RefcountScan),
    /// An L1, L2 or refcount table points outside the file or is misaligned: the
    /// image is corrupt (`qemu-img check` counts these as corruptions too).
    BadMetadata(HeaderError),
}

/// Check `path`. Errors are what stops the check itself: the file cannot be opened
/// or read, another process writes it (unless `force_share`, as qemu-img's `-U`: its
/// metadata may then change under the count), it is not a qcow2 image kiln
/// understands, or it is too large to count.
pub fn check_image(path: &Path, force_share: bool) -> Result<CheckOutcome, DiskError> {
    let _lock = if force_share {
        None
    } else {
        Some(ImageLock::acquire(path, Access::Read)?)
    };
    let format = probe_format(path)?;
    if format != ImageFormat::Qcow2 {
        return Ok(CheckOutcome::Unsupported(format));
    }
    let (header, file_len) = read_header(path)?;
    let file = File::open(path).map_err(|source| DiskError::Open {
        path: path.to_owned(),
        source,
    })?;
    let findings = match header.check_layout(file_len) {
        Err(e) => Findings::BadMetadata(e),
        Ok(()) => match scan_refcounts(&file, &header, file_len) {
            Ok(scan) => Findings::Counted(scan),
            Err(RefcountError::Layout(e)) => Findings::BadMetadata(e),
            Err(source) => {
                return Err(DiskError::CheckIncomplete {
                    path: path.to_owned(),
                    source,
                })
            }
        },
    };
    let cluster_size = header.cluster_size();
    Ok(CheckOutcome::Qcow2(Qcow2Check {
        filename: path.to_owned(),
        cluster_size,
        total_clusters: header.size.div_ceil(cluster_size),
        findings,
    }))
}

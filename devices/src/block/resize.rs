//! `kiln img resize`: change an image's virtual size, as `qemu-img resize` does.
//!
//! - Raw images are truncated or extended (sparse).
//! - Growing a qcow2 image leaves the new range unallocated, so it reads as zeroes,
//!   with two exceptions that are zeroed explicitly (zero clusters), as QEMU does:
//!   the range where a longer backing file would otherwise show through, and the rest
//!   of a partly used last cluster.
//! - Shrinking loses the data beyond the new end, so it needs `allow_shrink` (qemu-img's
//!   `--shrink`); a qcow2 image frees the clusters it owned there.
//! - qcow2 images with internal snapshots or persistent bitmaps are refused: both
//!   record the old size, and kiln does not update them.
//! - Growth can be preallocated as `kiln img create` preallocates (imago does it):
//!   metadata (qcow2 only), falloc or full. imago preallocates only images without a
//!   backing file, so an overlay grows in two steps: through its chain up to the end
//!   of its last cluster (zeroing the part the backing file could show), then, opened
//!   as its own layer only, preallocated over the whole clusters beyond, which the
//!   backing file plays no part in.
//!
//! The new size must be a multiple of 512 bytes, as for `kiln img create`.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};

use imago::file::File as ImagoFile;
use imago::format::PreallocateMode;
use imago::raw::Raw;
use imago::{FormatAccess, FormatDriverBuilder, PermissiveImplicitOpenGate};

use super::create::Preallocation;
use super::lock::{Access, ImageLock};
use super::qcow2::bitmaps::AUTOCLEAR_BITMAPS;
use super::qcow2::{check_chain, read_header, Qcow2Disk};
use super::raw::{allocate_first_block, disk_size};
use super::{file_len, probe_format, DiskError, ImageFormat};

/// The size asked for: as given, or relative to the current one (`+SIZE`, `-SIZE`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NewSize {
    Absolute(u64),
    Grow(u64),
    Shrink(u64),
}

/// What a resize did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Resized {
    pub format: ImageFormat,
    pub old_size: u64,
    pub new_size: u64,
}

/// Resize the image at `path` (format detected unless given). Errors name the image
/// and leave it unchanged, except for I/O errors during the resize itself.
pub fn resize_image(
    path: &Path,
    format: Option<ImageFormat>,
    size: NewSize,
    allow_shrink: bool,
    preallocation: Preallocation,
) -> Result<Resized, DiskError> {
    let invalid = |reason: String| DiskError::unsupported(path, reason);
    let open_err = DiskError::io(path);
    let format = match format {
        Some(f) => f,
        None => probe_format(path)?,
    };
    // Each branch holds the image's lock from reading the old size to the end.
    let (old_size, new_size) = match format {
        ImageFormat::Raw => {
            let _lock = ImageLock::acquire(path, Access::ReadWrite)?;
            let file = OpenOptions::new()
                .write(true)
                .open(path)
                .map_err(open_err)?;
            let old_len = file_len(&file).map_err(open_err)?;
            let old_size = disk_size(old_len);
            let new_size = checked_new_size(path, old_size, size, allow_shrink)?;
            if file
                .metadata()
                .map_err(open_err)?
                .file_type()
                .is_block_device()
            {
                // Its size is the device's (as qemu-img, which refuses too).
                if new_size != old_size {
                    return Err(invalid(format!(
                        "a block device cannot be resized (it has {old_size} bytes)"
                    )));
                }
                return Ok(Resized {
                    format,
                    old_size,
                    new_size,
                });
            }
            check_preallocation(path, old_size, new_size, preallocation)?;
            preallocation
                .check_format(ImageFormat::Raw)
                .map_err(invalid)?;
            if preallocation != Preallocation::Off {
                grow_raw_preallocated(path, new_size, preallocation)?;
            }
            file.set_len(new_size).map_err(open_err)?;
            if old_len == 0 && preallocation == Preallocation::Off {
                allocate_first_block(&file, new_size).map_err(open_err)?;
            }
            file.sync_all().map_err(open_err)?;
            (old_size, new_size)
        }
        ImageFormat::Qcow2 => {
            let mut disk = Qcow2Disk::open(path, false)?;
            let (h, _) = read_header(path)?;
            if h.nb_snapshots > 0 {
                return Err(invalid(format!(
                    "the image has {} internal snapshots, which record its size; \
                     delete them first (`qemu-img snapshot -d`)",
                    h.nb_snapshots
                )));
            }
            if h.autoclear_features & AUTOCLEAR_BITMAPS != 0 {
                return Err(invalid(
                    "the image has persistent bitmaps, which kiln cannot resize".into(),
                ));
            }
            let new_size = checked_new_size(path, h.size, size, allow_shrink)?;
            check_preallocation(path, h.size, new_size, preallocation)?;
            let chain = check_chain(path, false)?;
            let partial_cluster_end = h.size.next_multiple_of(h.cluster_size());
            if preallocation != Preallocation::Off && chain.len() > 1 && new_size > h.size {
                let whole_clusters_from = partial_cluster_end.min(new_size);
                disk.resize(
                    whole_clusters_from,
                    whole_clusters_from,
                    PreallocateMode::None,
                )?;
                drop(disk); // its lock, before the layer is opened again
                let (mut layer, _) = Qcow2Disk::open_top_layer(path, Access::ReadWrite)?;
                layer.resize(new_size, 0, preallocation.imago_mode())?;
            } else {
                let zero_until = visible_backing_end(&chain)?.max(partial_cluster_end);
                disk.resize(new_size, zero_until, preallocation.imago_mode())?;
            }
            (h.size, new_size)
        }
    };
    Ok(Resized {
        format,
        old_size,
        new_size,
    })
}

/// The size `size` asks for, from `old_size`: in range, whole sectors, and not
/// smaller unless shrinking is allowed.
fn checked_new_size(
    path: &Path,
    old_size: u64,
    size: NewSize,
    allow_shrink: bool,
) -> Result<u64, DiskError> {
    let invalid = |reason: String| DiskError::unsupported(path, reason);
    let new_size = match size {
        NewSize::Absolute(n) => Some(n),
        NewSize::Grow(d) => old_size.checked_add(d),
        NewSize::Shrink(d) => old_size.checked_sub(d),
    }
    .ok_or_else(|| {
        invalid(format!(
            "{size:?} is out of range for a {old_size}-byte image"
        ))
    })?;
    if new_size % 512 != 0 {
        return Err(invalid(format!(
            "the new size {new_size} is not a multiple of 512 bytes"
        )));
    }
    if new_size < old_size && !allow_shrink {
        return Err(invalid(format!(
            "shrinking from {old_size} to {new_size} bytes loses the data beyond {new_size}; \
             pass --shrink to do it anyway"
        )));
    }
    Ok(new_size)
}

/// As qemu-img: preallocation is for growing.
fn check_preallocation(
    path: &Path,
    old_size: u64,
    new_size: u64,
    preallocation: Preallocation,
) -> Result<(), DiskError> {
    if new_size < old_size && preallocation != Preallocation::Off {
        return Err(DiskError::unsupported(
            path,
            format!(
                "preallocation={} can only be used for growing images",
                preallocation.name()
            ),
        ));
    }
    Ok(())
}

/// Grow a raw file to `new_size`, reserving (falloc) or writing (full) the new range
/// through imago's raw driver.
fn grow_raw_preallocated(
    path: &Path,
    new_size: u64,
    preallocation: Preallocation,
) -> Result<(), DiskError> {
    let open_err = DiskError::io(path);
    let raw = Raw::<ImagoFile>::builder_path(path)
        .write(true)
        .open(PermissiveImplicitOpenGate::default())
        .map_err(open_err)?;
    FormatAccess::new(raw)
        .resize_grow(new_size, preallocation.imago_mode())
        .map_err(open_err)
}

/// The virtual size of the backing file in `chain` (0 without one): up to there, the
/// grown image at the chain's top would show the backing file's data.
fn visible_backing_end(chain: &[(PathBuf, ImageFormat)]) -> Result<u64, DiskError> {
    let Some((backing, format)) = chain.get(1) else {
        return Ok(0);
    };
    match format {
        ImageFormat::Qcow2 => Ok(read_header(backing)?.0.size),
        ImageFormat::Raw => File::open(backing)
            .and_then(|f| file_len(&f))
            .map_err(DiskError::io(backing)),
    }
}

//! `kiln img commit`, as `qemu-img commit`: what a qcow2 overlay holds itself (data and
//! zero clusters) is written into its backing file, and the overlay is then emptied so
//! that it shows the backing file again (unless told to keep it).
//!
//! With a base further down the chain (qemu-img's `-b`), every image between the
//! overlay and that base is committed into it, the lowest first so that upper images
//! overwrite lower ones as a reader sees them; nothing is emptied (`-b` implies `-d`),
//! and the images between no longer show what they showed, as with qemu-img.
//!
//! A backing file shorter than the overlay is grown first, as QEMU does. Order, so
//! that an interruption loses nothing: the backing file is written and synced before
//! the overlay changes, and until then the overlay shows what it showed (it holds the
//! same data the backing file now has). Only ranges some image above the base holds
//! are written, so the overlay reads the same throughout.

use std::path::{Path, PathBuf};

use super::create::Preallocation;
use super::lock::Access;
use super::qcow2::{check_chain, LayerExtent, Qcow2Disk};
use super::resize::{resize_image, NewSize};
use super::{open_disk, probe_format, DiskBackend, DiskConfig, DiskError, ImageFormat};

/// What a commit did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Committed {
    /// Bytes of data written into the backing file.
    pub data_bytes: u64,
    /// Bytes zeroed in the backing file (the overlay's zero clusters).
    pub zero_bytes: u64,
    /// The backing file was grown to the overlay's size first.
    pub backing_grown: bool,
}

/// Commit the qcow2 overlay at `path` into its backing file; with `keep_overlay`
/// (qemu-img's `-d`) leave the overlay as it is. `progress` hears (bytes done, size).
pub fn commit(
    path: &Path,
    keep_overlay: bool,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<Committed, DiskError> {
    if probe_format(path)? != ImageFormat::Qcow2 {
        return Err(DiskError::unsupported(path, "not a qcow2 image"));
    }
    let access = if keep_overlay {
        Access::Read
    } else {
        Access::ReadWrite
    };
    let (overlay, backing) = Qcow2Disk::open_top_layer(path, access)?;
    let Some((base_path, base_format)) = backing else {
        return Err(DiskError::unsupported(
            path,
            "the image has no backing file to commit into",
        ));
    };
    let mut done = Committed::default();
    let base = grown_base(&base_path, base_format, overlay.size(), &mut done)?;
    copy_own_layer(&overlay, base.as_ref(), &mut done, progress)?;
    base.flush()?;
    drop(base);
    if !keep_overlay {
        overlay.make_empty()?;
    }
    Ok(done)
}

/// Commit every image from the qcow2 overlay at `path` down to (not including) `base`,
/// an image of its backing chain, into `base` (qemu-img's `commit -b`). Nothing is
/// emptied. `progress` hears (bytes done, bytes in all) over all the images.
pub fn commit_into(
    path: &Path,
    base: &Path,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<Committed, DiskError> {
    if probe_format(path)? != ImageFormat::Qcow2 {
        return Err(DiskError::unsupported(path, "not a qcow2 image"));
    }
    let chain = check_chain(path, false)?;
    let wanted = std::fs::canonicalize(base).map_err(DiskError::io(base))?;
    let same = |p: &PathBuf| std::fs::canonicalize(p).is_ok_and(|c| c == wanted);
    let Some(at) = chain
        .iter()
        .skip(1)
        .position(|(p, _)| same(p))
        .map(|i| i + 1)
    else {
        return Err(DiskError::unsupported(
            path,
            format!("{} is not in its backing chain", base.display()),
        ));
    };
    let (base_path, base_format) = &chain[at];
    // Each image above the base, alone (locking only itself), top first.
    let above = chain[..at]
        .iter()
        .map(|(layer, _)| Ok(Qcow2Disk::open_top_layer(layer, Access::Read)?.0))
        .collect::<Result<Vec<_>, DiskError>>()?;
    let mut done = Committed::default();
    let base = grown_base(base_path, *base_format, above[0].size(), &mut done)?;
    // Lowest first: an upper image's data and zero clusters then win, as they do for
    // a reader of the overlay.
    let layers = above.len() as u64;
    for (i, image) in above.iter().rev().enumerate() {
        let size = image.size();
        let mut overall = |d: u64, _| progress(i as u64 * size + d, layers * size);
        copy_own_layer(image, base.as_ref(), &mut done, &mut overall)?;
    }
    base.flush()?;
    Ok(done)
}

/// The base opened for writing, first grown to `size` if it is shorter.
fn grown_base(
    path: &Path,
    format: ImageFormat,
    size: u64,
    done: &mut Committed,
) -> Result<std::sync::Arc<dyn DiskBackend>, DiskError> {
    if open_base(path, format, true)?.size() < size {
        resize_image(
            path,
            Some(format),
            NewSize::Absolute(size),
            false,
            Preallocation::Off,
        )?;
        done.backing_grown = true;
    }
    open_base(path, format, false)
}

fn open_base(
    path: &Path,
    format: ImageFormat,
    readonly: bool,
) -> Result<std::sync::Arc<dyn DiskBackend>, DiskError> {
    let mut config = DiskConfig::new(path);
    config.format = Some(format);
    config.readonly = readonly;
    open_disk(&config)
}

/// Write what `overlay` holds itself into `base`, at the same offsets.
fn copy_own_layer(
    overlay: &Qcow2Disk,
    base: &dyn DiskBackend,
    done: &mut Committed,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<(), DiskError> {
    let mut buf = vec![0u8; overlay.walk_chunk() as usize];
    overlay.walk_own_layer(progress, |kind, offset, len| {
        match kind {
            LayerExtent::Backing => {}
            LayerExtent::Zero => {
                base.write_zeroes(offset, len, true)?;
                done.zero_bytes += len;
            }
            LayerExtent::Data { .. } => {
                let data = &mut buf[..len as usize];
                overlay.read_at(data, offset)?;
                base.write_at(data, offset)?;
                done.data_bytes += len;
            }
        }
        Ok(())
    })
}

//! `kiln img commit`, as `qemu-img commit`: what a qcow2 overlay holds itself (data and
//! zero clusters) is written into its backing file, and the overlay is then emptied so
//! that it shows the backing file again (unless told to keep it).
//!
//! Only the overlay's own backing file is written (qemu-img's `-b` to commit further
//! down the chain is not offered). A backing file shorter than the overlay is grown
//! first, as QEMU does. Order, so that an interruption loses nothing: the backing file
//! is written and synced before the overlay changes, and until then the overlay shows
//! what it showed (it holds the same data the backing file now has).

use std::path::Path;

use super::lock::Access;
use super::qcow2::{LayerExtent, Qcow2Disk};
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
    let base_size = open_base(&base_path, base_format, true)?.size();
    if base_size < overlay.size() {
        resize_image(
            &base_path,
            Some(base_format),
            NewSize::Absolute(overlay.size()),
            false,
        )?;
        done.backing_grown = true;
    }
    let base = open_base(&base_path, base_format, false)?;
    copy_own_layer(&overlay, base.as_ref(), &mut done, progress)?;
    base.flush()?;
    drop(base);
    if !keep_overlay {
        overlay.make_empty()?;
    }
    Ok(done)
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

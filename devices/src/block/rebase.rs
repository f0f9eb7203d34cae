//! `kiln img rebase` in safe mode, as `qemu-img rebase` without `-u`: before a qcow2
//! image names another backing file (or none), every cluster it leaves to its backing
//! file and where the old chain and the new backing file differ is copied into the
//! image. So the guest sees the same bytes before and after, whatever the new
//! backing file holds.
//!
//! Order, so that an interruption leaves a usable image: the copies are written and
//! synced while the image still names its old backing file (they hold what that file
//! shows there, so nothing changes for a reader), and only then is the header
//! rewritten (see [`set_backing_file`]).
//!
//! Ranges both the old chain and the new backing file are known to read zero (from
//! their maps, see [`SparseReader`]) are not read: a big sparse image rebases in the time
//! its data takes.

use std::path::{Path, PathBuf};

use super::known_zero::SparseReader;
use super::qcow2::backing::set_backing_file;
use super::qcow2::{LayerExtent, Qcow2Disk};
use super::{open_disk, probe_format, DiskBackend, DiskConfig, DiskError, ImageFormat};

/// What a safe rebase wrote into the image.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RebaseStats {
    /// Clusters copied from the old backing chain because the new one differs there.
    pub copied_clusters: u64,
    /// Clusters made zero clusters: the old chain reads zero there, the new one not.
    pub zeroed_clusters: u64,
}

/// The new backing file named in the header, and its path from the caller's directory.
pub struct NewBacking<'a> {
    /// As written in the image: relative to the image's directory unless absolute.
    pub name: &'a str,
    pub format: ImageFormat,
}

impl NewBacking<'_> {
    /// Where the file is, seen from the current directory.
    pub fn path_from(&self, image: &Path) -> PathBuf {
        super::backing_path(image, self.name)
    }
}

/// Rebase the qcow2 image at `path` onto `backing` (or onto none), copying what
/// differs first. `progress` hears (bytes examined, virtual size) after each chunk.
pub fn rebase_safe(
    path: &Path,
    backing: Option<&NewBacking<'_>>,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<RebaseStats, DiskError> {
    if probe_format(path)? != ImageFormat::Qcow2 {
        return Err(DiskError::unsupported(path, "not a qcow2 image"));
    }
    // Opens the old chain too: its data is what must survive.
    let image = Qcow2Disk::open(path, false)?;
    // Mapped while the image is open for writing, so nobody else writes it (hence
    // force-share, beside that lock). The copies keep what the image shows, so its
    // map of zeroes holds throughout.
    let mut old = SparseReader::new(path, &image, true);
    let new_disk = match backing {
        Some(b) => {
            let new_path = b.path_from(path);
            let config = DiskConfig::read_only(&new_path, Some(b.format));
            Some((open_disk(&config)?, new_path))
        }
        None => None,
    };
    let mut new = new_disk
        .as_ref()
        .map(|(disk, new_path)| SparseReader::new(new_path, disk.as_ref(), true));
    let stats = copy_differences(&image, &mut old, new.as_mut(), progress)?;
    image.flush()?;
    drop(old);
    drop(new);
    drop(new_disk);
    drop(image);
    set_backing_file(path, backing.map(|b| (b.name, b.format)))?;
    Ok(stats)
}

/// Copy into `image` (read through `old`) every cluster its backing chain shows and
/// `new` (zero past its end, or everywhere without one) does not.
fn copy_differences(
    image: &Qcow2Disk,
    old: &mut SparseReader,
    mut new: Option<&mut SparseReader>,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<RebaseStats, DiskError> {
    let chunk = image.walk_chunk() as usize;
    let (mut old_buf, mut new_buf) = (vec![0u8; chunk], vec![0u8; chunk]);
    let mut stats = RebaseStats::default();
    image.walk_own_layer(progress, |kind, offset, len| {
        if kind != LayerExtent::Backing {
            return Ok(());
        }
        let old_is_zero = old.known_zero(offset, len);
        let new_is_zero = new.as_deref_mut().is_none_or(|n| n.known_zero(offset, len));
        if old_is_zero && new_is_zero {
            return Ok(());
        }
        let old_data = &mut old_buf[..len as usize];
        let new_data = &mut new_buf[..len as usize];
        old.read(old_data, offset)?;
        match new.as_deref_mut() {
            Some(n) => n.read(new_data, offset)?,
            None => new_data.fill(0),
        }
        copy_differing_clusters(image, offset, old_data, new_data, &mut stats)
    })?;
    Ok(stats)
}

/// Write the clusters of `old` (at `offset`) that differ from `new` into `image`:
/// zero clusters where `old` is all zero, else its data.
fn copy_differing_clusters(
    image: &Qcow2Disk,
    offset: u64,
    old: &[u8],
    new: &[u8],
    stats: &mut RebaseStats,
) -> Result<(), DiskError> {
    let cluster = image.cluster_size();
    let mut at = 0usize;
    while at < old.len() {
        // Up to the next cluster boundary, so each write covers at most one cluster.
        let pos = offset + at as u64;
        let boundary = (pos / cluster + 1) * cluster;
        let end = ((boundary - offset) as usize).min(old.len());
        let (old_part, new_part) = (&old[at..end], &new[at..end]);
        if old_part != new_part {
            if old_part.iter().all(|&b| b == 0) {
                image.write_zeroes(pos, old_part.len() as u64, false)?;
                stats.zeroed_clusters += 1;
            } else {
                image.write_at(old_part, pos)?;
                stats.copied_clusters += 1;
            }
        }
        at = end;
    }
    Ok(())
}

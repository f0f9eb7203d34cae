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
//! their maps, see [`KnownZero`]) are not read: a big sparse image rebases in the time
//! its data takes.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::known_zero::KnownZero;
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
        let dir = image.parent().unwrap_or_else(|| Path::new("."));
        dir.join(self.name)
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
    let old_zero = KnownZero::of(path, Some(ImageFormat::Qcow2), true);
    let mut new = match backing {
        Some(b) => {
            let new_path = b.path_from(path);
            let config = DiskConfig {
                format: Some(b.format),
                readonly: true,
                ..DiskConfig::new(new_path.clone())
            };
            Some(NewSide {
                disk: open_disk(&config)?,
                zero: KnownZero::of(&new_path, Some(b.format), true),
            })
        }
        None => None,
    };
    let stats = copy_differences(&image, old_zero, new.as_mut(), progress)?;
    image.flush()?;
    drop(new);
    drop(image);
    set_backing_file(path, backing.map(|b| (b.name, b.format)))?;
    Ok(stats)
}

/// The new backing file and where it reads zero.
struct NewSide {
    disk: Arc<dyn DiskBackend>,
    zero: KnownZero,
}

/// Copy into `image` every cluster its backing chain shows and `new` (zero past its
/// end, or everywhere without one) does not. `old_zero` is where the image reads zero.
fn copy_differences(
    image: &Qcow2Disk,
    mut old_zero: KnownZero,
    mut new: Option<&mut NewSide>,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<RebaseStats, DiskError> {
    let chunk = image.walk_chunk() as usize;
    let (mut old_buf, mut new_buf) = (vec![0u8; chunk], vec![0u8; chunk]);
    let mut stats = RebaseStats::default();
    image.walk_own_layer(progress, |kind, offset, len| {
        if kind != LayerExtent::Backing {
            return Ok(());
        }
        let end = offset + len;
        let old_is_zero = old_zero.covers(offset, end);
        let new_is_zero = match new.as_deref_mut() {
            None => true,
            Some(n) => n.disk.size() <= offset || n.zero.covers(offset, end),
        };
        if old_is_zero && new_is_zero {
            return Ok(());
        }
        let old = &mut old_buf[..len as usize];
        let new_data = &mut new_buf[..len as usize];
        if old_is_zero {
            old.fill(0);
        } else {
            image.read_at(old, offset)?;
        }
        let new_disk = new.as_deref().filter(|_| !new_is_zero);
        read_or_zero(new_disk.map(|n| n.disk.as_ref()), new_data, offset)?;
        copy_differing_clusters(image, offset, old, new_data, &mut stats)
    })?;
    Ok(stats)
}

/// Read `buf.len()` bytes at `offset` from `disk`; what lies past its end (or all,
/// without a disk) reads zero.
fn read_or_zero(
    disk: Option<&dyn DiskBackend>,
    buf: &mut [u8],
    offset: u64,
) -> Result<(), DiskError> {
    buf.fill(0);
    let Some(disk) = disk else {
        return Ok(());
    };
    let readable = disk.size().saturating_sub(offset).min(buf.len() as u64) as usize;
    if readable > 0 {
        disk.read_at(&mut buf[..readable], offset)?;
    }
    Ok(())
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

//! `kiln img measure`: how big a file converting an image (or creating one of a given
//! size) needs, computed as `qemu-img measure` computes it, so that tools sizing
//! logical volumes or quotas from qemu-img's numbers get the same from kiln.
//!
//! For qcow2 output: the fully allocated size is the data rounded up to clusters plus
//! all the metadata a fully allocated image has (header cluster, L2 tables, L1 table,
//! refcount blocks and table covering everything, themselves included). The required
//! size is that minus the data clusters the input does not need: only clusters that
//! hold data in the input count (zero clusters, holes and unallocated ranges do not),
//! or all of them when the output will have a backing file, whose contents are not
//! known. For raw output both are the virtual size.
//!
//! One difference: qemu-img, when it guesses an image was preallocated (its image
//! file holds fewer blocks than its data clusters), also leaves out holes of the
//! image file inside data clusters. kiln counts whole data clusters, so its required
//! size is then a little larger, never smaller.

use std::path::Path;

use super::info::image_info;
use super::map::map_image;
use super::qcow2_layout::{l1_entries, refcount_structures, MAX_L1_ENTRIES};
use super::{DiskError, ImageFormat};

/// What is measured: an image, or an empty image of a size.
pub enum MeasureInput<'a> {
    Image {
        path: &'a Path,
        format: Option<ImageFormat>,
        /// Read it while others write it (a running VM's disk), as it is now.
        force_share: bool,
    },
    Size(u64),
}

/// The image the sizes are for.
#[derive(Debug, Clone)]
pub struct MeasureTarget {
    pub format: ImageFormat,
    pub cluster_size: u64,
    /// qcow2 version: 2 (compat=0.10) or 3.
    pub version: u32,
    /// The output will have a backing file.
    pub has_backing: bool,
    /// Space for all data is reserved or written (preallocation falloc or full).
    pub data_reserved: bool,
}

/// The sizes, in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Measure {
    pub required: u64,
    pub fully_allocated: u64,
    /// Space for the input's persistent bitmaps, when both images can hold them
    /// (qcow2 version 3 output of a qcow2 input).
    pub bitmaps: Option<u64>,
}

pub fn measure(input: &MeasureInput, target: &MeasureTarget) -> Result<Measure, DiskError> {
    let (size, entries, path) = match input {
        MeasureInput::Image {
            path,
            format,
            force_share,
        } => {
            let entries = map_image(path, *format, *force_share)?;
            let size = entries.last().map_or(0, |e| e.start + e.length);
            (size, Some(entries), Some(*path))
        }
        MeasureInput::Size(size) => (*size, None, None),
    };
    if target.format == ImageFormat::Raw {
        let size = size.next_multiple_of(512);
        return Ok(Measure {
            required: size,
            fully_allocated: size,
            bitmaps: None,
        });
    }
    let cs = target.cluster_size;
    let virtual_size = size.next_multiple_of(cs);
    if l1_entries(virtual_size, cs) > MAX_L1_ENTRIES {
        return Err(DiskError::unsupported(
            path.unwrap_or(Path::new("--size")),
            format!(
                "a virtual size of {size} bytes is too large for clusters of {cs} bytes \
                 (try a larger cluster size)"
            ),
        ));
    }
    let data = match &entries {
        _ if target.data_reserved => virtual_size,
        None => 0,
        Some(_) if target.has_backing => virtual_size,
        Some(entries) => clusters_with_data(entries, cs) * cs,
    };
    let fully_allocated = fully_allocated_qcow2(virtual_size, cs);
    let bitmaps = match (input, target.version) {
        (MeasureInput::Image { path, format, .. }, 3) => {
            let format = match format {
                Some(f) => *f,
                None => super::probe_format(path)?,
            };
            match format {
                ImageFormat::Qcow2 => Some(bitmaps_size(path, size, cs)?),
                ImageFormat::Raw => None,
            }
        }
        _ => None,
    };
    Ok(Measure {
        required: fully_allocated - virtual_size + data,
        fully_allocated,
        bitmaps,
    })
}

/// Clusters of `cluster_size` bytes that hold any data of the map's entries.
fn clusters_with_data(entries: &[super::map::MapEntry], cluster_size: u64) -> u64 {
    let mut count = 0;
    let mut next_uncounted = 0; // entries come in order
    for e in entries.iter().filter(|e| e.data && !e.zero && e.length > 0) {
        let first = (e.start / cluster_size).max(next_uncounted);
        let end = (e.start + e.length).div_ceil(cluster_size);
        if end > first {
            count += end - first;
            next_uncounted = end;
        }
    }
    count
}

/// A fully allocated qcow2 image of `virtual_size` (a multiple of the cluster size):
/// data, header cluster, L2 tables, L1 table, and 16-bit refcounts for all of it.
fn fully_allocated_qcow2(virtual_size: u64, cs: u64) -> u64 {
    let entries_per_cluster = cs / 8;
    let l2_entries = (virtual_size / cs).next_multiple_of(entries_per_cluster);
    let l1_entries = (l2_entries / entries_per_cluster).next_multiple_of(entries_per_cluster);
    let metadata = cs + l2_entries * 8 + l1_entries * 8;
    let (blocks, table) = refcount_structures((metadata + virtual_size) / cs, cs);
    metadata + (blocks + table) * cs + virtual_size
}

/// Room for the input's persistent bitmaps in an image with clusters of `cs` bytes:
/// each bitmap whole, its table, and the directory.
fn bitmaps_size(path: &Path, size: u64, cs: u64) -> Result<u64, DiskError> {
    let mut total = 0;
    let mut directory = 0;
    for bitmap in image_info(path)?.bitmaps {
        let bits = size.div_ceil(bitmap.granularity.max(1));
        let clusters = bits.div_ceil(8).div_ceil(cs);
        total += clusters * cs + (clusters * 8).next_multiple_of(cs);
        // A directory entry: 24 bytes, then the name, padded to 8.
        directory += (24 + bitmap.name.len() as u64).next_multiple_of(8);
    }
    Ok(total + directory.next_multiple_of(cs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clusters_with_data_counts_each_cluster_once() {
        let entry = |start: u64, length: u64, data: bool| super::super::map::MapEntry {
            start,
            length,
            depth: 0,
            present: true,
            zero: !data,
            data,
            offset: None,
            file: "x".into(),
        };
        let entries = [
            entry(0, 4096, true),           // cluster 0
            entry(4096, 4096, false),       // zero
            entry(8192, 4096, true),        // cluster 0 again
            entry(60 << 10, 8 << 10, true), // clusters 0 and 1
            entry(68 << 10, 1 << 20, false),
            entry(10 << 20, 1, true), // cluster 160
        ];
        assert_eq!(clusters_with_data(&entries, 65536), 3);
        assert_eq!(clusters_with_data(&entries, 512), 8 + 8 + 16 + 1);
    }
}

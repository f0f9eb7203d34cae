//! Whether an image looks made with `preallocation=metadata`, guessed as QEMU guesses
//! it (`qcow2_detect_metadata_preallocation`): its clusters in use (refcount above
//! zero) outnumber the clusters' worth of blocks the file really occupies by 10% (and
//! at least 2). Such an image's data clusters may be holes of the file, which read
//! zero; `kiln img map` then asks the file, as qemu-img does, so that maps, measures
//! and conversions of preallocated images agree with qemu-img's and skip the holes.

use std::fs::File;
use std::io;
use std::os::unix::fs::{FileExt, MetadataExt};

use super::header::{be64, Qcow2Header};
use super::refcheck::{refcount_entry, OFFSET_MASK};

/// The guess for the image `file` with header `h`; an image whose refcounts cannot be
/// read is not taken for preallocated (it is then mapped from its tables alone).
pub fn looks_preallocated(file: &File, h: &Qcow2Header) -> bool {
    in_use_outnumbers_blocks(file, h).unwrap_or(false)
}

fn in_use_outnumbers_blocks(file: &File, h: &Qcow2Header) -> io::Result<bool> {
    let meta = file.metadata()?;
    let cs = h.cluster_size();
    let real_clusters = meta.blocks() * 512 / cs;
    let threshold = (real_clusters * 10 / 9).max(real_clusters + 2);
    let end_cluster = meta.len().div_ceil(cs);
    let bits = h.refcount_bits();
    let per_block = cs * 8 / u64::from(bits);
    // Only the entries for clusters inside the file: a hostile table size costs
    // nothing, and the read is bounded by the file's length.
    let table_len =
        (u64::from(h.refcount_table_clusters) * cs).min(end_cluster.div_ceil(per_block) * 8);
    if h.refcount_table_offset
        .checked_add(table_len)
        .is_none_or(|end| end > meta.len())
    {
        return Ok(false);
    }
    let mut table = vec![0u8; table_len as usize];
    file.read_exact_at(&mut table, h.refcount_table_offset)?;
    let mut block = vec![0u8; cs as usize];
    let mut in_use = 0u64;
    for (i, entry) in table.chunks_exact(8).enumerate() {
        if in_use >= threshold {
            break;
        }
        let first = i as u64 * per_block;
        let at = be64(entry, 0) & OFFSET_MASK;
        if at == 0 {
            continue;
        }
        file.read_exact_at(&mut block, at)?;
        let n = per_block.min(end_cluster - first) as usize;
        in_use += (0..n)
            .filter(|&j| refcount_entry(&block, j, bits) != 0)
            .count() as u64;
    }
    Ok(in_use >= threshold)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::block::create::{create_image, CreateOptions, Preallocation};
    use crate::block::ImageFormat;

    fn image(dir: &std::path::Path, name: &str, mode: Preallocation) -> (File, Qcow2Header) {
        let path = dir.join(name);
        let opts = CreateOptions {
            preallocation: mode,
            ..CreateOptions::new(ImageFormat::Qcow2, Some(64 << 20))
        };
        create_image(&path, &opts).unwrap();
        let file = File::open(&path).unwrap();
        let mut first = vec![0u8; 4096];
        file.read_exact_at(&mut first, 0).unwrap();
        (file, Qcow2Header::parse(&first).unwrap())
    }

    #[test]
    fn holes_under_allocated_clusters_are_told_apart_from_written_ones() {
        let dir = tempfile::tempdir().unwrap();
        let (file, h) = image(dir.path(), "metadata", Preallocation::Metadata);
        assert!(looks_preallocated(&file, &h));
        let (file, h) = image(dir.path(), "full", Preallocation::Full);
        assert!(!looks_preallocated(&file, &h));
        let (file, h) = image(dir.path(), "off", Preallocation::Off);
        assert!(!looks_preallocated(&file, &h));
    }

    #[test]
    fn refcounts_out_of_reach_mean_not_preallocated() {
        let dir = tempfile::tempdir().unwrap();
        let (file, h) = image(dir.path(), "metadata", Preallocation::Metadata);
        assert!(looks_preallocated(&file, &h));
        // Past the end of the offsets, past the end of the file, and a table that is
        // the header itself (its "refcount blocks" lie far past the file's end): no
        // panic, and not taken for preallocated.
        for (offset, clusters) in [(u64::MAX - 511, 1), (1 << 40, 1), (0, u32::MAX)] {
            let hostile = Qcow2Header {
                refcount_table_offset: offset,
                refcount_table_clusters: clusters,
                ..h.clone()
            };
            assert!(!looks_preallocated(&file, &hostile), "{offset} {clusters}");
        }
    }
}

//! Where zero clusters that keep a host cluster lie ("zero, allocated" in QEMU's
//! terms: an L2 entry with the zero flag and an offset, as qemu-io `write -z` leaves in
//! a preallocated image). imago reads them as zeroes without saying where they are;
//! `qemu-img map` prints their offset, and so does `kiln img map`, from the L2 tables.
//!
//! The tables are read as found: an entry or table out of reach counts as a zero
//! cluster without an offset, never as an error (the image's reads do not depend on
//! it).

use std::cell::RefCell;
use std::fs::File;
use std::os::unix::fs::FileExt;

use super::header::{be64, Qcow2Header};
use super::refcheck::OFFSET_MASK;

/// The zero flag of a standard L2 entry.
const ZERO_FLAG: u64 = 1;
/// Compressed entries have no zero flag or plain offset.
const COMPRESSED: u64 = 1 << 62;

/// An image's L1 table and the last L2 table read.
pub struct ZeroClusterOffsets {
    file: File,
    cluster_bits: u32,
    l1: Vec<u64>,
    l2: RefCell<Option<(u64, Vec<u8>)>>,
}

impl ZeroClusterOffsets {
    /// For the image open as `file`; `None` where zero clusters have no host offsets
    /// to find (version 2) or they are in another file (an external data file).
    pub fn new(file: File, h: &Qcow2Header) -> Option<Self> {
        if h.version < 3 || h.data_file.is_some() {
            return None;
        }
        let len = crate::block::file_len(&file).ok()?;
        let bytes = u64::from(h.l1_size).checked_mul(8)?;
        if h.l1_table_offset
            .checked_add(bytes)
            .is_none_or(|end| end > len)
        {
            return None;
        }
        let mut raw = vec![0u8; bytes as usize];
        file.read_exact_at(&mut raw, h.l1_table_offset).ok()?;
        let l1 = raw
            .chunks_exact(8)
            .map(|e| be64(e, 0) & OFFSET_MASK)
            .collect();
        Some(ZeroClusterOffsets {
            file,
            cluster_bits: h.cluster_bits,
            l1,
            l2: RefCell::new(None),
        })
    }

    /// The host offset of the zero cluster at guest `offset`, if it keeps one.
    fn host(&self, offset: u64) -> Option<u64> {
        let cs = 1u64 << self.cluster_bits;
        let per_table = cs / 8;
        let cluster = offset >> self.cluster_bits;
        let table = *self.l1.get(usize::try_from(cluster / per_table).ok()?)?;
        if table == 0 {
            return None;
        }
        let mut cache = self.l2.borrow_mut();
        if cache.as_ref().is_none_or(|(at, _)| *at != table) {
            let mut l2 = vec![0u8; cs as usize];
            self.file.read_exact_at(&mut l2, table).ok()?;
            *cache = Some((table, l2));
        }
        let (_, l2) = cache.as_ref()?;
        let entry = be64(l2, ((cluster % per_table) * 8) as usize);
        let host = entry & OFFSET_MASK;
        (entry & ZERO_FLAG != 0 && entry & COMPRESSED == 0 && host != 0).then_some(host)
    }

    /// For zero clusters at `[offset, offset + len)` (`offset` cluster-aligned or
    /// inside the first one): the first one's host offset, if any, and how many bytes
    /// from `offset` continue it (host clusters one after another, or all without).
    pub fn run(&self, offset: u64, len: u64) -> (Option<u64>, u64) {
        let cs = 1u64 << self.cluster_bits;
        let in_cluster = offset % cs;
        let first = self.host(offset - in_cluster);
        let mut done = (cs - in_cluster).min(len);
        while done < len {
            let next = self.host(offset + done);
            let continues = match (first, next) {
                (None, None) => true,
                (Some(a), Some(b)) => b == a + in_cluster + done,
                _ => false,
            };
            if !continues {
                break;
            }
            done = (done + cs).min(len);
        }
        (first.map(|h| h + in_cluster), done)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::block::create::{create_image, CreateOptions};
    use crate::block::{open_disk, DiskConfig, ImageFormat};

    const CLUSTER: u64 = 64 << 10;

    /// A 1 MiB image whose cluster 2 held data and now reads zero, keeping its
    /// host cluster, and whose cluster 4 holds data; returns the path and header.
    fn image(dir: &std::path::Path) -> (std::path::PathBuf, Qcow2Header) {
        let path = dir.join("z.qcow2");
        create_image(
            &path,
            &CreateOptions::new(ImageFormat::Qcow2, Some(1 << 20)),
        )
        .unwrap();
        let disk = open_disk(&DiskConfig::new(path.clone())).unwrap();
        disk.write_at(&[7u8; CLUSTER as usize], 2 * CLUSTER)
            .unwrap();
        disk.write_zeroes(2 * CLUSTER, CLUSTER, false).unwrap();
        disk.write_at(&[8u8; CLUSTER as usize], 4 * CLUSTER)
            .unwrap();
        disk.flush().unwrap();
        drop(disk);
        let mut first = vec![0u8; 4096];
        File::open(&path)
            .unwrap()
            .read_exact_at(&mut first, 0)
            .unwrap();
        (path.clone(), Qcow2Header::parse(&first).unwrap())
    }

    #[test]
    fn zero_clusters_keeping_their_clusters_are_found_and_hostile_tables_are_not() {
        let dir = tempfile::tempdir().unwrap();
        let (path, h) = image(dir.path());
        let z = ZeroClusterOffsets::new(File::open(&path).unwrap(), &h).unwrap();
        let (host, n) = z.run(2 * CLUSTER, CLUSTER);
        assert!(
            host.is_some_and(|at| at % CLUSTER == 0 && at > 0),
            "{host:?}"
        );
        assert_eq!(n, CLUSTER);
        // Unallocated, data, or past the tables: no offset.
        assert_eq!(z.run(0, CLUSTER).0, None);
        assert_eq!(z.run(4 * CLUSTER, CLUSTER).0, None);
        assert_eq!(z.run(1 << 40, CLUSTER).0, None);

        // An L1 table past the file's end, or larger than the file: none at all.
        for (offset, size) in [(1u64 << 40, 1), (0, u32::MAX)] {
            let hostile = Qcow2Header {
                l1_table_offset: offset,
                l1_size: size,
                ..h.clone()
            };
            let file = File::open(&path).unwrap();
            assert!(
                ZeroClusterOffsets::new(file, &hostile).is_none(),
                "{offset}"
            );
        }
        // An L1 entry pointing past the file's end: its clusters have no offset.
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .unwrap();
        file.write_all_at(&(1u64 << 40).to_be_bytes(), h.l1_table_offset)
            .unwrap();
        let z = ZeroClusterOffsets::new(file, &h).unwrap();
        assert_eq!(z.run(2 * CLUSTER, CLUSTER), (None, CLUSTER));
    }
}

//! A streaming writer of fresh qcow2 images (qcow2 specification, docs/interop/qcow2.txt
//! in QEMU), for `kiln img convert`: clusters arrive in order, clusters not written stay
//! unallocated, and with compression each cluster is stored as raw deflate when that is
//! smaller. Metadata (L2 tables, refcounts) is kept in memory and written at the end.
//! Version 3 (compat=1.1) or 2 (compat=0.10), any cluster size from 512 B to 2 MiB, and
//! optionally a backing file named in the header.
//!
//! imago reads compressed clusters but does not write them, hence this writer.

use std::collections::BTreeMap;
use std::io::{self, Seek, SeekFrom, Write};

use flate2::{Compress, Compression, FlushCompress, Status};
use kiln_devices::block::qcow2_layout::{
    l1_entries, refcount_structures, CLUSTER_BITS, MAX_L1_ENTRIES,
};
use kiln_devices::block::ImageFormat;

use super::gather::Gather;

pub const DEFAULT_CLUSTER_BITS: u32 = 16;
const HEADER_LENGTH_V2: usize = 72;
const HEADER_LENGTH_V3: u32 = 104;
const OFLAG_COPIED: u64 = 1 << 63;
const OFLAG_COMPRESSED: u64 = 1 << 62;
/// An L2 entry that reads as zeroes (version 3 only).
const OFLAG_ZERO: u64 = 1;
const EXT_END: u32 = 0;
const EXT_BACKING_FORMAT: u32 = 0xe279_2aca;
/// QEMU refuses longer backing file names.
const MAX_BACKING_NAME: usize = 1023;
/// QEMU inflates compressed clusters with a 4 KiB window (windowBits -12), so they must
/// be deflated with one too.
const DEFLATE_WINDOW_BITS: u8 = 12;

/// The image a [`Qcow2Writer`] makes, apart from its contents.
#[derive(Debug, Clone)]
pub struct Qcow2Layout {
    pub size: u64,
    pub cluster_bits: u32,
    /// 2 (compat=0.10) or 3 (compat=1.1).
    pub version: u32,
    pub compress: bool,
    /// The backing file's name as the header stores it, and its format.
    pub backing: Option<(String, ImageFormat)>,
}

pub struct Qcow2Writer<W: Write + Seek> {
    out: W,
    layout: Qcow2Layout,
    l1_size: u64,
    /// Where the next data goes (compressed data is packed byte-wise).
    next_byte: u64,
    l2: BTreeMap<u64, Vec<u64>>,
    refcounts: Vec<u16>,
    /// Data, then metadata, is written in order: gathered into few writes.
    gather: Gather,
}

fn bad(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, msg)
}

impl<W: Write + Seek> Qcow2Writer<W> {
    /// Starts an image of `layout`; fails on a layout qcow2 cannot express.
    pub fn new(out: W, layout: Qcow2Layout) -> io::Result<Self> {
        let bits = layout.cluster_bits;
        if !CLUSTER_BITS.contains(&bits) {
            return Err(bad(format!(
                "cluster size 2^{bits} is not from 512 B to 2 MiB"
            )));
        }
        if layout.version != 2 && layout.version != 3 {
            return Err(bad(format!(
                "qcow2 version {} is not 2 or 3",
                layout.version
            )));
        }
        if let Some((name, _)) = &layout.backing {
            if name.is_empty() || name.len() > MAX_BACKING_NAME {
                return Err(bad(format!(
                    "a backing file name of {} bytes (qcow2 takes 1 to {MAX_BACKING_NAME})",
                    name.len()
                )));
            }
        }
        let cluster = 1u64 << bits;
        let l1_size = l1_entries(layout.size, cluster).max(1);
        if l1_size > MAX_L1_ENTRIES {
            return Err(bad(format!(
                "virtual size {} is too large for clusters of {cluster} bytes",
                layout.size
            )));
        }
        let mut w = Qcow2Writer {
            out,
            layout,
            l1_size,
            next_byte: 0,
            l2: BTreeMap::new(),
            refcounts: Vec::new(),
            gather: Gather::default(),
        };
        // The header must fit its cluster with the backing file's name; check now, not
        // after every data cluster is written.
        let header_len = w.header(0, 0).len() as u64;
        if header_len > cluster {
            return Err(bad(format!(
                "the header and backing file name take {header_len} bytes, more than \
                 one cluster of {cluster}"
            )));
        }
        let l1_clusters = (l1_size * 8).div_ceil(cluster);
        let first_data = 1 + l1_clusters;
        w.next_byte = first_data * cluster;
        w.refcounts = vec![1; first_data as usize];
        // Reserve header and L1 clusters (written in finish()).
        w.out.seek(SeekFrom::Start(0))?;
        w.out
            .write_all(&vec![0u8; (first_data * cluster) as usize])?;
        Ok(w)
    }

    pub fn cluster_size(&self) -> u64 {
        1 << self.layout.cluster_bits
    }

    /// Whether [`Self::zero_cluster`] is available (version 3).
    pub fn has_zero_clusters(&self) -> bool {
        self.layout.version >= 3
    }

    fn add_ref(&mut self, host_cluster: u64) {
        let i = host_cluster as usize;
        if self.refcounts.len() <= i {
            self.refcounts.resize(i + 1, 0);
        }
        self.refcounts[i] = self.refcounts[i].saturating_add(1);
    }

    /// Stores guest cluster `index` (a full cluster; the caller zero-pads the last one).
    /// Clusters not written stay unallocated: they read as zeroes, or as the backing
    /// file's data.
    pub fn write_cluster(&mut self, index: u64, data: &[u8]) -> io::Result<()> {
        let cluster = self.cluster_size();
        if data.len() as u64 != cluster || index * cluster >= self.layout.size {
            return Err(bad(format!("bad cluster {index} of {} bytes", data.len())));
        }
        let compressed = if self.layout.compress {
            deflate(data, cluster)?
        } else {
            None
        };
        let entry = match compressed {
            Some(c) => {
                let off = self.next_byte;
                self.gather.write_at(&mut self.out, off, &c)?;
                let end = off + c.len() as u64;
                for host in off / cluster..=(end - 1) / cluster {
                    self.add_ref(host);
                }
                self.next_byte = end;
                let extra_sectors = (end - 1) / 512 - off / 512;
                let shift = 62 - (self.layout.cluster_bits - 8);
                OFLAG_COMPRESSED | (extra_sectors << shift) | off
            }
            None => {
                let off = self.next_byte.next_multiple_of(cluster);
                self.gather.write_at(&mut self.out, off, data)?;
                self.add_ref(off / cluster);
                self.next_byte = off + cluster;
                OFLAG_COPIED | off
            }
        };
        self.set_l2_entry(index, entry);
        Ok(())
    }

    /// Makes guest cluster `index` read as zeroes whatever the backing file holds,
    /// without data (version 3 only; version 2 images must be given zeroes as data).
    pub fn zero_cluster(&mut self, index: u64) -> io::Result<()> {
        if !self.has_zero_clusters() || index * self.cluster_size() >= self.layout.size {
            return Err(bad(format!("no zero cluster {index} in this image")));
        }
        self.set_l2_entry(index, OFLAG_ZERO);
        Ok(())
    }

    fn set_l2_entry(&mut self, index: u64, entry: u64) {
        let l2_entries = self.cluster_size() / 8;
        let table = self
            .l2
            .entry(index / l2_entries)
            .or_insert_with(|| vec![0; l2_entries as usize]);
        table[(index % l2_entries) as usize] = entry;
    }

    /// Writes L2 tables, refcount structures, L1 and header; returns the writer.
    pub fn finish(mut self) -> io::Result<W> {
        let cluster_size = self.cluster_size();
        let mut cluster = self.next_byte.div_ceil(cluster_size);
        let mut l1 = vec![0u64; self.l1_size as usize];
        let tables = std::mem::take(&mut self.l2);
        for (l1_index, table) in &tables {
            let off = cluster * cluster_size;
            self.gather.write_at(&mut self.out, off, &be_u64s(table))?;
            self.add_ref(cluster);
            l1[*l1_index as usize] = OFLAG_COPIED | off;
            cluster += 1;
        }
        let refcounts_per_block = cluster_size / 2; // refcount_order 4: 16 bits each
        let (blocks, table_clusters) = refcount_structures(cluster, cluster_size);
        for c in cluster..cluster + blocks + table_clusters {
            self.add_ref(c);
        }
        let mut reftable = vec![0u64; (table_clusters * cluster_size / 8) as usize];
        self.refcounts
            .resize((blocks * refcounts_per_block) as usize, 0);
        for (b, chunk) in self
            .refcounts
            .chunks(refcounts_per_block as usize)
            .enumerate()
        {
            let off = (cluster + b as u64) * cluster_size;
            reftable[b] = off;
            let block: Vec<u8> = chunk.iter().flat_map(|r| r.to_be_bytes()).collect();
            self.gather.write_at(&mut self.out, off, &block)?;
        }
        let reftable_off = (cluster + blocks) * cluster_size;
        self.gather
            .write_at(&mut self.out, reftable_off, &be_u64s(&reftable))?;
        self.gather.flush(&mut self.out)?;

        self.out.seek(SeekFrom::Start(cluster_size))?;
        self.out.write_all(&be_u64s(&l1))?;
        self.out.seek(SeekFrom::Start(0))?;
        let header = self.header(reftable_off, table_clusters);
        self.out.write_all(&header)?;
        self.out.flush()?;
        Ok(self.out)
    }

    /// The header, its extensions and the backing file's name, for cluster 0.
    fn header(&self, reftable_off: u64, reftable_clusters: u64) -> Vec<u8> {
        let layout = &self.layout;
        let cluster_size = self.cluster_size();
        let mut h = Vec::with_capacity(HEADER_LENGTH_V3 as usize + 64);
        h.extend_from_slice(b"QFI\xfb");
        h.extend_from_slice(&layout.version.to_be_bytes());
        let backing_offset_at = h.len();
        h.extend_from_slice(&0u64.to_be_bytes()); // backing file offset, set below
        h.extend_from_slice(&0u32.to_be_bytes()); // backing file name length, set below
        h.extend_from_slice(&layout.cluster_bits.to_be_bytes());
        h.extend_from_slice(&layout.size.to_be_bytes());
        h.extend_from_slice(&0u32.to_be_bytes()); // no encryption
        h.extend_from_slice(&(self.l1_size as u32).to_be_bytes());
        h.extend_from_slice(&cluster_size.to_be_bytes()); // L1 at cluster 1
        h.extend_from_slice(&reftable_off.to_be_bytes());
        h.extend_from_slice(&(reftable_clusters as u32).to_be_bytes());
        h.extend_from_slice(&0u32.to_be_bytes()); // snapshots
        h.extend_from_slice(&0u64.to_be_bytes());
        if layout.version >= 3 {
            h.extend_from_slice(&0u64.to_be_bytes()); // incompatible features
            h.extend_from_slice(&0u64.to_be_bytes()); // compatible features
            h.extend_from_slice(&0u64.to_be_bytes()); // autoclear features
            h.extend_from_slice(&4u32.to_be_bytes()); // refcount order
            h.extend_from_slice(&HEADER_LENGTH_V3.to_be_bytes());
            debug_assert_eq!(h.len(), HEADER_LENGTH_V3 as usize);
        } else {
            debug_assert_eq!(h.len(), HEADER_LENGTH_V2);
        }
        if let Some((_, format)) = &layout.backing {
            push_extension(&mut h, EXT_BACKING_FORMAT, format.name().as_bytes());
        }
        push_extension(&mut h, EXT_END, &[]);
        if let Some((name, _)) = &layout.backing {
            let at = h.len() as u64;
            h.extend_from_slice(name.as_bytes());
            h[backing_offset_at..backing_offset_at + 8].copy_from_slice(&at.to_be_bytes());
            h[backing_offset_at + 8..backing_offset_at + 12]
                .copy_from_slice(&(name.len() as u32).to_be_bytes());
        }
        h
    }
}

/// A header extension: type, length, data padded to 8 bytes.
fn push_extension(h: &mut Vec<u8>, kind: u32, data: &[u8]) {
    h.extend_from_slice(&kind.to_be_bytes());
    h.extend_from_slice(&(data.len() as u32).to_be_bytes());
    h.extend_from_slice(data);
    h.resize(h.len().next_multiple_of(8), 0);
}

fn be_u64s(v: &[u64]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_be_bytes()).collect()
}

/// Raw deflate with a 4 KiB window; `None` when that does not save a sector of the
/// `cluster_size` bytes.
fn deflate(data: &[u8], cluster_size: u64) -> io::Result<Option<Vec<u8>>> {
    let mut c = Compress::new_with_window_bits(Compression::default(), false, DEFLATE_WINDOW_BITS);
    let mut out = Vec::with_capacity(data.len());
    match c.compress_vec(data, &mut out, FlushCompress::Finish) {
        Ok(Status::StreamEnd) if (out.len() as u64) + 512 < cluster_size => Ok(Some(out)),
        Ok(_) => Ok(None),
        Err(e) => Err(io::Error::other(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use flate2::{Decompress, FlushDecompress};

    const CLUSTER: u64 = 1 << DEFAULT_CLUSTER_BITS;

    #[test]
    fn deflate_round_trips_with_a_4k_window() {
        let data: Vec<u8> = (0..CLUSTER).map(|i| (i % 7000 / 3) as u8).collect();
        let c = deflate(&data, CLUSTER).unwrap().unwrap();
        let mut d = Decompress::new_with_window_bits(false, 12);
        let mut out = Vec::with_capacity(CLUSTER as usize);
        d.decompress_vec(&c, &mut out, FlushDecompress::Finish)
            .unwrap();
        assert_eq!(out, data);
    }

    #[test]
    fn incompressible_cluster_is_stored_plain() {
        let mut x: u32 = 1;
        let data: Vec<u8> = (0..CLUSTER)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                x as u8
            })
            .collect();
        assert!(deflate(&data, CLUSTER).unwrap().is_none());
    }

    fn layout(cluster_bits: u32, version: u32, backing: Option<&str>) -> Qcow2Layout {
        Qcow2Layout {
            size: 1 << 20,
            cluster_bits,
            version,
            compress: false,
            backing: backing.map(|b| (b.to_owned(), ImageFormat::Raw)),
        }
    }

    fn be32(h: &[u8], at: usize) -> u32 {
        u32::from_be_bytes(h[at..at + 4].try_into().unwrap())
    }

    #[test]
    fn headers_hold_version_backing_name_and_format() {
        for (version, fixed_len) in [(2, HEADER_LENGTH_V2), (3, HEADER_LENGTH_V3 as usize)] {
            let w = Qcow2Writer::new(
                io::Cursor::new(Vec::new()),
                layout(9, version, Some("b.raw")),
            )
            .unwrap();
            let h = w.header(0, 0);
            assert_eq!(be32(&h, 4), version);
            assert_eq!(be32(&h, 20), 9, "cluster bits");
            // The backing format extension follows the fixed part, then the end mark.
            assert_eq!(be32(&h, fixed_len), EXT_BACKING_FORMAT);
            assert_eq!(&h[fixed_len + 8..fixed_len + 11], b"raw");
            assert_eq!(be32(&h, fixed_len + 16), EXT_END);
            let name_at = u64::from_be_bytes(h[8..16].try_into().unwrap()) as usize;
            assert_eq!(be32(&h, 16), 5);
            assert_eq!(&h[name_at..name_at + 5], b"b.raw");
        }
    }

    #[test]
    fn layouts_qcow2_cannot_hold_are_refused() {
        let new = |l| {
            Qcow2Writer::new(io::Cursor::new(Vec::new()), l)
                .err()
                .unwrap()
                .to_string()
        };
        assert!(new(layout(8, 3, None)).contains("512 B to 2 MiB"));
        assert!(new(layout(22, 3, None)).contains("512 B to 2 MiB"));
        assert!(new(layout(16, 4, None)).contains("version 4"));
        let long = "d/".repeat(250);
        assert!(new(layout(9, 3, Some(&long))).contains("more than one cluster of 512"));
        assert!(new(layout(16, 3, Some(&"x".repeat(1024)))).contains("1024 bytes"));
        // Zero clusters exist only from version 3 on.
        let mut v2 = Qcow2Writer::new(io::Cursor::new(Vec::new()), layout(16, 2, None)).unwrap();
        assert!(v2.zero_cluster(0).is_err());
        let mut v3 = Qcow2Writer::new(io::Cursor::new(Vec::new()), layout(16, 3, None)).unwrap();
        v3.zero_cluster(0).unwrap();
        assert!(v3.zero_cluster(16).is_err(), "past the end");
    }
}

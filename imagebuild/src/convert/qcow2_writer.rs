//! A streaming writer of fresh qcow2 v3 images (qcow2 specification, docs/interop/qcow2.txt
//! in QEMU), for `kiln img convert`: clusters arrive in order, all-zero clusters stay
//! unallocated, and with compression each cluster is stored as raw deflate when that is
//! smaller. Metadata (L2 tables, refcounts) is kept in memory and written at the end.
//!
//! imago reads compressed clusters but does not write them, hence this writer.

use std::collections::BTreeMap;
use std::io::{self, Seek, SeekFrom, Write};

use flate2::{Compress, Compression, FlushCompress, Status};

pub const CLUSTER_BITS: u32 = 16;
pub const CLUSTER_SIZE: u64 = 1 << CLUSTER_BITS;
const L2_ENTRIES: u64 = CLUSTER_SIZE / 8;
/// refcount_order 4: 16-bit refcounts.
const REFCOUNTS_PER_BLOCK: u64 = CLUSTER_SIZE / 2;
const REFTABLE_ENTRIES_PER_CLUSTER: u64 = CLUSTER_SIZE / 8;
const HEADER_LENGTH: u32 = 104;
const OFLAG_COPIED: u64 = 1 << 63;
const OFLAG_COMPRESSED: u64 = 1 << 62;
/// QEMU inflates compressed clusters with a 4 KiB window (windowBits -12), so they must
/// be deflated with one too.
const DEFLATE_WINDOW_BITS: u8 = 12;

pub struct Qcow2Writer<W: Write + Seek> {
    out: W,
    size: u64,
    l1_size: u64,
    compress: bool,
    /// Where the next data goes (compressed data is packed byte-wise).
    next_byte: u64,
    l2: BTreeMap<u64, Vec<u64>>,
    refcounts: Vec<u16>,
}

fn div_ceil(a: u64, b: u64) -> u64 {
    a.div_ceil(b)
}

fn bad(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, msg)
}

impl<W: Write + Seek> Qcow2Writer<W> {
    /// Starts an image of `size` virtual bytes.
    pub fn new(out: W, size: u64, compress: bool) -> io::Result<Self> {
        let l1_size = div_ceil(div_ceil(size, CLUSTER_SIZE), L2_ENTRIES).max(1);
        if l1_size > (32 << 20) / 8 {
            return Err(bad(format!("virtual size {size} is too large")));
        }
        let l1_clusters = div_ceil(l1_size * 8, CLUSTER_SIZE);
        let first_data = 1 + l1_clusters;
        let mut w = Qcow2Writer {
            out,
            size,
            l1_size,
            compress,
            next_byte: first_data * CLUSTER_SIZE,
            l2: BTreeMap::new(),
            refcounts: vec![1; first_data as usize],
        };
        // Reserve header and L1 clusters (written in finish()).
        w.out.seek(SeekFrom::Start(0))?;
        w.out
            .write_all(&vec![0u8; (first_data * CLUSTER_SIZE) as usize])?;
        Ok(w)
    }

    fn add_ref(&mut self, host_cluster: u64) {
        let i = host_cluster as usize;
        if self.refcounts.len() <= i {
            self.refcounts.resize(i + 1, 0);
        }
        self.refcounts[i] = self.refcounts[i].saturating_add(1);
    }

    /// Stores guest cluster `index` (a full cluster; the caller zero-pads the last one).
    /// All-zero data must not be passed: it is left unallocated.
    pub fn write_cluster(&mut self, index: u64, data: &[u8]) -> io::Result<()> {
        if data.len() as u64 != CLUSTER_SIZE || index * CLUSTER_SIZE >= self.size {
            return Err(bad(format!("bad cluster {index} of {} bytes", data.len())));
        }
        let compressed = if self.compress { deflate(data)? } else { None };
        let entry = match compressed {
            Some(c) => {
                let off = self.next_byte;
                self.out.seek(SeekFrom::Start(off))?;
                self.out.write_all(&c)?;
                let end = off + c.len() as u64;
                for host in off / CLUSTER_SIZE..=(end - 1) / CLUSTER_SIZE {
                    self.add_ref(host);
                }
                self.next_byte = end;
                let extra_sectors = (end - 1) / 512 - off / 512;
                let shift = 62 - (CLUSTER_BITS - 8);
                OFLAG_COMPRESSED | (extra_sectors << shift) | off
            }
            None => {
                let off = self.next_byte.next_multiple_of(CLUSTER_SIZE);
                self.out.seek(SeekFrom::Start(off))?;
                self.out.write_all(data)?;
                self.add_ref(off / CLUSTER_SIZE);
                self.next_byte = off + CLUSTER_SIZE;
                OFLAG_COPIED | off
            }
        };
        let table = self
            .l2
            .entry(index / L2_ENTRIES)
            .or_insert_with(|| vec![0; L2_ENTRIES as usize]);
        table[(index % L2_ENTRIES) as usize] = entry;
        Ok(())
    }

    /// Writes L2 tables, refcount structures, L1 and header; returns the writer.
    pub fn finish(mut self) -> io::Result<W> {
        let mut cluster = div_ceil(self.next_byte, CLUSTER_SIZE);
        let mut l1 = vec![0u64; self.l1_size as usize];
        let tables = std::mem::take(&mut self.l2);
        for (l1_index, table) in &tables {
            let off = cluster * CLUSTER_SIZE;
            self.out.seek(SeekFrom::Start(off))?;
            self.out.write_all(&be_u64s(table))?;
            self.add_ref(cluster);
            l1[*l1_index as usize] = OFLAG_COPIED | off;
            cluster += 1;
        }
        let (blocks, table_clusters) = refcount_layout(cluster);
        for c in cluster..cluster + blocks + table_clusters {
            self.add_ref(c);
        }
        let mut reftable = vec![0u64; (table_clusters * REFTABLE_ENTRIES_PER_CLUSTER) as usize];
        self.refcounts
            .resize((blocks * REFCOUNTS_PER_BLOCK) as usize, 0);
        for b in 0..blocks {
            let off = (cluster + b) * CLUSTER_SIZE;
            reftable[b as usize] = off;
            let start = (b * REFCOUNTS_PER_BLOCK) as usize;
            let block: Vec<u8> = self.refcounts[start..start + REFCOUNTS_PER_BLOCK as usize]
                .iter()
                .flat_map(|r| r.to_be_bytes())
                .collect();
            self.out.seek(SeekFrom::Start(off))?;
            self.out.write_all(&block)?;
        }
        let reftable_off = (cluster + blocks) * CLUSTER_SIZE;
        self.out.seek(SeekFrom::Start(reftable_off))?;
        self.out.write_all(&be_u64s(&reftable))?;

        self.out.seek(SeekFrom::Start(CLUSTER_SIZE))?;
        self.out.write_all(&be_u64s(&l1))?;
        self.out.seek(SeekFrom::Start(0))?;
        self.out
            .write_all(&self.header(reftable_off, table_clusters))?;
        self.out.flush()?;
        Ok(self.out)
    }

    fn header(&self, reftable_off: u64, reftable_clusters: u64) -> Vec<u8> {
        let mut h = Vec::with_capacity(HEADER_LENGTH as usize + 8);
        h.extend_from_slice(b"QFI\xfb");
        h.extend_from_slice(&3u32.to_be_bytes()); // version
        h.extend_from_slice(&0u64.to_be_bytes()); // backing file offset
        h.extend_from_slice(&0u32.to_be_bytes()); // backing file size
        h.extend_from_slice(&CLUSTER_BITS.to_be_bytes());
        h.extend_from_slice(&self.size.to_be_bytes());
        h.extend_from_slice(&0u32.to_be_bytes()); // no encryption
        h.extend_from_slice(&(self.l1_size as u32).to_be_bytes());
        h.extend_from_slice(&CLUSTER_SIZE.to_be_bytes()); // L1 at cluster 1
        h.extend_from_slice(&reftable_off.to_be_bytes());
        h.extend_from_slice(&(reftable_clusters as u32).to_be_bytes());
        h.extend_from_slice(&0u32.to_be_bytes()); // snapshots
        h.extend_from_slice(&0u64.to_be_bytes());
        h.extend_from_slice(&0u64.to_be_bytes()); // incompatible features
        h.extend_from_slice(&0u64.to_be_bytes()); // compatible features
        h.extend_from_slice(&0u64.to_be_bytes()); // autoclear features
        h.extend_from_slice(&4u32.to_be_bytes()); // refcount order
        h.extend_from_slice(&HEADER_LENGTH.to_be_bytes());
        debug_assert_eq!(h.len(), HEADER_LENGTH as usize);
        h.extend_from_slice(&[0u8; 8]); // end of header extensions
        h
    }
}

/// Refcount blocks and refcount table clusters needed after `clusters` used clusters:
/// they cover every cluster, themselves included.
fn refcount_layout(clusters: u64) -> (u64, u64) {
    let (mut blocks, mut table_clusters) = (1u64, 1u64);
    loop {
        let total = clusters + blocks + table_clusters;
        let b = div_ceil(total, REFCOUNTS_PER_BLOCK);
        let t = div_ceil(b, REFTABLE_ENTRIES_PER_CLUSTER);
        if (b, t) == (blocks, table_clusters) {
            return (blocks, table_clusters);
        }
        (blocks, table_clusters) = (b, t);
    }
}

fn be_u64s(v: &[u64]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_be_bytes()).collect()
}

/// Raw deflate with a 4 KiB window; `None` when that does not save space.
fn deflate(data: &[u8]) -> io::Result<Option<Vec<u8>>> {
    let mut c = Compress::new_with_window_bits(Compression::default(), false, DEFLATE_WINDOW_BITS);
    let mut out = Vec::with_capacity(data.len());
    match c.compress_vec(data, &mut out, FlushCompress::Finish) {
        Ok(Status::StreamEnd) if (out.len() as u64) < CLUSTER_SIZE - 512 => Ok(Some(out)),
        Ok(_) => Ok(None),
        Err(e) => Err(io::Error::other(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use flate2::{Decompress, FlushDecompress};

    #[test]
    fn deflate_round_trips_with_a_4k_window() {
        let data: Vec<u8> = (0..CLUSTER_SIZE).map(|i| (i % 7000 / 3) as u8).collect();
        let c = deflate(&data).unwrap().unwrap();
        let mut d = Decompress::new_with_window_bits(false, 12);
        let mut out = Vec::with_capacity(CLUSTER_SIZE as usize);
        d.decompress_vec(&c, &mut out, FlushDecompress::Finish)
            .unwrap();
        assert_eq!(out, data);
    }

    #[test]
    fn refcount_structures_cover_themselves() {
        assert_eq!(refcount_layout(10), (1, 1));
        // 32766 + 1 block + 1 table = 32768: still one block.
        assert_eq!(refcount_layout(32766), (1, 1));
        // One more and the second block must cover itself too.
        assert_eq!(refcount_layout(32767), (2, 1));
        let (b, t) = refcount_layout(8192 * 32768);
        assert!(b * REFCOUNTS_PER_BLOCK >= 8192 * 32768 + b + t);
        assert!(t * REFTABLE_ENTRIES_PER_CLUSTER >= b && t == 2);
    }

    #[test]
    fn incompressible_cluster_is_stored_plain() {
        let mut x: u32 = 1;
        let data: Vec<u8> = (0..CLUSTER_SIZE)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                x as u8
            })
            .collect();
        assert!(deflate(&data).unwrap().is_none());
    }
}

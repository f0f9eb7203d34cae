//! Refcount consistency check run before a qcow2 image is opened for writing.
//!
//! imago trusts the refcount blocks: a cluster in use whose refcount reads 0 would be
//! handed out again by the allocator, and a free of such a cluster silently fails.
//! Either way guest data is overwritten. So before writing, kiln counts the
//! references from the header, refcount structures, the active L1/L2 tables and the
//! data clusters (like `qemu-img check`, without snapshots, which only add refcounts)
//! and refuses images where a cluster has more references than its refcount — or
//! more than the refcount width can count (refcount overflow).

use std::os::unix::fs::FileExt;

use super::header::{HeaderError, Qcow2Header};

/// Offset bits of L1/L2/reftable entries.
const OFFSET_MASK: u64 = 0x00ff_ffff_ffff_fe00;
const L2_COMPRESSED: u64 = 1 << 62;
/// Images with more clusters than this are not checked (the tables would need > 1 GiB).
pub const MAX_CHECKED_CLUSTERS: u64 = 64 << 20;

/// What the check found.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RefcountError {
    #[error(transparent)]
    Layout(#[from] HeaderError),
    #[error("cannot read qcow2 metadata at offset {offset}: {message}")]
    Read { offset: u64, message: String },
    #[error(
        "refcount overflow: the cluster at offset {offset} is referenced {references} times, \
         more than a {bits}-bit refcount can hold"
    )]
    Overflow {
        offset: u64,
        references: u64,
        bits: u32,
    },
    #[error(
        "the cluster at offset {offset} is in use ({references} references) but its refcount \
         is {refcount}; writing would overwrite it"
    )]
    TooSmall {
        offset: u64,
        references: u64,
        refcount: u64,
    },
}

/// Where to read metadata from: the image file, or a byte slice (tests, fuzzing).
pub trait MetadataSource {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()>;
}

impl MetadataSource for std::fs::File {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        self.read_exact_at(buf, offset)
    }
}

impl MetadataSource for [u8] {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        let start = usize::try_from(offset).ok().filter(|&s| s <= self.len());
        match start.and_then(|s| self.get(s..s.checked_add(buf.len())?)) {
            Some(src) => {
                buf.copy_from_slice(src);
                Ok(())
            }
            None => Err(std::io::ErrorKind::UnexpectedEof.into()),
        }
    }
}

struct Counter<'a, S: MetadataSource + ?Sized> {
    src: &'a S,
    h: &'a Qcow2Header,
    file_len: u64,
    references: Vec<u32>,
}

impl<S: MetadataSource + ?Sized> Counter<'_, S> {
    fn read(&self, offset: u64, len: u64) -> Result<Vec<u8>, RefcountError> {
        let mut buf = vec![0u8; len as usize];
        self.src
            .read_at(&mut buf, offset)
            .map_err(|e| RefcountError::Read {
                offset,
                message: e.to_string(),
            })?;
        Ok(buf)
    }

    /// Count one reference to every cluster overlapping `[offset, offset + len)`.
    fn reference(
        &mut self,
        what: &'static str,
        offset: u64,
        len: u64,
    ) -> Result<(), RefcountError> {
        let end = offset
            .checked_add(len)
            .filter(|&e| e <= self.file_len.next_multiple_of(self.h.cluster_size()));
        let Some(end) = end else {
            return Err(HeaderError::PastEnd {
                what,
                offset,
                len,
                file_len: self.file_len,
            }
            .into());
        };
        let cb = self.h.cluster_bits;
        for c in (offset >> cb)..=((end.max(offset + 1) - 1) >> cb) {
            if let Some(r) = self.references.get_mut(c as usize) {
                *r = r.saturating_add(1);
            }
        }
        Ok(())
    }

    fn count_l2(&mut self, l2: &[u8]) -> Result<(), RefcountError> {
        let cs = self.h.cluster_size();
        let cb = self.h.cluster_bits;
        for raw in l2.chunks_exact(8) {
            let entry = u64::from_be_bytes(raw.try_into().expect("chunk of 8"));
            if entry & L2_COMPRESSED != 0 {
                // Compressed descriptor: offset in the low (62 - (cb - 8)) bits, then the
                // number of additional 512-byte sectors.
                let shift = 62 - (cb - 8);
                let offset = entry & ((1u64 << shift) - 1);
                let sectors = ((entry >> shift) & ((1u64 << (cb - 8)) - 1)) + 1;
                let len = (sectors * 512).saturating_sub(offset & 511);
                self.reference("compressed cluster", offset, len.max(1))?;
                continue;
            }
            let offset = entry & OFFSET_MASK;
            if offset == 0 || self.h.data_file.is_some() {
                continue;
            }
            if offset % cs != 0 {
                return Err(HeaderError::Unaligned {
                    what: "data cluster",
                    offset,
                    cluster_size: cs,
                }
                .into());
            }
            self.reference("data cluster", offset, cs)?;
        }
        Ok(())
    }
}

/// Decode entry `i` of a refcount block with `bits`-wide entries.
fn refcount_entry(block: &[u8], i: usize, bits: u32) -> u64 {
    match bits {
        1 | 2 | 4 => {
            let per_byte = 8 / bits as usize;
            let byte = block[i / per_byte];
            u64::from((byte >> ((i % per_byte) as u32 * bits)) & ((1u8 << bits) - 1))
        }
        8 => u64::from(block[i]),
        16 => u64::from(u16::from_be_bytes([block[2 * i], block[2 * i + 1]])),
        32 => u64::from(u32::from_be_bytes(
            block[4 * i..4 * i + 4].try_into().expect("4"),
        )),
        _ => u64::from_be_bytes(block[8 * i..8 * i + 8].try_into().expect("8")),
    }
}

/// Check that no cluster has more references than its refcount (or its refcount width).
/// Call after [`Qcow2Header::check_layout`].
pub fn check_refcounts<S: MetadataSource + ?Sized>(
    src: &S,
    h: &Qcow2Header,
    file_len: u64,
) -> Result<(), RefcountError> {
    let cs = h.cluster_size();
    let clusters = file_len.div_ceil(cs);
    if clusters > MAX_CHECKED_CLUSTERS {
        log::warn!("qcow2: {clusters} clusters, skipping the refcount check");
        return Ok(());
    }
    let mut c = Counter {
        src,
        h,
        file_len,
        references: vec![0; clusters as usize],
    };
    c.reference("header", 0, cs)?;

    // Refcount table and blocks; remember the refcounts.
    let rt_len = u64::from(h.refcount_table_clusters) * cs;
    c.reference("refcount table", h.refcount_table_offset, rt_len)?;
    let rt = c.read(h.refcount_table_offset, rt_len)?;
    let bits = h.refcount_bits();
    let per_block = (cs * 8 / u64::from(bits)) as usize;
    let mut refcounts = vec![0u64; clusters as usize];
    for (i, raw) in rt.chunks_exact(8).enumerate() {
        let rb = u64::from_be_bytes(raw.try_into().expect("chunk of 8")) & OFFSET_MASK;
        if rb == 0 {
            continue;
        }
        if rb % cs != 0 {
            return Err(HeaderError::Unaligned {
                what: "refcount block",
                offset: rb,
                cluster_size: cs,
            }
            .into());
        }
        c.reference("refcount block", rb, cs)?;
        let block = c.read(rb, cs)?;
        let first = i.saturating_mul(per_block);
        for j in 0..per_block {
            match refcounts.get_mut(first.saturating_add(j)) {
                Some(r) => *r = refcount_entry(&block, j, bits),
                None => break,
            }
        }
    }

    // Active L1 and its L2 tables.
    let l1_len = u64::from(h.l1_size) * 8;
    if l1_len > 0 {
        c.reference("L1 table", h.l1_table_offset, l1_len)?;
        let l1 = c.read(h.l1_table_offset, l1_len)?;
        h.check_l1_table(&l1, file_len)?;
        for raw in l1.chunks_exact(8) {
            let l2 = u64::from_be_bytes(raw.try_into().expect("chunk of 8")) & OFFSET_MASK;
            if l2 == 0 {
                continue;
            }
            c.reference("L2 table", l2, cs)?;
            let table = c.read(l2, cs)?;
            c.count_l2(&table)?;
        }
    }

    let max = if bits == 64 {
        u64::MAX
    } else {
        (1u64 << bits) - 1
    };
    for (i, (&refs, &rc)) in c.references.iter().zip(&refcounts).enumerate() {
        let refs = u64::from(refs);
        let offset = i as u64 * cs;
        if refs > max {
            return Err(RefcountError::Overflow {
                offset,
                references: refs,
                bits,
            });
        }
        if refs > rc {
            return Err(RefcountError::TooSmall {
                offset,
                references: refs,
                refcount: rc,
            });
        }
    }
    Ok(())
}

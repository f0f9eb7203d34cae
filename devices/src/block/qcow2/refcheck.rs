//! Refcount consistency: the check run before a qcow2 image is opened for writing, and
//! the full count behind `kiln img check`.
//!
//! imago trusts the refcount blocks: a cluster in use whose refcount reads 0 would be
//! handed out again by the allocator, and a free of such a cluster silently fails.
//! Either way guest data is overwritten. So before writing, kiln counts the
//! references from the header, refcount structures, the active L1/L2 tables and the
//! data clusters, including internal snapshots' (like `qemu-img check`), and refuses
//! images where a cluster has more references than its refcount — or
//! more than the refcount width can count (refcount overflow).

use std::ops::Range;
use std::os::unix::fs::FileExt;

use super::bitmaps::{bitmaps_in_force, data_clusters, read_directory};
use super::header::{HeaderError, Qcow2Header};
use super::snapshots::read_snapshots;

/// Offset bits of L1/L2/reftable entries.
pub(super) const OFFSET_MASK: u64 = 0x00ff_ffff_ffff_fe00;
const L2_COMPRESSED: u64 = 1 << 62;
/// Clusters counted per pass of [`scan_refcounts`]. Each takes 12 bytes while it is
/// counted (references and refcount), so the counts need 48 MiB however large the
/// image (besides the refcount table and one table at a time); a larger image takes
/// more passes, each following the L1/L2 tables again.
const WINDOW_CLUSTERS: u64 = 4 << 20;
/// Images with more clusters than this do not have their refcounts rebuilt (the rebuild
/// holds every cluster's references at once: 256 MiB).
pub const MAX_REBUILT_CLUSTERS: u64 = 64 << 20;

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
        "{clusters} clusters are more than kiln rebuilds refcount structures for \
         ({MAX_REBUILT_CLUSTERS})"
    )]
    TooLarge { clusters: u64 },
    #[error("cannot repair: {0}")]
    CannotRepair(String),
    #[error(
        "the cluster at offset {offset} is in use ({references} references) but its refcount \
         is {refcount}; writing would overwrite it"
    )]
    TooSmall {
        offset: u64,
        references: u64,
        refcount: u64,
    },
    #[error(
        "the {what} entry at offset {at} says its cluster is written in place (the COPIED \
         flag) but the cluster's refcount is {refcount}; writing would change it for every \
         image state that shares it"
    )]
    SharedWrittenInPlace {
        what: &'static str,
        at: u64,
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
    /// The clusters this pass counts; `references` and `refcounts` are indexed from
    /// its start. References to clusters outside it are checked, not counted.
    window: Range<u64>,
    references: Vec<u32>,
    /// The refcounts the image stores, read before the tables are followed.
    refcounts: Vec<u64>,
    /// Active L1/L2 entries whose COPIED flag disagrees with `refcounts`.
    copied_flag_errors: Vec<CopiedFlagError>,
}

/// The largest refcount `bits` wide.
pub(super) fn max_refcount(bits: u32) -> u64 {
    if bits >= 64 {
        u64::MAX
    } else {
        (1u64 << bits) - 1
    }
}

impl<'a, S: MetadataSource + ?Sized> Counter<'a, S> {
    fn new(src: &'a S, h: &'a Qcow2Header, file_len: u64, window: Range<u64>) -> Self {
        Counter {
            src,
            h,
            file_len,
            references: vec![0; (window.end - window.start) as usize],
            window,
            // Filled by `scan_refcounts` only; other counts compare nothing.
            refcounts: Vec::new(),
            copied_flag_errors: Vec::new(),
        }
    }

    fn past_end(&self, what: &'static str, offset: u64, len: u64) -> RefcountError {
        HeaderError::PastEnd {
            what,
            offset,
            len,
            file_len: self.file_len,
        }
        .into()
    }

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
            return Err(self.past_end(what, offset, len));
        };
        let cb = self.h.cluster_bits;
        let first = (offset >> cb).max(self.window.start);
        let last = ((end.max(offset + 1) - 1) >> cb).min(self.window.end.saturating_sub(1));
        for c in first..=last {
            if let Some(r) = self.references.get_mut((c - self.window.start) as usize) {
                *r = r.saturating_add(1);
            }
        }
        Ok(())
    }

    /// Count one reference to the cluster at `offset`, which must be cluster-aligned.
    fn reference_cluster(&mut self, what: &'static str, offset: u64) -> Result<(), RefcountError> {
        let cluster_size = self.h.cluster_size();
        if offset % cluster_size != 0 {
            return Err(HeaderError::Unaligned {
                what,
                offset,
                cluster_size,
            }
            .into());
        }
        self.reference(what, offset, cluster_size)
    }

    /// Count the clusters an L2 table points to; returns how many entries have data
    /// in this image (normal or compressed). `active_at`: where the table is, if the
    /// active L1 points to it (its COPIED flags are then checked).
    fn count_l2(&mut self, l2: &[u8], active_at: Option<u64>) -> Result<u64, RefcountError> {
        let mut allocated = 0;
        let cb = self.h.cluster_bits;
        for (j, raw) in l2.chunks_exact(8).enumerate() {
            let entry = u64::from_be_bytes(raw.try_into().expect("chunk of 8"));
            if entry & L2_COMPRESSED != 0 {
                // Compressed descriptor: offset in the low (62 - (cb - 8)) bits, then the
                // number of additional 512-byte sectors.
                let shift = 62 - (cb - 8);
                let offset = entry & ((1u64 << shift) - 1);
                let sectors = ((entry >> shift) & ((1u64 << (cb - 8)) - 1)) + 1;
                let len = (sectors * 512).saturating_sub(offset & 511);
                self.reference("compressed cluster", offset, len.max(1))?;
                allocated += 1;
                continue;
            }
            let offset = entry & OFFSET_MASK;
            if offset == 0 {
                continue;
            }
            allocated += 1;
            if self.h.data_file.is_some() {
                continue; // the cluster is in the data file, which has no refcounts
            }
            self.reference_cluster("data cluster", offset)?;
            if let Some(table) = active_at {
                self.check_copied("data cluster", entry, table + 8 * j as u64, offset);
            }
        }
        Ok(allocated)
    }

    /// Note an active entry whose COPIED flag does not say whether the refcount of the
    /// cluster at `offset` is 1 (as `qemu-img check` does; snapshot tables carry no flags).
    fn check_copied(&mut self, what: &'static str, entry: u64, at: u64, offset: u64) {
        let cluster = offset / self.h.cluster_size();
        if !self.window.contains(&cluster) {
            return; // checked in the pass that counts it
        }
        let i = (cluster - self.window.start) as usize;
        let refcount = self.refcounts.get(i).copied().unwrap_or(0);
        if (refcount == 1) != (entry & COPIED != 0) {
            self.copied_flag_errors.push(CopiedFlagError {
                what,
                entry,
                at,
                refcount,
            });
        }
    }
}

/// Decode entry `i` of a refcount block with `bits`-wide entries.
pub(super) fn refcount_entry(block: &[u8], i: usize, bits: u32) -> u64 {
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

/// A cluster whose refcount disagrees with the references counted to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mismatch {
    /// Host offset of the cluster in the image file.
    pub offset: u64,
    pub refcount: u64,
    pub references: u64,
}

/// What a full count of an image's references found (see [`scan_refcounts`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefcountScan {
    /// Clusters referenced more often than their refcount says, or more often than
    /// the refcount width can count: writing could overwrite them.
    pub corruptions: Vec<Mismatch>,
    /// Clusters whose refcount is higher than their references: space never freed.
    pub leaks: Vec<Mismatch>,
    /// Guest clusters with data in this image (normal or compressed, active L1).
    pub allocated_clusters: u64,
    /// End of the last cluster in use or with a refcount.
    pub image_end_offset: u64,
    /// Active L1 and L2 entries whose COPIED flag disagrees with their cluster's
    /// refcount (set means "refcount 1, write in place"): also corruptions.
    pub copied_flag_errors: Vec<CopiedFlagError>,
    /// Width of a refcount, for messages.
    pub refcount_bits: u32,
    /// Clusters in use that no refcount block covers: only a rebuild of the refcount
    /// structures can count them.
    pub uncovered: u64,
}

/// An active L1 or L2 entry with a wrong COPIED flag.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CopiedFlagError {
    /// "L2 cluster" (an L1 entry) or "data cluster" (an L2 entry).
    pub what: &'static str,
    pub entry: u64,
    /// Where the entry is in the image file.
    pub at: u64,
    pub refcount: u64,
}

/// QCOW_OFLAG_COPIED: the cluster's refcount is exactly 1.
pub(super) const COPIED: u64 = 1 << 63;

impl<S: MetadataSource + ?Sized> Counter<'_, S> {
    /// Count an L1 table at `offset` of `entries` entries, its L2 tables and their
    /// clusters; returns the guest clusters with data. The `active` L1's COPIED flags
    /// are checked on the way.
    fn count_l1(
        &mut self,
        what: &'static str,
        offset: u64,
        entries: u64,
        active: bool,
    ) -> Result<u64, RefcountError> {
        if entries == 0 {
            return Ok(0);
        }
        let len = entries.saturating_mul(8);
        self.reference(what, offset, len)?;
        let l1 = self.read(offset, len)?;
        self.h.check_l1_table(&l1, self.file_len)?;
        let mut allocated = 0;
        for (i, raw) in l1.chunks_exact(8).enumerate() {
            let entry = u64::from_be_bytes(raw.try_into().expect("chunk of 8"));
            let l2 = entry & OFFSET_MASK;
            if l2 == 0 {
                continue;
            }
            self.reference("L2 table", l2, self.h.cluster_size())?;
            if active {
                self.check_copied("L2 cluster", entry, offset + 8 * i as u64, l2);
            }
            let table = self.read(l2, self.h.cluster_size())?;
            allocated += self.count_l2(&table, active.then_some(l2))?;
        }
        Ok(allocated)
    }

    /// Count the snapshot table and every snapshot's L1 (internal snapshots share
    /// clusters with the active image, and their refcounts include those references).
    fn count_snapshots(&mut self) -> Result<(), RefcountError> {
        if self.h.nb_snapshots == 0 {
            return Ok(());
        }
        let (snapshots, table_len) = read_snapshots(self.src, self.h, self.file_len)?;
        for s in &snapshots {
            self.count_l1("snapshot L1 table", s.l1_table_offset, s.l1_entries, false)?;
        }
        self.reference("snapshot table", self.h.snapshots_offset, table_len)
    }

    /// Count the persistent bitmaps' directory, tables and data clusters.
    fn count_bitmaps(&mut self) -> Result<(), RefcountError> {
        let Some(ext) = bitmaps_in_force(self.h) else {
            return Ok(());
        };
        let bitmaps = read_directory(self.src, ext, self.file_len)?;
        self.reference("bitmap directory", ext.directory_offset, ext.directory_size)?;
        for b in bitmaps {
            let len = b.table_entries.saturating_mul(8);
            self.reference("bitmap table", b.table_offset, len)?;
            let table = self.read(b.table_offset, len)?;
            for offset in data_clusters(&table) {
                self.reference_cluster("bitmap data cluster", offset)?;
            }
        }
        Ok(())
    }
}

/// Count every reference to every cluster of the image (header, refcount structures,
/// active and snapshot L1/L2 tables, data clusters, persistent bitmaps) and compare
/// with the refcounts, like `qemu-img check`. Metadata that points outside the file or
/// is misaligned ends the scan with an error. Counts `WINDOW_CLUSTERS` at a time.
pub fn scan_refcounts<S: MetadataSource + ?Sized>(
    src: &S,
    h: &Qcow2Header,
    file_len: u64,
) -> Result<RefcountScan, RefcountError> {
    scan_in_windows(src, h, file_len, WINDOW_CLUSTERS)
}

/// [`scan_refcounts`], counting `window` clusters per pass.
pub(crate) fn scan_in_windows<S: MetadataSource + ?Sized>(
    src: &S,
    h: &Qcow2Header,
    file_len: u64,
    window: u64,
) -> Result<RefcountScan, RefcountError> {
    let clusters = file_len.div_ceil(h.cluster_size());
    let mut scan = RefcountScan {
        corruptions: Vec::new(),
        leaks: Vec::new(),
        allocated_clusters: 0,
        image_end_offset: 0,
        copied_flag_errors: Vec::new(),
        refcount_bits: h.refcount_bits(),
        uncovered: 0,
    };
    let passes = clusters.div_ceil(window.max(1));
    if passes > 1 {
        log::info!("qcow2: counting refcounts of {clusters} clusters in {passes} passes");
    }
    let mut start = 0u64;
    loop {
        let end = start.saturating_add(window.max(1)).min(clusters);
        count_window(src, h, file_len, start..end, &mut scan)?;
        if end == clusters {
            break;
        }
        start = end;
    }
    scan.copied_flag_errors.sort_by_key(|e| e.at);
    Ok(scan)
}

/// One pass of [`scan_in_windows`]: count the references to the clusters of `window`
/// and add what disagrees with their refcounts to `scan`.
fn count_window<S: MetadataSource + ?Sized>(
    src: &S,
    h: &Qcow2Header,
    file_len: u64,
    window: Range<u64>,
    scan: &mut RefcountScan,
) -> Result<(), RefcountError> {
    let cs = h.cluster_size();
    let mut c = Counter::new(src, h, file_len, window.clone());
    c.refcounts = vec![0; c.references.len()];
    c.reference("header", 0, cs)?;

    // Refcount table and blocks; remember the window's refcounts and which blocks exist.
    let rt_len = u64::from(h.refcount_table_clusters) * cs;
    c.reference("refcount table", h.refcount_table_offset, rt_len)?;
    let rt = c.read(h.refcount_table_offset, rt_len)?;
    let bits = h.refcount_bits();
    let per_block = cs * 8 / u64::from(bits);
    let mut blocks = vec![false; rt.len() / 8];
    for (i, raw) in rt.chunks_exact(8).enumerate() {
        let rb = u64::from_be_bytes(raw.try_into().expect("chunk of 8")) & OFFSET_MASK;
        if rb == 0 {
            continue;
        }
        blocks[i] = true;
        c.reference_cluster("refcount block", rb)?;
        let covers = (i as u64).saturating_mul(per_block)..(i as u64 + 1).saturating_mul(per_block);
        // The first pass reads every block, so that a bad one fails the scan whatever
        // the window; later passes read only theirs.
        if window.start > 0 && (covers.end <= window.start || covers.start >= window.end) {
            continue;
        }
        let block = c.read(rb, cs)?;
        for cluster in covers.start.max(window.start)..covers.end.min(window.end) {
            let entry = (cluster - covers.start) as usize;
            c.refcounts[(cluster - window.start) as usize] = refcount_entry(&block, entry, bits);
        }
    }

    scan.allocated_clusters =
        c.count_l1("L1 table", h.l1_table_offset, u64::from(h.l1_size), true)?;
    c.count_snapshots()?;
    c.count_bitmaps()?;
    scan.copied_flag_errors.append(&mut c.copied_flag_errors);

    let max = max_refcount(bits);
    for (cluster, (&references, &refcount)) in window.zip(c.references.iter().zip(&c.refcounts)) {
        let references = u64::from(references);
        let m = Mismatch {
            offset: cluster * cs,
            refcount,
            references,
        };
        if references > 0 || refcount > 0 {
            scan.image_end_offset = m.offset + cs;
        }
        if references > 0
            && !blocks
                .get((cluster / per_block) as usize)
                .copied()
                .unwrap_or(false)
        {
            scan.uncovered += 1;
        }
        if references > max || references > refcount {
            scan.corruptions.push(m);
        } else if refcount > references {
            scan.leaks.push(m);
        }
    }
    Ok(())
}

/// References to every cluster from the header, the active and snapshot L1/L2
/// tables and their data, and the persistent bitmaps: everything but the refcount structures, which is what a
/// rebuilt refcount structure must count (see `repair::rebuild_refcounts`). Indexed by
/// cluster number, for every cluster of the file.
pub fn count_data_references<S: MetadataSource + ?Sized>(
    src: &S,
    h: &Qcow2Header,
    file_len: u64,
) -> Result<Vec<u32>, RefcountError> {
    let clusters = file_len.div_ceil(h.cluster_size());
    if clusters > MAX_REBUILT_CLUSTERS {
        return Err(RefcountError::TooLarge { clusters });
    }
    let mut c = Counter::new(src, h, file_len, 0..clusters);
    c.reference("header", 0, h.cluster_size())?;
    c.count_l1("L1 table", h.l1_table_offset, u64::from(h.l1_size), false)?;
    c.count_snapshots()?;
    c.count_bitmaps()?;
    Ok(c.references)
}

/// Check that no cluster has more references than its refcount (or its refcount
/// width), and that no active entry marks a shared cluster COPIED (imago, like QEMU,
/// writes COPIED clusters in place, which would change them under a snapshot): the
/// check before an image is opened for writing. Leaks, and COPIED flags missing where
/// they could be set (which only cost a copy), are harmless there.
pub fn check_refcounts<S: MetadataSource + ?Sized>(
    src: &S,
    h: &Qcow2Header,
    file_len: u64,
) -> Result<(), RefcountError> {
    let scan = scan_refcounts(src, h, file_len)?;
    let bits = scan.refcount_bits;
    let shared_in_place = scan
        .copied_flag_errors
        .iter()
        .find(|e| e.entry & COPIED != 0);
    match scan.corruptions.first() {
        None => match shared_in_place {
            Some(e) => Err(RefcountError::SharedWrittenInPlace {
                what: e.what,
                at: e.at,
                refcount: e.refcount,
            }),
            None => Ok(()),
        },
        Some(m) if m.references > max_refcount(bits) => Err(RefcountError::Overflow {
            offset: m.offset,
            references: m.references,
            bits,
        }),
        Some(m) => Err(RefcountError::TooSmall {
            offset: m.offset,
            references: m.references,
            refcount: m.refcount,
        }),
    }
}

#[cfg(test)]
#[path = "refcheck_tests.rs"]
mod tests;

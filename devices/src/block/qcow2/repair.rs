//! `kiln img check -r leaks|all`: set wrong refcounts to the references counted, as
//! `qemu-img check -r` does, so a dirty or damaged image need not go through QEMU.
//!
//! - leaks: clusters whose refcount is above their references get the count of
//!   their references (space that was never freed becomes free).
//! - all: also clusters whose refcount is below their references (the dangerous
//!   case: a write could reuse them), then the COPIED flags of the active L1/L2
//!   entries.
//!
//! After either, if the count finds no corruption left, the caller clears the dirty
//! and corrupt bits with [`clear_incompatible`], as `qemu-img check -r` does.
//!
//! With all, refcount structures that are missing (a cluster in use that no refcount
//! block covers) or broken (a refcount table or block outside the file or misaligned)
//! are first rebuilt from the L1/L2 tables by [`rebuild_refcounts`].
//!
//! Only refcount entries, COPIED flags and the header's refcount table and feature
//! fields are written, each step synced before the next. What cannot be set in place
//! (a count over the refcount width) is reported, not forced. Images with persistent
//! bitmaps are refused: kiln does not count their clusters, so it would take them for
//! leaks.

use std::fs::File;
use std::os::unix::fs::FileExt;

use super::header::{field, incompat, Qcow2Header};
use super::read_header_cluster;
use super::refcheck::{
    count_data_references, max_refcount, scan_refcounts, RefcountError, RefcountScan, COPIED,
    OFFSET_MASK,
};

/// What `qemu-img check -r` calls leaks and all.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RepairMode {
    Leaks,
    All,
}

/// What a repair changed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Repaired {
    pub leaks_fixed: u64,
    pub corruptions_fixed: u64,
    /// Why some findings were left alone.
    pub unfixable: Vec<String>,
    /// New refcount structures were written (see [`rebuild_refcounts`]).
    pub refcounts_rebuilt: bool,
    /// Header bits cleared after the repair (see [`clear_incompatible`]).
    pub dirty_cleared: bool,
    pub corrupt_cleared: bool,
}

/// Repair what `scan` found in the image open read-write as `file`.
pub fn repair(
    file: &File,
    h: &Qcow2Header,
    file_len: u64,
    scan: &RefcountScan,
    mode: RepairMode,
) -> Result<Repaired, RefcountError> {
    let mut done = Repaired::default();
    let max = max_refcount(scan.refcount_bits);
    let mut fix = |m: &super::refcheck::Mismatch| -> Result<bool, RefcountError> {
        if m.references > max {
            done.unfixable.push(format!(
                "cluster at {}: {} references do not fit a {}-bit refcount",
                m.offset, m.references, scan.refcount_bits
            ));
            return Ok(false);
        }
        match set_refcount(file, h, m.offset / h.cluster_size(), m.references)
            .map_err(write_err(m.offset))?
        {
            true => Ok(true),
            false => {
                done.unfixable.push(format!(
                    "cluster at {}: no refcount block covers it",
                    m.offset
                ));
                Ok(false)
            }
        }
    };
    let mut leaks_fixed = 0;
    for m in &scan.leaks {
        leaks_fixed += u64::from(fix(m)?);
    }
    let mut corruptions_fixed = 0;
    if mode == RepairMode::All {
        for m in &scan.corruptions {
            corruptions_fixed += u64::from(fix(m)?);
        }
    }
    done.leaks_fixed = leaks_fixed;
    file.sync_all().map_err(write_err(0))?;
    if mode == RepairMode::Leaks {
        done.corruptions_fixed = corruptions_fixed;
        return Ok(done);
    }

    // COPIED flags follow the refcounts as they now are.
    let now = scan_refcounts(file, h, file_len)?;
    for e in &now.copied_flag_errors {
        let entry = if e.refcount == 1 {
            e.entry | COPIED
        } else {
            e.entry & !COPIED
        };
        file.write_all_at(&entry.to_be_bytes(), e.at)
            .map_err(write_err(e.at))?;
        corruptions_fixed += 1;
    }
    file.sync_all().map_err(write_err(0))?;
    done.corruptions_fixed = corruptions_fixed;
    Ok(done)
}

/// Clear `bits` (of [`incompat::DIRTY`] and [`incompat::CORRUPT`]) in the header of
/// the image open read-write as `file`, and sync. Only for an image whose count found
/// no corruption: the dirty bit says refcounts may be stale, the corrupt bit that
/// QEMU found metadata it would not trust.
pub fn clear_incompatible(file: &File, h: &Qcow2Header, bits: u64) -> std::io::Result<()> {
    let bits = bits & (incompat::DIRTY | incompat::CORRUPT);
    if h.version < 3 || h.incompatible_features & bits == 0 {
        return Ok(());
    }
    let features = h.incompatible_features & !bits;
    file.write_all_at(&features.to_be_bytes(), field::INCOMPATIBLE_FEATURES as u64)?;
    file.sync_all()
}

/// The error of a failed write at `offset` of the image.
fn write_err(offset: u64) -> impl Fn(std::io::Error) -> RefcountError {
    move |e| RefcountError::Read {
        offset,
        message: format!("cannot write: {e}"),
    }
}

/// Set the refcount of cluster number `cluster`; false if no refcount block covers it.
fn set_refcount(file: &File, h: &Qcow2Header, cluster: u64, value: u64) -> std::io::Result<bool> {
    let cs = h.cluster_size();
    let bits = h.refcount_bits();
    let per_block = cs * 8 / u64::from(bits);
    let table_index = cluster / per_block;
    if table_index >= u64::from(h.refcount_table_clusters) * cs / 8 {
        return Ok(false);
    }
    // The scan checked these lie in the file; checked anyway, as hostile metadata.
    let at_or_err = |base: u64, delta: u64| {
        base.checked_add(delta)
            .ok_or_else(|| std::io::Error::from(std::io::ErrorKind::InvalidData))
    };
    let mut raw = [0u8; 8];
    file.read_exact_at(
        &mut raw,
        at_or_err(h.refcount_table_offset, 8 * table_index)?,
    )?;
    let block = u64::from_be_bytes(raw) & OFFSET_MASK;
    if block == 0 {
        return Ok(false);
    }
    // Read, change and write the bytes holding the entry (one byte holds several
    // entries narrower than 8 bits).
    let index = cluster % per_block;
    let entry_bytes = u64::from(bits.div_ceil(8));
    let entries_per_unit = if bits >= 8 { 1 } else { u64::from(8 / bits) };
    let at = at_or_err(block, index / entries_per_unit * entry_bytes)?;
    let mut unit = vec![0u8; entry_bytes as usize];
    file.read_exact_at(&mut unit, at)?;
    encode_refcount(&mut unit, (index % entries_per_unit) as usize, bits, value);
    file.write_all_at(&unit, at)?;
    Ok(true)
}

/// Store `value` as entry `i` of a refcount block with `bits`-wide entries (entries
/// narrower than a byte start in its lowest bits; wider ones are big-endian).
fn encode_refcount(block: &mut [u8], i: usize, bits: u32, value: u64) {
    if bits >= 8 {
        let bytes = (bits / 8) as usize;
        block[i * bytes..(i + 1) * bytes].copy_from_slice(&value.to_be_bytes()[8 - bytes..]);
    } else {
        let per_byte = (8 / bits) as usize;
        let shift = (i % per_byte) as u32 * bits;
        let mask = (((1u16 << bits) - 1) << shift) as u8;
        let byte = &mut block[i / per_byte];
        *byte = (*byte & !mask) | (((value << shift) as u8) & mask);
    }
}

/// Header offset of the refcount table's offset (u64), followed by its length in
/// clusters (u32).
const REFCOUNT_TABLE_AT: u64 = field::REFCOUNT_TABLE_OFFSET as u64;
const _: () = assert!(field::REFCOUNT_TABLE_CLUSTERS == field::REFCOUNT_TABLE_OFFSET + 8);

/// Build new refcount structures from the references the L1/L2 tables, snapshots and
/// header make, as `qemu-img check -r all` does when refcount blocks are missing or
/// broken: a new table and blocks go after the end of the file, covering it and
/// themselves, and the header then points at them. Until that last write the image
/// keeps its old structures, which afterwards are free clusters. Returns how many
/// clusters the new structures take.
pub fn rebuild_refcounts(
    file: &File,
    h: &Qcow2Header,
    file_len: u64,
) -> Result<u64, RefcountError> {
    let references = count_data_references(file, h, file_len)?;
    let bits = h.refcount_bits();
    let max = max_refcount(bits);
    if let Some((i, &r)) = references
        .iter()
        .enumerate()
        .find(|(_, &r)| u64::from(r) > max)
    {
        return Err(RefcountError::Overflow {
            offset: i as u64 * h.cluster_size(),
            references: u64::from(r),
            bits,
        });
    }
    let cs = h.cluster_size();
    let per_block = cs * 8 / u64::from(bits);
    let first_new = references.len() as u64;
    // Blocks must also count the table and themselves: grow until the layout holds.
    let (mut blocks, mut table) = (0u64, 0u64);
    loop {
        let total = first_new + table + blocks;
        let need_blocks = total.div_ceil(per_block);
        let need_table = (need_blocks * 8).div_ceil(cs);
        if (need_blocks, need_table) == (blocks, table) {
            break;
        }
        (blocks, table) = (need_blocks, need_table);
    }
    let table_clusters = u32::try_from(table).map_err(|_| {
        RefcountError::CannotRepair(format!("a refcount table of {table} clusters is too large"))
    })?;
    let table_at = first_new * cs;
    header_unchanged_but_refcounts(file, h, table_at, table_clusters)?;
    let end = first_new + table + blocks;
    let mut table_bytes = vec![0u8; (table * cs) as usize];
    let mut block = vec![0u8; cs as usize];
    for b in 0..blocks {
        block.fill(0);
        for j in 0..per_block {
            let cluster = b * per_block + j;
            let value = match references.get(cluster as usize) {
                Some(&r) => u64::from(r),
                None if cluster < end => 1,
                None => break,
            };
            encode_refcount(&mut block, j as usize, bits, value);
        }
        let at = (first_new + table + b) * cs;
        file.write_all_at(&block, at).map_err(write_err(at))?;
        let entry = (b * 8) as usize;
        table_bytes[entry..entry + 8].copy_from_slice(&at.to_be_bytes());
    }
    file.write_all_at(&table_bytes, table_at)
        .map_err(write_err(table_at))?;
    file.sync_all().map_err(write_err(0))?;
    let fields = refcount_table_fields(table_at, table_clusters);
    file.write_all_at(&fields, REFCOUNT_TABLE_AT)
        .map_err(write_err(REFCOUNT_TABLE_AT))?;
    file.sync_all().map_err(write_err(0))?;
    Ok(table + blocks)
}

/// The header's refcount table fields as they sit at [`REFCOUNT_TABLE_AT`].
fn refcount_table_fields(table_at: u64, table_clusters: u32) -> [u8; 12] {
    let mut fields = [0u8; 12];
    fields[..8].copy_from_slice(&table_at.to_be_bytes());
    fields[8..].copy_from_slice(&table_clusters.to_be_bytes());
    fields
}

/// Refuse to write the new table's place and size over the header if that would
/// change anything else the header says (hostile metadata, such as a backing file
/// name, can overlap them): the rebuild must not damage what it does not repair.
fn header_unchanged_but_refcounts(
    file: &File,
    h: &Qcow2Header,
    table_at: u64,
    table_clusters: u32,
) -> Result<(), RefcountError> {
    let fields = refcount_table_fields(table_at, table_clusters);
    let mut first = read_header_cluster(file, h).map_err(|e| RefcountError::Read {
        offset: 0,
        message: e.to_string(),
    })?;
    let at = REFCOUNT_TABLE_AT as usize;
    first
        .get_mut(at..at + fields.len())
        .ok_or_else(|| RefcountError::CannotRepair("the header is too short".into()))?
        .copy_from_slice(&fields);
    let mut expected = h.clone();
    expected.refcount_table_offset = table_at;
    expected.refcount_table_clusters = table_clusters;
    match Qcow2Header::parse(&first) {
        Ok(patched) if patched == expected => Ok(()),
        _ => Err(RefcountError::CannotRepair(
            "other header fields overlap the refcount table's; the refcounts cannot be rebuilt"
                .into(),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::{encode_refcount, rebuild_refcounts, Qcow2Header, RefcountError};

    #[test]
    fn a_rebuild_that_would_rewrite_an_overlapping_backing_name_is_refused_untouched() {
        // Version 2, 64 KiB clusters, no tables; the backing file name (24 NULs) is
        // bytes 40..64, over the refcount table fields.
        let mut image = vec![0u8; 72];
        image[..8].copy_from_slice(&[b'Q', b'F', b'I', 0xfb, 0, 0, 0, 2]);
        image[8..16].copy_from_slice(&40u64.to_be_bytes());
        image[16..20].copy_from_slice(&24u32.to_be_bytes());
        image[20..24].copy_from_slice(&16u32.to_be_bytes());
        let h = Qcow2Header::parse(&image).expect("a valid header");
        let path = std::env::temp_dir().join(format!("kiln-rebuild-{}", std::process::id()));
        std::fs::write(&path, &image).unwrap();
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .unwrap();
        let result = rebuild_refcounts(&file, &h, image.len() as u64);
        let after = std::fs::read(&path).unwrap();
        std::fs::remove_file(&path).unwrap();
        assert!(
            matches!(&result, Err(RefcountError::CannotRepair(why)) if why.contains("overlap")),
            "{result:?}"
        );
        assert_eq!(after, image, "the image was written");
    }

    #[test]
    fn refcount_entries_encode_as_the_scan_decodes_them() {
        for bits in [1u32, 2, 4, 8, 16, 32, 64] {
            let max = if bits == 64 {
                u64::MAX
            } else {
                (1 << bits) - 1
            };
            let mut block = vec![0xa5u8; 64];
            let before = block.clone();
            for (i, value) in [(0usize, max), (3, 1), (5, 0)] {
                encode_refcount(&mut block, i, bits, value);
                assert_eq!(
                    super::super::refcheck::refcount_entry(&block, i, bits),
                    value,
                    "{bits}-bit entry {i}"
                );
            }
            // Entries not written keep their value.
            for i in [1usize, 2, 4, 6] {
                assert_eq!(
                    super::super::refcheck::refcount_entry(&block, i, bits),
                    super::super::refcheck::refcount_entry(&before, i, bits),
                    "{bits}-bit entry {i} changed"
                );
            }
        }
    }
}

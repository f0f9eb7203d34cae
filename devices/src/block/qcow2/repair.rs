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
//! Only refcount entries, COPIED flags and the header's feature bits are written, each
//! step synced before the next. What cannot be set in place (a cluster no refcount
//! block covers, a count over the refcount width) is reported, not forced. Images
//! with persistent bitmaps are refused: kiln does not count their clusters, so it
//! would take them for leaks.

use std::fs::File;
use std::os::unix::fs::FileExt;

use super::header::{incompat, Qcow2Header};
use super::refcheck::{
    max_refcount, scan_refcounts, RefcountError, RefcountScan, COPIED, OFFSET_MASK,
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
    /// Header bits cleared after the repair (see [`clear_incompatible`]).
    pub dirty_cleared: bool,
    pub corrupt_cleared: bool,
}

/// Header offset of the incompatible feature bits (version 3).
const INCOMPATIBLE_FEATURES_AT: u64 = 72;
/// Autoclear bit of persistent dirty bitmaps.
pub const AUTOCLEAR_BITMAPS: u64 = 1;

/// Repair what `scan` found in the image open read-write as `file`.
pub fn repair(
    file: &File,
    h: &Qcow2Header,
    file_len: u64,
    scan: &RefcountScan,
    mode: RepairMode,
) -> Result<Repaired, RefcountError> {
    if h.autoclear_features & AUTOCLEAR_BITMAPS != 0 {
        return Err(RefcountError::CannotRepair(
            "the image has persistent bitmaps, whose clusters kiln does not count".into(),
        ));
    }
    let write_err = |offset: u64| {
        move |e: std::io::Error| RefcountError::Read {
            offset,
            message: format!("cannot write: {e}"),
        }
    };
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
    file.write_all_at(&features.to_be_bytes(), INCOMPATIBLE_FEATURES_AT)?;
    file.sync_all()
}

/// Set the refcount of cluster number `cluster`; false if no refcount block covers it.
fn set_refcount(file: &File, h: &Qcow2Header, cluster: u64, value: u64) -> std::io::Result<bool> {
    let cs = h.cluster_size();
    let bits = u64::from(h.refcount_bits());
    let per_block = cs * 8 / bits;
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
    let index = cluster % per_block;
    if bits >= 8 {
        let bytes = (bits / 8) as usize;
        let be = value.to_be_bytes();
        file.write_all_at(&be[8 - bytes..], at_or_err(block, index * bits / 8)?)?;
    } else {
        // Several entries per byte, the first in the lowest bits.
        let per_byte = 8 / bits;
        let at = at_or_err(block, index / per_byte)?;
        let shift = (index % per_byte) * bits;
        let mask = (((1u64 << bits) - 1) << shift) as u8;
        let mut byte = [0u8; 1];
        file.read_exact_at(&mut byte, at)?;
        byte[0] = (byte[0] & !mask) | (((value << shift) as u8) & mask);
        file.write_all_at(&byte, at)?;
    }
    Ok(true)
}

//! The internal snapshot table of a qcow2 image (qcow2 spec, "Snapshots"): read by
//! the refcount check (snapshots share clusters with the active image) and by
//! `kiln img info`, which lists them as `qemu-img info` does.

use super::header::{be16, be32, be64, HeaderError, Qcow2Header};
use super::refcheck::{MetadataSource, RefcountError};

/// Most snapshots a qcow2 image may have (QEMU's limit).
pub const MAX_SNAPSHOTS: u32 = 65536;
/// The fixed part of a table entry.
const FIXED_LEN: u64 = 40;

/// One internal snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    pub l1_table_offset: u64,
    pub l1_entries: u64,
    pub id: String,
    pub name: String,
    pub date_sec: u32,
    pub date_nsec: u32,
    pub vm_clock_nsec: u64,
    /// Bytes of saved VM state (the 64-bit extra field when present).
    pub vm_state_size: u64,
    /// Instructions executed (`-icount`), when recorded.
    pub icount: Option<u64>,
}

/// The snapshot table and the bytes it spans from `snapshots_offset`. Entries that
/// run past the end of the file, or more than [`MAX_SNAPSHOTS`], are refused.
pub fn read_snapshots<S: MetadataSource + ?Sized>(
    src: &S,
    h: &Qcow2Header,
    file_len: u64,
) -> Result<(Vec<Snapshot>, u64), RefcountError> {
    let past_end = |offset, len| HeaderError::PastEnd {
        what: "snapshot table",
        offset,
        len,
        file_len,
    };
    if h.nb_snapshots > MAX_SNAPSHOTS {
        let len = u64::from(h.nb_snapshots) * FIXED_LEN;
        return Err(past_end(h.snapshots_offset, len).into());
    }
    let read = |offset: u64, len: u64| -> Result<Vec<u8>, HeaderError> {
        if offset.checked_add(len).is_none_or(|end| end > file_len) {
            return Err(past_end(offset, len));
        }
        let mut buf = vec![0u8; len as usize];
        src.read_at(&mut buf, offset)
            .map_err(|_| past_end(offset, len))?;
        Ok(buf)
    };
    let mut snapshots = Vec::with_capacity(h.nb_snapshots as usize);
    let mut at = h.snapshots_offset;
    for _ in 0..h.nb_snapshots {
        let f = read(at, FIXED_LEN)?;
        let (id_len, name_len) = (u64::from(be16(&f, 12)), u64::from(be16(&f, 14)));
        let extra_len = u64::from(be32(&f, 36));
        let var_len = extra_len + id_len + name_len;
        let var = read(at + FIXED_LEN, var_len)?;
        let (extra, strings) = var.split_at(extra_len as usize);
        let (id, name) = strings.split_at(id_len as usize);
        snapshots.push(Snapshot {
            l1_table_offset: be64(&f, 0),
            l1_entries: u64::from(be32(&f, 8)),
            id: String::from_utf8_lossy(id).into_owned(),
            name: String::from_utf8_lossy(name).into_owned(),
            date_sec: be32(&f, 16),
            date_nsec: be32(&f, 20),
            vm_clock_nsec: be64(&f, 24),
            vm_state_size: if extra.len() >= 8 {
                be64(extra, 0)
            } else {
                u64::from(be32(&f, 32))
            },
            icount: (extra.len() >= 24)
                .then(|| be64(extra, 16))
                .filter(|&n| n != u64::MAX),
        });
        let entry = (FIXED_LEN + var_len).next_multiple_of(8);
        at = at
            .checked_add(entry)
            .ok_or_else(|| RefcountError::from(past_end(at, entry)))?;
    }
    Ok((snapshots, at - h.snapshots_offset))
}

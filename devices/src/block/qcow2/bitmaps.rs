//! Persistent dirty bitmaps (qcow2 spec, "Bitmaps extension" and "Bitmap directory"):
//! the clusters they use, which the refcount check and the refcount rebuild count as
//! `qemu-img check` does, and what `kiln img info` lists. Their contents mean nothing
//! to kiln.
//!
//! As in QEMU, the extension counts only while the header's autoclear bit 0 is set:
//! a program unaware of bitmaps that wrote the image cleared it, and the bitmaps are
//! stale (QEMU then ignores them, and their clusters are leaks).

use super::header::{be16, be32, be64, BitmapsExtension, HeaderError, Qcow2Header};
use super::refcheck::{MetadataSource, RefcountError, OFFSET_MASK};

/// Autoclear bit: the bitmaps extension is valid.
pub const AUTOCLEAR_BITMAPS: u64 = 1;
/// QEMU's limits: bitmaps per image, and bytes of bitmap directory.
const MAX_BITMAPS: u32 = 65535;
const MAX_DIRECTORY_SIZE: u64 = 64 << 20;
/// The fixed part of a directory entry.
const ENTRY_FIXED_LEN: u64 = 24;

/// Directory entry flag: the bitmap was open for writing and may be inconsistent.
const FLAG_IN_USE: u32 = 1 << 0;
/// Directory entry flag: QEMU updates the bitmap on writes.
const FLAG_AUTO: u32 = 1 << 1;

/// One bitmap of the directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bitmap {
    pub name: String,
    /// Bytes of guest data per bit.
    pub granularity: u64,
    pub in_use: bool,
    pub auto: bool,
    /// Where its table lies, and how many 8-byte entries it has.
    pub table_offset: u64,
    pub table_entries: u64,
}

impl Bitmap {
    /// Its flags as `qemu-img info` names them.
    pub fn flag_names(&self) -> Vec<&'static str> {
        let mut names = Vec::new();
        if self.in_use {
            names.push("in-use");
        }
        if self.auto {
            names.push("auto");
        }
        names
    }
}

/// The extension, if the image has one in force.
pub fn bitmaps_in_force(h: &Qcow2Header) -> Option<&BitmapsExtension> {
    h.bitmaps
        .as_ref()
        .filter(|_| h.autoclear_features & AUTOCLEAR_BITMAPS != 0)
}

/// The bitmaps the directory of `ext` lists. A directory that runs past the end of the
/// file, past QEMU's limits, or off its own end is refused.
pub fn read_directory<S: MetadataSource + ?Sized>(
    src: &S,
    ext: &BitmapsExtension,
    file_len: u64,
) -> Result<Vec<Bitmap>, RefcountError> {
    let past_end = |offset, len| HeaderError::PastEnd {
        what: "bitmap directory",
        offset,
        len,
        file_len,
    };
    let (offset, size) = (ext.directory_offset, ext.directory_size);
    if ext.count > MAX_BITMAPS
        || size > MAX_DIRECTORY_SIZE
        || offset.checked_add(size).is_none_or(|end| end > file_len)
    {
        return Err(past_end(offset, size).into());
    }
    let mut dir = vec![0u8; size as usize];
    src.read_at(&mut dir, offset)
        .map_err(|e| RefcountError::Read {
            offset,
            message: e.to_string(),
        })?;
    let mut bitmaps = Vec::with_capacity(ext.count as usize);
    let mut at = 0usize;
    for _ in 0..ext.count {
        let fixed = dir
            .get(at..at + ENTRY_FIXED_LEN as usize)
            .ok_or_else(|| past_end(offset + at as u64, ENTRY_FIXED_LEN))?;
        let name_len = u64::from(be16(fixed, 18));
        let extra_len = u64::from(be32(fixed, 20));
        let entry = (ENTRY_FIXED_LEN + extra_len + name_len).next_multiple_of(8);
        let end = usize::try_from(entry)
            .ok()
            .and_then(|e| at.checked_add(e))
            .filter(|&end| end <= dir.len())
            .ok_or_else(|| past_end(offset + at as u64, entry))?;
        let name_at = at + (ENTRY_FIXED_LEN + extra_len) as usize;
        let name = &dir[name_at..name_at + name_len as usize];
        let flags = be32(fixed, 12);
        bitmaps.push(Bitmap {
            name: String::from_utf8_lossy(name).into_owned(),
            // Out-of-range values (QEMU allows 9..=31) still must not overflow.
            granularity: 1u64 << fixed[17].min(63),
            in_use: flags & FLAG_IN_USE != 0,
            auto: flags & FLAG_AUTO != 0,
            table_offset: be64(fixed, 0),
            table_entries: u64::from(be32(fixed, 8)),
        });
        at = end;
    }
    Ok(bitmaps)
}

/// The data clusters a bitmap table (`table`, as read) points to. Entries with no
/// offset stand for all-zero or all-one ranges and use no cluster.
pub fn data_clusters(table: &[u8]) -> impl Iterator<Item = u64> + '_ {
    table
        .chunks_exact(8)
        .map(|raw| be64(raw, 0) & OFFSET_MASK)
        .filter(|&offset| offset != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A directory entry: table at `table`, `entries` long, named `name`, with
    /// `extra` bytes of extra data.
    fn entry(table: u64, entries: u32, name: &str, extra: usize) -> Vec<u8> {
        let mut e = Vec::new();
        e.extend_from_slice(&table.to_be_bytes());
        e.extend_from_slice(&entries.to_be_bytes());
        e.extend_from_slice(&2u32.to_be_bytes()); // flags: auto
        e.extend_from_slice(&[1, 16]); // type, granularity bits
        e.extend_from_slice(&(name.len() as u16).to_be_bytes());
        e.extend_from_slice(&(extra as u32).to_be_bytes());
        e.extend(std::iter::repeat_n(0u8, extra));
        e.extend_from_slice(name.as_bytes());
        e.resize(e.len().next_multiple_of(8), 0);
        e
    }

    fn ext(count: u32, directory_size: u64, directory_offset: u64) -> BitmapsExtension {
        BitmapsExtension {
            count,
            directory_size,
            directory_offset,
        }
    }

    #[test]
    fn entries_are_found_after_their_names_and_extra_data() {
        let mut file = vec![0u8; 4096];
        let mut dir = entry(0x2000, 3, "first", 0);
        dir.extend(entry(0x3000, 40, "second-bitmap", 4));
        file[1024..1024 + dir.len()].copy_from_slice(&dir);
        let bitmaps = read_directory(&file[..], &ext(2, dir.len() as u64, 1024), 4096).unwrap();
        let got: Vec<_> = bitmaps
            .iter()
            .map(|b| {
                (
                    b.name.as_str(),
                    b.table_offset,
                    b.table_entries,
                    b.granularity,
                )
            })
            .collect();
        assert_eq!(
            got,
            [
                ("first", 0x2000, 3, 65536),
                ("second-bitmap", 0x3000, 40, 65536)
            ]
        );
        assert_eq!(bitmaps[0].flag_names(), ["auto"]);
    }

    #[test]
    fn hostile_directories_are_refused() {
        let mut file = vec![0u8; 4096];
        let dir = entry(0x2000, 3, "only", 0);
        file[1024..1024 + dir.len()].copy_from_slice(&dir);
        let len = dir.len() as u64;
        for (what, e) in [
            ("past the end of the file", ext(1, len, 4096 - 8)),
            ("offset overflows", ext(1, len, u64::MAX - 4)),
            ("more entries than the directory holds", ext(2, len, 1024)),
            (
                "an entry's name runs off the directory",
                ext(1, len - 8, 1024),
            ),
            ("more bitmaps than QEMU allows", ext(65536, len, 1024)),
            ("a directory larger than QEMU allows", ext(1, 65 << 20, 0)),
        ] {
            let got = read_directory(&file[..], &e, 4096);
            assert!(
                matches!(got, Err(RefcountError::Layout(HeaderError::PastEnd { .. }))),
                "{what}: {got:?}"
            );
        }
    }

    #[test]
    fn table_entries_without_an_offset_use_no_cluster() {
        let mut table = Vec::new();
        for raw in [0u64, 1, 0x1_0000, 0x2_0000 | 1 << 63] {
            table.extend_from_slice(&raw.to_be_bytes());
        }
        assert_eq!(
            data_clusters(&table).collect::<Vec<_>>(),
            [0x1_0000, 0x2_0000]
        );
    }
}

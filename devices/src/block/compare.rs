//! `kiln img compare`: whether two images show a guest the same bytes, as
//! `qemu-img compare` decides; with strict mode ([`first_status_difference`]), also
//! whether their maps agree. Images of different sizes
//! are identical when the larger one reads as zeroes past the smaller one's end. A
//! mismatch is reported at the start of the first differing 512-byte sector, as
//! qemu-img reports it. Ranges both images' maps say read zero are not read (see
//! [`SparseReader`]), as qemu-img skips them by their block status.

use std::path::{Path, PathBuf};

use super::known_zero::SparseReader;
use super::map::{map_image, MapEntry};
use super::{DiskBackend, DiskError, SECTOR_SIZE};

/// Bytes read from each image at a time.
const CHUNK: u64 = 1 << 20;

/// What a comparison found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Comparison {
    /// The images' virtual sizes differ.
    pub size_mismatch: bool,
    /// The first differing sector's offset; `None` if the contents are identical.
    pub mismatch: Option<u64>,
}

#[derive(Debug, thiserror::Error)]
#[error("{}: {source}", path.display())]
pub struct CompareError {
    pub path: PathBuf,
    #[source]
    pub source: DiskError,
}

/// One side of a comparison, its read errors named by its path.
struct Side<'a>(SparseReader<'a>);

impl<'a> Side<'a> {
    fn new((path, disk): (&'a Path, &'a dyn DiskBackend), force_share: bool) -> Self {
        Side(SparseReader::new(path, disk, force_share))
    }

    /// The side and its map, for strict mode, which needs both (one walk of the
    /// image's tables serves the two).
    fn mapped(
        (path, disk): (&'a Path, &'a dyn DiskBackend),
        force_share: bool,
    ) -> Result<(Self, Vec<MapEntry>), CompareError> {
        let entries =
            map_image(path, Some(disk.format()), force_share).map_err(|source| CompareError {
                path: path.to_owned(),
                source,
            })?;
        Ok((Side(SparseReader::with_map(path, disk, &entries)), entries))
    }

    fn known_zero(&mut self, offset: u64, len: usize) -> bool {
        self.0.known_zero(offset, len as u64)
    }

    fn read(&mut self, buf: &mut [u8], offset: u64) -> Result<(), CompareError> {
        self.0.read(buf, offset).map_err(|source| CompareError {
            path: self.0.path.to_owned(),
            source,
        })
    }

    fn size(&self) -> u64 {
        self.0.disk.size()
    }
}

/// Compare the images `a` and `b` (opened from the paths given, which name them in
/// errors and are mapped to skip what reads zero; `force_share` maps images others
/// are writing, as `-U` opened them).
pub fn compare_disks(
    a: (&Path, &dyn DiskBackend),
    b: (&Path, &dyn DiskBackend),
    force_share: bool,
) -> Result<Comparison, CompareError> {
    compare_sides(Side::new(a, force_share), Side::new(b, force_share))
}

/// [`compare_disks`], and as `qemu-img compare -s` the first offset where the
/// images' maps differ (see [`first_status_difference`]).
pub fn compare_disks_strict(
    a: (&Path, &dyn DiskBackend),
    b: (&Path, &dyn DiskBackend),
    force_share: bool,
) -> Result<(Comparison, Option<u64>), CompareError> {
    let (a, map_a) = Side::mapped(a, force_share)?;
    let (b, map_b) = Side::mapped(b, force_share)?;
    let status = first_status_difference(&map_a, &map_b);
    Ok((compare_sides(a, b)?, status))
}

fn compare_sides<'a>(mut a: Side<'a>, mut b: Side<'a>) -> Result<Comparison, CompareError> {
    let (size_a, size_b) = (a.size(), b.size());
    let common = size_a.min(size_b);
    let mut buf_a = vec![0u8; CHUNK as usize];
    let mut buf_b = vec![0u8; CHUNK as usize];
    let mut offset = 0;
    while offset < common {
        let len = (common - offset).min(CHUNK) as usize;
        // Both zero: equal without a look. (Both sides are asked, so that each one's
        // queries stay in order.)
        let (zero_a, zero_b) = (a.known_zero(offset, len), b.known_zero(offset, len));
        if !(zero_a && zero_b) {
            a.read(&mut buf_a[..len], offset)?;
            b.read(&mut buf_b[..len], offset)?;
            if let Some(i) = first_difference(&buf_a[..len], &buf_b[..len]) {
                return Ok(Comparison {
                    size_mismatch: size_a != size_b,
                    mismatch: Some(sector_start(offset + i as u64)),
                });
            }
        }
        offset += len as u64;
    }
    // Past the shorter image, the longer one must read as zeroes.
    let longer = if size_a > size_b { &mut a } else { &mut b };
    buf_b.fill(0);
    while offset < longer.size() {
        let len = (longer.size() - offset).min(CHUNK) as usize;
        if !longer.known_zero(offset, len) {
            longer.read(&mut buf_a[..len], offset)?;
            if let Some(i) = first_difference(&buf_a[..len], &buf_b[..len]) {
                return Ok(Comparison {
                    size_mismatch: true,
                    mismatch: Some(sector_start(offset + i as u64)),
                });
            }
        }
        offset += len as u64;
    }
    Ok(Comparison {
        size_mismatch: size_a != size_b,
        mismatch: None,
    })
}

/// The first offset where the maps of two images of one size say different things,
/// as `qemu-img compare -s` compares block status: allocated (`present`), zero,
/// data, and whether a host offset is known. (qemu-img also compares its
/// end-of-file flag, which differs wherever one image's last run starts before the
/// other's; that says nothing about the images and is left out.)
pub fn first_status_difference(a: &[MapEntry], b: &[MapEntry]) -> Option<u64> {
    let status = |e: &MapEntry| (e.present, e.zero, e.data, e.offset.is_some());
    let (mut ia, mut ib) = (a.iter().peekable(), b.iter().peekable());
    let mut offset = 0;
    while let (Some(ea), Some(eb)) = (ia.peek(), ib.peek()) {
        if status(ea) != status(eb) {
            return Some(offset);
        }
        let (end_a, end_b) = (ea.start + ea.length, eb.start + eb.length);
        offset = end_a.min(end_b);
        if end_a == offset {
            ia.next();
        }
        if end_b == offset {
            ib.next();
        }
    }
    None
}

/// Index of the first byte where `a` and `b` (of equal length) differ.
fn first_difference(a: &[u8], b: &[u8]) -> Option<usize> {
    // Slice equality is one memcmp; the byte loop runs only on a mismatch.
    if a == b {
        return None;
    }
    a.iter().zip(b).position(|(x, y)| x != y)
}

fn sector_start(offset: u64) -> u64 {
    offset - offset % SECTOR_SIZE
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::block::raw::RawDisk;

    fn raw(dir: &Path, name: &str, bytes: &[u8]) -> (PathBuf, RawDisk) {
        let path = dir.join(name);
        std::fs::write(&path, bytes).unwrap();
        let disk = RawDisk::open(&path, true).unwrap();
        (path, disk)
    }

    #[test]
    fn finds_the_first_differing_sector_and_zero_tails() {
        let dir = std::env::temp_dir().join(format!("kiln-compare-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        // Two chunks and a bit, so the difference is past the first read.
        let mut base = vec![7u8; (2 * CHUNK + 1024) as usize];
        let (pa, a) = raw(&dir, "a", &base);
        base[(CHUNK + 700) as usize] = 8;
        let (pb, b) = raw(&dir, "b", &base);
        let mut longer = vec![7u8; (2 * CHUNK + 1024) as usize];
        longer.extend(vec![0u8; 4096]);
        let (pz, zero_tail) = raw(&dir, "zero-tail", &longer);
        longer[(2 * CHUNK + 1024 + 3000) as usize] = 1;
        let (pt, data_tail) = raw(&dir, "data-tail", &longer);
        let cmp = |x: (&Path, &dyn DiskBackend), y| compare_disks(x, y, false).unwrap();

        let same = cmp((&pa, &a), (&pa, &a));
        assert_eq!(same.mismatch, None);
        assert_eq!(cmp((&pa, &a), (&pb, &b)).mismatch, Some(CHUNK + 512));
        let zero = cmp((&pa, &a), (&pz, &zero_tail));
        assert_eq!((zero.size_mismatch, zero.mismatch), (true, None));
        let data = cmp((&pt, &data_tail), (&pa, &a));
        assert_eq!(data.mismatch, Some(2 * CHUNK + 1024 + 2560));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn status_differences_are_found_where_they_start() {
        let e = |start, length, present, zero, data, offset: Option<u64>| MapEntry {
            start,
            length,
            depth: 0,
            present,
            zero,
            data,
            offset,
            file: "x".into(),
        };
        let data = |start, length| e(start, length, true, false, true, Some(start));
        let hole = |start, length| e(start, length, false, true, false, None);
        let a = [data(0, 100), hole(100, 50), data(150, 50)];
        // Split differently, host offsets elsewhere: the same statuses.
        let b = [
            data(0, 60),
            data(60, 40),
            hole(100, 10),
            hole(110, 40),
            data(150, 50),
        ];
        assert_eq!(first_status_difference(&a, &b), None);
        assert_eq!(first_status_difference(&b, &a), None);
        let compressed = [
            data(0, 100),
            hole(100, 50),
            e(150, 50, true, false, true, None),
        ];
        assert_eq!(first_status_difference(&a, &compressed), Some(150));
        let zero_cluster = [
            data(0, 100),
            e(100, 50, true, true, false, None),
            data(150, 50),
        ];
        assert_eq!(first_status_difference(&a, &zero_cluster), Some(100));
        let longer_data = [data(0, 120), hole(120, 30), data(150, 50)];
        assert_eq!(first_status_difference(&a, &longer_data), Some(100));
    }
}

//! Where an image reads as zeroes without being read, from its map (what `kiln img
//! map` prints): unallocated ranges, zero clusters and holes in raw files. A sparse
//! 20 GiB image then converts or compares in the time its data takes, not the time
//! 20 GiB of zeroes take to read.

use std::path::Path;

use log::warn;

use super::map::{map_image, MapEntry};
use super::{DiskBackend, DiskError, ImageFormat};

/// The ranges of an image known to read as zeroes, in order, adjacent ones merged.
pub struct KnownZero {
    ranges: Vec<(u64, u64)>,
    /// First range that may still matter: queries come in increasing order.
    next: usize,
}

impl KnownZero {
    /// The zero ranges of the image at `path` (`force_share` as for [`map_image`]). If
    /// it cannot be mapped, none are known and every byte is read, which is slower but
    /// as correct.
    pub fn of(path: &Path, format: Option<ImageFormat>, force_share: bool) -> Self {
        match map_image(path, format, force_share) {
            Ok(entries) => Self::from_map(&entries),
            Err(e) => {
                warn!("cannot map {} ({e}); reading all of it", path.display());
                Self::from_map(&[])
            }
        }
    }

    /// The zero ranges of an image whose map is `entries`.
    pub fn from_map(entries: &[MapEntry]) -> Self {
        let mut ranges: Vec<(u64, u64)> = Vec::new();
        for e in entries.iter().filter(|e| e.zero) {
            let end = e.start + e.length;
            match ranges.last_mut() {
                Some(last) if last.1 == e.start => last.1 = end,
                _ => ranges.push((e.start, end)),
            }
        }
        KnownZero { ranges, next: 0 }
    }

    /// Whether all of `[start, end)` reads as zeroes. Calls must not go backwards.
    pub fn covers(&mut self, start: u64, end: u64) -> bool {
        while self.ranges.get(self.next).is_some_and(|r| r.1 <= start) {
            self.next += 1;
        }
        self.ranges
            .get(self.next)
            .is_some_and(|&(s, e)| s <= start && end <= e)
    }
}

/// A disk read only where it may hold something: ranges its map says read zero, and
/// anything past its end, are zero-filled without a read.
pub struct SparseReader<'a> {
    /// The disk's file, for the callers' error messages.
    pub path: &'a Path,
    pub disk: &'a dyn DiskBackend,
    zero: KnownZero,
}

impl<'a> SparseReader<'a> {
    /// `disk`, opened from `path` and mapped there (`force_share` as for [`map_image`]).
    pub fn new(path: &'a Path, disk: &'a dyn DiskBackend, force_share: bool) -> Self {
        let zero = KnownZero::of(path, Some(disk.format()), force_share);
        SparseReader { path, disk, zero }
    }

    /// `disk`, opened from `path`, whose map is `entries` (taken by the caller).
    pub fn with_map(path: &'a Path, disk: &'a dyn DiskBackend, entries: &[MapEntry]) -> Self {
        let zero = KnownZero::from_map(entries);
        SparseReader { path, disk, zero }
    }

    /// Whether `[offset, offset + len)` is known to read zero. Calls must not go
    /// backwards.
    pub fn known_zero(&mut self, offset: u64, len: u64) -> bool {
        offset >= self.disk.size() || self.zero.covers(offset, offset + len)
    }

    /// Fill `buf` from `offset`: zeroes where known zero and past the disk's end,
    /// the disk's bytes elsewhere.
    pub fn read(&mut self, buf: &mut [u8], offset: u64) -> Result<(), DiskError> {
        if self.known_zero(offset, buf.len() as u64) {
            buf.fill(0);
            return Ok(());
        }
        let readable = self
            .disk
            .size()
            .saturating_sub(offset)
            .min(buf.len() as u64) as usize;
        buf[readable..].fill(0);
        self.disk.read_at(&mut buf[..readable], offset)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn covers_only_ranges_inside_one_zero_run() {
        let mut z = KnownZero {
            ranges: vec![(0, 100), (200, 300)],
            next: 0,
        };
        assert!(z.covers(0, 100));
        assert!(!z.covers(50, 150), "runs past the first range");
        assert!(!z.covers(150, 200), "between the ranges");
        assert!(!z.covers(190, 210), "starts before the second");
        assert!(z.covers(200, 250));
        assert!(!z.covers(250, 301));
        assert!(!z.covers(400, 500), "after the last");
    }

    #[test]
    fn a_sparse_raw_file_is_known_zero_around_its_data() {
        use std::os::unix::fs::FileExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sparse.raw");
        let f = std::fs::File::create(&path).unwrap();
        f.set_len(64 << 20).unwrap();
        f.write_all_at(&[1u8; 4096], 32 << 20).unwrap();
        let mut z = KnownZero::of(&path, Some(ImageFormat::Raw), false);
        assert!(z.covers(0, 1 << 20));
        assert!(!z.covers(32 << 20, (32 << 20) + 4096), "the data");
        assert!(z.covers(40 << 20, 64 << 20));
        // A file that cannot be mapped knows no zeroes (and does not fail).
        let mut none = KnownZero::of(&dir.path().join("absent"), None, false);
        assert!(!none.covers(0, 1));
    }
}

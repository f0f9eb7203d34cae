//! Reads and writes of a qcow2 image's data clusters that bypass imago (see
//! `DiskBackend::read_extent` and `write_extent`): the image file, and which L2
//! tables imago has probably cached.

use std::fs::File;
use std::os::unix::io::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::block::dio::IoAlign;
use crate::block::file_len;

/// imago's L2 cache holds this many tables (fixed in imago 0.2).
const IMAGO_L2_TABLES: usize = 128;

/// The image file (writable where the image is), for transfers around imago.
pub(super) struct Bypass {
    file: File,
    /// What reads of `file` must meet (O_DIRECT's alignment with `cache=none`).
    align: IoAlign,
    /// Only grows (imago allocates at the end); a mapping past it is re-checked.
    known_len: AtomicU64,
    /// log2 of the guest bytes one L2 table maps.
    region_bits: u32,
    /// L2 regions imago used recently on an I/O thread, direct-mapped by region
    /// number: region + 1, or 0 for none. Its tables are then likely in imago's cache,
    /// so looking them up on the event loop reads nothing. A region this forgets
    /// costs one read through imago; one it remembers after imago evicted the table
    /// costs one L2 read on the event loop.
    warm_l2: [AtomicU64; IMAGO_L2_TABLES],
}

impl Bypass {
    pub(super) fn new(file: File, cluster_bits: u32, align: IoAlign) -> Self {
        let len = file_len(&file).unwrap_or(0);
        Bypass {
            file,
            align,
            known_len: AtomicU64::new(len),
            // cluster_size / 8 entries of cluster_size bytes each.
            region_bits: 2 * cluster_bits - 3,
            warm_l2: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }

    pub(super) fn fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }

    pub(super) fn align(&self) -> IoAlign {
        self.align
    }

    /// Whether `[host, host + len)` lies inside the file: a cluster allocated but not
    /// yet written to its end would read short, which io_uring reports as an error
    /// while imago reads zeroes.
    pub(super) fn covers(&self, host: u64, len: u64) -> bool {
        let Some(end) = host.checked_add(len) else {
            return false;
        };
        if end <= self.known_len.load(Ordering::Relaxed) {
            return true;
        }
        let Ok(now) = file_len(&self.file) else {
            return false;
        };
        self.known_len.fetch_max(now, Ordering::Relaxed);
        end <= now
    }

    fn slot(&self, region: u64) -> &AtomicU64 {
        &self.warm_l2[(region % IMAGO_L2_TABLES as u64) as usize]
    }

    /// imago read or wrote `[offset, offset + len)` (so it loaded those L2 tables).
    pub(super) fn l2_used(&self, offset: u64, len: u64) {
        let first = offset >> self.region_bits;
        let last = (offset + len.max(1) - 1) >> self.region_bits;
        // More regions than slots would only overwrite each other.
        for region in first..=last.min(first + IMAGO_L2_TABLES as u64) {
            self.slot(region).store(region + 1, Ordering::Relaxed);
        }
    }

    /// Whether imago has probably cached the L2 table that maps `offset`.
    pub(super) fn l2_likely_cached(&self, offset: u64) -> bool {
        let region = offset >> self.region_bits;
        self.slot(region).load(Ordering::Relaxed) == region + 1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn regions_are_remembered_until_another_takes_their_slot() {
        let file = tempfile::tempfile().unwrap();
        // 512-byte clusters: one L2 table maps 64 entries of 512 bytes, 32 KiB.
        let d = Bypass::new(file, 9, IoAlign::ANY);
        let region = 32 << 10;
        assert!(!d.l2_likely_cached(0));
        d.l2_used(region - 512, 1024); // the end of region 0 and the start of region 1
        assert!(d.l2_likely_cached(0) && d.l2_likely_cached(region));
        assert!(!d.l2_likely_cached(2 * region));
        // Region 128 shares region 0's slot.
        d.l2_used(128 * region, 512);
        assert!(!d.l2_likely_cached(0) && d.l2_likely_cached(128 * region));
        assert!(d.l2_likely_cached(region + 100));
    }
}

//! Guest RAM: anonymous mappings (vm-memory) laid out around the 32-bit MMIO hole.

use vm_memory::{GuestAddress, GuestMemoryMmap};

use crate::layout::{MMIO_HOLE_END, MMIO_HOLE_START};

pub type GuestMemory = GuestMemoryMmap<()>;

#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    #[error("guest memory size {0} bytes is too small (kiln needs at least 16 MiB)")]
    TooSmall(u64),
    #[error("cannot map {size} bytes of guest memory")]
    Map {
        size: u64,
        source: vm_memory::mmap::FromRangesError,
    },
}

/// The RAM ranges (start, length) for `size` bytes of guest memory.
pub fn ram_ranges(size: u64) -> Vec<(GuestAddress, usize)> {
    if size <= MMIO_HOLE_START {
        vec![(GuestAddress(0), size as usize)]
    } else {
        vec![
            (GuestAddress(0), MMIO_HOLE_START as usize),
            (
                GuestAddress(MMIO_HOLE_END),
                (size - MMIO_HOLE_START) as usize,
            ),
        ]
    }
}

/// Map `size` bytes of guest RAM. The kernel backs pages lazily, so the host cost is
/// only what the guest touches.
pub fn create_guest_memory(size: u64) -> Result<GuestMemory, MemoryError> {
    if size < (16 << 20) {
        return Err(MemoryError::TooSmall(size));
    }
    GuestMemoryMmap::from_ranges(&ram_ranges(size))
        .map_err(|source| MemoryError::Map { size, source })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_above_the_hole_continues_at_4g() {
        assert_eq!(ram_ranges(512 << 20), vec![(GuestAddress(0), 512 << 20)]);
        let r = ram_ranges(4 << 30);
        assert_eq!(r[0], (GuestAddress(0), MMIO_HOLE_START as usize));
        assert_eq!(r[1], (GuestAddress(MMIO_HOLE_END), (1usize << 30)));
    }

    #[test]
    fn tiny_memory_is_refused() {
        assert!(matches!(
            create_guest_memory(1 << 20),
            Err(MemoryError::TooSmall(_))
        ));
    }
}

/// kiln's own memory use, for `kiln bench start`: the process's peak RSS
/// (VmHWM) and the resident part of guest RAM. Guest pages are never given back
/// while the VM lives, so at the end of a run `peak - guest` bounds what kiln
/// itself needed at its peak.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RssReport {
    pub peak_kib: u64,
    pub guest_kib: u64,
    /// Current anonymous (private) and file-backed (shared text and libraries)
    /// resident memory; guest RAM is anonymous.
    pub anon_kib: u64,
    pub file_kib: u64,
}

impl RssReport {
    pub fn non_guest_kib(&self) -> u64 {
        self.peak_kib.saturating_sub(self.guest_kib)
    }
}

/// Read VmHWM from /proc/self/status and the Rss of guest RAM's mappings from
/// /proc/self/smaps.
pub fn rss_report(mem: &GuestMemory) -> Option<RssReport> {
    use vm_memory::GuestMemoryBackend;
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let field = |name: &str| -> Option<u64> {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))?
            .trim()
            .trim_end_matches("kB")
            .trim()
            .parse()
            .ok()
    };
    let guest_starts: Vec<u64> = mem.iter().map(|r| r.as_ptr() as u64).collect();
    let smaps = std::fs::read_to_string("/proc/self/smaps").ok()?;
    Some(RssReport {
        peak_kib: field("VmHWM:")?,
        guest_kib: guest_rss_kib(&smaps, &guest_starts),
        anon_kib: field("RssAnon:")?,
        file_kib: field("RssFile:")?,
    })
}

/// Sum the `Rss:` of the smaps entries that start at one of `starts`.
fn guest_rss_kib(smaps: &str, starts: &[u64]) -> u64 {
    let mut in_guest = false;
    let mut total = 0;
    for line in smaps.lines() {
        let first = line.split_whitespace().next().unwrap_or("");
        if let Some((start, _end)) = first.split_once('-') {
            if let Ok(start) = u64::from_str_radix(start, 16) {
                in_guest = starts.contains(&start);
                continue;
            }
        }
        if in_guest {
            if let Some(kib) = line.strip_prefix("Rss:") {
                total += kib
                    .trim()
                    .trim_end_matches("kB")
                    .trim()
                    .parse::<u64>()
                    .unwrap_or(0);
            }
        }
    }
    total
}

#[cfg(test)]
mod rss_tests {
    use super::*;

    #[test]
    fn sums_only_guest_mappings() {
        let smaps = "\
7f0000000000-7f0020000000 rw-p 00000000 00:00 0
Size:             524288 kB
Rss:                 148 kB
7f0030000000-7f0030001000 rw-p 00000000 00:00 0
Rss:                  4 kB
";
        assert_eq!(guest_rss_kib(smaps, &[0x7f00_0000_0000]), 148);
        assert_eq!(guest_rss_kib(smaps, &[]), 0);
    }

    #[test]
    fn touched_guest_pages_are_counted() {
        use vm_memory::{Bytes, GuestAddress};
        let mem = create_guest_memory(64 << 20).unwrap();
        let before = rss_report(&mem).unwrap();
        for page in 0..256u64 {
            mem.write_obj(1u8, GuestAddress(page * 4096)).unwrap();
        }
        let after = rss_report(&mem).unwrap();
        assert!(
            after.guest_kib >= before.guest_kib + 1000,
            "{before:?} {after:?}"
        );
    }
}

//! Direct I/O (O_DIRECT, `cache=none`): opening a file for it, and what its requests
//! must meet.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::io::AsRawFd;
use std::path::Path;

use super::DiskError;

/// What a transfer on a file must meet: where O_DIRECT is on, every buffer starts on
/// a multiple of `mem` and is a multiple of `block` long, and the file offset is a
/// multiple of `block` (Linux's iomap and block layer check each iovec this way).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IoAlign {
    pub mem: u64,
    pub block: u64,
}

impl IoAlign {
    /// No requirement: the page cache takes any transfer.
    pub const ANY: IoAlign = IoAlign { mem: 1, block: 1 };

    /// What O_DIRECT needs where the kernel cannot say (before Linux 6.1): a page,
    /// which meets every device's logical block size and DMA alignment up to 4Kn disks.
    const FALLBACK: IoAlign = IoAlign {
        mem: 4096,
        block: 4096,
    };

    /// Whether a transfer of the buffers `iovs` at file offset `offset` meets it.
    pub fn fits(&self, offset: u64, iovs: &[libc::iovec]) -> bool {
        offset % self.block == 0
            && iovs.iter().all(|iov| {
                (iov.iov_base as u64) % self.mem == 0 && (iov.iov_len as u64) % self.block == 0
            })
    }

    /// The direct I/O alignment of `file` (open with O_DIRECT), from statx's
    /// STATX_DIOALIGN; `None` where the file system reports that it has no direct I/O.
    pub fn of_direct_file(file: &File) -> io::Result<Option<IoAlign>> {
        // SAFETY: an all-zero statx is a valid value of this plain C struct.
        let mut stx: libc::statx = unsafe { std::mem::zeroed() };
        // SAFETY: the path is a valid C string (empty, with AT_EMPTY_PATH: the fd
        // itself), and `stx` is a writable statx for the kernel to fill.
        let rc = unsafe {
            libc::statx(
                file.as_raw_fd(),
                c"".as_ptr(),
                libc::AT_EMPTY_PATH,
                libc::STATX_DIOALIGN,
                &mut stx,
            )
        };
        let reported = if rc == 0 {
            Ok(DioReport {
                known: stx.stx_mask & libc::STATX_DIOALIGN != 0,
                mem: stx.stx_dio_mem_align,
                offset: stx.stx_dio_offset_align,
            })
        } else {
            Err(io::Error::last_os_error())
        };
        Self::from_report(reported)
    }

    /// What statx's answer means: where the kernel cannot say (no statx, seccomp,
    /// before Linux 6.1), the safe alignment; zeroes mean no direct I/O.
    fn from_report(reported: io::Result<DioReport>) -> io::Result<Option<IoAlign>> {
        match reported {
            Err(e) if e.raw_os_error() == Some(libc::ENOSYS) => Ok(Some(Self::FALLBACK)),
            Err(e) => Err(e),
            Ok(r) if !r.known => Ok(Some(Self::FALLBACK)),
            Ok(r) if r.mem == 0 || r.offset == 0 => Ok(None),
            Ok(r) => Ok(Some(IoAlign {
                mem: r.mem.into(),
                block: r.offset.into(),
            })),
        }
    }
}

/// statx's direct I/O alignment fields, and whether it filled them (STATX_DIOALIGN).
struct DioReport {
    known: bool,
    mem: u32,
    offset: u32,
}

/// Write the file at `path` back and drop it from the host page cache, so that what
/// reads it next starts cold.
pub fn drop_from_page_cache(path: &Path) -> io::Result<()> {
    let file = File::open(path)?;
    file.sync_all()?;
    // SAFETY: posix_fadvise only takes integers; the fd stays open for the call.
    let rc = unsafe { libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
    match rc {
        0 => Ok(()),
        errno => Err(io::Error::from_raw_os_error(errno)),
    }
}

/// `path` opened with O_DIRECT (`write`: read-write) and the alignment its transfers
/// need, or an error that says the file system has no direct I/O and what to use.
pub fn open_direct(path: &Path, write: bool) -> Result<(File, IoAlign), DiskError> {
    let no_direct = || {
        DiskError::unsupported(
            path,
            "its file system has no direct I/O (O_DIRECT), which cache=none needs; \
             use cache=writeback",
        )
    };
    let file = OpenOptions::new()
        .read(true)
        .write(write)
        .custom_flags(libc::O_DIRECT)
        .open(path)
        .map_err(|e| match e.raw_os_error() {
            Some(libc::EINVAL) => no_direct(),
            _ => DiskError::io(path)(e),
        })?;
    let align = IoAlign::of_direct_file(&file)
        .map_err(DiskError::io(path))?
        .ok_or_else(no_direct)?;
    Ok((file, align))
}

/// A zeroed buffer of `len` bytes that starts on a 4 KiB boundary (what direct I/O
/// needs of memory on any host), or `misalign` bytes past it (for tests of the
/// unaligned path).
pub struct AlignedBuf {
    storage: Vec<u8>,
    start: usize,
    len: usize,
}

impl AlignedBuf {
    pub fn new(len: usize, misalign: usize) -> Self {
        let storage = vec![0u8; len + misalign + 4096];
        let start = storage.as_ptr().align_offset(4096) + misalign;
        AlignedBuf {
            storage,
            start,
            len,
        }
    }
}

impl std::ops::Deref for AlignedBuf {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.storage[self.start..self.start + self.len]
    }
}

impl std::ops::DerefMut for AlignedBuf {
    fn deref_mut(&mut self) -> &mut [u8] {
        &mut self.storage[self.start..self.start + self.len]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn iov(base: u64, len: usize) -> libc::iovec {
        libc::iovec {
            iov_base: base as *mut libc::c_void,
            iov_len: len,
        }
    }

    #[test]
    fn fits_checks_offset_addresses_and_lengths() {
        let a = IoAlign {
            mem: 512,
            block: 4096,
        };
        assert!(a.fits(8192, &[iov(0x1000, 4096), iov(0x2200, 8192)]));
        assert!(!a.fits(512, &[iov(0x1000, 4096)]), "offset");
        assert!(
            !a.fits(0, &[iov(0x1000, 4096), iov(0x2008, 4096)]),
            "address"
        );
        assert!(
            !a.fits(0, &[iov(0x1000, 2048), iov(0x2000, 2048)]),
            "length"
        );
        assert!(IoAlign::ANY.fits(3, &[iov(7, 5)]));
    }

    #[test]
    fn a_direct_file_reports_its_alignment() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, vec![0u8; 8192]).unwrap();
        let (file, align) = open_direct(&path, true).unwrap();
        // SAFETY: F_GETFL only reads the fd's flags.
        let flags = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_GETFL) };
        assert_ne!(flags & libc::O_DIRECT, 0);
        assert!(align.mem.is_power_of_two() && align.block.is_power_of_two());
        assert!((512..=4096).contains(&align.block), "{align:?}");
    }

    #[test]
    fn a_file_system_without_direct_io_is_named_with_what_to_use() {
        // procfs refuses O_DIRECT, as tmpfs did before Linux 6.6.
        let e = open_direct(Path::new("/proc/version"), false).unwrap_err();
        let text = e.to_string();
        assert!(text.starts_with("/proc/version: "), "{text}");
        assert!(
            text.contains("no direct I/O") && text.contains("cache=writeback"),
            "{text}"
        );
    }

    #[test]
    fn a_missing_file_is_named() {
        let e = open_direct(Path::new("/nonexistent/kiln-dio"), false).unwrap_err();
        assert!(e.to_string().contains("/nonexistent/kiln-dio"), "{e}");
    }

    #[test]
    fn kernels_that_cannot_say_get_the_safe_alignment() {
        let report = |known, mem, offset| Ok(DioReport { known, mem, offset });
        let safe = Some(IoAlign::FALLBACK);
        // No statx (seccomp, very old kernels), or one without STATX_DIOALIGN (< 6.1).
        let enosys = IoAlign::from_report(Err(io::Error::from_raw_os_error(libc::ENOSYS)));
        assert_eq!(enosys.unwrap(), safe);
        assert_eq!(IoAlign::from_report(report(false, 0, 0)).unwrap(), safe);
        // What the kernel says, when it says it.
        let said = IoAlign::from_report(report(true, 512, 4096)).unwrap();
        assert_eq!(
            said,
            Some(IoAlign {
                mem: 512,
                block: 4096
            })
        );
        assert_eq!(IoAlign::from_report(report(true, 0, 0)).unwrap(), None);
        // Other failures are errors, not a guess.
        let denied = IoAlign::from_report(Err(io::Error::from_raw_os_error(libc::EACCES)));
        assert_eq!(denied.unwrap_err().raw_os_error(), Some(libc::EACCES));
    }
}

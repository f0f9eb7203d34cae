//! Raw images: the disk is the file, byte for byte.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::os::unix::io::{AsRawFd, RawFd};
use std::path::Path;

use vm_memory::bitmap::Bitmap;
use vm_memory::VolatileSlice;

use super::dio::{open_direct, IoAlign};
use super::lock::{Access, ImageLock};
use super::{check_range, file_len, DiskBackend, DiskError, ImageFormat, SECTOR_SIZE};

/// A raw image file.
pub struct RawDisk {
    /// Through the page cache: every transfer without `direct`, and with it those that
    /// direct I/O cannot take. The kernel keeps the two coherent (a direct transfer
    /// writes back and drops the cached pages it overlaps first).
    file: File,
    /// The same file with O_DIRECT (`cache=none`).
    direct: Option<DirectFile>,
    size: u64,
    read_only: bool,
    _lock: ImageLock,
}

/// The size of the disk a raw file of `file_len` bytes is: whole sectors, as QEMU's
/// block layer takes it. A file of 1000 bytes is a disk of 1024, whose last 24 bytes
/// read as zeroes (and a write there extends the file).
pub fn disk_size(file_len: u64) -> u64 {
    file_len.next_multiple_of(SECTOR_SIZE)
}

/// Write zeroes over the first block of a new, empty raw file that is `size` bytes
/// long (4 KiB, or 512 bytes when it is smaller), as qemu-img does for the raw files it
/// creates or grows from empty. QEMU opening the file with `cache=none` later probes
/// its O_DIRECT alignment there, and a hole accepts any alignment on some file systems
/// (XFS among them), so QEMU would then pick too small an alignment. It also makes
/// kiln's raw images look as qemu-img's do to `qemu-img map` and `info`.
pub fn allocate_first_block(file: &File, size: u64) -> io::Result<()> {
    const BLOCK: u64 = 4096;
    if size == 0 {
        return Ok(());
    }
    let len = if size < BLOCK { SECTOR_SIZE } else { BLOCK };
    file.write_all_at(&[0u8; BLOCK as usize][..len as usize], 0)
}

/// The image open with O_DIRECT.
struct DirectFile {
    file: File,
    align: IoAlign,
    /// Direct transfers end by here: the file's length at open, rounded down to
    /// `align.block`. Past it a direct read would stop short at an unaligned end of
    /// file, and reading on from there is not aligned.
    end: u64,
}

impl DirectFile {
    /// Whether a transfer of `len` bytes at `offset` lies where direct I/O may go.
    fn covers(&self, offset: u64, len: u64) -> bool {
        offset.checked_add(len).is_some_and(|end| end <= self.end)
    }

    /// Whether direct I/O takes a transfer of `iovs` at `offset`.
    fn takes(&self, offset: u64, iovs: &[libc::iovec]) -> bool {
        let len = iovs.iter().map(|iov| iov.iov_len as u64).sum();
        self.covers(offset, len) && self.align.fits(offset, iovs)
    }
}

impl RawDisk {
    /// Open `path`; the disk size is the file size at open time, see [`disk_size`].
    pub fn open(path: &Path, read_only: bool) -> Result<Self, DiskError> {
        Self::open_with(path, Access::for_read_only(read_only), false)
    }

    /// [`RawDisk::open`] for `access` ([`Access::ReadShared`]: qemu-img's `-U`); with
    /// `direct`, transfers that direct I/O can take bypass the host page cache.
    pub fn open_with(path: &Path, access: Access, direct: bool) -> Result<Self, DiskError> {
        let read_only = access != Access::ReadWrite;
        let open_err = DiskError::io(path);
        let lock = ImageLock::acquire(path, access)?;
        let file = OpenOptions::new()
            .read(true)
            .write(!read_only)
            .open(path)
            .map_err(open_err)?;
        let file_len = file_len(&file).map_err(open_err)?;
        let direct = if direct {
            let (file, align) = open_direct(path, !read_only)?;
            let end = file_len / align.block * align.block;
            Some(DirectFile { file, align, end })
        } else {
            None
        };
        Ok(RawDisk {
            file,
            direct,
            size: disk_size(file_len),
            read_only,
            _lock: lock,
        })
    }

    /// The file to transfer `iovs` at `offset` on: the direct one where it takes them.
    fn fd_for(&self, offset: u64, iovs: &[libc::iovec]) -> RawFd {
        match &self.direct {
            Some(d) if d.takes(offset, iovs) => d.file.as_raw_fd(),
            _ => self.file.as_raw_fd(),
        }
    }

    /// The file for `len` bytes at `offset` through io_uring, which checks the buffers'
    /// alignment itself (see [`DiskBackend::io_align`]).
    fn ring_fd(&self, offset: u64, len: u64) -> Option<(RawFd, u64)> {
        match &self.direct {
            Some(d) => d.covers(offset, len).then(|| (d.file.as_raw_fd(), offset)),
            None => Some((self.file.as_raw_fd(), offset)),
        }
    }

    fn writable(&self) -> Result<(), DiskError> {
        if self.read_only {
            Err(DiskError::ReadOnly)
        } else {
            Ok(())
        }
    }

    /// fallocate(2) that retries on EINTR.
    fn fallocate(&self, mode: libc::c_int, offset: u64, len: u64) -> io::Result<()> {
        let (Ok(off), Ok(len)) = (i64::try_from(offset), i64::try_from(len)) else {
            return Err(io::Error::from(io::ErrorKind::InvalidInput));
        };
        loop {
            // SAFETY: fallocate only reads its integer arguments; the fd is owned by self.file.
            let ret = unsafe { libc::fallocate(self.file.as_raw_fd(), mode, off, len) };
            if ret == 0 {
                return Ok(());
            }
            let err = io::Error::last_os_error();
            if err.kind() != io::ErrorKind::Interrupted {
                return Err(err);
            }
        }
    }

    fn write_zero_buffer(&self, mut offset: u64, len: u64) -> Result<(), DiskError> {
        let zeroes = vec![0u8; len.min(1 << 20) as usize];
        let end = offset + len;
        while offset < end {
            let n = (end - offset).min(zeroes.len() as u64) as usize;
            self.file.write_all_at(&zeroes[..n], offset)?;
            offset += n as u64;
        }
        Ok(())
    }
}

/// Whether an fallocate error means "this mode is not supported here".
fn unsupported(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EOPNOTSUPP) | Some(libc::ENOSYS) | Some(libc::EINVAL)
    )
}

impl DiskBackend for RawDisk {
    fn format(&self) -> ImageFormat {
        ImageFormat::Raw
    }

    fn size(&self) -> u64 {
        self.size
    }

    fn is_read_only(&self) -> bool {
        self.read_only
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<(), DiskError> {
        check_range(offset, buf.len() as u64, self.size)?;
        let iov = libc::iovec {
            iov_base: buf.as_mut_ptr().cast(),
            iov_len: buf.len(),
        };
        let fd = self.fd_for(offset, std::slice::from_ref(&iov));
        // SAFETY: `iov` covers `buf`, borrowed mutably for the call.
        unsafe { transfer_all(fd, vec![iov], offset, false)? };
        Ok(())
    }

    fn write_at(&self, buf: &[u8], offset: u64) -> Result<(), DiskError> {
        self.writable()?;
        check_range(offset, buf.len() as u64, self.size)?;
        let iov = libc::iovec {
            iov_base: buf.as_ptr() as *mut libc::c_void,
            iov_len: buf.len(),
        };
        let fd = self.fd_for(offset, std::slice::from_ref(&iov));
        // SAFETY: `iov` covers `buf`, borrowed for the call; pwritev only reads it.
        unsafe { transfer_all(fd, vec![iov], offset, true)? };
        Ok(())
    }

    fn read_vectored(&self, bufs: &[VolatileSlice<'_>], offset: u64) -> Result<(), DiskError> {
        let total = bufs.iter().map(|b| b.len() as u64).sum();
        check_range(offset, total, self.size)?;
        let guards: Vec<_> = bufs.iter().map(|b| b.ptr_guard_mut()).collect();
        let iovs = bufs
            .iter()
            .zip(&guards)
            .map(|(b, g)| libc::iovec {
                iov_base: g.as_ptr().cast(),
                iov_len: b.len(),
            })
            .collect::<Vec<_>>();
        let fd = self.fd_for(offset, &iovs);
        // SAFETY: the guards keep every guest buffer mapped for its full length until
        // they drop after the call; the kernel writes through raw pointers, so no Rust
        // reference into guest memory is created.
        unsafe { transfer_all(fd, iovs, offset, false)? };
        for b in bufs {
            b.bitmap().mark_dirty(0, b.len());
        }
        Ok(())
    }

    fn write_vectored(&self, bufs: &[VolatileSlice<'_>], offset: u64) -> Result<(), DiskError> {
        self.writable()?;
        let total = bufs.iter().map(|b| b.len() as u64).sum();
        check_range(offset, total, self.size)?;
        let guards: Vec<_> = bufs.iter().map(|b| b.ptr_guard()).collect();
        let iovs = bufs
            .iter()
            .zip(&guards)
            .map(|(b, g)| libc::iovec {
                iov_base: g.as_ptr() as *mut libc::c_void,
                iov_len: b.len(),
            })
            .collect::<Vec<_>>();
        let fd = self.fd_for(offset, &iovs);
        // SAFETY: as in read_vectored; pwritev only reads the buffers.
        unsafe { transfer_all(fd, iovs, offset, true)? };
        Ok(())
    }

    fn flush(&self) -> Result<(), DiskError> {
        if self.read_only {
            return Ok(());
        }
        Ok(self.file.sync_data()?)
    }

    fn discard(&self, offset: u64, len: u64) -> Result<(), DiskError> {
        self.writable()?;
        check_range(offset, len, self.size)?;
        match self.fallocate(
            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
            offset,
            len,
        ) {
            // Discard is a hint: a filesystem without hole punching keeps the data.
            Err(e) if unsupported(&e) => Ok(()),
            r => Ok(r?),
        }
    }

    fn write_zeroes(&self, offset: u64, len: u64, unmap: bool) -> Result<(), DiskError> {
        self.writable()?;
        check_range(offset, len, self.size)?;
        if len == 0 {
            return Ok(());
        }
        let modes = if unmap {
            vec![
                libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                libc::FALLOC_FL_ZERO_RANGE | libc::FALLOC_FL_KEEP_SIZE,
            ]
        } else {
            vec![libc::FALLOC_FL_ZERO_RANGE | libc::FALLOC_FL_KEEP_SIZE]
        };
        for mode in modes {
            match self.fallocate(mode, offset, len) {
                Ok(()) => return Ok(()),
                Err(e) if unsupported(&e) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        self.write_zero_buffer(offset, len)
    }

    fn passthrough_fd(&self) -> Option<RawFd> {
        Some(self.file.as_raw_fd())
    }

    fn read_extent(&self, offset: u64, len: u64) -> Option<(RawFd, u64)> {
        self.ring_fd(offset, len)
    }

    fn write_extent(&self, offset: u64, len: u64) -> Option<(RawFd, u64)> {
        self.ring_fd(offset, len)
    }

    fn io_align(&self) -> IoAlign {
        self.direct.as_ref().map_or(IoAlign::ANY, |d| d.align)
    }
}

/// preadv/pwritev the whole of `iovs` at `offset`, continuing after short transfers;
/// what a read finds past the end of the file is zeroes.
///
/// # Safety
/// Every iovec must point to memory valid for its length (writable for reads) for the
/// duration of the call.
unsafe fn transfer_all(
    fd: libc::c_int,
    mut iovs: Vec<libc::iovec>,
    mut offset: u64,
    write: bool,
) -> io::Result<()> {
    let mut first = 0;
    loop {
        while first < iovs.len() && iovs[first].iov_len == 0 {
            first += 1;
        }
        if first == iovs.len() {
            break;
        }
        let count = (iovs.len() - first).min(libc::UIO_MAXIOV as usize) as libc::c_int;
        let off =
            i64::try_from(offset).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
        let iov = iovs[first..].as_ptr();
        // SAFETY: the caller guarantees the iovecs; `count` does not exceed the slice.
        let ret = unsafe {
            if write {
                libc::pwritev(fd, iov, count, off)
            } else {
                libc::preadv(fd, iov, count, off)
            }
        };
        if ret < 0 {
            let err = io::Error::last_os_error();
            if err.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(err);
        }
        if ret == 0 && !write {
            // The end of the file, inside the disk (its last sector, or a file that
            // shrank under us): the rest reads as zeroes, as in QEMU.
            for iov in &iovs[first..] {
                // SAFETY: the caller guarantees each iovec is writable for its length.
                unsafe { std::ptr::write_bytes(iov.iov_base.cast::<u8>(), 0, iov.iov_len) };
            }
            return Ok(());
        }
        if ret == 0 {
            return Err(io::Error::new(
                io::ErrorKind::WriteZero,
                format!("nothing written at offset {offset}"),
            ));
        }
        let mut done = ret as usize;
        offset += done as u64;
        while first < iovs.len() && done >= iovs[first].iov_len {
            done -= iovs[first].iov_len;
            first += 1;
        }
        if done > 0 {
            let iov = &mut iovs[first];
            // SAFETY: done < iov_len, so the advanced pointer stays inside the buffer.
            iov.iov_base = unsafe { iov.iov_base.cast::<u8>().add(done) }.cast();
            iov.iov_len -= done;
        }
    }
    Ok(())
}

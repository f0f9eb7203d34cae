//! Disk image backends behind one trait, chosen at open time by probing the file.
//!
//! - [`raw`]: a plain file, positional reads and writes, holes punched on discard.
//! - [`qcow2`]: qcow2 v2/v3 through the `imago` crate (chosen because it is the only
//!   Rust qcow2 implementation covering create, read, write, flush, discard,
//!   write-zeroes and backing chains, written by a QEMU block-layer maintainer), with
//!   kiln's own header checks in front of it to refuse what imago cannot handle with
//!   an error that says what to do.
//!
//! Callers open a disk with [`open_disk`] and never branch on the format afterwards.

pub mod check;
pub mod commit;
pub mod compare;
pub mod config;
pub mod create;
pub mod dio;
pub mod info;
pub mod known_zero;
pub mod lock;
pub mod map;
pub mod measure;
pub mod qcow2;
pub mod qcow2_layout;
pub mod raw;
pub mod rebase;
pub mod resize;

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::os::unix::fs::FileTypeExt;
use std::os::unix::io::RawFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use vm_memory::VolatileSlice;

pub use config::{DiskConfig, ImageFormat};

/// Sector size of the virtio-blk interface and of kiln's disk geometry.
pub const SECTOR_SIZE: u64 = 512;

/// Why a disk operation or open failed.
#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    #[error("{}: {source}", path.display())]
    Open {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{}: {reason}", path.display())]
    Unsupported { path: PathBuf, reason: String },
    #[error(
        "{}: the image is marked {what}; repair it with `kiln img check -r all {}` \
         (or `qemu-img check -r all`)",
        path.display(),
        path.display()
    )]
    NeedsRepair { path: PathBuf, what: &'static str },
    #[error("{}: corrupt qcow2 image: {source}", path.display())]
    Corrupt {
        path: PathBuf,
        #[source]
        source: qcow2::header::HeaderError,
    },
    #[error(
        "{}: {source}; repair it with `kiln img check -r all {}` (or `qemu-img check -r all`)",
        path.display(),
        path.display()
    )]
    Refcount {
        path: PathBuf,
        #[source]
        source: qcow2::refcheck::RefcountError,
    },
    #[error("{}: the check could not finish: {source}", path.display())]
    CheckIncomplete {
        path: PathBuf,
        #[source]
        source: qcow2::refcheck::RefcountError,
    },
    #[error(transparent)]
    Lock(#[from] lock::LockError),
    #[error("request of {len} bytes at offset {offset} goes beyond the disk size {size}")]
    OutOfRange { offset: u64, len: u64, size: u64 },
    #[error("the disk is read-only")]
    ReadOnly,
    #[error("disk I/O failed: {0}")]
    Io(#[from] io::Error),
}

impl DiskError {
    /// `path` cannot be used for `reason` (bad input or a feature kiln lacks).
    pub fn unsupported(path: &Path, reason: impl Into<String>) -> Self {
        DiskError::Unsupported {
            path: path.to_owned(),
            reason: reason.into(),
        }
    }

    /// For `map_err`: an I/O error opening, reading or writing `path`.
    pub fn io(path: &Path) -> impl Fn(io::Error) -> Self + Copy + '_ {
        move |source| DiskError::Open {
            path: path.to_owned(),
            source,
        }
    }
}

/// One open disk image. All methods take `&self` so worker threads can share it.
pub trait DiskBackend: Send + Sync {
    /// The image format.
    fn format(&self) -> ImageFormat;
    /// Virtual disk size in bytes.
    fn size(&self) -> u64;
    /// Whether writes are refused.
    fn is_read_only(&self) -> bool;
    /// Fill `buf` from the disk at byte `offset`.
    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<(), DiskError>;
    /// Write `buf` to the disk at byte `offset`.
    fn write_at(&self, buf: &[u8], offset: u64) -> Result<(), DiskError>;
    /// Fill the guest buffers `bufs`, in order, from the disk at `offset`.
    fn read_vectored(&self, bufs: &[VolatileSlice<'_>], offset: u64) -> Result<(), DiskError>;
    /// Write the guest buffers `bufs`, in order, to the disk at `offset`.
    fn write_vectored(&self, bufs: &[VolatileSlice<'_>], offset: u64) -> Result<(), DiskError>;
    /// Make every completed write durable (format metadata written back, then fsync).
    fn flush(&self) -> Result<(), DiskError>;
    /// Tell the backend the range is unused; it may free host space. Data afterwards is unspecified.
    fn discard(&self, offset: u64, len: u64) -> Result<(), DiskError>;
    /// Make the range read as zeroes; `unmap` allows freeing host space.
    fn write_zeroes(&self, offset: u64, len: u64, unmap: bool) -> Result<(), DiskError>;
    /// A file descriptor whose bytes are the disk's bytes at the same offsets (a raw
    /// image), open for as long as `self` lives; virtio-blk then reads and writes it
    /// through io_uring itself. `None` for formats with metadata in between.
    fn passthrough_fd(&self) -> Option<RawFd> {
        None
    }
    /// Whether [`DiskBackend::read_extent`] can ever answer: virtio-blk then sets up an
    /// io_uring for the disk.
    fn has_read_extents(&self) -> bool {
        self.passthrough_fd().is_some()
    }
    /// Where the disk's bytes `[offset, offset + len)` lie, when they lie in one
    /// contiguous run of a host file that may be read directly: that file (open as
    /// long as `self` lives) and the offset in it. `None` sends the read through
    /// [`DiskBackend::read_vectored`]. Must not block on a long operation; it may do
    /// a short metadata read.
    ///
    /// Where [`DiskBackend::extents_move`] holds, the answer stays true only until a
    /// discard or write-zeroes starts, so the caller must not start one while such a
    /// read is in flight, and must not ask while one runs.
    fn read_extent(&self, offset: u64, len: u64) -> Option<(RawFd, u64)> {
        let _ = len;
        self.passthrough_fd().map(|fd| (fd, offset))
    }
    /// Whether discard and write-zeroes can move data that `read_extent` pointed at
    /// (qcow2 frees the clusters and reuses them for other data).
    fn extents_move(&self) -> bool {
        false
    }
    /// As [`DiskBackend::read_extent`], for a write: where the disk's bytes may be
    /// written directly (for a format, only where writing in place is what it would
    /// do itself: data it owns alone, already allocated).
    fn write_extent(&self, offset: u64, len: u64) -> Option<(RawFd, u64)> {
        let _ = len;
        self.passthrough_fd().map(|fd| (fd, offset))
    }
    /// What a transfer on the files of `read_extent` and `write_extent` must meet:
    /// direct I/O's alignment with `cache=none`; a transfer that does not goes through
    /// the disk's own methods instead.
    fn io_align(&self) -> dio::IoAlign {
        dio::IoAlign::ANY
    }
}

/// The length of `file`, a regular file or a block device (whose metadata says 0):
/// how an image on an LVM volume, a loop or nbd device gets its size.
pub fn file_len(file: &File) -> io::Result<u64> {
    let meta = file.metadata()?;
    if meta.file_type().is_block_device() {
        // The position is put back: a caller may be reading on from it.
        let mut file = file;
        let at = file.stream_position()?;
        let end = file.seek(SeekFrom::End(0))?;
        file.seek(SeekFrom::Start(at))?;
        Ok(end)
    } else {
        Ok(meta.len())
    }
}

/// Check that `[offset, offset + len)` lies inside a disk of `size` bytes.
pub fn check_range(offset: u64, len: u64, size: u64) -> Result<(), DiskError> {
    match offset.checked_add(len) {
        Some(end) if end <= size => Ok(()),
        _ => Err(DiskError::OutOfRange { offset, len, size }),
    }
}

/// Open a disk as described by `config`: probe the format unless given, and open a
/// qcow2's whole backing chain.
pub fn open_disk(config: &DiskConfig) -> Result<Arc<dyn DiskBackend>, DiskError> {
    let format = match config.format {
        Some(f) => f,
        None => probe_format(&config.path)?,
    };
    let access = match (config.readonly, config.force_share) {
        (true, true) => lock::Access::ReadShared,
        (true, false) => lock::Access::Read,
        (false, false) => lock::Access::ReadWrite,
        (false, true) => {
            return Err(DiskError::unsupported(
                &config.path,
                "sharing an image with writers (force-share) needs read-only access",
            ))
        }
    };
    let direct = config.cache.direct();
    Ok(match format {
        ImageFormat::Raw => Arc::new(raw::RawDisk::open_with(&config.path, access, direct)?),
        ImageFormat::Qcow2 => Arc::new(qcow2::Qcow2Disk::open_with(&config.path, access, direct)?),
    })
}

/// Where the backing file an image at `image` names as `name` is: a relative name is
/// relative to the image's directory, as QEMU resolves it.
pub fn backing_path(image: &Path, name: impl AsRef<Path>) -> PathBuf {
    image.parent().unwrap_or(Path::new(".")).join(name)
}

/// The backing file's format, as a qcow2 header records it (`recorded`), or else as
/// its contents say. QEMU's "file" protocol driver reads a file as raw.
pub fn backing_format(
    image: &Path,
    recorded: Option<&str>,
    backing: &Path,
) -> Result<ImageFormat, DiskError> {
    match recorded {
        Some("qcow2") => Ok(ImageFormat::Qcow2),
        Some("raw" | "file") => Ok(ImageFormat::Raw),
        Some(other) => Err(DiskError::unsupported(
            image,
            format!(
                "its backing file {} is recorded as {other}, which kiln does not read \
                 (only qcow2 and raw)",
                backing.display()
            ),
        )),
        None => probe_format(backing),
    }
}

/// Detect the format of the image at `path` from its first bytes.
pub fn probe_format(path: &Path) -> Result<ImageFormat, DiskError> {
    let open_err = DiskError::io(path);
    let mut file = File::open(path).map_err(open_err)?;
    let mut magic = [0u8; 4];
    let mut got = 0;
    while got < magic.len() {
        match file.read(&mut magic[got..]).map_err(open_err)? {
            0 => break,
            n => got += n,
        }
    }
    Ok(if got == 4 && magic == qcow2::header::QCOW2_MAGIC {
        ImageFormat::Qcow2
    } else {
        ImageFormat::Raw
    })
}

#[cfg(test)]
pub(crate) mod delegate;
#[cfg(test)]
mod direct_tests;
#[cfg(test)]
mod tests;

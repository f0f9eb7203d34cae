//! Converting onto a device: a disk or partition (`kiln img convert -O raw disk.qcow2
//! /dev/sdb`), or a character device such as /dev/null. A device cannot be replaced
//! by renaming a temporary file over it (that would swap the device node for a
//! regular file), so it is written in place, and every range the image reads as zero
//! is zeroed on it too: the device holds whatever it held before.
//!
//! Everything that can be checked is checked before the first write (raw output, the
//! disk large enough); an I/O error during the copy leaves the device partly written,
//! as with any tool that writes a device.

use std::fs::{File, OpenOptions};
use std::io::{self, Seek, SeekFrom};
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::Path;

use crate::atomic::{special_node, SpecialNode};

/// BLKZEROOUT from linux/fs.h, `_IO(0x12, 127)`: zero a byte range of a block device
/// (with the device's write-zeroes or discard when it has them).
const BLKZEROOUT: libc::Ioctl = 0x127f;

/// Zeroes written at a time where the device cannot zero a range itself.
const ZERO_CHUNK: usize = 1 << 20;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceKind {
    Block,
    Character,
}

/// What `path` names, following links: a device, or `None` for anything a conversion
/// may replace (a regular file, or nothing yet). Pipes and sockets are refused.
pub fn device_kind(path: &Path) -> io::Result<Option<DeviceKind>> {
    match special_node(path)? {
        Some(SpecialNode::BlockDevice) => Ok(Some(DeviceKind::Block)),
        Some(SpecialNode::CharDevice) => Ok(Some(DeviceKind::Character)),
        Some(SpecialNode::PipeOrSocket) => Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "a pipe or socket: kiln writes images to files and devices",
        )),
        None => Ok(None),
    }
}

/// A device open for writing in place.
pub struct Device {
    pub file: File,
    kind: DeviceKind,
}

impl Device {
    /// Open `path` (a device of `kind`) to take `size` bytes; a block device must be at
    /// least that large.
    pub fn open(path: &Path, kind: DeviceKind, size: u64) -> io::Result<Self> {
        let mut file = OpenOptions::new().write(true).open(path)?;
        if kind == DeviceKind::Block {
            let capacity = file.seek(SeekFrom::End(0))?;
            if capacity < size {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("the device holds {capacity} bytes, the image needs {size}"),
                ));
            }
        }
        Ok(Device { file, kind })
    }

    /// Make `[at, at + len)` read zero.
    pub fn zero(&self, at: u64, len: u64) -> io::Result<()> {
        if self.kind == DeviceKind::Block && at % 512 == 0 && len % 512 == 0 && len > 0 {
            let range: [u64; 2] = [at, len];
            // SAFETY: BLKZEROOUT reads two u64s (start, length) from `range`, which
            // outlives the call; the fd is this device's, open for writing.
            let rc = unsafe { libc::ioctl(self.file.as_raw_fd(), BLKZEROOUT, range.as_ptr()) };
            if rc == 0 {
                return Ok(());
            }
            log::debug!(
                "BLKZEROOUT failed ({}); writing zeroes",
                io::Error::last_os_error()
            );
        }
        let zeroes = vec![0u8; ZERO_CHUNK.min(len as usize)];
        let mut done = 0;
        while done < len {
            let n = (len - done).min(zeroes.len() as u64) as usize;
            self.file.write_all_at(&zeroes[..n], at + done)?;
            done += n as u64;
        }
        Ok(())
    }

    /// Make what was written durable (a character device has nothing to sync).
    pub fn finish(self) -> io::Result<()> {
        match self.file.sync_all() {
            Err(e) if self.kind == DeviceKind::Character => {
                log::debug!("fsync of a character device: {e}");
                Ok(())
            }
            other => other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn devices_are_told_from_files_and_pipes_refused() {
        assert_eq!(
            device_kind(Path::new("/dev/null")).unwrap(),
            Some(DeviceKind::Character)
        );
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("f");
        assert_eq!(device_kind(&file).unwrap(), None, "missing");
        std::fs::write(&file, b"x").unwrap();
        assert_eq!(device_kind(&file).unwrap(), None, "regular file");
        // A link to a device is the device.
        let link = dir.path().join("null-link");
        std::os::unix::fs::symlink("/dev/null", &link).unwrap();
        assert_eq!(device_kind(&link).unwrap(), Some(DeviceKind::Character));
        let fifo = dir.path().join("fifo");
        let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        // SAFETY: mkfifo reads the NUL-terminated path, which outlives the call.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        assert!(device_kind(&fifo).unwrap_err().to_string().contains("pipe"));
    }
}

//! Image locking compatible with QEMU's (its file-posix driver), so that kiln and QEMU
//! (or two kiln runs) never write one image at the same time, nor read one another
//! writes, which corrupts qcow2 metadata.
//!
//! QEMU's protocol uses open-file-description (OFD) byte locks on the image file,
//! always shared (read) locks, one byte per permission:
//! - byte 100 + p: "I hold permission p";
//! - byte 200 + p: "I do not let others hold permission p".
//!
//! An opener takes its locks, then asks the kernel (F_OFD_GETLK) whether anyone else
//! holds byte 200 + p of a permission it wants, or byte 100 + p of a permission it
//! does not share; if so the image is in use. kiln acts as a QEMU block device:
//! it holds consistent-read (and write, when writable) and shares neither write nor
//! resize. So a read-only open fails while someone writes, as `qemu-img info`
//! does while a VM runs. Locks go with the descriptor when the disk is dropped.
//!
//! Filesystems without OFD locks (some network filesystems) get a warning and no
//! locking, as in QEMU.

use std::fs::File;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

use log::warn;

/// QEMU's permission bits (block.h), as lock byte offsets from the bases.
const PERM_CONSISTENT_READ: i64 = 0;
const PERM_WRITE: i64 = 1;
const PERM_RESIZE: i64 = 3;
const PERM_BASE: i64 = 100;
const SHARED_BASE: i64 = 200;

/// What an opener does with the image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    Read,
    ReadWrite,
    /// Read while others may write or resize it (qemu-img's `-U`, force-share): what
    /// it reads may be inconsistent, but nobody is kept from anything.
    ReadShared,
}

impl Access {
    /// What an opener that is (or is not) `read_only` does.
    pub fn for_read_only(read_only: bool) -> Self {
        if read_only {
            Access::Read
        } else {
            Access::ReadWrite
        }
    }
}

/// Why an image could not be locked.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error(
        "{}: in use by another process (it holds a lock kiln needs to {what}); \
         is a VM (kiln or QEMU) still using it?",
        path.display()
    )]
    InUse { path: PathBuf, what: &'static str },
    #[error("{}: cannot lock: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// The locks on one image; released when dropped.
#[derive(Debug)]
pub struct ImageLock {
    /// The descriptor the locks belong to (`None`: the filesystem cannot lock).
    _file: Option<File>,
}

impl ImageLock {
    /// Lock `path` for `access`, or say who is in the way.
    pub fn acquire(path: &Path, access: Access) -> Result<Self, LockError> {
        let io = |source| LockError::Io {
            path: path.to_owned(),
            source,
        };
        let file = File::open(path).map_err(io)?;
        let mut held = vec![PERM_BASE + PERM_CONSISTENT_READ];
        if access == Access::ReadWrite {
            held.push(PERM_BASE + PERM_WRITE);
        }
        let unshared: &[i64] = match access {
            Access::ReadShared => &[],
            _ => &[SHARED_BASE + PERM_WRITE, SHARED_BASE + PERM_RESIZE],
        };
        for &byte in held.iter().chain(unshared) {
            match set_read_lock(&file, byte) {
                Ok(()) => {}
                Err(e) if unsupported(&e) => {
                    warn!("{}: no image locking here ({e})", path.display());
                    return Ok(ImageLock { _file: None });
                }
                // A read lock only fails where someone holds a write lock, which the
                // protocol never does for long (probes): say the image is busy.
                Err(e) if busy(&e) => return Err(in_use(path, "read it")),
                Err(e) => return Err(io(e)),
            }
        }
        // Someone refuses to share what we want to hold...
        let mut conflicts = vec![(SHARED_BASE + PERM_CONSISTENT_READ, "read it")];
        if access == Access::ReadWrite {
            conflicts.push((SHARED_BASE + PERM_WRITE, "write it"));
        }
        // ...or holds what we refuse to share.
        if access != Access::ReadShared {
            conflicts.push((PERM_BASE + PERM_WRITE, "keep others from writing it"));
            conflicts.push((PERM_BASE + PERM_RESIZE, "keep others from resizing it"));
        }
        // A lock can outlive its holder's close for a moment: a process forking at
        // that time holds the descriptor until its exec. Only a lock that stays is
        // someone else's use of the image.
        let deadline = std::time::Instant::now() + LOCK_PATIENCE;
        loop {
            let mut busy = None;
            for &(byte, what) in &conflicts {
                if someone_else_locks(&file, byte).map_err(io)? {
                    busy = Some(what);
                    break;
                }
            }
            match busy {
                None => return Ok(ImageLock { _file: Some(file) }),
                Some(what) if std::time::Instant::now() >= deadline => {
                    return Err(in_use(path, what))
                }
                Some(_) => std::thread::sleep(LOCK_RETRY),
            }
        }
    }
}

/// How long a conflict must last to count, and how often it is looked at meanwhile.
/// Long enough for a forked child on a loaded host to reach its exec (which closes
/// the descriptor), short enough that an image in use is reported at once to a person.
const LOCK_PATIENCE: std::time::Duration = std::time::Duration::from_millis(500);
const LOCK_RETRY: std::time::Duration = std::time::Duration::from_millis(20);

fn in_use(path: &Path, what: &'static str) -> LockError {
    LockError::InUse {
        path: path.to_owned(),
        what,
    }
}

fn unsupported(e: &std::io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EINVAL | libc::ENOLCK | libc::EOPNOTSUPP)
    )
}

fn busy(e: &std::io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EAGAIN | libc::EACCES))
}

fn flock_at(kind: libc::c_int, byte: i64) -> libc::flock {
    // SAFETY: flock is plain old data; all-zero is a valid value, completed below.
    let mut fl: libc::flock = unsafe { std::mem::zeroed() };
    fl.l_type = kind as libc::c_short;
    fl.l_whence = libc::SEEK_SET as libc::c_short;
    fl.l_start = byte;
    fl.l_len = 1;
    fl
}

fn set_read_lock(file: &File, byte: i64) -> std::io::Result<()> {
    let fl = flock_at(libc::F_RDLCK, byte);
    // SAFETY: F_OFD_SETLK reads the valid flock for the duration of the call; the
    // descriptor is open.
    let rc = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_OFD_SETLK, &fl) };
    if rc == -1 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Whether another open file description holds a lock on `byte` (our own do not count).
fn someone_else_locks(file: &File, byte: i64) -> std::io::Result<bool> {
    let mut fl = flock_at(libc::F_WRLCK, byte);
    // SAFETY: F_OFD_GETLK reads and fills the valid flock during the call; the
    // descriptor is open.
    let rc = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_OFD_GETLK, &mut fl) };
    if rc == -1 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(fl.l_type != libc::F_UNLCK as libc::c_short)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image() -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("disk.img");
        std::fs::write(&path, vec![0u8; 4096]).unwrap();
        (dir, path)
    }

    #[test]
    fn one_writer_or_many_readers() {
        let (_dir, path) = image();
        let reader = ImageLock::acquire(&path, Access::Read).unwrap();
        let second_reader = ImageLock::acquire(&path, Access::Read).unwrap();
        let err = ImageLock::acquire(&path, Access::ReadWrite).unwrap_err();
        assert!(
            err.to_string().contains("in use by another process"),
            "{err}"
        );
        assert!(err.to_string().contains(path.to_str().unwrap()), "{err}");
        drop((reader, second_reader));

        let writer = ImageLock::acquire(&path, Access::ReadWrite).unwrap();
        for access in [Access::Read, Access::ReadWrite] {
            let err = ImageLock::acquire(&path, access).unwrap_err();
            assert!(matches!(err, LockError::InUse { .. }), "{access:?}: {err}");
        }
        drop(writer);
        ImageLock::acquire(&path, Access::ReadWrite).unwrap();
    }

    #[test]
    fn a_shared_reader_keeps_nobody_out_and_is_kept_out_by_nobody() {
        let (_dir, path) = image();
        let writer = ImageLock::acquire(&path, Access::ReadWrite).unwrap();
        let shared = ImageLock::acquire(&path, Access::ReadShared).unwrap();
        drop(writer);
        // The shared reader does not keep a writer out either.
        let writer = ImageLock::acquire(&path, Access::ReadWrite).unwrap();
        drop((writer, shared));
        // An ordinary reader still does.
        let reader = ImageLock::acquire(&path, Access::Read).unwrap();
        assert!(ImageLock::acquire(&path, Access::ReadWrite).is_err());
        drop(reader);
    }

    #[test]
    fn a_lock_left_in_a_forking_child_for_a_moment_is_not_a_conflict() {
        let (_dir, path) = image();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let forker = {
            let stop = stop.clone();
            std::thread::spawn(move || {
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let _ = std::process::Command::new("true").status();
                }
            })
        };
        let mut failures = 0;
        for _ in 0..300 {
            match ImageLock::acquire(&path, Access::ReadWrite) {
                Ok(lock) => drop(lock),
                Err(_) => failures += 1,
            }
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        forker.join().unwrap();
        assert_eq!(failures, 0, "closed locks taken for someone else's");
    }
}

//! Output files that appear whole or not at all: data goes to a temporary file in the
//! destination's directory, which is renamed over the destination only on success.

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};

/// Error while writing an output file atomically.
#[derive(Debug, thiserror::Error)]
pub enum AtomicError<E> {
    #[error("cannot create a temporary file next to {path}: {source}")]
    Create { path: PathBuf, source: io::Error },
    #[error("cannot rename the temporary file to {path}: {source}")]
    Persist { path: PathBuf, source: io::Error },
    #[error(transparent)]
    Write(E),
}

/// What a path names, following links, when it is not a file a rename may replace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpecialNode {
    BlockDevice,
    CharDevice,
    PipeOrSocket,
}

/// The special node at `path`; `None` for a regular file, a directory, or nothing.
pub fn special_node(path: &Path) -> io::Result<Option<SpecialNode>> {
    use std::os::unix::fs::FileTypeExt;
    let kind = match std::fs::metadata(path) {
        Ok(meta) => meta.file_type(),
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    Ok(if kind.is_block_device() {
        Some(SpecialNode::BlockDevice)
    } else if kind.is_char_device() {
        Some(SpecialNode::CharDevice)
    } else if kind.is_fifo() || kind.is_socket() {
        Some(SpecialNode::PipeOrSocket)
    } else {
        None
    })
}

/// Calls `write` with a fresh temporary file next to `dest`, then renames it to `dest`
/// (mode 0644, the usual umask-free choice for build outputs). When `write` fails, the
/// temporary file is removed and `dest` is left as it was. A `dest` that is a device,
/// pipe or socket is refused: the rename would replace its node with a regular file.
pub fn write_atomically<T, E>(
    dest: &Path,
    write: impl FnOnce(&mut File) -> Result<T, E>,
) -> Result<T, AtomicError<E>> {
    if let Ok(Some(_)) = special_node(dest) {
        return Err(AtomicError::Create {
            path: dest.to_path_buf(),
            source: io::Error::new(
                io::ErrorKind::InvalidInput,
                "it is a device, pipe or socket, not a file to replace",
            ),
        });
    }
    let dir = match dest.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let mut tmp = tempfile::Builder::new()
        .prefix(".kiln-tmp-")
        .tempfile_in(&dir)
        .map_err(|source| AtomicError::Create {
            path: dest.to_path_buf(),
            source,
        })?;
    let value = write(tmp.as_file_mut()).map_err(AtomicError::Write)?;
    let persist = || -> io::Result<()> {
        use std::os::unix::fs::PermissionsExt;
        tmp.as_file().sync_all()?;
        tmp.as_file()
            .set_permissions(std::fs::Permissions::from_mode(0o644))?;
        Ok(())
    };
    persist().map_err(|source| AtomicError::Persist {
        path: dest.to_path_buf(),
        source,
    })?;
    tmp.persist(dest).map_err(|e| AtomicError::Persist {
        path: dest.to_path_buf(),
        source: e.error,
    })?;
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::os::unix::fs::FileTypeExt;

    #[test]
    fn a_pipe_is_not_replaced_by_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("fifo");
        let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        // SAFETY: mkfifo reads the NUL-terminated path, which outlives the call.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        let result = write_atomically(&fifo, |f: &mut File| f.write_all(b"data"));
        let err = result.expect_err("a pipe was replaced");
        assert!(err.to_string().contains("not a file to replace"), "{err}");
        assert!(std::fs::metadata(&fifo).unwrap().file_type().is_fifo());
        // A regular file is replaced as before.
        let file = dir.path().join("file");
        std::fs::write(&file, b"old").unwrap();
        write_atomically(&file, |f: &mut File| f.write_all(b"new")).unwrap();
        assert_eq!(std::fs::read(&file).unwrap(), b"new");
    }
}

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

/// Calls `write` with a fresh temporary file next to `dest`, then renames it to `dest`
/// (mode 0644, the usual umask-free choice for build outputs). When `write` fails, the
/// temporary file is removed and `dest` is left as it was.
pub fn write_atomically<T, E>(
    dest: &Path,
    write: impl FnOnce(&mut File) -> Result<T, E>,
) -> Result<T, AtomicError<E>> {
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

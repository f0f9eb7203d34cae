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
/// (mode 0644). When `write` fails, the
/// temporary file is removed and `dest` is left as it was. A `dest` that is a device,
/// pipe or socket is refused: the rename would replace its node with a regular file.
pub fn write_atomically<T, E>(
    dest: &Path,
    write: impl FnOnce(&mut File) -> Result<T, E>,
) -> Result<T, AtomicError<E>> {
    let create_err = |source| AtomicError::Create {
        path: dest.to_path_buf(),
        source,
    };
    let dir = temporary_dir(dest).map_err(create_err)?;
    let mut tmp = temporary_builder().tempfile_in(&dir).map_err(create_err)?;
    let value = write(tmp.as_file_mut()).map_err(AtomicError::Write)?;
    let persist_err = |source| AtomicError::Persist {
        path: dest.to_path_buf(),
        source,
    };
    seal(tmp.as_file()).map_err(persist_err)?;
    tmp.persist(dest).map_err(|e| persist_err(e.error))?;
    Ok(value)
}

/// As [`write_atomically`], for writers that make their file by name (an image
/// library's create call): `build` gets a fresh path next to `dest` where nothing
/// exists yet, and must create the file there. Whatever it leaves at that path is
/// removed when it fails.
pub fn build_atomically<T, E>(
    dest: &Path,
    build: impl FnOnce(&Path) -> Result<T, E>,
) -> Result<T, AtomicError<E>> {
    let create_err = |source| AtomicError::Create {
        path: dest.to_path_buf(),
        source,
    };
    let dir = temporary_dir(dest).map_err(create_err)?;
    // A fresh name only: `build` creates the file. Dropping the TempPath removes it.
    let tmp = temporary_builder()
        .make_in(&dir, |_| Ok(()))
        .map_err(create_err)?
        .into_temp_path();
    let value = build(&tmp).map_err(AtomicError::Write)?;
    let persist_err = |source| AtomicError::Persist {
        path: dest.to_path_buf(),
        source,
    };
    File::open(&tmp)
        .and_then(|f| seal(&f))
        .map_err(persist_err)?;
    tmp.persist(dest).map_err(|e| persist_err(e.error))?;
    Ok(value)
}

/// The directory for `dest`'s temporary file; an error for a `dest` that is a device,
/// pipe or socket, whose node a rename would replace with a regular file.
fn temporary_dir(dest: &Path) -> io::Result<PathBuf> {
    if let Ok(Some(_)) = special_node(dest) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "it is a device, pipe or socket, not a file to replace",
        ));
    }
    Ok(match dest.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    })
}

fn temporary_builder() -> tempfile::Builder<'static, 'static> {
    let mut builder = tempfile::Builder::new();
    builder.prefix(".kiln-tmp-");
    builder
}

/// Make the finished file durable and readable by all (0644, the usual umask-free
/// choice for build outputs) before it takes the destination's name.
fn seal(file: &File) -> io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    file.sync_all()?;
    file.set_permissions(std::fs::Permissions::from_mode(0o644))
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

    /// The names in `dir`, sorted.
    fn names(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn a_built_file_replaces_the_destination_and_a_failed_one_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("image");
        std::fs::write(&dest, b"old").unwrap();
        // The builder is given a free name next to the destination, creates the file
        // itself (create_new, as an image library's create does), and fails.
        let failed: Result<(), _> = build_atomically(&dest, |tmp: &Path| {
            assert_eq!(tmp.parent(), Some(dir.path()));
            std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(tmp)?
                .write_all(b"half")?;
            Err(io::Error::other("the copy failed"))
        });
        assert!(matches!(failed, Err(AtomicError::Write(_))));
        assert_eq!(names(dir.path()), ["image"], "a temporary file was left");
        assert_eq!(std::fs::read(&dest).unwrap(), b"old");

        let built = build_atomically(&dest, |tmp: &Path| -> io::Result<u32> {
            std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(tmp)?
                .write_all(b"new")?;
            Ok(7)
        });
        assert_eq!(built.unwrap(), 7);
        assert_eq!(names(dir.path()), ["image"]);
        assert_eq!(std::fs::read(&dest).unwrap(), b"new");
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&dest).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o644);
    }
}

//! Answer-file injection into an installer initrd, as `virt-install --initrd-inject` does:
//! the output is the original initrd byte for byte, followed by a gzip-compressed newc
//! cpio archive holding the file. The kernel unpacks concatenated archives in order, so
//! the injected file lands in the installer's root file system.

use std::fs::File;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use flate2::write::GzEncoder;
use flate2::Compression;

use crate::atomic::{write_atomically, AtomicError};
use crate::cpio::NewcWriter;

#[derive(Debug, thiserror::Error)]
pub enum InjectError {
    #[error("cannot read initrd {path}: {source}")]
    ReadInitrd { path: PathBuf, source: io::Error },
    #[error("invalid name {name:?} for the injected file: {reason}")]
    BadName { name: String, reason: &'static str },
    #[error("cannot write {path}: {source}")]
    Write { path: PathBuf, source: io::Error },
}

/// One file to place in the initrd's root file system.
pub struct Injected<'a> {
    /// Path inside the initrd, e.g. `preseed.cfg` or `etc/foo.conf` (a leading `/` is allowed).
    pub name: &'a str,
    pub data: &'a [u8],
    pub mode: u32,
}

/// Normalises an in-initrd path: strips leading `/`, refuses empty, `.` and `..` parts.
pub fn archive_name(name: &str) -> Result<String, InjectError> {
    let bad = |reason| InjectError::BadName {
        name: name.to_string(),
        reason,
    };
    let trimmed = name.trim_start_matches('/');
    if trimmed.is_empty() {
        return Err(bad("empty"));
    }
    let mut parts = Vec::new();
    for part in trimmed.split('/') {
        match part {
            "" => continue,
            "." | ".." => return Err(bad("`.` and `..` are not allowed")),
            p => parts.push(p),
        }
    }
    Ok(parts.join("/"))
}

/// Builds the gzip-compressed cpio archive holding `files` (and their parent directories).
pub fn build_archive(files: &[Injected<'_>]) -> Result<Vec<u8>, InjectError> {
    let io_err = |source| InjectError::Write {
        path: PathBuf::from("<memory>"),
        source,
    };
    let mut cpio = NewcWriter::new(GzEncoder::new(Vec::new(), Compression::best()));
    let mut dirs_done: Vec<String> = Vec::new();
    for f in files {
        let name = archive_name(f.name)?;
        let mut prefix = String::new();
        let parts: Vec<&str> = name.split('/').collect();
        for dir in &parts[..parts.len() - 1] {
            if !prefix.is_empty() {
                prefix.push('/');
            }
            prefix.push_str(dir);
            if !dirs_done.contains(&prefix) {
                cpio.add_dir(&prefix, 0o755).map_err(io_err)?;
                dirs_done.push(prefix.clone());
            }
        }
        cpio.add_file(&name, f.mode, f.data).map_err(io_err)?;
    }
    let gz = cpio.finish().map_err(io_err)?;
    gz.finish().map_err(io_err)
}

/// Writes `initrd` followed by the archive of `files` to `output` (atomically).
pub fn inject(initrd: &Path, files: &[Injected<'_>], output: &Path) -> Result<(), InjectError> {
    let archive = build_archive(files)?;
    let mut original = File::open(initrd).map_err(|source| InjectError::ReadInitrd {
        path: initrd.to_path_buf(),
        source,
    })?;
    write_atomically(output, |out| -> Result<(), InjectError> {
        io::copy(&mut original, out).map_err(|source| InjectError::ReadInitrd {
            path: initrd.to_path_buf(),
            source,
        })?;
        out.write_all(&archive)
            .map_err(|source| InjectError::Write {
                path: output.to_path_buf(),
                source,
            })
    })
    .map_err(|e| match e {
        AtomicError::Write(e) => e,
        AtomicError::Create { source, .. } | AtomicError::Persist { source, .. } => {
            InjectError::Write {
                path: output.to_path_buf(),
                source,
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_normalised_and_checked() {
        assert_eq!(archive_name("/preseed.cfg").unwrap(), "preseed.cfg");
        assert_eq!(archive_name("etc//x").unwrap(), "etc/x");
        assert!(archive_name("/").is_err());
        assert!(archive_name("../x").is_err());
    }

    #[test]
    fn archive_is_gzip_with_parent_dirs() {
        let a = build_archive(&[Injected {
            name: "etc/a/b.cfg",
            data: b"hi",
            mode: 0o644,
        }])
        .unwrap();
        assert_eq!(&a[..2], &[0x1f, 0x8b]);
        let mut raw = Vec::new();
        io::Read::read_to_end(&mut flate2::read::GzDecoder::new(&a[..]), &mut raw).unwrap();
        let text = String::from_utf8_lossy(&raw);
        let etc = text.find("etc\0").unwrap();
        let etca = text.find("etc/a\0").unwrap();
        let file = text.find("etc/a/b.cfg\0").unwrap();
        assert!(etc < etca && etca < file);
    }
}

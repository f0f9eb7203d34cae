//! Finding an installer's kernel and initrd on its ISO image, by the layouts the
//! distributions use.

use std::path::{Path, PathBuf};

use crate::atomic::write_atomically;
use crate::iso9660::{Entry, IsoError, IsoImage};

/// (layout, kernel, initrd), tried in order.
pub const LAYOUTS: &[(&str, &str, &str)] = &[
    ("debian-mini", "/linux", "/initrd.gz"),
    ("debian", "/install.amd/vmlinuz", "/install.amd/initrd.gz"),
    (
        "fedora",
        "/images/pxeboot/vmlinuz",
        "/images/pxeboot/initrd.img",
    ),
    ("ubuntu", "/casper/vmlinuz", "/casper/initrd"),
];

#[derive(Debug, thiserror::Error)]
pub enum LocateError {
    #[error(transparent)]
    Iso(#[from] IsoError),
    #[error("{path}: no installer kernel and initrd found (looked for {looked})")]
    NoLayout { path: PathBuf, looked: String },
    #[error("cannot create {path}: {source}")]
    Output {
        path: PathBuf,
        source: std::io::Error,
    },
}

pub struct BootFiles {
    pub layout: &'static str,
    pub kernel: (String, Entry),
    pub initrd: (String, Entry),
}

pub fn find(iso: &IsoImage, path: &Path) -> Result<BootFiles, LocateError> {
    for (layout, kernel, initrd) in LAYOUTS {
        let k = match iso.lookup(kernel) {
            Ok(e) if !e.is_dir => e,
            Ok(_) | Err(IsoError::NotFound(_)) => continue,
            Err(e) => return Err(e.into()),
        };
        match iso.lookup(initrd) {
            Ok(i) if !i.is_dir => {
                return Ok(BootFiles {
                    layout,
                    kernel: (kernel.to_string(), k),
                    initrd: (initrd.to_string(), i),
                })
            }
            Ok(_) | Err(IsoError::NotFound(_)) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Err(LocateError::NoLayout {
        path: path.to_path_buf(),
        looked: LAYOUTS
            .iter()
            .map(|(_, k, i)| format!("{k} + {i}"))
            .collect::<Vec<_>>()
            .join(", "),
    })
}

/// Extracted kernel and initrd paths.
pub struct Extracted {
    pub layout: &'static str,
    pub kernel: PathBuf,
    pub initrd: PathBuf,
}

/// Copies the kernel and initrd of the ISO at `iso_path` into `dir`, under their own
/// file names (each written atomically).
pub fn extract(iso_path: &Path, dir: &Path) -> Result<Extracted, LocateError> {
    let iso = IsoImage::open(iso_path)?;
    let files = find(&iso, iso_path)?;
    std::fs::create_dir_all(dir).map_err(|source| LocateError::Output {
        path: dir.to_path_buf(),
        source,
    })?;
    let write = |(name, entry): &(String, Entry)| -> Result<PathBuf, LocateError> {
        let base = name.rsplit('/').next().unwrap_or(name);
        let dest = dir.join(base);
        write_atomically(&dest, |f| iso.copy_to(entry, f)).map_err(|e| match e {
            crate::atomic::AtomicError::Write(e) => LocateError::Iso(e),
            crate::atomic::AtomicError::Create { path, source }
            | crate::atomic::AtomicError::Persist { path, source } => {
                LocateError::Output { path, source }
            }
        })?;
        Ok(dest)
    };
    let kernel = write(&files.kernel)?;
    let initrd = write(&files.initrd)?;
    Ok(Extracted {
        layout: files.layout,
        kernel,
        initrd,
    })
}

//! Creating empty raw and qcow2 images (`kiln img create`).

use std::fs::{File as StdFile, OpenOptions};
use std::path::{Path, PathBuf};

use imago::file::File;
use imago::qcow2::Qcow2;
use imago::{FormatCreateBuilder, Storage, StorageCreateOptions};

use super::{open_disk, DiskConfig, DiskError, ImageFormat};

/// What to create.
#[derive(Debug, Clone)]
pub struct CreateOptions {
    pub format: ImageFormat,
    /// Virtual size in bytes; defaults to the backing image's size.
    pub size: Option<u64>,
    /// Backing image, stored as given (relative names are relative to the new image).
    pub backing: Option<PathBuf>,
    /// The backing image's format; detected from its contents when not given.
    pub backing_format: Option<ImageFormat>,
    /// qcow2 cluster size; 64 KiB when not given.
    pub cluster_size: Option<u64>,
}

/// Create the image at `path`, which must not exist. On failure nothing is left behind.
pub fn create_image(path: &Path, opts: &CreateOptions) -> Result<(), DiskError> {
    let invalid = |reason: String| DiskError::unsupported(path, reason);
    if opts.backing.is_none() && opts.backing_format.is_some() {
        return Err(invalid("a backing format without a backing file".into()));
    }
    if opts.format == ImageFormat::Raw && opts.backing.is_some() {
        return Err(invalid("raw images cannot have a backing file".into()));
    }
    if opts.format == ImageFormat::Raw && opts.cluster_size.is_some() {
        return Err(invalid("raw images have no cluster size".into()));
    }
    // Resolve and open the backing image first, as qemu-img does: its size is the default.
    let backing = match &opts.backing {
        Some(b) => {
            let resolved = path.parent().unwrap_or(Path::new(".")).join(b);
            let disk = open_disk(&DiskConfig {
                readonly: true,
                format: opts.backing_format,
                ..DiskConfig::new(resolved)
            })?;
            Some((b.to_string_lossy().into_owned(), disk.format(), disk.size()))
        }
        None => None,
    };
    let size = match (opts.size, &backing) {
        (Some(s), _) => s,
        (None, Some((_, _, s))) => *s,
        (None, None) => {
            return Err(invalid(
                "no size given and no backing file to take it from".into(),
            ))
        }
    };
    if size % 512 != 0 {
        return Err(invalid(format!(
            "size {size} is not a multiple of 512 bytes"
        )));
    }

    let open_err = DiskError::io(path);
    // create_new: never clobber an existing image.
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(path)
        .map_err(open_err)?;
    let result = match opts.format {
        ImageFormat::Raw => file.set_len(size).map_err(open_err),
        ImageFormat::Qcow2 => {
            drop(file);
            create_qcow2(
                path,
                size,
                backing.map(|(n, f, _)| (n, f)),
                opts.cluster_size,
            )
        }
    };
    if result.is_err() {
        let _ = std::fs::remove_file(path);
    }
    result
}

fn create_qcow2(
    path: &Path,
    size: u64,
    backing: Option<(String, ImageFormat)>,
    cluster_size: Option<u64>,
) -> Result<(), DiskError> {
    let open_err = DiskError::io(path);
    let storage = File::create_open(StorageCreateOptions::new().filename(path).overwrite(true))
        .map_err(open_err)?;
    let mut builder = Qcow2::<File>::create_builder(storage).size(size);
    if let Some(cs) = cluster_size {
        builder = builder.cluster_size(cs as usize);
    }
    if let Some((name, format)) = backing {
        builder = builder.backing(name, format.name().to_owned());
    }
    builder.create().map_err(open_err)?;
    StdFile::open(path)
        .and_then(|f| f.sync_all())
        .map_err(open_err)
}

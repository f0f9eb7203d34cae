//! Creating raw and qcow2 images (`kiln img create`), empty or preallocated.

use std::fs::{File as StdFile, OpenOptions};
use std::path::{Path, PathBuf};

use imago::file::File;
use imago::format::PreallocateMode;
use imago::qcow2::Qcow2;
use imago::raw::Raw;
use imago::{FormatCreateBuilder, Storage, StorageCreateOptions};

use super::qcow2_layout::cluster_bits;
use super::{backing_path, open_disk, DiskConfig, DiskError, ImageFormat};

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
    pub preallocation: Preallocation,
}

impl CreateOptions {
    /// An image of `format` and `size`, with no backing file and defaults otherwise.
    pub fn new(format: ImageFormat, size: Option<u64>) -> Self {
        CreateOptions {
            format,
            size,
            backing: None,
            backing_format: None,
            cluster_size: None,
            preallocation: Preallocation::Off,
        }
    }
}

/// qemu-img's `preallocation` modes: what is set aside for the data at creation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Preallocation {
    /// Nothing: a sparse raw file, a qcow2 image with no clusters.
    #[default]
    Off,
    /// qcow2 only: every cluster allocated in the tables, the data left as holes in
    /// the file, so no later write allocates metadata.
    Metadata,
    /// As metadata, and the data's blocks reserved in the file system (fallocate).
    Falloc,
    /// As metadata, and zeroes written over all the data.
    Full,
}

impl Preallocation {
    pub const NAMES: [&'static str; 4] = ["off", "metadata", "falloc", "full"];

    pub fn name(self) -> &'static str {
        Self::NAMES[self as usize]
    }

    /// Whether an image of `format` can be preallocated this way: raw images have no
    /// metadata to preallocate.
    pub(crate) fn check_format(self, format: ImageFormat) -> Result<(), String> {
        if format == ImageFormat::Raw && self == Preallocation::Metadata {
            return Err(
                "raw images take preallocation off, falloc or full (they have no metadata)".into(),
            );
        }
        Ok(())
    }

    /// imago's mode: it allocates qcow2 clusters (metadata), and reserves (falloc) or
    /// writes (full) their data in the file.
    pub(crate) fn imago_mode(self) -> PreallocateMode {
        match self {
            Preallocation::Off => PreallocateMode::None,
            Preallocation::Metadata => PreallocateMode::FormatAllocate,
            Preallocation::Falloc => PreallocateMode::FullAllocate,
            Preallocation::Full => PreallocateMode::WriteData,
        }
    }
}

impl std::str::FromStr for Preallocation {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        const ALL: [Preallocation; 4] = [
            Preallocation::Off,
            Preallocation::Metadata,
            Preallocation::Falloc,
            Preallocation::Full,
        ];
        ALL.into_iter().find(|p| p.name() == s).ok_or_else(|| {
            format!(
                "unknown preallocation mode '{s}' (expected {})",
                Preallocation::NAMES.join(", ")
            )
        })
    }
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
    opts.preallocation
        .check_format(opts.format)
        .map_err(invalid)?;
    if opts.backing.is_some() && opts.preallocation != Preallocation::Off {
        // As qemu-img without extended L2: an allocated cluster hides the backing
        // file's data, so a preallocated overlay would read as zeroes.
        return Err(invalid(format!(
            "preallocation={} with a backing file (allocated clusters would hide its data)",
            opts.preallocation.name()
        )));
    }
    // Resolve and open the backing image first, as qemu-img does: its size is the default.
    let backing = match &opts.backing {
        Some(b) => {
            let resolved = backing_path(path, b);
            let disk = open_disk(&DiskConfig::read_only(resolved, opts.backing_format))?;
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

    if let Some(cs) = opts.cluster_size {
        cluster_bits(cs).map_err(invalid)?;
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
        ImageFormat::Raw => {
            drop(file);
            create_raw(path, size, opts.preallocation)
        }
        ImageFormat::Qcow2 => {
            drop(file);
            create_qcow2(
                path,
                size,
                backing.map(|(n, f, _)| (n, f)),
                opts.cluster_size,
                opts.preallocation,
            )
        }
    };
    if result.is_err() {
        let _ = std::fs::remove_file(path);
    }
    result
}

fn create_raw(path: &Path, size: u64, prealloc: Preallocation) -> Result<(), DiskError> {
    let open_err = DiskError::io(path);
    let storage = File::create_open(StorageCreateOptions::new().filename(path).overwrite(true))
        .map_err(open_err)?;
    Raw::<File>::create_builder(storage)
        .size(size)
        .preallocate(prealloc.imago_mode())
        .create()
        .map_err(open_err)?;
    let file = OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(open_err)?;
    if prealloc == Preallocation::Off {
        super::raw::allocate_first_block(&file, size).map_err(open_err)?;
    }
    file.sync_all().map_err(open_err)
}

fn create_qcow2(
    path: &Path,
    size: u64,
    backing: Option<(String, ImageFormat)>,
    cluster_size: Option<u64>,
    prealloc: Preallocation,
) -> Result<(), DiskError> {
    let open_err = DiskError::io(path);
    let storage = File::create_open(StorageCreateOptions::new().filename(path).overwrite(true))
        .map_err(open_err)?;
    let mut builder = Qcow2::<File>::create_builder(storage)
        .size(size)
        .preallocate(prealloc.imago_mode());
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

//! What `kiln img info` reports about an image, without opening it for I/O (so it also
//! works on images kiln refuses to run, such as dirty ones).

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use super::qcow2::bitmaps::{bitmaps_in_force, read_directory, Bitmap};
use super::qcow2::refcheck::RefcountError;
use super::qcow2::snapshots::{read_snapshots, Snapshot};
use super::qcow2::{read_header, MAX_CHAIN_DEPTH};
use super::{backing_format, backing_path, probe_format, DiskError, ImageFormat};

/// qcow2-specific facts (qemu-img's "format-specific" data).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Qcow2Info {
    pub compat: &'static str,
    pub refcount_bits: u32,
    pub corrupt: bool,
    pub extended_l2: bool,
    pub lazy_refcounts: bool,
    pub compression_type: &'static str,
    pub data_file: Option<String>,
}

/// One image's facts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageInfo {
    pub filename: PathBuf,
    pub format: ImageFormat,
    /// The format as qemu-img reports it: `format`'s name, or "file" for a backing file
    /// its overlay records as QEMU's "file" protocol driver (read as raw).
    pub format_name: &'static str,
    pub virtual_size: u64,
    /// Bytes allocated on the host.
    pub actual_size: u64,
    pub cluster_size: Option<u64>,
    /// As stored in the image.
    pub backing_filename: Option<String>,
    /// Resolved relative to the image's directory.
    pub full_backing_filename: Option<PathBuf>,
    pub backing_format: Option<String>,
    pub dirty: bool,
    /// Internal snapshots (qcow2).
    pub snapshots: Vec<Snapshot>,
    /// Persistent dirty bitmaps in force (qcow2).
    pub bitmaps: Vec<Bitmap>,
    pub qcow2: Option<Qcow2Info>,
}

/// Inspect the image at `path`.
pub fn image_info(path: &Path) -> Result<ImageInfo, DiskError> {
    image_info_as(path, None)
}

/// The image at `path` and each image of its backing chain, top first: the backing
/// files as the images name them (relative to the image naming them), in the format
/// they record (detected where they record none).
pub fn chain_info(path: &Path, format: Option<ImageFormat>) -> Result<Vec<ImageInfo>, DiskError> {
    let mut chain = vec![image_info_as(path, format)?];
    let mut seen = vec![std::fs::canonicalize(path).map_err(DiskError::io(path))?];
    loop {
        let last = &chain[chain.len() - 1];
        let Some(next) = last.full_backing_filename.clone() else {
            return Ok(chain);
        };
        if chain.len() > MAX_CHAIN_DEPTH {
            return Err(DiskError::unsupported(
                path,
                format!("backing chain deeper than {MAX_CHAIN_DEPTH}"),
            ));
        }
        let canonical = std::fs::canonicalize(&next).map_err(DiskError::io(&next))?;
        if seen.contains(&canonical) {
            return Err(DiskError::unsupported(
                &last.filename,
                format!("its backing chain loops back to {}", next.display()),
            ));
        }
        seen.push(canonical);
        let recorded = last.backing_format.as_deref();
        let format = backing_format(&last.filename, recorded, &next)?;
        let mut info = image_info_as(&next, Some(format))?;
        if recorded == Some("file") {
            info.format_name = "file";
        }
        chain.push(info);
    }
}

/// Inspect the image at `path` as `format` (detected when `None`): a qcow2 file read
/// as raw shows its own bytes, as with `qemu-img info -f raw`.
pub fn image_info_as(path: &Path, format: Option<ImageFormat>) -> Result<ImageInfo, DiskError> {
    let file = std::fs::File::open(path).map_err(DiskError::io(path))?;
    let meta = file.metadata().map_err(DiskError::io(path))?;
    let file_len = super::file_len(&file).map_err(DiskError::io(path))?;
    let format = match format {
        Some(f) => f,
        None => probe_format(path)?,
    };
    let mut info = ImageInfo {
        filename: path.to_owned(),
        format,
        format_name: format.name(),
        // A raw image's disk (see `raw::disk_size`); a qcow2 image's size is read
        // from its header below.
        virtual_size: super::raw::disk_size(file_len),
        actual_size: meta.blocks() * 512,
        cluster_size: None,
        backing_filename: None,
        full_backing_filename: None,
        backing_format: None,
        dirty: false,
        snapshots: Vec::new(),
        bitmaps: Vec::new(),
        qcow2: None,
    };
    if format == ImageFormat::Raw {
        return Ok(info);
    }
    let (h, file_len) = read_header(path)?;
    use super::qcow2::header::incompat;
    info.virtual_size = h.size;
    info.cluster_size = Some(h.cluster_size());
    info.full_backing_filename = h.backing_file.as_ref().map(|b| backing_path(path, b));
    info.backing_filename = h.backing_file.clone();
    info.backing_format = h.backing_format.clone();
    info.dirty = h.incompatible_features & incompat::DIRTY != 0;
    let metadata_err = |e| match e {
        RefcountError::Layout(source) => DiskError::Corrupt {
            path: path.to_owned(),
            source,
        },
        other => DiskError::Io(std::io::Error::other(other.to_string())),
    };
    let bitmaps = bitmaps_in_force(&h);
    if h.nb_snapshots > 0 || bitmaps.is_some() {
        let file = std::fs::File::open(path).map_err(DiskError::io(path))?;
        if h.nb_snapshots > 0 {
            info.snapshots = read_snapshots(&file, &h, file_len).map_err(metadata_err)?.0;
        }
        if let Some(ext) = bitmaps {
            info.bitmaps = read_directory(&file, ext, file_len).map_err(metadata_err)?;
        }
    }
    info.qcow2 = Some(Qcow2Info {
        compat: h.compat(),
        refcount_bits: h.refcount_bits(),
        corrupt: h.incompatible_features & incompat::CORRUPT != 0,
        extended_l2: h.incompatible_features & incompat::EXTENDED_L2 != 0,
        lazy_refcounts: h.compatible_features & 1 != 0,
        compression_type: match h.compression_type {
            0 => "zlib",
            1 => "zstd",
            _ => "unknown",
        },
        data_file: h.data_file.clone(),
    });
    Ok(info)
}

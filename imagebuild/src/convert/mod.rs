//! `kiln img convert`: copy any image kiln's block layer reads (raw or qcow2, with
//! backing chains) into a fresh raw (sparse) or qcow2 image: version 3 or 2, any
//! cluster size, optionally deflate-compressed, optionally over a backing file. With a
//! backing file, only the clusters whose contents differ from it are written, so the
//! output shows the input's bytes whatever the backing file holds. Ranges the images'
//! maps say read zero are not read (see `kiln_devices::block::known_zero`). The output is
//! written to a temporary file renamed at the end, so a failure leaves nothing at the
//! destination; a device (a disk, /dev/null) is written in place instead (device.rs),
//! and so is an existing image with `existing` (qemu-img's `-n`, existing.rs). A
//! preallocated output is created as `kiln img create` makes it, then written as an
//! existing image is (preallocated.rs).
//! The copy loop is in copy.rs.

mod copy;
mod device;
mod existing;
mod gather;
mod preallocated;
mod qcow2_writer;
mod runs;

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use kiln_devices::block::create::Preallocation;
use kiln_devices::block::known_zero::SparseReader;
use kiln_devices::block::qcow2_layout::cluster_bits;
use kiln_devices::block::raw::allocate_first_block;
use kiln_devices::block::{
    backing_path, open_disk, DiskBackend, DiskConfig, DiskError, ImageFormat,
};

use crate::atomic::{write_atomically, AtomicError};
use copy::Copy;
use device::{device_kind, Device};
use existing::ZeroRanges;
use gather::Gather;
use qcow2_writer::{Qcow2Layout, Qcow2Writer, DEFAULT_CLUSTER_BITS};

#[derive(Debug, thiserror::Error)]
pub enum ConvertError {
    #[error("cannot open input {path}: {source}")]
    Open { path: PathBuf, source: DiskError },
    #[error("cannot open backing file {path}: {source}")]
    Backing { path: PathBuf, source: DiskError },
    #[error("reading {path} at byte {offset}: {source}")]
    Read {
        path: PathBuf,
        offset: u64,
        source: DiskError,
    },
    #[error("writing {path}: {source}")]
    Write { path: PathBuf, source: io::Error },
    #[error("writing {path}: {source}")]
    Target { path: PathBuf, source: DiskError },
    #[error("{0} needs qcow2 output")]
    NeedsQcow2(&'static str),
    #[error("{0}")]
    Invalid(String),
}

pub struct ConvertOptions<'a> {
    /// Output format.
    pub format: ImageFormat,
    pub compress: bool,
    /// Input format; detected from the contents when `None`.
    pub input_format: Option<ImageFormat>,
    /// qcow2 cluster size (512 B to 2 MiB, a power of two); 64 KiB when `None`.
    pub cluster_size: Option<u64>,
    /// Make a version 2 (compat=0.10) qcow2 image instead of version 3.
    pub compat_v2: bool,
    /// qcow2 backing file, stored as given (a relative name is relative to the
    /// output's directory). Only clusters whose contents differ from it are written.
    pub backing: Option<PathBuf>,
    /// The backing file's format; detected from its contents when `None`.
    pub backing_format: Option<ImageFormat>,
    /// Called with (bytes done, bytes in all) after every mebibyte and at the end.
    pub progress: Option<&'a mut dyn FnMut(u64, u64)>,
    /// The output exists and is written in place, in `format` (qemu-img's `-n`; see
    /// existing.rs).
    pub existing: bool,
    /// What a new output sets aside for its data (qemu-img's `-o preallocation`).
    pub preallocation: Preallocation,
    /// Read the input while others write it (a running VM's disk), as it is now
    /// (qemu-img's `-U`).
    pub force_share: bool,
    /// qemu-img's `-S`: raw output leaves runs of zeroes this long (aligned) as holes;
    /// 0 writes every byte of the output as data (a fully allocated image). A
    /// multiple of 512 up to [`MAX_SPARSE_SIZE`]; [`DEFAULT_SPARSE_SIZE`] by default.
    pub sparse_size: u64,
}

/// qemu-img convert's default `-S`.
pub const DEFAULT_SPARSE_SIZE: u64 = 4096;
/// Largest `-S` kiln takes, as qemu-img. The copy loop reads chunks of at least the
/// sparse size, so that a run of zeroes that long fits in one.
pub const MAX_SPARSE_SIZE: u64 = 16 << 20;

impl ConvertOptions<'_> {
    /// A plain conversion to `format`: 64 KiB clusters, version 3, no backing file.
    pub fn new(format: ImageFormat) -> Self {
        ConvertOptions {
            format,
            compress: false,
            input_format: None,
            cluster_size: None,
            compat_v2: false,
            backing: None,
            backing_format: None,
            progress: None,
            existing: false,
            preallocation: Preallocation::Off,
            force_share: false,
            sparse_size: DEFAULT_SPARSE_SIZE,
        }
    }
}

/// Bytes read at a time (at least one cluster), and between progress reports.
const CHUNK: u64 = 1 << 20;

/// Statistics of a conversion.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct ConvertStats {
    pub virtual_size: u64,
    pub cluster_size: u64,
    /// Clusters written with data.
    pub data_clusters: u64,
    /// Clusters that read as zeroes without data: unallocated, or zero clusters
    /// over a backing file.
    pub zero_clusters: u64,
    /// Clusters left to the backing file, which holds the same bytes.
    pub backing_clusters: u64,
}

/// The backing file as the header names it, opened from the output's directory.
struct Backing {
    name: String,
    path: PathBuf,
    disk: Arc<dyn DiskBackend>,
}

fn check_options(opts: &ConvertOptions) -> Result<u32, ConvertError> {
    // What shapes a new qcow2 image: for qcow2 output only, and not for an existing
    // image, which has its own.
    let shaping = [
        (opts.compress, "compression (-c)"),
        (opts.cluster_size.is_some(), "a cluster size"),
        (opts.compat_v2, "compat=0.10"),
        (opts.backing.is_some(), "a backing file"),
    ];
    if let Some((_, what)) = shaping.iter().find(|(asked, _)| *asked) {
        if opts.existing {
            return Err(ConvertError::Invalid(format!(
                "{what} is for new images; -n writes into an existing one as it is"
            )));
        }
        if opts.format != ImageFormat::Qcow2 {
            return Err(ConvertError::NeedsQcow2(what));
        }
    }
    if opts.backing.is_none() && opts.backing_format.is_some() {
        return Err(ConvertError::Invalid(
            "a backing format without a backing file".into(),
        ));
    }
    check_preallocation(opts)?;
    check_sparse_size(opts)?;
    let cluster = opts.cluster_size.unwrap_or(1 << DEFAULT_CLUSTER_BITS);
    cluster_bits(cluster).map_err(ConvertError::Invalid)
}

/// `-S`: whole sectors, at most one chunk; 0 (everything written) cannot leave
/// clusters to a backing file, and an existing or preallocated output is written
/// as it is made.
fn check_sparse_size(opts: &ConvertOptions) -> Result<(), ConvertError> {
    let s = opts.sparse_size;
    if s % 512 != 0 || s > MAX_SPARSE_SIZE {
        return Err(ConvertError::Invalid(format!(
            "-S {s}: the sparse size must be a multiple of 512 bytes up to {MAX_SPARSE_SIZE} \
             (0 writes every byte)"
        )));
    }
    let conflict = [
        (
            opts.backing.is_some() && s == 0,
            "a backing file, which holds what is not written",
        ),
        (
            opts.existing,
            "-n, which writes an existing image's zeroes as write-zeroes",
        ),
        (opts.preallocation != Preallocation::Off, "preallocation"),
    ];
    match conflict.iter().find(|(set, _)| *set) {
        Some((_, what)) if s != DEFAULT_SPARSE_SIZE => Err(ConvertError::Invalid(format!(
            "-S {s} cannot be combined with {what}"
        ))),
        _ => Ok(()),
    }
}

/// Preallocation shapes a new image made by `create_image`: version 3, no compression,
/// no backing file, and metadata only in qcow2.
fn check_preallocation(opts: &ConvertOptions) -> Result<(), ConvertError> {
    let mode = opts.preallocation;
    if mode == Preallocation::Off {
        return Ok(());
    }
    let conflict = [
        (
            opts.existing,
            "-n, which writes into an existing image as it is",
        ),
        (opts.compress, "compression (-c)"),
        (
            opts.compat_v2,
            "compat=0.10 (kiln preallocates version 3 images)",
        ),
        (
            opts.backing.is_some(),
            "a backing file (allocated clusters would hide its data)",
        ),
    ];
    if let Some((_, what)) = conflict.iter().find(|(set, _)| *set) {
        return Err(ConvertError::Invalid(format!(
            "preallocation={} cannot be combined with {what}",
            mode.name()
        )));
    }
    if mode == Preallocation::Metadata && opts.format != ImageFormat::Qcow2 {
        return Err(ConvertError::NeedsQcow2("preallocation=metadata"));
    }
    Ok(())
}

fn open_backing(output: &Path, opts: &ConvertOptions) -> Result<Option<Backing>, ConvertError> {
    let Some(name) = &opts.backing else {
        return Ok(None);
    };
    let Some(text) = name.to_str() else {
        return Err(ConvertError::Invalid(format!(
            "backing file name {} is not UTF-8",
            name.display()
        )));
    };
    let path = backing_path(output, name);
    let same = |a: &Path, b: &Path| match (a.canonicalize(), b.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    };
    if same(&path, output) {
        return Err(ConvertError::Invalid(format!(
            "{} would be its own backing file",
            output.display()
        )));
    }
    let disk = open_disk(&DiskConfig::read_only(&path, opts.backing_format)).map_err(|source| {
        ConvertError::Backing {
            path: path.clone(),
            source,
        }
    })?;
    Ok(Some(Backing {
        name: text.to_owned(),
        path,
        disk,
    }))
}

pub fn convert(
    input: &Path,
    output: &Path,
    opts: &mut ConvertOptions,
) -> Result<ConvertStats, ConvertError> {
    let cluster_bits = check_options(opts)?;
    let disk = open_disk(&DiskConfig {
        force_share: opts.force_share,
        ..DiskConfig::read_only(input, opts.input_format)
    })
    .map_err(|source| ConvertError::Open {
        path: input.to_path_buf(),
        source,
    })?;
    let backing = open_backing(output, opts)?;
    let size = disk.size();
    // Every writer reads the input the same way: with -U, without taking its lock.
    let force_share = opts.force_share;
    let read_input = || SparseReader::new(input, disk.as_ref(), force_share);
    let write_err = |source| ConvertError::Write {
        path: output.to_path_buf(),
        source,
    };
    // Everything the copy needs but the file it writes.
    let mut copy_into =
        |file: &File, device: Option<&Device>| -> Result<ConvertStats, ConvertError> {
            let qcow2 = match opts.format {
                ImageFormat::Qcow2 => Some(
                    Qcow2Writer::new(
                        file,
                        Qcow2Layout {
                            size,
                            cluster_bits,
                            version: if opts.compat_v2 { 2 } else { 3 },
                            compress: opts.compress,
                            backing: backing.as_ref().map(|b| (b.name.clone(), b.disk.format())),
                        },
                    )
                    .map_err(write_err)?,
                ),
                ImageFormat::Raw => {
                    if device.is_none() {
                        // Before the copy, which writes over it where the input has data.
                        allocate_first_block(file, size).map_err(write_err)?;
                    }
                    None
                }
            };
            let mut copy = Copy {
                input: read_input(),
                backing: backing
                    .as_ref()
                    .map(|b| SparseReader::new(&b.path, b.disk.as_ref(), false)),
                output: (output, file),
                device,
                qcow2,
                raw_gather: Gather::default(),
                stats: ConvertStats {
                    virtual_size: size,
                    cluster_size: 1 << cluster_bits,
                    ..Default::default()
                },
                sparse: Some(opts.sparse_size).filter(|s| *s > 0),
            };
            copy.run(opts.progress.as_mut())?;
            match copy.qcow2 {
                Some(w) => {
                    w.finish().map_err(write_err)?;
                }
                None => {
                    copy.raw_gather.flush(&mut &*file).map_err(write_err)?;
                    // Holes for the zero clusters: setting the length leaves them
                    // unallocated. A device has its size, and its zeroes are written.
                    if device.is_none() {
                        file.set_len(size).map_err(write_err)?
                    }
                }
            }
            Ok(copy.stats)
        };
    let device = device_kind(output).map_err(write_err)?;
    if opts.existing && device.is_none() {
        let target = existing::open_target(output, opts.format, size)?;
        let input = read_input();
        return existing::copy_into(
            input,
            output,
            target.as_ref(),
            ZeroRanges::Unmap,
            opts.progress.as_mut(),
        );
    }
    if opts.preallocation != Preallocation::Off {
        if device.is_some() {
            return Err(ConvertError::Invalid(format!(
                "{} is a device: preallocation is for image files",
                output.display()
            )));
        }
        let input = read_input();
        return preallocated::convert(input, output, opts);
    }
    if let Some(kind) = device {
        if opts.format != ImageFormat::Raw {
            return Err(ConvertError::Invalid(format!(
                "{} is a device: kiln writes only raw images (-O raw) to devices",
                output.display()
            )));
        }
        let device = Device::open(output, kind, size).map_err(write_err)?;
        let stats = copy_into(&device.file, Some(&device))?;
        device.finish().map_err(write_err)?;
        return Ok(stats);
    }
    let result = write_atomically(output, |file: &mut File| copy_into(file, None));
    result.map_err(|e| match e {
        AtomicError::Write(e) => e,
        AtomicError::Create { source, .. } | AtomicError::Persist { source, .. } => {
            write_err(source)
        }
    })
}

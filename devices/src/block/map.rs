//! `kiln img map`: where each range of an image's guest data comes from, as
//! `qemu-img map` reports it.
//!
//! For every range the chain is walked from the top (depth 0) down to the first layer
//! that decides it: a data cluster (with its host offset, unless compressed), a zero
//! cluster (with the host offset it keeps, if any), or in a raw file data or a hole. A range no layer decides reads zero and
//! is reported at the bottom layer, or at the layer above a backing file that ends
//! before it. Adjacent ranges with the same answer (and contiguous host offsets) are
//! merged, as qemu-img merges them. In an image that looks preallocated (see
//! `qcow2::prealloc`), data clusters that are holes of the file are data that reads
//! zero, as qemu-img reports them.

use std::fs::File;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

use super::lock::{Access, ImageLock};
use super::qcow2::prealloc::looks_preallocated;
use super::qcow2::zero_alloc::ZeroClusterOffsets;
use super::qcow2::{check_chain, LayerExtent, Qcow2Disk};
use super::raw::disk_size;
use super::{probe_format, DiskBackend, DiskError, ImageFormat};

/// Most bytes looked up at once (each lookup may split it further).
const PROBE: u64 = 1 << 30;

/// One range of the map.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MapEntry {
    pub start: u64,
    pub length: u64,
    /// The layer that decides the range: 0 is the image itself.
    pub depth: usize,
    /// Some layer holds the range (false: it reads zero because none does).
    pub present: bool,
    pub zero: bool,
    pub data: bool,
    /// Where the data lies in `file` (not for compressed clusters and zero clusters).
    pub offset: Option<u64>,
    /// The file of layer `depth`.
    pub file: PathBuf,
}

impl MapEntry {
    /// Whether `next` continues this entry (qemu-img's rule for merging).
    fn continued_by(&self, next: &MapEntry) -> bool {
        self.depth == next.depth
            && (self.present, self.zero, self.data) == (next.present, next.zero, next.data)
            && match (self.offset, next.offset) {
                (None, None) => true,
                (Some(a), Some(b)) => a + self.length == b,
                _ => false,
            }
    }
}

/// A layer of the chain, open read-only on its own.
enum Layer {
    Qcow2 {
        disk: Box<Qcow2Disk>,
        /// The image file, when the image looks preallocated (see
        /// [`looks_preallocated`]): its data clusters are then asked whether they are
        /// holes of the file.
        holes: Option<(File, u64)>,
        /// Where zero clusters keep host clusters (version 3).
        zero_offsets: Option<ZeroClusterOffsets>,
    },
    Raw {
        file: File,
        size: u64,
        _lock: ImageLock,
    },
}

/// What one layer says about `[offset, offset + len)`.
enum Status {
    /// Left to the layer below.
    Below,
    /// Decided here: as qemu-img's map, whether it reads zero, whether it is data, and
    /// where in the layer's file it lies (where that is known).
    Held {
        zero: bool,
        data: bool,
        offset: Option<u64>,
    },
}

impl Layer {
    fn open(path: &Path, format: ImageFormat, access: Access) -> Result<Self, DiskError> {
        Ok(match format {
            ImageFormat::Qcow2 => {
                let disk = Box::new(Qcow2Disk::open_top_layer(path, access)?.0);
                let header = disk.opened_header();
                let file = File::open(path).map_err(DiskError::io(path))?;
                let len = super::file_len(&file).map_err(DiskError::io(path))?;
                let zero_offsets = file
                    .try_clone()
                    .ok()
                    .and_then(|f| ZeroClusterOffsets::new(f, header));
                // Data clusters in an external data file are not this file's holes.
                let holes = (header.data_file.is_none() && looks_preallocated(&file, header))
                    .then_some((file, len));
                Layer::Qcow2 {
                    disk,
                    holes,
                    zero_offsets,
                }
            }
            ImageFormat::Raw => {
                let lock = ImageLock::acquire(path, access)?;
                let file = File::open(path).map_err(DiskError::io(path))?;
                // Past the file's end (inside its last sector) it reads zero.
                let size = disk_size(super::file_len(&file).map_err(DiskError::io(path))?);
                Layer::Raw {
                    file,
                    size,
                    _lock: lock,
                }
            }
        })
    }

    fn size(&self) -> u64 {
        match self {
            Layer::Qcow2 { disk, .. } => disk.size(),
            Layer::Raw { size, .. } => *size,
        }
    }

    /// The status at `offset` and for how many bytes (at most `len`) it holds.
    fn status(&self, offset: u64, len: u64) -> Result<(Status, u64), DiskError> {
        match self {
            Layer::Qcow2 {
                disk,
                holes,
                zero_offsets,
            } => {
                let (kind, n) = disk.layer_extent(offset, len)?;
                Ok(match (kind, holes) {
                    (LayerExtent::Backing, _) => (Status::Below, n),
                    (LayerExtent::Zero, _) => match zero_offsets {
                        Some(z) => {
                            let (at, n) = z.run(offset, n);
                            (held(true, false, at), n)
                        }
                        None => (held(true, false, None), n),
                    },
                    // A data cluster of a preallocated image may be a hole, which reads
                    // zero (qemu-img: data and zero at once).
                    (LayerExtent::Data { host: Some(at) }, Some((file, file_len))) => {
                        let (is_data, n) = raw_status(file, *file_len, at, n);
                        (held(!is_data, true, Some(at)), n)
                    }
                    (LayerExtent::Data { host }, _) => (held(false, true, host), n),
                })
            }
            Layer::Raw { file, size, .. } => {
                let (is_data, n) = raw_status(file, *size, offset, len);
                Ok((held(!is_data, is_data, Some(offset)), n))
            }
        }
    }
}

fn held(zero: bool, data: bool, offset: Option<u64>) -> Status {
    Status::Held { zero, data, offset }
}

/// Whether `offset` of a file is data (or a hole), from SEEK_DATA / SEEK_HOLE, and for
/// how many bytes (at most `len`). Where the file system cannot tell, everything is
/// data (as qemu-img assumes); past the file's end is a hole.
fn raw_status(file: &File, size: u64, offset: u64, len: u64) -> (bool, u64) {
    let seek = |whence| -> std::io::Result<u64> {
        let at = libc::off_t::try_from(offset).map_err(std::io::Error::other)?;
        // SAFETY: lseek on a descriptor this function borrows open; it only moves
        // the file position, which nothing else here relies on.
        let r = unsafe { libc::lseek(file.as_raw_fd(), at, whence) };
        u64::try_from(r).map_err(|_| std::io::Error::last_os_error())
    };
    let end = offset + len;
    match seek(libc::SEEK_DATA) {
        // Data starts here: it runs to the next hole.
        Ok(at) if at == offset => {
            let hole_at = seek(libc::SEEK_HOLE).unwrap_or(size);
            (true, hole_at.clamp(offset + 1, end) - offset)
        }
        // A hole up to the next data.
        Ok(at) => (false, at.min(end) - offset),
        // No data after `offset`: a hole to the end.
        Err(e) if e.raw_os_error() == Some(libc::ENXIO) => (false, len),
        Err(_) => (true, len),
    }
}

/// The map of the image at `path` (format detected unless given), every byte of its
/// virtual size covered once, in order. With `force_share` (qemu-img's `-U`) images
/// others are writing are mapped too, as they are at that moment.
pub fn map_image(
    path: &Path,
    format: Option<ImageFormat>,
    force_share: bool,
) -> Result<Vec<MapEntry>, DiskError> {
    let access = if force_share {
        Access::ReadShared
    } else {
        Access::Read
    };
    let format = match format {
        Some(f) => f,
        None => probe_format(path)?,
    };
    let chain = match format {
        ImageFormat::Qcow2 => check_chain(path, false)?,
        ImageFormat::Raw => vec![(path.to_owned(), ImageFormat::Raw)],
    };
    let layers = chain
        .iter()
        .map(|(p, f)| Layer::open(p, *f, access))
        .collect::<Result<Vec<_>, _>>()?;
    let size = layers[0].size();
    let mut entries: Vec<MapEntry> = Vec::new();
    let mut offset = 0;
    while offset < size {
        let entry = entry_at(&layers, &chain, offset, (size - offset).min(PROBE))?;
        offset += entry.length;
        match entries.last_mut() {
            Some(last) if last.continued_by(&entry) => last.length += entry.length,
            _ => entries.push(entry),
        }
    }
    Ok(entries)
}

/// The entry for the range at `offset` (at most `len` bytes): the first layer from the
/// top that decides it.
fn entry_at(
    layers: &[Layer],
    chain: &[(PathBuf, ImageFormat)],
    offset: u64,
    mut len: u64,
) -> Result<MapEntry, DiskError> {
    let entry = |depth: usize, len, present, zero, data, offset_in_file| MapEntry {
        start: offset,
        length: len,
        depth,
        present,
        zero,
        data,
        offset: offset_in_file,
        file: chain[depth].0.clone(),
    };
    for (depth, layer) in layers.iter().enumerate() {
        let (status, n) = layer.status(offset, len)?;
        len = n;
        if let Status::Held { zero, data, offset } = status {
            return Ok(entry(depth, len, true, zero, data, offset));
        }
        match layers.get(depth + 1).map(Layer::size) {
            // Nothing below: unallocated reads zero.
            None => return Ok(entry(depth, len, false, true, false, None)),
            // The backing file ends before this range: zero, decided here.
            Some(below) if below <= offset => {
                return Ok(entry(depth, len, false, true, false, None))
            }
            Some(below) => len = len.min(below - offset),
        }
    }
    // The last layer returns above; an empty chain cannot be opened.
    Err(DiskError::Io(std::io::Error::other("no layers to map")))
}

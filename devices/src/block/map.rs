//! `kiln img map`: where each range of an image's guest data comes from, as
//! `qemu-img map` reports it.
//!
//! For every range the chain is walked from the top (depth 0) down to the first layer
//! that decides it: a data cluster (with its host offset, unless compressed), a zero
//! cluster, or in a raw file data or a hole. A range no layer decides reads zero and
//! is reported at the bottom layer, or at the layer above a backing file that ends
//! before it. Adjacent ranges with the same answer (and contiguous host offsets) are
//! merged, as qemu-img merges them.
//!
//! Not reported as qemu-img does: the host offset of a zero cluster that still has
//! one (qemu-img 7.2 prints it; imago does not say).

use std::fs::File;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

use super::lock::{Access, ImageLock};
use super::qcow2::{check_chain, LayerExtent, Qcow2Disk};
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
    Qcow2(Box<Qcow2Disk>),
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
    Zero {
        offset: Option<u64>,
    },
    Data {
        offset: Option<u64>,
    },
}

impl Layer {
    fn open(path: &Path, format: ImageFormat, access: Access) -> Result<Self, DiskError> {
        Ok(match format {
            ImageFormat::Qcow2 => {
                Layer::Qcow2(Box::new(Qcow2Disk::open_top_layer(path, access)?.0))
            }
            ImageFormat::Raw => {
                let lock = ImageLock::acquire(path, access)?;
                let file = File::open(path).map_err(DiskError::io(path))?;
                let size = file.metadata().map_err(DiskError::io(path))?.len();
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
            Layer::Qcow2(d) => d.size(),
            Layer::Raw { size, .. } => *size,
        }
    }

    /// The status at `offset` and for how many bytes (at most `len`) it holds.
    fn status(&self, offset: u64, len: u64) -> Result<(Status, u64), DiskError> {
        match self {
            Layer::Qcow2(d) => {
                let (kind, n) = d.layer_extent(offset, len)?;
                let status = match kind {
                    LayerExtent::Backing => Status::Below,
                    LayerExtent::Zero => Status::Zero { offset: None },
                    LayerExtent::Data { host } => Status::Data { offset: host },
                };
                Ok((status, n))
            }
            Layer::Raw { file, size, .. } => raw_status(file, *size, offset, len),
        }
    }
}

/// Data or hole at `offset` of a raw file, from SEEK_DATA / SEEK_HOLE. Where the file
/// system cannot tell, everything is data (as qemu-img assumes).
fn raw_status(file: &File, size: u64, offset: u64, len: u64) -> Result<(Status, u64), DiskError> {
    let seek = |whence| -> std::io::Result<u64> {
        let at = libc::off_t::try_from(offset).map_err(std::io::Error::other)?;
        // SAFETY: lseek on a descriptor this function borrows open; it only moves
        // the file position, which nothing else here relies on.
        let r = unsafe { libc::lseek(file.as_raw_fd(), at, whence) };
        u64::try_from(r).map_err(|_| std::io::Error::last_os_error())
    };
    let end = offset + len;
    let data = Status::Data {
        offset: Some(offset),
    };
    let hole = Status::Zero {
        offset: Some(offset),
    };
    Ok(match seek(libc::SEEK_DATA) {
        // Data starts here: it runs to the next hole.
        Ok(at) if at == offset => {
            let hole_at = seek(libc::SEEK_HOLE).unwrap_or(size);
            (data, hole_at.clamp(offset + 1, end) - offset)
        }
        // A hole up to the next data.
        Ok(at) => (hole, at.min(end) - offset),
        // No data after `offset`: a hole to the end.
        Err(e) if e.raw_os_error() == Some(libc::ENXIO) => (hole, len),
        Err(_) => (data, len),
    })
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
        match status {
            Status::Data { offset: at } => return Ok(entry(depth, len, true, false, true, at)),
            Status::Zero { offset: at } => return Ok(entry(depth, len, true, true, false, at)),
            Status::Below => {}
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

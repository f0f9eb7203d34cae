//! `kiln img rebase -u`: point a qcow2 image at another backing file, or at none,
//! without reading or copying any data, as `qemu-img rebase -u` does. The new backing
//! file must already hold what the old one held; nothing checks that.
//!
//! The header cluster is rebuilt in memory: the fixed header as it is, the header
//! extensions as they are except the backing format (replaced), then the end marker
//! and the backing file name. The result is parsed again and must differ from the old
//! header only in its backing file; then it is written in one write and synced.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::Path;

use super::header::{
    extensions_start, field, raw_extensions, Qcow2Header, EXT_BACKING_FORMAT, EXT_END,
    MAX_BACKING_NAME,
};
use super::{check_features, read_header, read_header_cluster};
use crate::block::lock::{Access, ImageLock};
use crate::block::{DiskError, ImageFormat};

/// Make the qcow2 image at `path` name `backing` (a file name, relative to the image's
/// directory unless absolute, and its format) as its backing file, or none.
pub fn set_backing_file(
    path: &Path,
    backing: Option<(&str, ImageFormat)>,
) -> Result<(), DiskError> {
    let refused = |reason: String| DiskError::unsupported(path, reason);
    let io_err = DiskError::io(path);
    let _lock = ImageLock::acquire(path, Access::ReadWrite)?;
    let (h, _) = read_header(path)?;
    check_features(path, &h)?;
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .map_err(io_err)?;
    let first = read_header_cluster(&file, &h).map_err(io_err)?;

    let name = backing.map_or("", |(name, _)| name);
    if name.len() > MAX_BACKING_NAME as usize {
        return Err(refused(format!(
            "the backing file name is {} bytes, more than qcow2's {MAX_BACKING_NAME}",
            name.len()
        )));
    }
    let at = extensions_start(&first);
    let mut tail = Vec::new();
    let corrupt = |source| DiskError::Corrupt {
        path: path.to_owned(),
        source,
    };
    for (kind, data) in raw_extensions(&first, at).map_err(corrupt)? {
        if kind != EXT_BACKING_FORMAT {
            push_extension(&mut tail, kind, data);
        }
    }
    if let Some((_, format)) = backing {
        push_extension(&mut tail, EXT_BACKING_FORMAT, format.name().as_bytes());
    }
    push_extension(&mut tail, EXT_END, &[]);
    let name_at = at + tail.len();
    tail.extend_from_slice(name.as_bytes());
    let end = at + tail.len();
    if end as u64 > h.cluster_size() {
        return Err(refused(format!(
            "the header, its extensions and the backing file name need {end} bytes, more \
             than the {}-byte header cluster",
            h.cluster_size()
        )));
    }
    let mut new = first[..at].to_vec();
    new.extend_from_slice(&tail);
    // Zero what the old extensions and name used past the new end.
    new.resize(new.len().max(first.len()), 0);
    let (offset, len) = match backing {
        Some(_) => (name_at as u64, name.len() as u32),
        None => (0, 0),
    };
    let (offset_at, len_at) = (field::BACKING_FILE_OFFSET, field::BACKING_FILE_SIZE);
    new[offset_at..offset_at + 8].copy_from_slice(&offset.to_be_bytes());
    new[len_at..len_at + 4].copy_from_slice(&len.to_be_bytes());

    let mut expected = h.clone();
    expected.backing_file = backing.map(|(name, _)| name.to_owned());
    expected.backing_format = backing.map(|(_, format)| format.name().to_owned());
    match Qcow2Header::parse(&new) {
        Ok(parsed) if parsed == expected => {}
        other => {
            return Err(refused(format!(
                "the rewritten header does not read back as intended ({other:?})"
            )))
        }
    }
    write_and_sync(&file, &new).map_err(io_err)
}

/// A header extension: type, length, data, padded to 8 bytes.
fn push_extension(out: &mut Vec<u8>, kind: u32, data: &[u8]) {
    out.extend_from_slice(&kind.to_be_bytes());
    out.extend_from_slice(&(data.len() as u32).to_be_bytes());
    out.extend_from_slice(data);
    out.resize(out.len().next_multiple_of(8), 0);
}

fn write_and_sync(file: &File, header: &[u8]) -> std::io::Result<()> {
    file.write_all_at(header, 0)?;
    file.sync_all()
}

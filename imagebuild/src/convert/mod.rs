//! `kiln img convert`: copy any image kiln's block layer reads (raw or qcow2, with
//! backing chains) into a fresh raw (sparse) or qcow2 (optionally deflate-compressed)
//! image. The output is written to a temporary file renamed at the end, so a failure
//! leaves nothing at the destination.

mod qcow2_writer;

use std::fs::File;
use std::io::{self, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use kiln_devices::block::{open_disk, DiskConfig, DiskError, ImageFormat};

use crate::atomic::{write_atomically, AtomicError};
use qcow2_writer::Qcow2Writer;
pub use qcow2_writer::CLUSTER_SIZE;

#[derive(Debug, thiserror::Error)]
pub enum ConvertError {
    #[error("cannot open input {path}: {source}")]
    Open { path: PathBuf, source: DiskError },
    #[error("reading input {path} at byte {offset}: {source}")]
    Read {
        path: PathBuf,
        offset: u64,
        source: DiskError,
    },
    #[error("writing {path}: {source}")]
    Write { path: PathBuf, source: io::Error },
    #[error("compression (-c) needs qcow2 output")]
    CompressRaw,
}

pub struct ConvertOptions<'a> {
    /// Output format.
    pub format: ImageFormat,
    pub compress: bool,
    /// Input format; detected from the contents when `None`.
    pub input_format: Option<ImageFormat>,
    /// Called with (bytes done, bytes in all) after every mebibyte and at the end.
    pub progress: Option<&'a mut dyn FnMut(u64, u64)>,
}

/// Input bytes between progress reports.
const PROGRESS_EVERY: u64 = 1 << 20;

/// Statistics of a conversion.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct ConvertStats {
    pub virtual_size: u64,
    pub data_clusters: u64,
    pub zero_clusters: u64,
}

pub fn convert(
    input: &Path,
    output: &Path,
    opts: &mut ConvertOptions,
) -> Result<ConvertStats, ConvertError> {
    if opts.compress && opts.format != ImageFormat::Qcow2 {
        return Err(ConvertError::CompressRaw);
    }
    let disk = open_disk(&DiskConfig {
        readonly: true,
        format: opts.input_format,
        ..DiskConfig::new(input.to_path_buf())
    })
    .map_err(|source| ConvertError::Open {
        path: input.to_path_buf(),
        source,
    })?;
    let size = disk.size();
    let write_err = |source| ConvertError::Write {
        path: output.to_path_buf(),
        source,
    };
    let result = write_atomically(
        output,
        |file: &mut File| -> Result<ConvertStats, ConvertError> {
            let mut stats = ConvertStats {
                virtual_size: size,
                ..Default::default()
            };
            // `&File` is Write + Seek, so the qcow2 writer and raw writes can share it.
            let file: &File = file;
            let mut qcow2 = match opts.format {
                ImageFormat::Qcow2 => {
                    Some(Qcow2Writer::new(file, size, opts.compress).map_err(write_err)?)
                }
                ImageFormat::Raw => None,
            };
            let mut buf = vec![0u8; CLUSTER_SIZE as usize];
            let mut offset = 0u64;
            while offset < size {
                let n = (size - offset).min(CLUSTER_SIZE) as usize;
                buf[n..].fill(0);
                disk.read_at(&mut buf[..n], offset)
                    .map_err(|source| ConvertError::Read {
                        path: input.to_path_buf(),
                        offset,
                        source,
                    })?;
                if buf.iter().all(|b| *b == 0) {
                    stats.zero_clusters += 1;
                } else {
                    stats.data_clusters += 1;
                    match qcow2.as_mut() {
                        Some(w) => w
                            .write_cluster(offset / CLUSTER_SIZE, &buf)
                            .map_err(write_err)?,
                        None => write_raw(file, offset, &buf[..n]).map_err(write_err)?,
                    }
                }
                offset += CLUSTER_SIZE;
                if let Some(report) = opts.progress.as_mut() {
                    if offset % PROGRESS_EVERY == 0 || offset >= size {
                        report(offset.min(size), size);
                    }
                }
            }
            match qcow2 {
                Some(w) => {
                    w.finish().map_err(write_err)?;
                }
                // Holes for the zero clusters: setting the length leaves them unallocated.
                None => file.set_len(size).map_err(write_err)?,
            }
            Ok(stats)
        },
    );
    result.map_err(|e| match e {
        AtomicError::Write(e) => e,
        AtomicError::Create { source, .. } | AtomicError::Persist { source, .. } => {
            write_err(source)
        }
    })
}

fn write_raw(mut file: &File, offset: u64, data: &[u8]) -> io::Result<()> {
    file.seek(SeekFrom::Start(offset))?;
    file.write_all(data)
}

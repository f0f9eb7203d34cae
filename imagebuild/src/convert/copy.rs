//! The copy loop of a conversion: chunk by chunk, the input (and the backing file)
//! read where they are not known zero, and each cluster stored as data, a zero
//! cluster, zeroes on a device, or left to the backing file.

use std::fs::File;
use std::io;
use std::path::Path;

use kiln_devices::block::known_zero::SparseReader;

use super::device::Device;
use super::gather::Gather;
use super::qcow2_writer::Qcow2Writer;
use super::{ConvertError, ConvertStats, CHUNK};

/// Fill `buf` from `offset` of `source` (see [`SparseReader::read`]), naming the
/// image in the error.
fn read(source: &mut SparseReader, buf: &mut [u8], offset: u64) -> Result<(), ConvertError> {
    source.read(buf, offset).map_err(|e| ConvertError::Read {
        path: source.path.to_owned(),
        offset,
        source: e,
    })
}

/// One conversion's reading and writing.
pub(super) struct Copy<'a> {
    pub input: SparseReader<'a>,
    pub backing: Option<SparseReader<'a>>,
    pub output: (&'a Path, &'a File),
    /// Written in place: zero ranges must be zeroed (see device.rs).
    pub device: Option<&'a Device>,
    pub qcow2: Option<Qcow2Writer<&'a File>>,
    /// Raw output's data runs (qcow2 output gathers its own).
    pub raw_gather: Gather,
    pub stats: ConvertStats,
}

impl Copy<'_> {
    pub fn run(
        &mut self,
        mut progress: Option<&mut &mut dyn FnMut(u64, u64)>,
    ) -> Result<(), ConvertError> {
        let size = self.stats.virtual_size;
        let cluster = self.stats.cluster_size;
        let chunk = CHUNK.max(cluster);
        let mut data = vec![0u8; chunk as usize];
        let mut under = vec![0u8; chunk as usize];
        let mut offset = 0u64;
        while offset < size {
            let n = (size - offset).min(chunk);
            if self.reads_zero_over_zero(offset, n) {
                // Nothing to read, compare or write (but a device's old contents to
                // zero): the common case of sparse images.
                if let Some(device) = self.device {
                    device
                        .zero(offset, n)
                        .map_err(|source| ConvertError::Write {
                            path: self.output.0.to_owned(),
                            source,
                        })?;
                }
                let clusters = n.div_ceil(cluster);
                match self.backing {
                    Some(_) => self.stats.backing_clusters += clusters,
                    None => self.stats.zero_clusters += clusters,
                }
            } else {
                self.copy_chunk(offset, n, &mut data, &mut under)?;
            }
            offset += n;
            if let Some(report) = progress.as_mut() {
                report(offset, size);
            }
        }
        Ok(())
    }

    /// Whether `[offset, offset + len)` is known to read zero in the input and in the
    /// backing file (if any).
    fn reads_zero_over_zero(&mut self, offset: u64, len: u64) -> bool {
        self.input.known_zero(offset, len)
            && self
                .backing
                .as_mut()
                .is_none_or(|b| b.known_zero(offset, len))
    }

    /// Read `n` bytes at `offset` of the input (into `data`) and of the backing file
    /// (into `under`), and store them cluster by cluster.
    fn copy_chunk(
        &mut self,
        offset: u64,
        n: u64,
        data: &mut [u8],
        under: &mut [u8],
    ) -> Result<(), ConvertError> {
        let cluster = self.stats.cluster_size;
        // The reads fill all `n` bytes (zeroes past the backing file's end); past the
        // image's end, the last cluster reads as zeroes.
        data[n as usize..].fill(0);
        read(&mut self.input, &mut data[..n as usize], offset)?;
        if let Some(b) = self.backing.as_mut() {
            under[n as usize..].fill(0);
            read(b, &mut under[..n as usize], offset)?;
        }
        for (i, bytes) in data[..n.next_multiple_of(cluster) as usize]
            .chunks(cluster as usize)
            .enumerate()
        {
            let at = offset + i as u64 * cluster;
            let below = &under[i * cluster as usize..][..cluster as usize];
            self.cluster(at, bytes, below)
                .map_err(|source| ConvertError::Write {
                    path: self.output.0.to_owned(),
                    source,
                })?;
        }
        Ok(())
    }

    /// Store the cluster at guest offset `at`, which holds `bytes` over `below` (the
    /// backing file's bytes, zeroes without one).
    fn cluster(&mut self, at: u64, bytes: &[u8], below: &[u8]) -> io::Result<()> {
        let zero = bytes.iter().all(|b| *b == 0);
        if self.backing.is_some() && bytes == below {
            self.stats.backing_clusters += 1;
            return Ok(());
        }
        let index = at / self.stats.cluster_size;
        match self.qcow2.as_mut() {
            Some(w) if zero && self.backing.is_some() && w.has_zero_clusters() => {
                w.zero_cluster(index)?;
                self.stats.zero_clusters += 1;
            }
            // Without a backing file, zeroes need nothing; over one, a version 2
            // image can only hide it with zeroes as data.
            _ if zero && self.backing.is_none() => {
                if let Some(device) = self.device {
                    let len = (self.stats.virtual_size - at).min(bytes.len() as u64);
                    device.zero(at, len)?;
                }
                self.stats.zero_clusters += 1
            }
            Some(w) => {
                w.write_cluster(index, bytes)?;
                self.stats.data_clusters += 1;
            }
            None => {
                let len = (self.stats.virtual_size - at).min(bytes.len() as u64);
                let mut file = self.output.1;
                self.raw_gather
                    .write_at(&mut file, at, &bytes[..len as usize])?;
                self.stats.data_clusters += 1;
            }
        }
        Ok(())
    }
}

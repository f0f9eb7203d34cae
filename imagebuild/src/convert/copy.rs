//! The copy loop of a conversion: chunk by chunk, the input (and the backing file)
//! read where they are not known zero. qcow2 output stores each cluster as data, a
//! zero cluster, or leaves it to the backing file. Raw output (a file or a device)
//! takes the chunk in the runs of zeroes and data that qemu-img's `-S` finds (see
//! runs.rs): zero runs stay holes in a file and are zeroed on a device, the rest is
//! written. With a sparse size of 0 every byte of any output is written as data.

use std::fs::File;
use std::io;
use std::path::Path;

use kiln_devices::block::known_zero::SparseReader;

use super::device::Device;
use super::gather::Gather;
use super::qcow2_writer::Qcow2Writer;
use super::runs::{is_zero, sparse_runs};
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
    /// Raw output's sparse size (see `runs::sparse_runs`); `None` writes every byte of
    /// any output as data (`-S 0`).
    pub sparse: Option<u64>,
}

impl Copy<'_> {
    pub fn run(
        &mut self,
        mut progress: Option<&mut &mut dyn FnMut(u64, u64)>,
    ) -> Result<(), ConvertError> {
        let size = self.stats.virtual_size;
        let cluster = self.stats.cluster_size;
        // A chunk's zero runs are found whole (see `sparse_runs`).
        let chunk = CHUNK.max(cluster).max(self.sparse.unwrap_or(0));
        let mut data = vec![0u8; chunk as usize];
        let mut under = vec![0u8; chunk as usize];
        let mut offset = 0u64;
        while offset < size {
            let n = (size - offset).min(chunk);
            if self.sparse.is_some() && self.reads_zero_over_zero(offset, n) {
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
        let write_err = |source| ConvertError::Write {
            path: self.output.0.to_owned(),
            source,
        };
        if self.qcow2.is_none() {
            return self
                .raw_chunk(offset, &data[..n as usize])
                .map_err(write_err);
        }
        for (i, bytes) in data[..n.next_multiple_of(cluster) as usize]
            .chunks(cluster as usize)
            .enumerate()
        {
            let at = offset + i as u64 * cluster;
            let below = &under[i * cluster as usize..][..cluster as usize];
            self.cluster(at, bytes, below).map_err(write_err)?;
        }
        Ok(())
    }

    /// Store `bytes` at `offset` of raw output: with a sparse size, its zero runs as
    /// `sparse_runs` finds them are left out (zeroed on a device), the rest written.
    fn raw_chunk(&mut self, offset: u64, bytes: &[u8]) -> io::Result<()> {
        let runs = match self.sparse {
            Some(sparse) => {
                let input = &mut self.input;
                sparse_runs(bytes, offset, sparse, |at, len| input.known_zero(at, len))
            }
            None => vec![(offset, bytes.len() as u64, false)],
        };
        let mut file = self.output.1;
        for &(at, len, zero) in &runs {
            let part = &bytes[(at - offset) as usize..][..len as usize];
            match (zero, self.device) {
                (true, Some(device)) => device.zero(at, len)?,
                (true, None) => {}
                (false, _) => self.raw_gather.write_at(&mut file, at, part)?,
            }
        }
        // Clusters wholly inside holes count as zero clusters, the rest as data.
        let cluster = self.stats.cluster_size;
        let clusters = (bytes.len() as u64).div_ceil(cluster);
        let zero: u64 = runs
            .iter()
            .filter(|(_, _, hole)| *hole)
            .map(|&(at, len, _)| {
                let end = at + len;
                let last = if end == offset + bytes.len() as u64 {
                    end.div_ceil(cluster) // the chunk's short last cluster
                } else {
                    end / cluster
                };
                last.saturating_sub(at.div_ceil(cluster))
            })
            .sum();
        self.stats.zero_clusters += zero;
        self.stats.data_clusters += clusters - zero;
        Ok(())
    }

    /// Store the qcow2 cluster at guest offset `at`, which holds `bytes` over `below`
    /// (the backing file's bytes, zeroes without one).
    fn cluster(&mut self, at: u64, bytes: &[u8], below: &[u8]) -> io::Result<()> {
        let Some(w) = self.qcow2.as_mut() else {
            return Ok(());
        };
        let zero = self.sparse.is_some() && is_zero(bytes);
        if self.backing.is_some() && bytes == below {
            self.stats.backing_clusters += 1;
            return Ok(());
        }
        let index = at / self.stats.cluster_size;
        if zero && self.backing.is_some() && w.has_zero_clusters() {
            w.zero_cluster(index)?;
            self.stats.zero_clusters += 1;
        } else if zero && self.backing.is_none() {
            // Without a backing file, zeroes need nothing; over one, a version 2
            // image can only hide it with zeroes as data.
            self.stats.zero_clusters += 1;
        } else {
            w.write_cluster(index, bytes)?;
            self.stats.data_clusters += 1;
        }
        Ok(())
    }
}

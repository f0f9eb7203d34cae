//! qcow2 images through imago, with kiln's header checks in front.
//!
//! Gaps in imago 0.2 and how kiln covers them:
//! - dirty/corrupt bit, extended L2 entries, zstd compression: refused at open by
//!   [`check_chain`] with an error that names the feature (and, for dirty/corrupt, the
//!   `kiln img check -r all` or `qemu-img check -r all` repair command); this applies
//!   to every image in the chain.
//! - discard does not free host space: kiln punches holes in the host file for the
//!   clusters the image owns exclusively (refcount 1) before letting imago discard
//!   them, under an exclusive lock so no concurrent write can land in them.
//! - no fsync between refcount and L2 writeback: a flush is imago `flush()` (write back
//!   all cached metadata) followed by `sync()` (fsync).
//! - imago trusts refcounts: before a writable open, [`refcheck`] verifies that no
//!   cluster in use has a refcount below its reference count (or an overflowing one).
//! - imago has no zero clusters for version 2 (compat=0.10) images: discard and
//!   write-zeroes there discard whole clusters when nothing shows through from a backing
//!   file, and write explicit zeroes otherwise.
//!
//! Reads of the image's own data clusters can bypass imago: [`DiskBackend::read_extent`]
//! looks the mapping up in imago's L2 cache and hands virtio-blk a file descriptor of
//! the image (its own) and the host offset, which it reads through io_uring. With
//! `cache=none`, writes do the same ([`DiskBackend::write_extent`]) where imago itself
//! would write in place: clusters allocated and owned by the image alone; the rest
//! (allocation, COW) goes through imago. A data cluster keeps its host offset until a
//! discard or write-zeroes frees it (writes never move an allocated cluster the image
//! owns alone, and a shared one keeps its refcount when a write copies it), which is
//! why [`DiskBackend::extents_move`] is true here. The lookup runs on the device's event
//! loop, so it must not wait: where imago has probably not loaded the L2 table (see
//! `direct`), or a discard holds the lock, the transfer goes through imago on an I/O
//! thread.

pub mod backing;
pub mod bitmaps;
mod bypass;
pub mod header;
pub mod prealloc;
pub mod refcheck;
pub mod repair;
pub mod snapshots;
pub mod zero_alloc;

use std::fs::File as StdFile;
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::os::unix::io::RawFd;
use std::path::{Path, PathBuf};
use std::sync::RwLock;

use imago::file::File;
use imago::format::PreallocateMode;
use imago::io_buffers::{IoVector, IoVectorMut};
use imago::qcow2::Qcow2;
use imago::{
    FormatAccess, FormatDriverBuilder, PermissiveImplicitOpenGate, ShallowMapping, StorageExt,
    StorageOpenOptions,
};
use log::warn;
use vm_memory::VolatileSlice;

use super::dio::{open_direct, IoAlign};
use super::lock::{Access, ImageLock};
use super::{backing_format, backing_path, check_range, DiskBackend, DiskError, ImageFormat};
use bypass::Bypass;
use header::{incompat, Qcow2Header};

/// What an image's own layer holds at some offset (see `Qcow2Disk::layer_extent`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LayerExtent {
    /// Nothing: the backing file shows through (or zero, without one).
    Backing,
    /// Zero clusters: zero whatever the backing file holds.
    Zero,
    /// Data: plain clusters at `host` (in the image or its data file), or compressed
    /// ones (`None`).
    Data { host: Option<u64> },
}

/// Deepest backing chain kiln follows (a loop in the chain would otherwise never end).
pub const MAX_CHAIN_DEPTH: usize = 32;

/// A qcow2 image and its backing chain.
pub struct Qcow2Disk {
    /// Reads and writes share the lock; discard and unmapping write-zeroes take it
    /// exclusively, because they may free clusters other requests are using.
    access: RwLock<FormatAccess<File>>,
    size: u64,
    read_only: bool,
    has_backing: bool,
    /// Opened with O_DIRECT (`cache=none`): only then do writes bypass imago (see
    /// `ring_extent`).
    direct_io: bool,
    /// The image's header as read when it was opened (its size may have changed since;
    /// see `size`).
    header: Qcow2Header,
    /// The image file, for transfers of its data clusters that bypass imago (see
    /// [`DiskBackend::read_extent`] and `write_extent`); `None` with an external data
    /// file.
    bypass: Option<Bypass>,
    /// The image's and its backing files' locks, held while the disk is open.
    _locks: Vec<ImageLock>,
}

/// Read and check the header of the qcow2 image at `path`.
pub fn read_header(path: &Path) -> Result<(Qcow2Header, u64), DiskError> {
    let open_err = DiskError::io(path);
    let corrupt = |source| DiskError::Corrupt {
        path: path.to_owned(),
        source,
    };
    let file = StdFile::open(path).map_err(open_err)?;
    let file_len = super::file_len(&file).map_err(open_err)?;
    // The header and its extensions live in the first cluster: its size is in the
    // header's first bytes, and only that much is read (one page for a 4 KiB cluster,
    // not the 2 MiB of the largest), so that opening an image reads no data.
    let mut first = Vec::new();
    (&file)
        .take(header::field::CLUSTER_BITS as u64 + 4)
        .read_to_end(&mut first)
        .map_err(open_err)?;
    let cluster_bits = first
        .get(header::field::CLUSTER_BITS..)
        .and_then(|b| b.try_into().ok())
        .map_or(9, u32::from_be_bytes);
    let cluster_size = 1u64 << cluster_bits.clamp(9, 21);
    (&file)
        .take(cluster_size - first.len() as u64)
        .read_to_end(&mut first)
        .map_err(open_err)?;
    let header = Qcow2Header::parse(&first).map_err(corrupt)?;
    Ok((header, file_len))
}

/// The header cluster of the image open as `file` (the whole file, if shorter): where
/// the header, its extensions and the backing file name live.
pub(super) fn read_header_cluster(file: &StdFile, h: &Qcow2Header) -> std::io::Result<Vec<u8>> {
    let len = super::file_len(file)?;
    let mut first = vec![0u8; len.min(h.cluster_size()) as usize];
    file.read_exact_at(&mut first, 0)?;
    Ok(first)
}

/// Refuse what imago cannot open correctly, naming the feature.
fn check_features(path: &Path, h: &Qcow2Header) -> Result<(), DiskError> {
    let f = h.incompatible_features;
    let unsupported = |reason: String| DiskError::unsupported(path, reason);
    if f & incompat::CORRUPT != 0 {
        return Err(DiskError::NeedsRepair {
            path: path.to_owned(),
            what: "corrupt (QEMU found metadata it does not trust)",
        });
    }
    if f & incompat::DIRTY != 0 {
        return Err(DiskError::NeedsRepair {
            path: path.to_owned(),
            what: "dirty (it was not closed cleanly and its refcounts may be stale)",
        });
    }
    if f & incompat::EXTENDED_L2 != 0 {
        return Err(unsupported(
            "the image uses extended L2 entries (subclusters), which kiln does not support; \
             convert it with `qemu-img convert -O qcow2 -o extended_l2=off`"
                .into(),
        ));
    }
    if f & incompat::COMPRESSION_TYPE != 0 || h.compression_type != 0 {
        let kind = if h.compression_type == 1 {
            "zstd".to_owned()
        } else {
            format!("type {}", h.compression_type)
        };
        return Err(unsupported(format!(
            "the image uses {kind} compression, which kiln cannot read; convert it with \
             `qemu-img convert -O qcow2 -o compression_type=zlib`"
        )));
    }
    if f & !incompat::KNOWN != 0 {
        return Err(unsupported(format!(
            "unknown incompatible qcow2 feature bits {:#x}",
            f & !incompat::KNOWN
        )));
    }
    Ok(())
}

/// Check the image at `path` and every qcow2 image in its backing chain before imago opens
/// them. Returns the chain, top first, as (path, format).
/// With `writable`, the top image's refcounts are checked too (see [`refcheck`]).
pub fn check_chain(path: &Path, writable: bool) -> Result<Vec<(PathBuf, ImageFormat)>, DiskError> {
    let mut chain = vec![(path.to_owned(), ImageFormat::Qcow2)];
    let mut current = path.to_owned();
    loop {
        if chain.len() > MAX_CHAIN_DEPTH {
            return Err(DiskError::unsupported(
                path,
                format!("backing chain deeper than {MAX_CHAIN_DEPTH} (a loop?)"),
            ));
        }
        let (h, file_len) = read_header(&current)?;
        check_features(&current, &h)?;
        let corrupt = |source| DiskError::Corrupt {
            path: current.clone(),
            source,
        };
        h.check_layout(file_len).map_err(corrupt)?;
        let mut l1 = vec![0u8; h.l1_size as usize * 8];
        StdFile::open(&current)
            .and_then(|f| f.read_exact_at(&mut l1, h.l1_table_offset))
            .map_err(DiskError::io(&current))?;
        h.check_l1_table(&l1, file_len).map_err(corrupt)?;
        if writable && chain.len() == 1 {
            let file = StdFile::open(&current).map_err(DiskError::io(&current))?;
            refcheck::check_refcounts(&file, &h, file_len).map_err(|source| {
                DiskError::Refcount {
                    path: current.clone(),
                    source,
                }
            })?;
        }

        let Some(backing) = &h.backing_file else {
            return Ok(chain);
        };
        let next = backing_path(&current, backing);
        let format = backing_format(&current, h.backing_format.as_deref(), &next)?;
        chain.push((next.clone(), format));
        if format == ImageFormat::Raw {
            StdFile::open(&next).map_err(DiskError::io(&next))?;
            return Ok(chain);
        }
        current = next;
    }
}

impl Qcow2Disk {
    /// Open the image and its whole backing chain (backing images read-only).
    pub fn open(path: &Path, read_only: bool) -> Result<Self, DiskError> {
        Ok(Self::open_layers(path, Access::for_read_only(read_only), true, false)?.0)
    }

    /// [`Qcow2Disk::open`] for `access`: with [`Access::ReadShared`] read-only, and
    /// taking no lock that keeps others from writing the chain (qemu-img's `-U`); with
    /// `direct`, the whole chain bypasses the host page cache (O_DIRECT: imago aligns
    /// its transfers itself, and reads around it must meet [`DiskBackend::io_align`]).
    pub fn open_with(path: &Path, access: Access, direct: bool) -> Result<Self, DiskError> {
        Ok(Self::open_layers(path, access, true, direct)?.0)
    }

    /// Open only the image's own layer, as if it had no backing file (what it leaves to
    /// its backing file reads as zero), locking only it; for `kiln img commit`, which
    /// writes the backing file meanwhile. The chain is still checked. Returns the
    /// image and the backing file the header names, if any. Guest writes through it
    /// would fill partial clusters from zeroes instead of the backing file: only
    /// [`Qcow2Disk::make_empty`] writes through it.
    pub(crate) fn open_top_layer(
        path: &Path,
        access: Access,
    ) -> Result<(Self, Option<(PathBuf, ImageFormat)>), DiskError> {
        let (disk, chain) = Self::open_layers(path, access, false, false)?;
        Ok((disk, chain.into_iter().nth(1)))
    }

    /// Open the image (with its backing chain or without) and return it with the chain
    /// `check_chain` found, top first.
    fn open_layers(
        path: &Path,
        access: Access,
        with_backing: bool,
        direct: bool,
    ) -> Result<(Self, Vec<(PathBuf, ImageFormat)>), DiskError> {
        let read_only = access != Access::ReadWrite;
        // Locked before anything is read: another writer could be changing it.
        let mut locks = vec![ImageLock::acquire(path, access)?];
        let chain = check_chain(path, !read_only)?;
        let backing_access = match access {
            Access::ReadShared => Access::ReadShared,
            _ => Access::Read,
        };
        if with_backing {
            for (backing, _) in &chain[1..] {
                locks.push(ImageLock::acquire(backing, backing_access)?);
            }
        }
        let (header, _) = read_header(path)?;
        if !read_only && bitmaps::bitmaps_in_force(&header).is_some() {
            // imago clears the autoclear bit on writing, as a program unaware of
            // bitmaps must: QEMU then treats every bitmap as inconsistent.
            warn!(
                "{}: its persistent dirty bitmaps become inconsistent when kiln writes it",
                path.display()
            );
        }
        // Before imago opens it, so that a file system without direct I/O gets the
        // error that says so.
        let bypass = if header.incompatible_features & incompat::DATA_FILE != 0 {
            None
        } else if direct {
            let (file, align) = open_direct(path, !read_only)?;
            Some(Bypass::new(file, header.cluster_bits, align))
        } else {
            let file = StdFile::options()
                .read(true)
                .write(!read_only)
                .open(path)
                .map_err(DiskError::io(path))?;
            Some(Bypass::new(file, header.cluster_bits, IoAlign::ANY))
        };
        let mut builder = Qcow2::<File>::builder_path(path)
            .write(!read_only)
            // Passed on to the backing chain, as QEMU's cache mode is.
            .storage_open_options(StorageOpenOptions::new().direct(direct));
        if !with_backing {
            builder = builder.backing(None);
        }
        let qcow2 = builder
            .open(PermissiveImplicitOpenGate::default())
            .map_err(DiskError::io(path))?;
        let access = FormatAccess::new(qcow2);
        let disk = Qcow2Disk {
            size: access.size(),
            access: RwLock::new(access),
            read_only,
            has_backing: with_backing && chain.len() > 1,
            bypass,
            direct_io: direct,
            header,
            _locks: locks,
        };
        Ok((disk, chain))
    }

    fn shared(&self) -> std::sync::RwLockReadGuard<'_, FormatAccess<File>> {
        // A panic in another I/O thread leaves imago's own state consistent enough to continue.
        self.access.read().unwrap_or_else(|e| e.into_inner())
    }

    fn exclusive(&self) -> std::sync::RwLockWriteGuard<'_, FormatAccess<File>> {
        self.access.write().unwrap_or_else(|e| e.into_inner())
    }

    /// imago used the L2 tables of `[offset, offset + len)` (see `Bypass`).
    fn l2_used(&self, offset: u64, len: u64) {
        if let Some(bypass) = &self.bypass {
            bypass.l2_used(offset, len);
        }
    }

    /// Change the virtual size to `new_size` and write the metadata back (see
    /// `block::resize`). Growing zeroes the new range up to `zero_until` (zero
    /// clusters) and leaves the rest unallocated, or preallocates all of it;
    /// shrinking discards what lies beyond the new end.
    pub(crate) fn resize(
        &mut self,
        new_size: u64,
        zero_until: u64,
        preallocate: PreallocateMode,
    ) -> Result<(), DiskError> {
        self.writable()?;
        let access = self.access.get_mut().unwrap_or_else(|e| e.into_inner());
        if new_size < self.size {
            access.resize_shrink(new_size)?;
        } else if preallocate != PreallocateMode::None {
            // Allocates (and zeroes) the whole new range, the partial last cluster too.
            access.resize_grow(new_size, preallocate)?;
        } else {
            let zeroed = zero_until.min(new_size);
            if zeroed > self.size {
                access.resize_grow(zeroed, PreallocateMode::Zero)?;
            }
            access.resize_grow(new_size, PreallocateMode::None)?;
        }
        access.flush()?;
        access.sync()?;
        self.size = new_size;
        Ok(())
    }

    pub(crate) fn cluster_size(&self) -> u64 {
        self.header.cluster_size()
    }

    /// The header as read when the image was opened, for callers that would otherwise
    /// read it again (`kiln img map`).
    pub(crate) fn opened_header(&self) -> &Qcow2Header {
        &self.header
    }

    /// What this image's own layer holds at `offset`, and for how many bytes from
    /// there (at most `len`) that holds.
    pub(crate) fn layer_extent(
        &self,
        offset: u64,
        len: u64,
    ) -> Result<(LayerExtent, u64), DiskError> {
        check_range(offset, len, self.size)?;
        let access = self.shared();
        let (mapping, mapped) = access.get_shallow_mapping(offset, len)?;
        let kind = match mapping {
            ShallowMapping::Indirect { .. }
            | ShallowMapping::Zero {
                explicit: false, ..
            } => LayerExtent::Backing,
            ShallowMapping::Zero { .. } => LayerExtent::Zero,
            ShallowMapping::Raw { offset, .. } => LayerExtent::Data { host: Some(offset) },
            _ => LayerExtent::Data { host: None },
        };
        if mapped == 0 || matches!(mapping, ShallowMapping::Eof { .. }) {
            // Within the virtual size (checked above): imago would have to be wrong.
            return Err(DiskError::Io(std::io::Error::other(format!(
                "no mapping for offset {offset}, inside the image"
            ))));
        }
        Ok((kind, mapped.min(len)))
    }

    /// Bytes [`Qcow2Disk::walk_own_layer`] hands over at most at a time: 1 MiB, rounded
    /// up to whole clusters.
    pub(crate) fn walk_chunk(&self) -> u64 {
        (1u64 << 20).next_multiple_of(self.cluster_size())
    }

    /// Call `each(kind, offset, len)` for every run of the image's own layer (see
    /// [`Qcow2Disk::layer_extent`]), in order and within chunks of
    /// [`Qcow2Disk::walk_chunk`] bytes that start on cluster boundaries; `progress`
    /// hears (bytes walked, virtual size) after each chunk.
    pub(crate) fn walk_own_layer(
        &self,
        progress: &mut dyn FnMut(u64, u64),
        mut each: impl FnMut(LayerExtent, u64, u64) -> Result<(), DiskError>,
    ) -> Result<(), DiskError> {
        let chunk = self.walk_chunk();
        let mut offset = 0;
        while offset < self.size {
            let chunk_end = (offset + chunk).min(self.size);
            while offset < chunk_end {
                let (kind, len) = self.layer_extent(offset, chunk_end - offset)?;
                each(kind, offset, len)?;
                offset += len;
            }
            progress(offset, self.size);
        }
        Ok(())
    }

    /// Make every cluster fall through to the backing file again, as
    /// `qemu-img commit` leaves an overlay, and write the metadata back.
    pub(crate) fn make_empty(&self) -> Result<(), DiskError> {
        self.writable()?;
        let mut access = self.exclusive();
        Self::punch_owned_clusters(&access, 0, self.size);
        access.discard_to_backing(0, self.size)?;
        access.flush()?;
        Ok(access.sync()?)
    }

    fn writable(&self) -> Result<(), DiskError> {
        if self.read_only {
            Err(DiskError::ReadOnly)
        } else {
            Ok(())
        }
    }

    /// Punch holes in the host file under every part of `[offset, offset + len)` this image
    /// maps to its own data clusters (refcount 1). The caller holds the exclusive lock and
    /// discards the range right after, so the punched clusters read as zero and are freed.
    fn punch_owned_clusters(access: &FormatAccess<File>, mut offset: u64, len: u64) {
        let end = offset + len;
        while offset < end {
            let (mapping, mlen) = match access.get_shallow_mapping(offset, end - offset) {
                Ok(m) => m,
                Err(e) => {
                    warn!("qcow2: mapping lookup at {offset} failed, not punching: {e}");
                    return;
                }
            };
            if mlen == 0 {
                return;
            }
            if let ShallowMapping::Raw {
                storage,
                offset: host,
                writable: true,
                ..
            } = mapping
            {
                if let Err(e) = storage.discard(host, mlen) {
                    // Not fatal: the clusters are still freed in qcow2 metadata.
                    log::debug!("qcow2: hole punch at host offset {host} failed: {e}");
                }
            }
            offset += mlen;
        }
    }
}

impl Qcow2Disk {
    /// Zeroing on a version 2 image, which has no zero flag (imago refuses zero clusters
    /// there). Without a backing file an unallocated cluster reads as zero, so whole
    /// clusters are discarded when `unmap` allows it; everything else gets explicit zeroes.
    fn zero_v2(&self, offset: u64, len: u64, unmap: bool) -> Result<(), DiskError> {
        let end = offset + len;
        let cs = self.cluster_size();
        let (mid_start, mid_end) = (offset.next_multiple_of(cs), end / cs * cs);
        if unmap && !self.has_backing && mid_start < mid_end {
            let mut access = self.exclusive();
            Self::punch_owned_clusters(&access, mid_start, mid_end - mid_start);
            // With no backing file, "discard to backing" leaves clusters that read as zero.
            access.discard_to_backing(mid_start, mid_end - mid_start)?;
            drop(access);
            self.write_zero_buffers(offset, mid_start - offset)?;
            self.write_zero_buffers(mid_end, end - mid_end)
        } else {
            self.write_zero_buffers(offset, len)
        }
    }

    fn write_zero_buffers(&self, mut offset: u64, len: u64) -> Result<(), DiskError> {
        let end = offset + len;
        let zeroes = vec![0u8; len.min(1 << 20) as usize];
        let access = self.shared();
        while offset < end {
            let n = (end - offset).min(zeroes.len() as u64) as usize;
            access.write(&zeroes[..n], offset)?;
            offset += n as u64;
        }
        Ok(())
    }
}

impl DiskBackend for Qcow2Disk {
    fn format(&self) -> ImageFormat {
        ImageFormat::Qcow2
    }

    fn size(&self) -> u64 {
        self.size
    }

    fn is_read_only(&self) -> bool {
        self.read_only
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<(), DiskError> {
        let len = buf.len() as u64;
        check_range(offset, len, self.size)?;
        self.shared().read(buf, offset)?;
        self.l2_used(offset, len);
        Ok(())
    }

    fn write_at(&self, buf: &[u8], offset: u64) -> Result<(), DiskError> {
        self.writable()?;
        let len = buf.len() as u64;
        check_range(offset, len, self.size)?;
        self.shared().write(buf, offset)?;
        self.l2_used(offset, len);
        Ok(())
    }

    fn read_vectored(&self, bufs: &[VolatileSlice<'_>], offset: u64) -> Result<(), DiskError> {
        let total = bufs.iter().map(|b| b.len() as u64).sum();
        check_range(offset, total, self.size)?;
        let (vec, _guard) = IoVectorMut::from_volatile_slice(bufs);
        self.shared().readv(vec, offset)?;
        self.l2_used(offset, total);
        Ok(())
    }

    fn write_vectored(&self, bufs: &[VolatileSlice<'_>], offset: u64) -> Result<(), DiskError> {
        self.writable()?;
        let total = bufs.iter().map(|b| b.len() as u64).sum();
        check_range(offset, total, self.size)?;
        let (vec, _guard) = IoVector::from_volatile_slice(bufs);
        self.shared().writev(vec, offset)?;
        self.l2_used(offset, total);
        Ok(())
    }

    fn flush(&self) -> Result<(), DiskError> {
        if self.read_only {
            return Ok(());
        }
        let access = self.shared();
        access.flush()?;
        Ok(access.sync()?)
    }

    fn discard(&self, offset: u64, len: u64) -> Result<(), DiskError> {
        self.write_zeroes(offset, len, true)
    }

    fn write_zeroes(&self, offset: u64, len: u64, unmap: bool) -> Result<(), DiskError> {
        self.writable()?;
        check_range(offset, len, self.size)?;
        if len == 0 {
            return Ok(());
        }
        // Version 2 images have no zero clusters: zeroing needs other means.
        if self.header.version == 2 {
            return self.zero_v2(offset, len, unmap);
        }
        if unmap {
            let mut access = self.exclusive();
            Self::punch_owned_clusters(&access, offset, len);
            Ok(access.discard_to_zero(offset, len)?)
        } else {
            Ok(self.shared().write_zeroes(offset, len)?)
        }
    }

    fn has_read_extents(&self) -> bool {
        self.bypass.is_some()
    }

    fn read_extent(&self, offset: u64, len: u64) -> Option<(RawFd, u64)> {
        self.ring_extent(offset, len, false)
    }

    fn write_extent(&self, offset: u64, len: u64) -> Option<(RawFd, u64)> {
        self.ring_extent(offset, len, true)
    }

    fn extents_move(&self) -> bool {
        true
    }

    fn io_align(&self) -> IoAlign {
        self.bypass.as_ref().map_or(IoAlign::ANY, Bypass::align)
    }
}

impl Qcow2Disk {
    /// [`DiskBackend::read_extent`], and with `write` [`DiskBackend::write_extent`]:
    /// a write goes in place only where imago would write it in place itself, a data
    /// cluster allocated in this image and owned by it alone (refcount 1, "copied").
    /// Writes take the ring only with direct I/O: there io_uring overlaps them (4 KiB
    /// rewrites at depth 64: 152k/s at 3.9 us of CPU each, against 86k/s at 17 us on
    /// the I/O threads), while buffered ones did better on the threads (167k/s at 10 us
    /// against 146k/s at 13 us).
    fn ring_extent(&self, offset: u64, len: u64, write: bool) -> Option<(RawFd, u64)> {
        let bypass = self.bypass.as_ref()?;
        if write && (self.read_only || !self.direct_io) {
            return None;
        }
        check_range(offset, len, self.size).ok()?;
        // An L2 table imago has not loaded would be read here, on the event loop: the
        // transfer goes through imago on an I/O thread instead, which loads it.
        if !bypass.l2_likely_cached(offset) {
            return None;
        }
        // A discard or unmapping write-zeroes holds (or waits for) the lock for as long
        // as it takes: the transfer goes through imago behind it instead of waiting.
        let access = self.access.try_read().ok()?;
        let (mapping, mapped) = access.get_shallow_mapping(offset, len).ok()?;
        match mapping {
            // Raw in this layer: the image file itself (no external data file).
            ShallowMapping::Raw {
                offset: host,
                writable,
                ..
            } if mapped >= len && (writable || !write) => {
                bypass.covers(host, len).then(|| (bypass.fd(), host))
            }
            // Zero, backing file, compressed, shared with a snapshot (for a write), or
            // split across host runs.
            _ => None,
        }
    }
}

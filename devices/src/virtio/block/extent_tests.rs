//! Reads that bypass the format: qcow2 data clusters read through io_uring
//! (`DiskBackend::read_extent`), everything else through imago on the I/O threads, and
//! discards held back while such reads are in flight.

use std::fs::File;
use std::os::unix::io::{AsRawFd, FromRawFd, RawFd};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use vm_memory::VolatileSlice;

use super::harness::{Done, Harness, Op, QueueDriver};
use super::*;
use crate::block::config::DetectZeroes;
use crate::block::create::{create_image, CreateOptions};
use crate::block::delegate::delegate_disk;
use crate::block::raw::RawDisk;
use crate::block::{open_disk, DiskConfig, DiskError, ImageFormat};

const CLUSTER: u64 = 64 << 10;
const OK: u8 = VIRTIO_BLK_S_OK as u8;
const WAIT: Duration = Duration::from_secs(10);

fn byte(offset: u64, salt: u8) -> u8 {
    (offset % 251) as u8 ^ salt
}

fn create(path: &Path, backing: Option<&Path>) {
    create_image(
        path,
        &CreateOptions {
            backing: backing.map(Path::to_owned),
            cluster_size: Some(CLUSTER),
            ..CreateOptions::new(ImageFormat::Qcow2, Some(16 * CLUSTER))
        },
    )
    .unwrap();
}

fn open(path: &Path, readonly: bool) -> Arc<dyn DiskBackend> {
    open_disk(&DiskConfig {
        format: Some(ImageFormat::Qcow2),
        readonly,
        ..DiskConfig::new(path.to_owned())
    })
    .unwrap()
}

/// Fill `cluster` of the image at `path` with bytes salted by `salt`.
fn fill_cluster(path: &Path, cluster: u64, salt: u8) {
    let disk = open(path, false);
    let at = cluster * CLUSTER;
    let data: Vec<u8> = (at..at + CLUSTER).map(|o| byte(o, salt)).collect();
    disk.write_at(&data, at).unwrap();
    disk.flush().unwrap();
}

/// Read 4 KiB at each of `offsets` in one batch (so none runs inline) and check the
/// data against `expect`.
fn read_batch(h: &mut Harness, offsets: &[u64], expect: impl Fn(u64) -> u8) {
    let mut at = std::collections::HashMap::new();
    for &o in offsets {
        at.insert(h.submit(Op::Read, o, 4096).unwrap().unwrap(), o);
    }
    h.kick().unwrap();
    let mut done: Vec<Done> = Vec::new();
    while done.len() < offsets.len() {
        done.extend(h.wait(WAIT).unwrap());
    }
    for d in done {
        assert_eq!(d.status, OK);
        let mut got = vec![0u8; 4096];
        h.read_slot(d.slot, &mut got).unwrap();
        let o = at[&d.slot];
        assert!(
            got.iter().zip(o..).all(|(b, off)| *b == expect(off)),
            "wrong data at {o}"
        );
    }
}

#[test]
fn qcow2_data_clusters_are_read_through_the_ring_and_the_rest_through_imago() {
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().join("base.qcow2");
    let top = dir.path().join("top.qcow2");
    create(&base, None);
    fill_cluster(&base, 0, 0x00);
    fill_cluster(&base, 1, 0x00);
    create(&top, Some(Path::new("base.qcow2")));
    fill_cluster(&top, 1, 0x5a);
    fill_cluster(&top, 2, 0x5a);

    let disk = open(&top, true);
    let own: Vec<u64> = (0..8).map(|i| CLUSTER + i * 12288 + 512).collect();
    // Freshly opened, imago has loaded no L2 table: looking one up would read it on
    // the event loop, so the first reads go through imago on the I/O threads.
    let mut h = Harness::new(Block::new(disk.clone(), None).unwrap(), 8, 4096).unwrap();
    assert!(h.device().uses_io_uring(), "no ring for a qcow2 image");
    read_batch(&mut h, &own, |o| byte(o, 0x5a));
    assert!(
        h.device().io_threads() > 0,
        "a cold L2 table looked up inline"
    );
    drop(h);
    // Now the table is loaded: the top image's own clusters (1 and 2) go through the
    // ring, so no I/O thread starts.
    let mut h = Harness::new(Block::new(disk, None).unwrap(), 8, 4096).unwrap();
    read_batch(&mut h, &own, |o| byte(o, 0x5a));
    assert_eq!(
        h.device().io_threads(),
        0,
        "data cluster reads went to threads"
    );
    // The backing image's cluster 0 and the unallocated rest need imago.
    let others: Vec<u64> = (0..4).map(|i| i * 8192).chain([5 * CLUSTER]).collect();
    read_batch(
        &mut h,
        &others,
        |o| if o < CLUSTER { byte(o, 0) } else { 0 },
    );
    assert!(h.device().io_threads() > 0, "backing reads bypassed imago");
}

/// A disk whose read extents are a pipe: ring reads stay in flight until the test
/// writes to it; and with `write_pipe`, whose write extents are a full pipe: ring
/// writes stay in flight until the test reads from it. Discards and transfers
/// through the format are counted.
pub(super) struct PipeExtentDisk {
    raw: RawDisk,
    pipe: File,
    write_pipe: Option<File>,
    pub discards: AtomicU64,
    pub format_reads: AtomicU64,
    pub format_writes: AtomicU64,
}

/// A new pipe: (read end, write end).
pub(super) fn pipe() -> (File, File) {
    let mut fds = [0; 2];
    // SAFETY: pipe2 fills the two-element array.
    assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
    // SAFETY: both fds are new and owned by nobody else.
    unsafe { (File::from_raw_fd(fds[0]), File::from_raw_fd(fds[1])) }
}

/// The bytes a full write pipe holds before the ring writes (see `with_write_pipe`).
const WRITE_PIPE_FILL: usize = 4096;

impl PipeExtentDisk {
    /// A 1 MiB disk of 0x11 bytes in `dir`, and the pipe's write end, which feeds the
    /// ring reads.
    pub(super) fn new(dir: &Path) -> (Arc<Self>, File) {
        let (disk, tx) = Self::build(dir, None);
        (Arc::new(disk), tx)
    }

    /// [`PipeExtentDisk::new`] whose ring writes go to a pipe that is full already, and
    /// the read end of that pipe.
    pub(super) fn with_write_pipe(dir: &Path) -> (Arc<Self>, File) {
        let (rx, tx) = pipe();
        // SAFETY: F_SETPIPE_SZ only takes integers; the fd is open.
        let size = unsafe { libc::fcntl(tx.as_raw_fd(), libc::F_SETPIPE_SZ, WRITE_PIPE_FILL) };
        assert_eq!(size as usize, WRITE_PIPE_FILL);
        std::io::Write::write_all(&mut &tx, &[0u8; WRITE_PIPE_FILL]).unwrap();
        let (disk, _) = Self::build(dir, Some(tx));
        (Arc::new(disk), rx)
    }

    fn build(dir: &Path, write_pipe: Option<File>) -> (Self, File) {
        let path = dir.join("disk.raw");
        std::fs::write(&path, vec![0x11u8; 1 << 20]).unwrap();
        let (rx, tx) = pipe();
        let disk = PipeExtentDisk {
            raw: RawDisk::open(&path, false).unwrap(),
            pipe: rx,
            write_pipe,
            discards: AtomicU64::new(0),
            format_reads: AtomicU64::new(0),
            format_writes: AtomicU64::new(0),
        };
        (disk, tx)
    }
}

impl DiskBackend for PipeExtentDisk {
    delegate_disk!(raw: size, write_at, flush);
    fn write_vectored(&self, bufs: &[VolatileSlice<'_>], offset: u64) -> Result<(), DiskError> {
        self.format_writes.fetch_add(1, Ordering::SeqCst);
        self.raw.write_vectored(bufs, offset)
    }
    fn write_extent(&self, _offset: u64, _len: u64) -> Option<(RawFd, u64)> {
        self.write_pipe.as_ref().map(|p| (p.as_raw_fd(), 0))
    }
    fn format(&self) -> ImageFormat {
        ImageFormat::Qcow2
    }
    fn is_read_only(&self) -> bool {
        false
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<(), DiskError> {
        self.format_reads.fetch_add(1, Ordering::SeqCst);
        self.raw.read_at(buf, offset)
    }
    fn read_vectored(&self, bufs: &[VolatileSlice<'_>], offset: u64) -> Result<(), DiskError> {
        self.format_reads.fetch_add(1, Ordering::SeqCst);
        self.raw.read_vectored(bufs, offset)
    }
    fn discard(&self, offset: u64, len: u64) -> Result<(), DiskError> {
        self.discards.fetch_add(1, Ordering::SeqCst);
        self.raw.discard(offset, len)
    }
    fn write_zeroes(&self, offset: u64, len: u64, unmap: bool) -> Result<(), DiskError> {
        self.discards.fetch_add(1, Ordering::SeqCst);
        self.raw.write_zeroes(offset, len, unmap)
    }
    fn has_read_extents(&self) -> bool {
        true
    }
    fn read_extent(&self, _offset: u64, _len: u64) -> Option<(RawFd, u64)> {
        Some((self.pipe.as_raw_fd(), 0))
    }
    fn extents_move(&self) -> bool {
        true
    }
}

#[test]
fn a_discard_waits_for_reads_around_the_format_and_reads_meanwhile_use_it() {
    unmap_waits_for_ring_reads(DetectZeroes::Off, |h| {
        h.submit(Op::Discard, 65536, 65536).unwrap().unwrap()
    });
}

/// With detect-zeroes=unmap a write of zeroes frees clusters as a discard does, and is
/// held back the same way.
#[test]
fn a_detected_unmapping_write_of_zeroes_waits_as_a_discard_does() {
    unmap_waits_for_ring_reads(DetectZeroes::Unmap, |h| {
        h.submit_write(65536, &[0u8; 4096]).unwrap().unwrap()
    });
}

/// Two ring reads in flight, then the request `submit_unmap` puts on the ring (on a
/// device detecting zeroes as `detect` says): it runs only after the reads, and a read
/// meanwhile goes through the format.
fn unmap_waits_for_ring_reads(detect: DetectZeroes, submit_unmap: fn(&mut Harness) -> usize) {
    let dir = tempfile::tempdir().unwrap();
    let (disk, tx) = PipeExtentDisk::new(dir.path());
    let mut dev = Block::new(disk.clone(), None).unwrap();
    dev.set_detect_zeroes(detect);
    let mut h = Harness::new(dev, 8, 4096).unwrap();
    // Two reads go to the ring and wait there for pipe data.
    let ring_reads = [0, 4096].map(|o| h.submit(Op::Read, o, 4096).unwrap().unwrap());
    h.kick().unwrap();
    assert_eq!(h.device().in_flight(), 2);
    // A discard now must wait for them: its clusters could be what they read.
    let discard = submit_unmap(&mut h);
    h.kick().unwrap();
    std::thread::sleep(Duration::from_millis(100));
    h.device().process_completions();
    assert_eq!(
        disk.discards.load(Ordering::SeqCst),
        0,
        "discard ran under reads"
    );
    // A read after the discard goes through the format, not around it.
    let format_read = h.submit(Op::Read, 8192, 4096).unwrap().unwrap();
    h.kick().unwrap();
    let mut done = Vec::new();
    while !done.iter().any(|d: &Done| d.slot == format_read) {
        done.extend(h.wait(WAIT).unwrap());
    }
    assert!(disk.format_reads.load(Ordering::SeqCst) >= 1);
    assert_eq!(disk.discards.load(Ordering::SeqCst), 0);
    // The ring reads get their data; then the discard runs.
    std::io::Write::write_all(&mut &tx, &[0x77; 8192]).unwrap();
    while done.len() < 4 {
        done.extend(h.wait(WAIT).unwrap());
    }
    assert!(done.iter().all(|d| d.status == OK), "{done:?}");
    assert!(done.iter().any(|d| d.slot == discard));
    assert_eq!(disk.discards.load(Ordering::SeqCst), 1);
    for slot in ring_reads {
        let mut got = vec![0u8; 4096];
        h.read_slot(slot, &mut got).unwrap();
        assert!(got.iter().all(|b| *b == 0x77), "slot {slot}");
    }
}

#[test]
fn a_discard_waits_for_writes_around_the_format_and_writes_meanwhile_use_it() {
    let dir = tempfile::tempdir().unwrap();
    let (disk, rx) = PipeExtentDisk::with_write_pipe(dir.path());
    let mut dev = Block::new(disk.clone(), None).unwrap();
    // Not inline on the event loop, which would block on the full pipe.
    dev.set_inline_lone_requests(false);
    let mut h = Harness::new(dev, 8, 4096).unwrap();
    let ring_writes = [0, 4096].map(|o| h.submit_write(o, &[0x66; 4096]).unwrap().unwrap());
    h.kick().unwrap();
    assert_eq!(h.device().in_flight(), 2);
    let discard = h.submit(Op::Discard, 65536, 65536).unwrap().unwrap();
    h.kick().unwrap();
    std::thread::sleep(Duration::from_millis(100));
    h.device().process_completions();
    assert_eq!(
        disk.discards.load(Ordering::SeqCst),
        0,
        "discard ran under writes"
    );
    // A write after the discard goes through the format, not around it.
    let format_write = h.submit_write(8192, &[0x67; 4096]).unwrap().unwrap();
    h.kick().unwrap();
    let mut done = Vec::new();
    while !done.iter().any(|d: &Done| d.slot == format_write) {
        done.extend(h.wait(WAIT).unwrap());
    }
    assert_eq!(disk.format_writes.load(Ordering::SeqCst), 1);
    assert_eq!(disk.discards.load(Ordering::SeqCst), 0);
    // Drain the pipe: the ring writes land there, then the discard runs.
    let mut got = vec![0u8; WRITE_PIPE_FILL + 8192];
    std::io::Read::read_exact(&mut &rx, &mut got).unwrap();
    while done.len() < 4 {
        done.extend(h.wait(WAIT).unwrap());
    }
    assert!(done.iter().all(|d| d.status == OK), "{done:?}");
    assert!(done.iter().any(|d| d.slot == discard));
    assert!(ring_writes
        .iter()
        .all(|s| done.iter().any(|d| d.slot == *s)));
    assert_eq!(disk.discards.load(Ordering::SeqCst), 1);
    assert!(got[WRITE_PIPE_FILL..].iter().all(|&b| b == 0x66));
}

//! virtio-blk writes to a qcow2 image with cache=none: through io_uring, around imago,
//! where imago itself would write in place (clusters the image owns alone), and
//! through imago everywhere else (allocation, copy-on-write from a backing file or a
//! snapshot); with cache=writeback, through imago.
//! Checked with qemu-img: the image is consistent and holds what was written, and a
//! snapshot keeps its data.

mod qcow2_support;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use kiln_devices::block::config::Cache;
use kiln_devices::block::{open_disk, DiskBackend, DiskConfig, ImageFormat};
use kiln_devices::virtio::block::harness::{Harness, Op, QueueDriver};
use kiln_devices::virtio::block::Block;
use qcow2_support::*;

const CLUSTER: u64 = 64 << 10;

/// base: clusters 0 and 1 of 0x11; top (over base): clusters 1 and 2 of 0x22.
fn chain(dir: &Path) -> std::path::PathBuf {
    let base = dir.join("base.qcow2");
    let top = dir.join("top.qcow2");
    qemu_create(&base, "cluster_size=65536", "1M");
    qemu_io(&base, &["write -P 0x11 0 128k"]);
    qemu_overlay("base.qcow2", "qcow2", &top);
    qemu_io(&top, &["write -P 0x22 64k 128k"]);
    top
}

fn open_rw(path: &Path, cache: Cache) -> Arc<dyn DiskBackend> {
    open_disk(&DiskConfig {
        format: Some(ImageFormat::Qcow2),
        cache,
        ..DiskConfig::new(path)
    })
    .unwrap()
}

/// A device on `disk` whose I/O threads have loaded the L2 table (a first read
/// through imago), so that lookups on the event loop find it.
fn warm_harness(disk: &Arc<dyn DiskBackend>) -> Harness {
    let mut h = Harness::new(Block::new(disk.clone(), None).unwrap(), 8, 4096).unwrap();
    h.submit(Op::Read, CLUSTER, 4096).unwrap().unwrap();
    h.submit(Op::Read, 2 * CLUSTER, 4096).unwrap().unwrap();
    h.kick().unwrap();
    let mut done = 0;
    while done < 2 {
        done += h.wait(Duration::from_secs(10)).unwrap().len();
    }
    drop(h);
    Harness::new(Block::new(disk.clone(), None).unwrap(), 8, 4096).unwrap()
}

/// Write 4 KiB of `byte` at each of `offsets`, all in one batch; the same into
/// `mirror`.
fn write_batch(h: &mut Harness, offsets: &[u64], byte: u8, mirror: &mut [u8]) {
    for &o in offsets {
        h.submit_write(o, &[byte; 4096]).unwrap().unwrap();
        mirror[o as usize..o as usize + 4096].fill(byte);
    }
    h.kick().unwrap();
    let mut done = Vec::new();
    while done.len() < offsets.len() {
        done.extend(h.wait(Duration::from_secs(10)).unwrap());
    }
    assert!(done.iter().all(|d| d.status == 0), "{done:?}");
}

fn assert_holds(image: &Path, mirror: &[u8], dir: &Path) {
    let raw = dir.join("mirror.raw");
    std::fs::write(&raw, mirror).unwrap();
    assert_check_clean(image);
    let out = qemu_img(&["compare", "-f", "qcow2", "-F", "raw", s(image), s(&raw)]);
    assert!(out.contains("Images are identical"), "{out}");
}

#[test]
fn writes_to_owned_clusters_take_the_ring_and_the_rest_go_through_imago() {
    let dir = fresh_dir("qcow2-ring-writes", "owned");
    let top = chain(&dir);
    let mut mirror = qemu_contents(&top, &dir);
    let disk = open_rw(&top, Cache::None);
    let mut h = warm_harness(&disk);
    let owned: Vec<u64> = (0..8).map(|i| CLUSTER + i * 16384).collect();
    write_batch(&mut h, &owned, 0x33, &mut mirror);
    assert_eq!(
        h.device().io_threads(),
        0,
        "owned clusters written by threads"
    );
    // Cluster 0 shows the backing file (copy-on-write), cluster 5 nothing.
    write_batch(&mut h, &[4096, 5 * CLUSTER + 512], 0x44, &mut mirror);
    assert!(
        h.device().io_threads() > 0,
        "an allocating write bypassed imago"
    );
    drop(h);
    drop(disk);
    // Buffered, the same writes stay on the I/O threads (measured faster there).
    let disk = open_rw(&top, Cache::Writeback);
    let mut h = warm_harness(&disk);
    assert_eq!(h.device().io_threads(), 0);
    write_batch(&mut h, &owned, 0x34, &mut mirror);
    assert!(h.device().io_threads() > 0, "buffered writes took the ring");
    drop(h);
    drop(disk);
    assert_holds(&top, &mirror, &dir);
}

#[test]
fn clusters_shared_with_a_snapshot_are_copied_not_written_in_place() {
    let dir = fresh_dir("qcow2-ring-writes", "snapshot");
    let top = chain(&dir);
    qemu_img(&["snapshot", "-c", "before", s(&top)]);
    let before = qemu_contents(&top, &dir);
    let mut mirror = before.clone();
    let disk = open_rw(&top, Cache::None);
    let mut h = warm_harness(&disk);
    let shared: Vec<u64> = (0..4).map(|i| CLUSTER + i * 16384).collect();
    write_batch(&mut h, &shared, 0x55, &mut mirror);
    assert!(
        h.device().io_threads() > 0,
        "a shared cluster written in place"
    );
    drop(h);
    drop(disk);
    assert_holds(&top, &mirror, &dir);
    let snap = dir.join("snapshot.raw");
    qemu_img(&[
        "convert",
        "-l",
        "snapshot.name=before",
        "-O",
        "raw",
        s(&top),
        s(&snap),
    ]);
    assert!(
        std::fs::read(&snap).unwrap() == before,
        "the snapshot changed"
    );
}

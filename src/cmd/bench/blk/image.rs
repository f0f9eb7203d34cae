//! The image files a bench line runs on: fresh images for writes, a filled one for reads.

use std::path::Path;

use anyhow::Context;
use kiln_devices::block::create::{create_image, CreateOptions};
use kiln_devices::block::dio::drop_from_page_cache;
use kiln_devices::block::{open_disk, DiskConfig, ImageFormat};

pub fn make_image(path: &Path, format: ImageFormat, size: u64) -> anyhow::Result<()> {
    let opts = CreateOptions::new(format, Some(size));
    create_image(path, &opts).with_context(|| format!("cannot create {}", path.display()))
}

/// Write every byte once so reads hit allocated data.
pub fn fill(path: &Path, size: u64) -> anyhow::Result<()> {
    let disk = open_disk(&DiskConfig::new(path.to_owned()))?;
    let chunk: Vec<u8> = (0..1 << 20).map(|i: u32| (i % 253) as u8).collect();
    for off in (0..size).step_by(chunk.len()) {
        disk.write_at(&chunk[..chunk.len().min((size - off) as usize)], off)?;
    }
    disk.flush()?;
    drop(disk);
    // Read the file once: under a VM the first read after writing is slow at the host
    // level, and it must not be charged to whichever runner happens to go first.
    read_through(path)
}

/// Read the whole file, which leaves it in the host page cache (warm-cache reads).
pub fn read_through(path: &Path) -> anyhow::Result<()> {
    let mut f = std::fs::File::open(path)?;
    std::io::copy(&mut f, &mut std::io::sink())
        .with_context(|| format!("cannot read {}", path.display()))?;
    Ok(())
}

/// Drop the file's pages from the host page cache (cold-cache reads).
pub fn evict(path: &Path) -> anyhow::Result<()> {
    drop_from_page_cache(path).with_context(|| format!("cannot evict {}", path.display()))
}

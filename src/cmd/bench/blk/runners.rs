//! The runners of a line: kiln's backend engine, kiln's virtio-blk device, `qemu-img bench`.

use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use kiln_devices::block::dio::AlignedBuf;
use kiln_devices::block::{open_disk, DiskBackend, DiskConfig};
use kiln_devices::virtio::block::harness::{EventLoopHarness, Harness, Op, QueueDriver};
use kiln_devices::virtio::block::Block;
use kiln_devices::virtio::VirtioDevice;

use super::line::{Line, Run, RANDOM_STRIDE};

/// A request the device has not returned after this long is a hang, not a slow disk.
const DEVICE_TIMEOUT: Duration = Duration::from_secs(120);

impl Line {
    fn open(&self, image: &Path) -> anyhow::Result<Arc<dyn DiskBackend>> {
        Ok(open_disk(&DiskConfig {
            format: Some(self.format),
            readonly: !self.pattern.write,
            cache: self.cache,
            ..DiskConfig::new(image.to_owned())
        })?)
    }

    /// kiln's `DiskBackend` directly: `depth` threads, each doing one request at a time.
    pub fn run_backend(&self, image: &Path) -> anyhow::Result<Run> {
        let disk = self.open(image)?;
        let next = Arc::new(AtomicU64::new(0));
        let cpu = cpu_secs(Whose::OwnProcess);
        let start = Instant::now();
        std::thread::scope(|s| -> anyhow::Result<()> {
            let workers: Vec<_> = (0..self.depth)
                .map(|_| s.spawn(|| self.backend_worker(disk.as_ref(), &next)))
                .collect();
            for w in workers {
                w.join()
                    .map_err(|_| anyhow::anyhow!("bench worker panicked"))??;
            }
            Ok(())
        })?;
        let secs = start.elapsed().as_secs_f64();
        let cpu_secs = cpu_secs(Whose::OwnProcess) - cpu;
        drop(disk); // qcow2: metadata written back before the next run
        Ok(Run {
            ops: self.count,
            secs,
            cpu_secs,
        })
    }

    fn backend_worker(&self, disk: &dyn DiskBackend, next: &AtomicU64) -> anyhow::Result<()> {
        // Page-aligned, as a guest's buffers are, so that O_DIRECT takes it.
        let mut buf = AlignedBuf::new(self.pattern.block as usize, 0);
        buf.fill(0x5a);
        loop {
            let i = next.fetch_add(1, Ordering::Relaxed);
            if i >= self.count {
                return Ok(());
            }
            let off = self.offset(i);
            if self.pattern.write {
                disk.write_at(&buf, off)?;
            } else {
                disk.read_at(&mut buf, off)?;
            }
        }
    }

    /// kiln's virtio-blk device model: requests go on an in-process virtqueue of
    /// `depth` slots, through the device's avail ring, io_uring or worker pool,
    /// completion event and used ring; a slot is refilled as soon as the device
    /// returns it. By default this thread plays both the driver and the event loop, so
    /// the guest costs nothing, as in `qemu-img bench`; with `device_thread` the device
    /// runs on its own event-loop thread as in `kiln run`, and every hand-over between
    /// driver and device is a thread wake-up, as in a VM.
    pub fn run_device(&self, image: &Path) -> anyhow::Result<Run> {
        let disk = self.open(image)?;
        let block = self.pattern.block as usize;
        let mut dev = Block::new(disk, None)?;
        dev.set_cache(self.cache);
        let depth = self.depth as usize;
        if self.device_thread {
            let features = dev.device_features();
            let mut h = EventLoopHarness::new(dev, depth, block, features)?;
            let run = self.drive(&mut h)?;
            h.close()?; // joins the device's threads; qcow2 metadata written back
            Ok(run)
        } else {
            let mut h = Harness::new(dev, depth, block)?;
            let run = self.drive(&mut h)?;
            drop(h); // joins the device's threads; qcow2 metadata written back
            Ok(run)
        }
    }

    fn drive(&self, h: &mut impl QueueDriver) -> anyhow::Result<Run> {
        let block = self.pattern.block as usize;
        let op = if self.pattern.write {
            let data = vec![0x5au8; block];
            for slot in 0..self.depth as usize {
                h.write_slot(slot, &data)?;
            }
            Op::Write
        } else {
            Op::Read
        };
        let (mut issued, mut done) = (0u64, 0u64);
        let cpu = cpu_secs(Whose::OwnProcess);
        let start = Instant::now();
        while done < self.count {
            while issued < self.count && h.free_slots() > 0 {
                h.submit(op, self.offset(issued), block)?;
                issued += 1;
            }
            h.kick()?;
            for d in h.wait(DEVICE_TIMEOUT)? {
                if d.status != 0 {
                    bail!(
                        "the device failed a request (virtio-blk status {})",
                        d.status
                    );
                }
                done += 1;
            }
        }
        Ok(Run {
            ops: self.count,
            secs: start.elapsed().as_secs_f64(),
            cpu_secs: cpu_secs(Whose::OwnProcess) - cpu,
        })
    }

    pub fn run_qemu(&self, image: &Path, aio: &str) -> anyhow::Result<Run> {
        let step = self.pattern.block
            * if self.pattern.random {
                RANDOM_STRIDE
            } else {
                1
            };
        let mut cmd = Command::new("qemu-img");
        cmd.args([
            "bench",
            "-f",
            self.format.name(),
            "-t",
            self.qemu_cache.name(),
            "-i",
            aio,
        ])
        .args(["-d", &self.depth.to_string(), "-c", &self.count.to_string()])
        .args([
            "-s",
            &self.pattern.block.to_string(),
            "-S",
            &step.to_string(),
        ]);
        if self.pattern.write {
            cmd.arg("-w");
        }
        let cpu = cpu_secs(Whose::WaitedChildren);
        let wall = Instant::now();
        let out = cmd
            .arg(image)
            .output()
            .context("cannot run qemu-img (install qemu-utils)")?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        if !out.status.success() {
            bail!("qemu-img bench failed: {}", text.trim());
        }
        Ok(Run {
            ops: self.count,
            secs: qemu_seconds(&text, wall.elapsed())?,
            // Includes qemu-img's start-up and image open, a few milliseconds: under 0.3 us
            // per request at the default counts, but visible in tiny runs.
            cpu_secs: cpu_secs(Whose::WaitedChildren) - cpu,
        })
    }
}

/// The run time `qemu-img bench` prints ("Run completed in 1.234 seconds."). It
/// prints milliseconds, so a tiny run can read "0.000": the child's whole life
/// (`wall`, start-up included) is then the closest bound there is.
fn qemu_seconds(text: &str, wall: Duration) -> anyhow::Result<f64> {
    let secs = text
        .split("Run completed in ")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .and_then(|s| s.parse::<f64>().ok())
        .with_context(|| format!("unexpected qemu-img bench output: {}", text.trim()))?;
    Ok(if secs > 0.0 { secs } else { wall.as_secs_f64() })
}

enum Whose {
    OwnProcess,
    WaitedChildren,
}

/// User + system CPU seconds of this process (all threads) or of its waited-for
/// children.
fn cpu_secs(whose: Whose) -> f64 {
    let who = match whose {
        Whose::OwnProcess => libc::RUSAGE_SELF,
        Whose::WaitedChildren => libc::RUSAGE_CHILDREN,
    };
    // SAFETY: an all-zero rusage is a valid value of this plain C struct.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `usage` is a valid, writable rusage for the call to fill.
    if unsafe { libc::getrusage(who, &mut usage) } != 0 {
        return f64::NAN;
    }
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    secs(usage.ru_utime) + secs(usage.ru_stime)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn qemu_times_are_read_and_a_zero_reading_falls_back_to_the_wall_clock() {
        let out = "Sending 64 requests, 4096 bytes each, 1 in parallel\n\
                   Run completed in 1.234 seconds.\n";
        let wall = Duration::from_millis(1500);
        assert_eq!(qemu_seconds(out, wall).unwrap(), 1.234);
        let tiny = out.replace("1.234", "0.000");
        assert_eq!(qemu_seconds(&tiny, wall).unwrap(), 1.5);
        let err = qemu_seconds("qemu-img: something else", wall).unwrap_err();
        assert!(err.to_string().contains("unexpected qemu-img bench output"));
    }
}

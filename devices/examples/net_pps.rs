//! Packets per second the virtio-net device model sustains, with mock queues and a
//! backend that costs nothing: the number measures descriptor parsing, guest-memory
//! copies and used-ring updates only.
//!
//! `cargo run --release -p kiln-devices --example net_pps [-- SECONDS_PER_CASE]`

use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;
use std::time::{Duration, Instant};

use kiln_devices::virtio::net::backend::NetBackend;
use kiln_devices::virtio::net::{MacAddr, Net, QUEUE_SIZE};
use kiln_devices::virtio::{ActivateContext, VirtioDevice, VirtioInterrupt, VIRTIO_F_VERSION_1};
use kiln_devices::GuestMemory;
use virtio_queue::desc::{split::Descriptor, RawDescriptor};
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

/// Accepts every frame; hands out `frame` `remaining` times.
struct NullBackend {
    frame: Vec<u8>,
    remaining: Arc<std::sync::atomic::AtomicUsize>,
    evt: EventFd,
}

impl NetBackend for NullBackend {
    fn has_vnet_hdr(&self) -> bool {
        false
    }
    fn send(&mut self, packet: &[u8]) -> io::Result<()> {
        std::hint::black_box(packet);
        Ok(())
    }
    fn recv(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        use std::sync::atomic::Ordering;
        if self.remaining.load(Ordering::Relaxed) == 0 {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        self.remaining.fetch_sub(1, Ordering::Relaxed);
        buf[..self.frame.len()].copy_from_slice(&self.frame);
        Ok(self.frame.len())
    }
    fn raw_fd(&self) -> RawFd {
        self.evt.as_raw_fd()
    }
}

struct NoIrq;
impl VirtioInterrupt for NoIrq {
    fn signal_used_queue(&self, _: u16) -> io::Result<()> {
        Ok(())
    }
    fn signal_config_change(&self) -> io::Result<()> {
        Ok(())
    }
}

const BUF_BASE: u64 = 0x10_0000;
const BUF_SIZE: u64 = 2048;

/// A split queue laid out by hand (virtio-queue's mock places the used ring inside the
/// upper half of a 256-entry avail ring, so it cannot run a full queue).
struct RawQueue {
    desc: u64,
    avail: u64,
    used: u64,
}

impl RawQueue {
    fn new(base: u64) -> Self {
        RawQueue {
            desc: base,
            avail: base + 0x1000,
            used: base + 0x2000,
        }
    }

    fn queue(&self) -> Queue {
        let mut q = Queue::new(QUEUE_SIZE).unwrap();
        q.set_size(QUEUE_SIZE);
        q.set_desc_table_address(Some(self.desc as u32), Some(0));
        q.set_avail_ring_address(Some(self.avail as u32), Some(0));
        q.set_used_ring_address(Some(self.used as u32), Some(0));
        q.set_ready(true);
        q
    }

    fn set_desc(&self, mem: &GuestMemory, i: u16, d: Descriptor) {
        let raw = RawDescriptor::from(d);
        mem.write_obj(raw, GuestAddress(self.desc + 16 * u64::from(i)))
            .unwrap();
    }

    /// Publish all QUEUE_SIZE one-descriptor chains again (the device used the last batch).
    fn publish(&self, mem: &GuestMemory, round: u16) {
        for i in 0..QUEUE_SIZE {
            mem.write_obj(i, GuestAddress(self.avail + 4 + 2 * u64::from(i)))
                .unwrap();
        }
        let idx = round.wrapping_add(1).wrapping_mul(QUEUE_SIZE);
        mem.write_obj(idx, GuestAddress(self.avail + 2)).unwrap();
    }
}

fn run_case(frame_len: usize, secs: f64) -> (f64, f64) {
    let mem = GuestMemory::from_ranges(&[(GuestAddress(0), 2 << 20)]).unwrap();
    let rxq = RawQueue::new(0);
    let txq = RawQueue::new(0x8000);
    let packet_len = 12 + frame_len;
    for i in 0..QUEUE_SIZE {
        let addr = BUF_BASE + u64::from(i) * BUF_SIZE;
        let rx = Descriptor::new(addr + 0x8_0000, BUF_SIZE as u32, 2, 0);
        rxq.set_desc(&mem, i, rx);
        let tx = Descriptor::new(addr, packet_len as u32, 0, 0);
        txq.set_desc(&mem, i, tx);
        mem.write_slice(&vec![0u8; packet_len], GuestAddress(addr))
            .unwrap();
    }
    let remaining = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let backend = NullBackend {
        frame: vec![0x5a; frame_len],
        remaining: remaining.clone(),
        evt: EventFd::new(EFD_NONBLOCK).unwrap(),
    };
    let mut net = Net::new(Box::new(backend), MacAddr([2, 0, 0, 0, 0, 1])).unwrap();
    net.ack_features(VIRTIO_F_VERSION_1 | (1 << 15));
    net.activate(ActivateContext {
        mem: mem.clone(),
        queues: vec![rxq.queue(), txq.queue()],
        queue_events: (0..2)
            .map(|_| EventFd::new(EFD_NONBLOCK).unwrap())
            .collect(),
        interrupt: Arc::new(NoIrq),
    })
    .unwrap();

    let budget = Duration::from_secs_f64(secs);
    let start = Instant::now();
    let mut round = 0u16;
    while start.elapsed() < budget {
        txq.publish(&mem, round);
        net.process_tx();
        round = round.wrapping_add(1);
    }
    let tx_pps = net.stats().tx_packets as f64 / start.elapsed().as_secs_f64();

    let start = Instant::now();
    let mut round = 0u16;
    while start.elapsed() < budget {
        rxq.publish(&mem, round);
        remaining.store(QUEUE_SIZE as usize, std::sync::atomic::Ordering::Relaxed);
        net.process_rx();
        round = round.wrapping_add(1);
    }
    let rx_pps = net.stats().rx_packets as f64 / start.elapsed().as_secs_f64();
    assert_eq!(net.stats().bad_chains, 0);
    (tx_pps, rx_pps)
}

fn main() {
    let secs: f64 = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(2.0);
    for frame_len in [64usize, 1514] {
        let (tx, rx) = run_case(frame_len, secs);
        println!(
            "virtio-net device loop, {frame_len}-byte frames: tx {:.0} pps ({:.2} Gbit/s), rx {:.0} pps ({:.2} Gbit/s)",
            tx,
            tx * frame_len as f64 * 8e-9,
            rx,
            rx * frame_len as f64 * 8e-9
        );
    }
}

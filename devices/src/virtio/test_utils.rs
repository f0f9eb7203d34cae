//! Shared helpers for device tests: mock guest memory, mock queues, a counting interrupt.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use virtio_bindings::bindings::virtio_ring::{
    VRING_DESC_F_INDIRECT, VRING_DESC_F_NEXT, VRING_DESC_F_WRITE,
};
use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
use virtio_queue::mock::MockSplitQueue;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::{ActivateContext, VirtioDevice, VirtioInterrupt};
use crate::GuestMemory;

/// Guest memory size in tests; buffers live from [`DATA`] upward.
pub const MEM_SIZE: u64 = 0x40_0000;
/// First address free for test buffers (queues sit below).
pub const DATA: u64 = 0x10_0000;

pub fn test_mem() -> GuestMemory {
    GuestMemory::from_ranges(&[(GuestAddress(0), MEM_SIZE as usize)]).unwrap()
}

#[derive(Default)]
pub struct CountingInterrupt {
    pub used: AtomicUsize,
    pub config: AtomicUsize,
}

impl CountingInterrupt {
    pub fn used_count(&self) -> usize {
        self.used.load(Ordering::SeqCst)
    }
}

impl VirtioInterrupt for CountingInterrupt {
    fn signal_used_queue(&self, _queue_index: u16) -> std::io::Result<()> {
        self.used.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
    fn signal_config_change(&self) -> std::io::Result<()> {
        self.config.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
}

/// Activate `dev` with queues made from `vqs`.
pub fn activate(
    dev: &mut dyn VirtioDevice,
    mem: &GuestMemory,
    vqs: &[&MockSplitQueue<GuestMemory>],
) -> Arc<CountingInterrupt> {
    let queues = vqs.iter().map(|q| q.create_queue().unwrap()).collect();
    activate_queues(dev, mem, queues)
}

/// Activate `dev` with `queues`.
pub fn activate_queues(
    dev: &mut dyn VirtioDevice,
    mem: &GuestMemory,
    queues: Vec<Queue>,
) -> Arc<CountingInterrupt> {
    let interrupt = Arc::new(CountingInterrupt::default());
    let queue_events = queues
        .iter()
        .map(|_| EventFd::new(EFD_NONBLOCK).unwrap())
        .collect();
    dev.activate(ActivateContext {
        mem: mem.clone(),
        queues,
        queue_events,
        interrupt: interrupt.clone(),
    })
    .unwrap();
    interrupt
}

/// One buffer: address, length, device-writable.
pub type Buf = (u64, u32, bool);

/// Descriptors for one chain placed at table index `first`, NEXT flags set.
pub fn chain(first: u16, bufs: &[Buf]) -> Vec<RawDescriptor> {
    bufs.iter()
        .enumerate()
        .map(|(i, &(addr, len, write))| {
            let last = i + 1 == bufs.len();
            let mut flags = if write { VRING_DESC_F_WRITE as u16 } else { 0 };
            if !last {
                flags |= VRING_DESC_F_NEXT as u16;
            }
            let next = if last { 0 } else { first + i as u16 + 1 };
            RawDescriptor::from(SplitDescriptor::new(addr, len, flags, next))
        })
        .collect()
}

/// Write `bufs` as an indirect descriptor table at `at` (entries chained by NEXT) and
/// return the one ring descriptor that refers to it.
pub fn indirect_table(mem: &GuestMemory, at: u64, bufs: &[Buf]) -> RawDescriptor {
    for (i, d) in chain(0, bufs).iter().enumerate() {
        mem.write_obj(*d, GuestAddress(at + 16 * i as u64)).unwrap();
    }
    let len = 16 * bufs.len() as u32;
    raw_desc(at, len, VRING_DESC_F_INDIRECT as u16, 0)
}

/// Raw descriptor with explicit flags and next (for hostile chains).
pub fn raw_desc(addr: u64, len: u32, flags: u16, next: u16) -> RawDescriptor {
    RawDescriptor::from(SplitDescriptor::new(addr, len, flags, next))
}

/// The used ring entry `i`: (descriptor head, length).
pub fn used(vq: &MockSplitQueue<GuestMemory>, i: u16) -> (u32, u32) {
    let e = vq.used().ring().ref_at(i as usize).unwrap().load();
    (e.id(), e.len())
}

/// The used ring's index.
pub fn used_idx(vq: &MockSplitQueue<GuestMemory>) -> u16 {
    vq.used().idx().load()
}

/// A split virtqueue laid out as a driver lays it out: used_event after the avail
/// ring and avail_event after the used ring (MockSplitQueue puts its used ring on top
/// of used_event), with buffers posted round the ring as often as a test likes.
pub struct TestRing<'a> {
    mem: &'a GuestMemory,
    base: u64,
    size: u16,
    next_avail: u16,
}

impl<'a> TestRing<'a> {
    /// A ring of `size` entries at `base` (below [`DATA`]).
    pub fn new(mem: &'a GuestMemory, base: u64, size: u16) -> Self {
        let ring = TestRing {
            mem,
            base,
            size,
            next_avail: 0,
        };
        let end = ring.used() + 6 + 8 * u64::from(size);
        assert!(end <= DATA, "ring overlaps the test buffers");
        mem.write_slice(&vec![0u8; (end - base) as usize], GuestAddress(base))
            .unwrap();
        ring
    }

    fn avail(&self) -> u64 {
        self.base + 16 * u64::from(self.size)
    }

    fn used(&self) -> u64 {
        (self.avail() + 6 + 2 * u64::from(self.size)).next_multiple_of(4)
    }

    /// The device's view of the ring.
    pub fn queue(&self) -> Queue {
        let mut q = Queue::new(self.size).unwrap();
        q.set_size(self.size);
        q.set_ready(true);
        let split = |a: u64| (Some(a as u32), Some((a >> 32) as u32));
        let (lo, hi) = split(self.base);
        q.set_desc_table_address(lo, hi);
        let (lo, hi) = split(self.avail());
        q.set_avail_ring_address(lo, hi);
        let (lo, hi) = split(self.used());
        q.set_used_ring_address(lo, hi);
        q
    }

    /// Make the chain of `bufs`, placed at descriptor `first`, available.
    pub fn post(&mut self, first: u16, bufs: &[Buf]) {
        for (i, d) in chain(first, bufs).into_iter().enumerate() {
            let at = self.base + 16 * u64::from(first + i as u16);
            self.mem.write_obj(d, GuestAddress(at)).unwrap();
        }
        let slot = u64::from(self.next_avail % self.size);
        self.write16(self.avail() + 4 + 2 * slot, first);
        self.next_avail = self.next_avail.wrapping_add(1);
        self.write16(self.avail() + 2, self.next_avail);
    }

    /// Overwrite the avail index (a hostile driver's, say).
    pub fn set_avail_idx(&self, value: u16) {
        self.write16(self.avail() + 2, value);
    }

    /// The avail ring's flags (VRING_AVAIL_F_NO_INTERRUPT).
    pub fn set_avail_flags(&self, flags: u16) {
        self.write16(self.avail(), flags);
    }

    pub fn set_used_event(&self, value: u16) {
        self.write16(self.avail() + 4 + 2 * u64::from(self.size), value);
    }

    pub fn avail_event(&self) -> u16 {
        self.read16(self.used() + 4 + 8 * u64::from(self.size))
    }

    /// The used ring's flags (VRING_USED_F_NO_NOTIFY).
    pub fn used_flags(&self) -> u16 {
        self.read16(self.used())
    }

    pub fn used_idx(&self) -> u16 {
        self.read16(self.used() + 2)
    }

    /// Used entry number `n` (counted from the start, wrapping round the ring):
    /// (descriptor head, length).
    pub fn used_entry(&self, n: u16) -> (u32, u32) {
        let at = self.used() + 4 + 8 * u64::from(n % self.size);
        let id: u32 = self.mem.read_obj(GuestAddress(at)).unwrap();
        let len: u32 = self.mem.read_obj(GuestAddress(at + 4)).unwrap();
        (u32::from_le(id), u32::from_le(len))
    }

    fn write16(&self, at: u64, value: u16) {
        self.mem.write_obj(value.to_le(), GuestAddress(at)).unwrap();
    }

    fn read16(&self, at: u64) -> u16 {
        u16::from_le(self.mem.read_obj(GuestAddress(at)).unwrap())
    }
}

/// Run `em` until `done` holds, for at most 10 s (then panic naming `what`).
pub fn run_until<S: event_manager::MutEventSubscriber>(
    em: &mut event_manager::EventManager<S>,
    what: &str,
    mut done: impl FnMut() -> bool,
) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !done() {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        em.run_with_timeout(20).unwrap();
    }
}

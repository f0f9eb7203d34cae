//! Shared helpers for device tests: mock guest memory, mock queues, a counting interrupt.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use virtio_bindings::bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
use virtio_queue::mock::MockSplitQueue;
use virtio_queue::Queue;
use vm_memory::GuestAddress;
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
    let interrupt = Arc::new(CountingInterrupt::default());
    let queues: Vec<Queue> = vqs.iter().map(|q| q.create_queue().unwrap()).collect();
    let queue_events = vqs
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

//! A driver's view of the device: mock queues, buffers in guest memory, a mock backend.

use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use virtio_bindings::virtio_net::VIRTIO_NET_F_MRG_RXBUF;
use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
use virtio_queue::mock::MockSplitQueue;
use virtio_queue::Queue;
use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::virtio::net::backend::NetBackend;
use crate::virtio::net::{MacAddr, Net};
use crate::virtio::{ActivateContext, VirtioDevice, VirtioInterrupt, VIRTIO_F_VERSION_1};
use crate::GuestMemory;

pub const F_WRITE: u16 = 2; // VRING_DESC_F_WRITE
pub const F_NEXT: u16 = 1; // VRING_DESC_F_NEXT
pub const F_INDIRECT: u16 = 4; // VRING_DESC_F_INDIRECT
pub const MAC: MacAddr = MacAddr([0x02, 0x11, 0x22, 0x33, 0x44, 0x55]);
pub const MEM_SIZE: usize = 16 << 20;

#[derive(Default)]
pub struct MockState {
    pub sent: Vec<Vec<u8>>,
    pub incoming: VecDeque<Vec<u8>>,
    /// Frames `send` still accepts before WouldBlock; None = unlimited.
    pub send_budget: Option<usize>,
    pub vnet: bool,
}

/// A backend whose "wire" is `MockState`; its fd is an eventfd that is readable while
/// `incoming` is not empty.
pub struct MockBackend {
    pub state: Arc<Mutex<MockState>>,
    pub evt: Arc<EventFd>,
}

impl NetBackend for MockBackend {
    fn has_vnet_hdr(&self) -> bool {
        self.state.lock().unwrap().vnet
    }

    fn offload_features(&self) -> u64 {
        1 << virtio_bindings::virtio_net::VIRTIO_NET_F_CSUM
    }

    fn send(&mut self, packet: &[u8]) -> io::Result<()> {
        let mut s = self.state.lock().unwrap();
        match &mut s.send_budget {
            Some(0) => return Err(io::ErrorKind::WouldBlock.into()),
            Some(n) => *n -= 1,
            None => {}
        }
        s.sent.push(packet.to_vec());
        Ok(())
    }

    fn recv(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let mut s = self.state.lock().unwrap();
        let Some(p) = s.incoming.pop_front() else {
            let _ = self.evt.read();
            return Err(io::ErrorKind::WouldBlock.into());
        };
        buf[..p.len()].copy_from_slice(&p);
        Ok(p.len())
    }

    fn raw_fd(&self) -> RawFd {
        self.evt.as_raw_fd()
    }
}

#[derive(Default)]
pub struct MockInterrupt {
    pub used: [AtomicUsize; 2],
    pub config: AtomicUsize,
}

impl VirtioInterrupt for MockInterrupt {
    fn signal_used_queue(&self, queue_index: u16) -> io::Result<()> {
        self.used[queue_index as usize].fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
    fn signal_config_change(&self) -> io::Result<()> {
        self.config.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
}

pub fn new_mem() -> GuestMemory {
    GuestMemory::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).unwrap()
}

/// One queue seen from the driver side.
///
/// virtio-queue 0.18's mock places the used ring right after the first 256 *bytes* of a
/// 256-entry avail ring, so avail entries 128.. overlap the used ring: tests publish
/// fewer than 128 chains per queue.
pub struct DriverQueue<'a> {
    pub q: MockSplitQueue<'a, GuestMemory>,
    next_desc: u16,
    pub used_seen: u16,
}

impl<'a> DriverQueue<'a> {
    pub fn new(mem: &'a GuestMemory, base: u64) -> Self {
        DriverQueue {
            q: MockSplitQueue::create(mem, GuestAddress(base), 256),
            next_desc: 0,
            used_seen: 0,
        }
    }

    /// Publish a chain of (address, length, flags) descriptors; NEXT links are added.
    pub fn add_chain(&mut self, descs: &[(u64, u32, u16)]) -> u16 {
        let head = self.next_desc;
        let raw: Vec<RawDescriptor> = descs
            .iter()
            .enumerate()
            .map(|(i, &(addr, len, flags))| {
                let last = i + 1 == descs.len();
                let flags = if last { flags } else { flags | F_NEXT };
                let next = if last { 0 } else { head + i as u16 + 1 };
                RawDescriptor::from(SplitDescriptor::new(addr, len, flags, next))
            })
            .collect();
        self.add_raw(&raw);
        head
    }

    /// Publish descriptors exactly as given (for hostile chains).
    pub fn add_raw(&mut self, raw: &[RawDescriptor]) -> u16 {
        let head = self.next_desc;
        self.q.add_desc_chains(raw, head).unwrap();
        self.next_desc += raw.len() as u16;
        head
    }

    /// Used entries since the last call: (descriptor id, length).
    pub fn take_used(&mut self) -> Vec<(u32, u32)> {
        let idx = self.q.used().idx().load();
        let mut out = Vec::new();
        while self.used_seen != idx {
            let e = self
                .q
                .used()
                .ring()
                .ref_at(self.used_seen as usize % 256)
                .unwrap()
                .load();
            out.push((e.id(), e.len()));
            self.used_seen = self.used_seen.wrapping_add(1);
        }
        out
    }
}

/// Test setup: a device activated on two mock queues.
pub struct Setup<'a> {
    pub mem: &'a GuestMemory,
    pub rx: DriverQueue<'a>,
    pub tx: DriverQueue<'a>,
    pub net: Net,
    pub backend: Arc<Mutex<MockState>>,
    pub backend_evt: Arc<EventFd>,
    pub irq: Arc<MockInterrupt>,
    pub queue_events: Vec<EventFd>,
    pub next_buf: u64,
}

impl<'a> Setup<'a> {
    /// `mergeable`: whether the driver accepts MRG_RXBUF.
    pub fn new(mem: &'a GuestMemory, mergeable: bool, vnet: bool) -> Self {
        let mut s = Self::unactivated(mem, vnet);
        let mut features = VIRTIO_F_VERSION_1;
        if mergeable {
            features |= 1 << VIRTIO_NET_F_MRG_RXBUF;
        }
        s.net.ack_features(features);
        s.activate();
        s
    }

    pub fn unactivated(mem: &'a GuestMemory, vnet: bool) -> Self {
        let state = Arc::new(Mutex::new(MockState {
            vnet,
            ..Default::default()
        }));
        let evt = Arc::new(EventFd::new(EFD_NONBLOCK).unwrap());
        let backend = MockBackend {
            state: state.clone(),
            evt: evt.clone(),
        };
        Setup {
            mem,
            rx: DriverQueue::new(mem, 0),
            tx: DriverQueue::new(mem, 0x10000),
            net: Net::new(Box::new(backend), MAC).unwrap(),
            backend: state,
            backend_evt: evt,
            irq: Arc::new(MockInterrupt::default()),
            queue_events: (0..2)
                .map(|_| EventFd::new(EFD_NONBLOCK).unwrap())
                .collect(),
            next_buf: 0x10_0000,
        }
    }

    pub fn activate(&mut self) {
        let queues: Vec<Queue> = vec![
            self.rx.q.create_queue().unwrap(),
            self.tx.q.create_queue().unwrap(),
        ];
        let ctx = ActivateContext {
            mem: self.mem.clone(),
            queues,
            queue_events: self
                .queue_events
                .iter()
                .map(|e| e.try_clone().unwrap())
                .collect(),
            interrupt: self.irq.clone(),
        };
        self.net.activate(ctx).unwrap();
    }

    /// Reserve a guest buffer of `len` bytes.
    pub fn buf(&mut self, len: u32) -> u64 {
        let addr = self.next_buf;
        self.next_buf += u64::from(len).next_multiple_of(64).max(64);
        assert!(self.next_buf < MEM_SIZE as u64);
        addr
    }

    /// Put `data` in a fresh guest buffer.
    pub fn buf_with(&mut self, data: &[u8]) -> u64 {
        let addr = self.buf(data.len() as u32);
        self.mem.write_slice(data, GuestAddress(addr)).unwrap();
        addr
    }

    pub fn read(&self, addr: u64, len: usize) -> Vec<u8> {
        let mut v = vec![0; len];
        self.mem.read_slice(&mut v, GuestAddress(addr)).unwrap();
        v
    }

    /// Write `descs` (address, length, flags; NEXT links added) as an indirect table
    /// and return the one descriptor that refers to it.
    pub fn indirect(&mut self, descs: &[(u64, u32, u16)]) -> RawDescriptor {
        let table = self.buf(16 * descs.len() as u32);
        for (i, &(addr, len, flags)) in descs.iter().enumerate() {
            let last = i + 1 == descs.len();
            let flags = if last { flags } else { flags | F_NEXT };
            let d = RawDescriptor::from(SplitDescriptor::new(addr, len, flags, i as u16 + 1));
            self.mem
                .write_obj(d, GuestAddress(table + 16 * i as u64))
                .unwrap();
        }
        let len = 16 * descs.len() as u32;
        RawDescriptor::from(SplitDescriptor::new(table, len, F_INDIRECT, 0))
    }

    /// Add an rx chain of one writable buffer; returns (head, address).
    pub fn add_rx_buffer(&mut self, len: u32) -> (u16, u64) {
        let addr = self.buf(len);
        (self.rx.add_chain(&[(addr, len, F_WRITE)]), addr)
    }

    pub fn push_incoming(&self, frame: Vec<u8>) {
        self.backend.lock().unwrap().incoming.push_back(frame);
        self.backend_evt.write(1).unwrap();
    }

    pub fn sent(&self) -> Vec<Vec<u8>> {
        std::mem::take(&mut self.backend.lock().unwrap().sent)
    }

    pub fn irqs(&self, queue: usize) -> usize {
        self.irq.used[queue].load(Ordering::SeqCst)
    }
}

/// An Ethernet frame of `len` bytes with a recognisable pattern.
pub fn frame(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(7).wrapping_add(seed))
        .collect()
}

/// A zeroed virtio_net_hdr_v1 followed by `frame`.
pub fn with_hdr(frame: &[u8]) -> Vec<u8> {
    let mut v = vec![0u8; 12];
    v.extend_from_slice(frame);
    v
}

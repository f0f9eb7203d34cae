//! A virtio-blk driver in the same process: guest memory, a split virtqueue and a
//! [`Block`] behind it, driven through the device's real avail ring, used ring and
//! completion event. `kiln bench blk` measures the device path with it; tests use it
//! to keep many requests in flight.
//!
//! The driver side is single-threaded and polls: it plays both the guest (filling the
//! avail ring, reading the used ring) and the event loop (calling
//! [`Block::process_queue`] on a kick and [`Block::process_completions`] when the
//! completion event fires), so what it measures is the device, not an interrupt path.

use std::os::unix::io::AsRawFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use virtio_bindings::bindings::virtio_blk::*;
use virtio_bindings::bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, VolatileSlice};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::{Block, QUEUE_SIZE};
use crate::block::SECTOR_SIZE;
use crate::virtio::{ActivateContext, VirtioDevice, VirtioInterrupt};
use crate::GuestMemory;

/// Descriptors per request: header, data, status.
const DESCS_PER_REQUEST: u16 = 3;
/// VRING_USED_F_NO_NOTIFY: the device asks not to be kicked.
const USED_F_NO_NOTIFY: u16 = 1;

/// Why the harness could not be set up or a request could not be made.
#[derive(Debug, thiserror::Error)]
pub enum HarnessError {
    #[error("queue depth {depth} is out of range: 1..={max} (three descriptors per request)")]
    Depth { depth: usize, max: usize },
    #[error("cannot set up guest memory: {0}")]
    Memory(String),
    #[error("cannot set up the virtqueue: {0}")]
    Queue(String),
    #[error("cannot activate the device: {0}")]
    Activate(#[from] crate::virtio::ActivateError),
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("request of {len} bytes at {offset}: not whole sectors or larger than a slot")]
    BadRequest { offset: u64, len: usize },
    #[error("no request finished within {0:?}")]
    Timeout(Duration),
}

/// What a request does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Read,
    Write,
    Flush,
}

/// A request the device returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Done {
    /// The slot [`Harness::submit`] returned.
    pub slot: usize,
    /// The virtio-blk status byte.
    pub status: u8,
    /// The used length the device reported.
    pub len: u32,
}

#[derive(Default)]
struct CountingInterrupt(AtomicU64);

impl VirtioInterrupt for CountingInterrupt {
    fn signal_used_queue(&self, _: u16) -> std::io::Result<()> {
        self.0.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
    fn signal_config_change(&self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Where things live in the harness's guest memory.
struct Layout {
    desc: u64,
    avail: u64,
    used: u64,
    headers: u64,
    statuses: u64,
    data: u64,
    slot_bytes: u64,
    total: u64,
}

impl Layout {
    fn new(queue_size: u16, depth: usize, slot_bytes: usize) -> Self {
        let q = u64::from(queue_size);
        let desc = 0;
        let avail = desc + 16 * q;
        let used = (avail + 6 + 2 * q).next_multiple_of(4);
        let headers = (used + 6 + 8 * q).next_multiple_of(16);
        let statuses = headers + 16 * depth as u64;
        let data = (statuses + depth as u64).next_multiple_of(4096);
        let slot_bytes = (slot_bytes as u64).next_multiple_of(4096);
        let total = data + slot_bytes * depth as u64;
        Layout {
            desc,
            avail,
            used,
            headers,
            statuses,
            data,
            slot_bytes,
            total: total.next_multiple_of(4096),
        }
    }
}

/// A [`Block`] device with an in-process driver of queue depth `depth`.
pub struct Harness {
    mem: GuestMemory,
    dev: Block,
    interrupts: Arc<CountingInterrupt>,
    layout: Layout,
    queue_size: u16,
    free: Vec<usize>,
    next_avail: u16,
    last_used: u16,
}

impl Harness {
    /// Deepest queue the harness supports (three descriptors per request).
    pub const MAX_DEPTH: usize = (QUEUE_SIZE / DESCS_PER_REQUEST) as usize;

    /// Activate `dev` on a fresh queue with `depth` request slots of up to `slot_bytes`
    /// of data each.
    pub fn new(dev: Block, depth: usize, slot_bytes: usize) -> Result<Self, HarnessError> {
        if depth == 0 || depth > Self::MAX_DEPTH {
            return Err(HarnessError::Depth {
                depth,
                max: Self::MAX_DEPTH,
            });
        }
        let queue_size = (depth as u16 * DESCS_PER_REQUEST)
            .next_power_of_two()
            .min(QUEUE_SIZE);
        let layout = Layout::new(queue_size, depth, slot_bytes.max(SECTOR_SIZE as usize));
        let mem = GuestMemory::from_ranges(&[(GuestAddress(0), layout.total as usize)])
            .map_err(|e| HarnessError::Memory(e.to_string()))?;
        let mut queue = Queue::new(QUEUE_SIZE).map_err(|e| HarnessError::Queue(e.to_string()))?;
        let queue_err = |e: virtio_queue::Error| HarnessError::Queue(e.to_string());
        queue.try_set_size(queue_size).map_err(queue_err)?;
        queue
            .try_set_desc_table_address(GuestAddress(layout.desc))
            .map_err(queue_err)?;
        queue
            .try_set_avail_ring_address(GuestAddress(layout.avail))
            .map_err(queue_err)?;
        queue
            .try_set_used_ring_address(GuestAddress(layout.used))
            .map_err(queue_err)?;
        queue.set_ready(true);
        let interrupts = Arc::new(CountingInterrupt::default());
        let mut dev = dev;
        dev.activate(ActivateContext {
            mem: mem.clone(),
            queues: vec![queue],
            queue_events: vec![EventFd::new(EFD_NONBLOCK)?],
            interrupt: interrupts.clone(),
        })?;
        Ok(Harness {
            mem,
            dev,
            interrupts,
            layout,
            queue_size,
            free: (0..depth).rev().collect(),
            next_avail: 0,
            last_used: 0,
        })
    }

    /// The device under test.
    pub fn device(&mut self) -> &mut Block {
        &mut self.dev
    }

    /// Guest memory, e.g. to check what a read brought in.
    pub fn memory(&self) -> &GuestMemory {
        &self.mem
    }

    /// Slots free for [`Harness::submit`].
    pub fn free_slots(&self) -> usize {
        self.free.len()
    }

    /// Interrupts the device raised so far.
    pub fn interrupts(&self) -> u64 {
        self.interrupts.0.load(Ordering::Relaxed)
    }

    /// The data buffer of `slot`.
    pub fn slot_data(&self, slot: usize) -> Result<VolatileSlice<'_>, HarnessError> {
        let addr = GuestAddress(self.layout.data + slot as u64 * self.layout.slot_bytes);
        self.mem
            .get_slice(addr, self.layout.slot_bytes as usize)
            .map_err(|e| HarnessError::Memory(e.to_string()))
    }

    /// Copy `data` into the start of `slot`'s data buffer (what a write request sends).
    pub fn write_slot(&self, slot: usize, data: &[u8]) -> Result<(), HarnessError> {
        self.slot_data(slot)?
            .write_slice(data, 0)
            .map_err(|e| HarnessError::Memory(e.to_string()))
    }

    /// Copy the start of `slot`'s data buffer (what a read request brought) into `buf`.
    pub fn read_slot(&self, slot: usize, buf: &mut [u8]) -> Result<(), HarnessError> {
        self.slot_data(slot)?
            .read_slice(buf, 0)
            .map_err(|e| HarnessError::Memory(e.to_string()))
    }

    /// Set the driver's used_event (with EVENT_IDX negotiated: interrupt me once the
    /// used index passes `value`).
    pub fn set_used_event(&self, value: u16) -> Result<(), HarnessError> {
        let at = self.layout.avail + 4 + 2 * u64::from(self.queue_size);
        self.write(&value.to_le_bytes(), at)
    }

    /// The device's avail_event (with EVENT_IDX negotiated: kick me once the avail
    /// index passes it).
    pub fn avail_event(&self) -> Result<u16, HarnessError> {
        let at = self.layout.used + 4 + 8 * u64::from(self.queue_size);
        self.mem
            .read_obj::<u16>(GuestAddress(at))
            .map(u16::from_le)
            .map_err(|e| HarnessError::Memory(e.to_string()))
    }

    /// Put a request on the avail ring (without kicking). Returns its slot, or `None`
    /// when every slot is in flight.
    pub fn submit(
        &mut self,
        op: Op,
        offset: u64,
        len: usize,
    ) -> Result<Option<usize>, HarnessError> {
        if offset % SECTOR_SIZE != 0
            || len as u64 % SECTOR_SIZE != 0
            || len as u64 > self.layout.slot_bytes
        {
            return Err(HarnessError::BadRequest { offset, len });
        }
        let Some(slot) = self.free.pop() else {
            return Ok(None);
        };
        let l = &self.layout;
        let kind = match op {
            Op::Read => VIRTIO_BLK_T_IN,
            Op::Write => VIRTIO_BLK_T_OUT,
            Op::Flush => VIRTIO_BLK_T_FLUSH,
        };
        let mut header = [0u8; 16];
        header[0..4].copy_from_slice(&kind.to_le_bytes());
        header[8..16].copy_from_slice(&(offset / SECTOR_SIZE).to_le_bytes());
        let header_addr = l.headers + 16 * slot as u64;
        let status_addr = l.statuses + slot as u64;
        let data_addr = l.data + l.slot_bytes * slot as u64;
        let head = slot as u16 * DESCS_PER_REQUEST;
        let data_flags = if op == Op::Read {
            VRING_DESC_F_WRITE
        } else {
            0
        };
        let mut descs = vec![(header_addr, 16, 0)];
        if op != Op::Flush {
            descs.push((data_addr, len as u32, data_flags));
        }
        descs.push((status_addr, 1, VRING_DESC_F_WRITE));
        let count = descs.len();
        for (i, (addr, dlen, flags)) in descs.into_iter().enumerate() {
            let index = head + i as u16;
            let last = i + 1 == count;
            let flags = flags as u16 | if last { 0 } else { VRING_DESC_F_NEXT as u16 };
            let mut d = [0u8; 16];
            d[0..8].copy_from_slice(&addr.to_le_bytes());
            d[8..12].copy_from_slice(&dlen.to_le_bytes());
            d[12..14].copy_from_slice(&flags.to_le_bytes());
            d[14..16].copy_from_slice(&(index + 1).to_le_bytes());
            self.write(&d, l.desc + 16 * u64::from(index))?;
        }
        self.write(&header, header_addr)?;
        self.write(&[0xff], status_addr)?;
        let ring_slot = u64::from(self.next_avail % self.queue_size);
        self.write(&head.to_le_bytes(), self.layout.avail + 4 + 2 * ring_slot)?;
        self.next_avail = self.next_avail.wrapping_add(1);
        // Release: the descriptors and the ring entry are visible before the index.
        self.mem
            .store(
                self.next_avail.to_le(),
                GuestAddress(self.layout.avail + 2),
                Ordering::Release,
            )
            .map_err(|e| HarnessError::Memory(e.to_string()))?;
        Ok(Some(slot))
    }

    /// Notify the device, unless it asked not to be notified (it will look at the ring
    /// again when requests complete).
    pub fn kick(&mut self) {
        let flags: u16 = self
            .mem
            .load(GuestAddress(self.layout.used), Ordering::Acquire)
            .map(u16::from_le)
            .unwrap_or(0);
        if flags & USED_F_NO_NOTIFY == 0 {
            self.dev.process_queue();
        }
    }

    /// Requests the device returned since the last call, without waiting.
    pub fn reap(&mut self) -> Result<Vec<Done>, HarnessError> {
        let used_idx: u16 = self
            .mem
            .load(GuestAddress(self.layout.used + 2), Ordering::Acquire)
            .map(u16::from_le)
            .map_err(|e| HarnessError::Memory(e.to_string()))?;
        let mut done = Vec::new();
        while self.last_used != used_idx {
            let at = self.layout.used + 4 + 8 * u64::from(self.last_used % self.queue_size);
            let mut elem = [0u8; 8];
            self.mem
                .read_slice(&mut elem, GuestAddress(at))
                .map_err(|e| HarnessError::Memory(e.to_string()))?;
            self.last_used = self.last_used.wrapping_add(1);
            let head = u32::from_le_bytes([elem[0], elem[1], elem[2], elem[3]]);
            let len = u32::from_le_bytes([elem[4], elem[5], elem[6], elem[7]]);
            let slot = (head / u32::from(DESCS_PER_REQUEST)) as usize;
            let status: u8 = self
                .mem
                .read_obj(GuestAddress(self.layout.statuses + slot as u64))
                .map_err(|e| HarnessError::Memory(e.to_string()))?;
            self.free.push(slot);
            done.push(Done { slot, status, len });
        }
        Ok(done)
    }

    /// Wait until the device returns at least one request (through its completion
    /// event), and return every request returned so far.
    pub fn wait(&mut self, timeout: Duration) -> Result<Vec<Done>, HarnessError> {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            let done = self.reap()?;
            if !done.is_empty() {
                return Ok(done);
            }
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                return Err(HarnessError::Timeout(timeout));
            }
            if wait_readable(self.dev.completion_event(), left)? {
                self.dev.process_completions();
            }
        }
    }

    fn write(&self, bytes: &[u8], addr: u64) -> Result<(), HarnessError> {
        self.mem
            .write_slice(bytes, GuestAddress(addr))
            .map_err(|e| HarnessError::Memory(e.to_string()))
    }
}

/// Wait up to `timeout` for `event` to become readable; false on timeout.
pub fn wait_readable(event: &EventFd, timeout: Duration) -> std::io::Result<bool> {
    let mut pfd = libc::pollfd {
        fd: event.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // Rounded up: a timeout below a millisecond must still sleep, not spin.
    let ms = timeout.as_micros().div_ceil(1000).min(i32::MAX as u128) as i32;
    loop {
        // SAFETY: `pfd` is one valid pollfd that outlives the call.
        let rc = unsafe { libc::poll(&mut pfd, 1, ms) };
        if rc >= 0 {
            return Ok(rc > 0);
        }
        let err = std::io::Error::last_os_error();
        if err.kind() != std::io::ErrorKind::Interrupted {
            return Err(err);
        }
    }
}

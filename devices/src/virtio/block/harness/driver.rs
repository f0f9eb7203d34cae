//! The driver half of the harnesses: guest memory holding a split virtqueue and a
//! request slot per unit of depth, and the guest's side of the rings (fill the avail
//! ring, read the used ring).

use std::sync::atomic::{fence, Ordering};
use std::time::{Duration, Instant};

use virtio_bindings::bindings::virtio_blk::*;
use virtio_bindings::bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, VolatileSlice};

use super::{Done, HarnessError, Op};
use crate::block::SECTOR_SIZE;
use crate::virtio::block::QUEUE_SIZE;
use crate::GuestMemory;

/// Descriptors per request: header, data, status.
pub(super) const DESCS_PER_REQUEST: u16 = 3;
/// VRING_USED_F_NO_NOTIFY: the device asks not to be kicked.
const USED_F_NO_NOTIFY: u16 = 1;

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

/// The guest side of one virtqueue with `depth` request slots: guest memory, the
/// split ring in it, and a header, status byte and data buffer per slot.
pub struct Driver {
    mem: GuestMemory,
    layout: Layout,
    queue_size: u16,
    free: Vec<usize>,
    next_avail: u16,
    last_used: u16,
    /// VIRTIO_RING_F_EVENT_IDX negotiated: kicks follow avail_event, interrupts
    /// used_event, instead of the ring flags.
    event_idx: bool,
    /// The avail index when the driver last decided whether to kick.
    kick_checked_at: u16,
    /// Data buffers start this many bytes into their slot (see `set_data_skew`).
    skew: u64,
}

/// virtio 1.2 §2.7.10: whether moving an index from `old` to `new` passed `event`.
fn passed_event(event: u16, new: u16, old: u16) -> bool {
    new.wrapping_sub(event).wrapping_sub(1) < new.wrapping_sub(old)
}

fn memory_err(e: impl ToString) -> HarnessError {
    HarnessError::Memory(e.to_string())
}

impl Driver {
    /// Deepest queue a driver supports (three descriptors per request).
    pub const MAX_DEPTH: usize = (QUEUE_SIZE / DESCS_PER_REQUEST) as usize;

    /// Guest memory for `depth` slots of up to `slot_bytes` each, and the device's
    /// view of the queue in it, ready to activate.
    pub(super) fn new(depth: usize, slot_bytes: usize) -> Result<(Self, Queue), HarnessError> {
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
            .map_err(memory_err)?;
        let queue_err = |e: virtio_queue::Error| HarnessError::Queue(e.to_string());
        let mut queue = Queue::new(QUEUE_SIZE).map_err(queue_err)?;
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
        let driver = Driver {
            mem,
            layout,
            queue_size,
            free: (0..depth).rev().collect(),
            next_avail: 0,
            last_used: 0,
            event_idx: false,
            kick_checked_at: 0,
            skew: 0,
        };
        Ok((driver, queue))
    }

    /// Follow avail_event and used_event (the device negotiated EVENT_IDX).
    pub(super) fn use_event_idx(&mut self) {
        self.event_idx = true;
    }

    /// Start every data buffer `skew` bytes into its slot (and make it that much
    /// shorter): guest buffers off the alignment that direct I/O needs.
    pub fn set_data_skew(&mut self, skew: u64) -> Result<(), HarnessError> {
        if skew >= self.layout.slot_bytes {
            return Err(HarnessError::BadRequest {
                offset: skew,
                len: 0,
            });
        }
        self.skew = skew;
        Ok(())
    }

    fn slot_len(&self) -> u64 {
        self.layout.slot_bytes - self.skew
    }

    pub fn memory(&self) -> &GuestMemory {
        &self.mem
    }

    pub fn free_slots(&self) -> usize {
        self.free.len()
    }

    pub fn slot_data(&self, slot: usize) -> Result<VolatileSlice<'_>, HarnessError> {
        let addr = self.layout.data + slot as u64 * self.layout.slot_bytes + self.skew;
        self.mem
            .get_slice(GuestAddress(addr), self.slot_len() as usize)
            .map_err(memory_err)
    }

    pub fn write_slot(&self, slot: usize, data: &[u8]) -> Result<(), HarnessError> {
        self.slot_data(slot)?
            .write_slice(data, 0)
            .map_err(memory_err)
    }

    pub fn read_slot(&self, slot: usize, buf: &mut [u8]) -> Result<(), HarnessError> {
        self.slot_data(slot)?.read_slice(buf, 0).map_err(memory_err)
    }

    pub fn set_used_event(&self, value: u16) -> Result<(), HarnessError> {
        let at = self.layout.avail + 4 + 2 * u64::from(self.queue_size);
        self.write(&value.to_le_bytes(), at)
    }

    pub fn avail_event(&self) -> Result<u16, HarnessError> {
        let at = self.layout.used + 4 + 8 * u64::from(self.queue_size);
        self.mem
            .read_obj::<u16>(GuestAddress(at))
            .map(u16::from_le)
            .map_err(memory_err)
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
            || (op != Op::Discard && len as u64 > self.slot_len())
            || (op == Op::Discard && len as u64 / SECTOR_SIZE > u64::from(u32::MAX))
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
            Op::Discard => VIRTIO_BLK_T_DISCARD,
        };
        let mut header = [0u8; 16];
        header[0..4].copy_from_slice(&kind.to_le_bytes());
        header[8..16].copy_from_slice(&(offset / SECTOR_SIZE).to_le_bytes());
        let header_addr = l.headers + 16 * slot as u64;
        let status_addr = l.statuses + slot as u64;
        let data_addr = l.data + l.slot_bytes * slot as u64 + self.skew;
        let head = slot as u16 * DESCS_PER_REQUEST;
        let data_flags = if op == Op::Read {
            VRING_DESC_F_WRITE
        } else {
            0
        };
        let mut descs = vec![(header_addr, 16, 0)];
        match op {
            Op::Flush => {}
            Op::Discard => {
                // One virtio_blk_discard_write_zeroes segment, in the slot's buffer.
                let mut segment = [0u8; 16];
                segment[0..8].copy_from_slice(&(offset / SECTOR_SIZE).to_le_bytes());
                let sectors = (len as u64 / SECTOR_SIZE) as u32;
                segment[8..12].copy_from_slice(&sectors.to_le_bytes());
                self.write(&segment, data_addr)?;
                descs.push((data_addr, 16, 0));
            }
            Op::Read | Op::Write => descs.push((data_addr, len as u32, data_flags)),
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
            .map_err(memory_err)?;
        Ok(Some(slot))
    }

    /// Put a write of `data` on the avail ring, its data in the slot before the
    /// device can see the request.
    pub fn submit_write(
        &mut self,
        offset: u64,
        data: &[u8],
    ) -> Result<Option<usize>, HarnessError> {
        let Some(&slot) = self.free.last() else {
            return Ok(None);
        };
        if data.len() as u64 > self.slot_len() {
            return Err(HarnessError::BadRequest {
                offset,
                len: data.len(),
            });
        }
        self.write_slot(slot, data)?;
        self.submit(Op::Write, offset, data.len())
    }

    /// Whether the device wants a notification for what was made available since the
    /// last call.
    pub(super) fn kick_wanted(&mut self) -> bool {
        // Like the guest's virtio_mb: the avail index store above must be visible
        // before avail_event or the flags are read, or a device re-enabling
        // notifications on another thread could miss both the index and the kick.
        fence(Ordering::SeqCst);
        let old = std::mem::replace(&mut self.kick_checked_at, self.next_avail);
        if self.event_idx {
            // Unreadable: kick, which is always safe.
            return self
                .avail_event()
                .map_or(true, |event| passed_event(event, self.next_avail, old));
        }
        let flags: u16 = self
            .mem
            .load(GuestAddress(self.layout.used), Ordering::Acquire)
            .map(u16::from_le)
            .unwrap_or(0);
        flags & USED_F_NO_NOTIFY == 0
    }

    /// Requests the device returned since the last call.
    pub fn reap(&mut self) -> Result<Vec<Done>, HarnessError> {
        let used_idx: u16 = self
            .mem
            .load(GuestAddress(self.layout.used + 2), Ordering::Acquire)
            .map(u16::from_le)
            .map_err(memory_err)?;
        let mut done = Vec::new();
        while self.last_used != used_idx {
            let at = self.layout.used + 4 + 8 * u64::from(self.last_used % self.queue_size);
            let mut elem = [0u8; 8];
            self.mem
                .read_slice(&mut elem, GuestAddress(at))
                .map_err(memory_err)?;
            self.last_used = self.last_used.wrapping_add(1);
            let head = u32::from_le_bytes([elem[0], elem[1], elem[2], elem[3]]);
            let len = u32::from_le_bytes([elem[4], elem[5], elem[6], elem[7]]);
            let slot = (head / u32::from(DESCS_PER_REQUEST)) as usize;
            let status: u8 = self
                .mem
                .read_obj(GuestAddress(self.layout.statuses + slot as u64))
                .map_err(memory_err)?;
            self.free.push(slot);
            done.push(Done { slot, status, len });
        }
        Ok(done)
    }

    /// Return what the device returned, calling `sleep` with the time left until
    /// something is; a timeout error once `timeout` passed with nothing. Before each
    /// look, with EVENT_IDX, ask for an interrupt at the next used entry (as Linux's
    /// virtqueue_enable_cb_prepare does), so an entry added after the look interrupts.
    pub(super) fn wait_with(
        &mut self,
        timeout: Duration,
        mut sleep: impl FnMut(Duration) -> Result<(), HarnessError>,
    ) -> Result<Vec<Done>, HarnessError> {
        let deadline = Instant::now() + timeout;
        loop {
            if self.event_idx {
                self.set_used_event(self.last_used)?;
                fence(Ordering::SeqCst);
            }
            let done = self.reap()?;
            if !done.is_empty() {
                return Ok(done);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(HarnessError::Timeout(timeout));
            }
            sleep(left)?;
        }
    }

    fn write(&self, bytes: &[u8], addr: u64) -> Result<(), HarnessError> {
        self.mem
            .write_slice(bytes, GuestAddress(addr))
            .map_err(memory_err)
    }
}

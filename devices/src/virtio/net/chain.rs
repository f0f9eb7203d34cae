//! Moving one packet between a descriptor chain and a byte buffer, treating every
//! guest-provided field as hostile.

use std::io::{Read, Write};

use log::warn;
use virtio_queue::{DescriptorChain, Queue, QueueOwnedT, QueueT, Reader, Writer};

use super::backend::{MAX_FRAME_LEN, VNET_HDR_LEN};
use crate::GuestMemory;

/// Smallest packet a tx chain may carry: the header plus an Ethernet header.
pub const MIN_TX_PACKET: usize = VNET_HDR_LEN + 14;
/// Largest packet: the header plus the largest frame.
pub const MAX_PACKET: usize = VNET_HDR_LEN + MAX_FRAME_LEN;

/// Why a chain was not used.
#[derive(Debug, PartialEq, Eq)]
pub enum BadChain {
    /// No descriptor could be read at the head index.
    Empty,
    /// The chain loops or points past the descriptor table.
    Truncated,
    /// A device-writable descriptor in a tx chain or a device-readable one in an rx chain.
    WrongDirection,
    /// A buffer lies outside guest memory.
    OutsideMemory,
    /// Too small (rx: no room for the header; tx: less than header plus Ethernet header).
    TooShort(usize),
    /// A tx packet longer than the largest frame.
    TooLong(usize),
}

impl std::fmt::Display for BadChain {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BadChain::Empty => write!(f, "head descriptor unreadable"),
            BadChain::Truncated => write!(f, "chain loops or points outside the table"),
            BadChain::WrongDirection => write!(f, "descriptor has the wrong direction"),
            BadChain::OutsideMemory => write!(f, "buffer outside guest memory"),
            BadChain::TooShort(n) => write!(f, "{n} bytes is too short"),
            BadChain::TooLong(n) => write!(f, "{n} bytes exceeds {MAX_PACKET}"),
        }
    }
}

type Chain<'a> = DescriptorChain<&'a GuestMemory>;

/// Check the shape of a chain: it ends properly and all descriptors go one way.
fn check_chain(chain: &Chain<'_>, device_writable: bool) -> Result<(), BadChain> {
    let mut count = 0usize;
    let mut last_has_next = false;
    for desc in chain.clone() {
        count += 1;
        if desc.is_write_only() != device_writable {
            return Err(BadChain::WrongDirection);
        }
        last_has_next = desc.has_next();
    }
    // The iterator stops early, without error, on loops (its ttl), out-of-table indices
    // and unreadable descriptors: a last descriptor still saying NEXT reveals that.
    match (count, last_has_next) {
        (0, _) => Err(BadChain::Empty),
        (_, true) => Err(BadChain::Truncated),
        _ => Ok(()),
    }
}

/// Copy a tx chain into `buf` (at least [`MAX_PACKET`] bytes); returns the packet length.
pub fn read_tx_chain(
    mem: &GuestMemory,
    chain: Chain<'_>,
    buf: &mut [u8],
) -> Result<usize, BadChain> {
    check_chain(&chain, false)?;
    let mut reader = Reader::new(mem, chain).map_err(|_| BadChain::OutsideMemory)?;
    let len = reader.available_bytes();
    if len < MIN_TX_PACKET {
        return Err(BadChain::TooShort(len));
    }
    if len > MAX_PACKET {
        return Err(BadChain::TooLong(len));
    }
    let dst = buf.get_mut(..len).ok_or(BadChain::TooLong(len))?;
    reader
        .read_exact(dst)
        .map_err(|_| BadChain::OutsideMemory)?;
    Ok(len)
}

/// What became of an rx packet.
#[derive(Debug, PartialEq, Eq)]
pub enum RxOutcome {
    /// Written into this many buffers (the `num_buffers` the driver saw).
    Delivered(u16),
    /// Not enough buffers; nothing was consumed, the packet must wait.
    NoBuffers,
    /// Without mergeable buffers the packet does not fit the next buffer; dropped.
    TooBig,
}

/// Put `packet` (header + frame) into the rx queue, using as many chains as needed when
/// `mergeable`, and set `num_buffers` in the header. Chains that are unusable are
/// returned to the driver with length 0, never between the buffers of one packet.
pub fn write_rx_packet(
    mem: &GuestMemory,
    queue: &mut Queue,
    packet: &mut [u8],
    mergeable: bool,
    mut on_bad: impl FnMut(u16, BadChain),
) -> Result<RxOutcome, virtio_queue::Error> {
    let mut rewind_to = queue.next_avail();
    let mut writers: Vec<(u16, Writer<'_>)> = Vec::new();
    let mut deferred_bad: Vec<(u16, BadChain)> = Vec::new();
    let mut capacity = 0usize;
    while capacity < packet.len() {
        let chain = queue.iter(mem)?.next();
        let Some(chain) = chain else {
            queue.set_next_avail(rewind_to);
            return Ok(RxOutcome::NoBuffers);
        };
        let head = chain.head_index();
        if head >= queue.size() {
            // Not a descriptor index at all: nothing to return to the driver.
            on_bad(head, BadChain::Empty);
            if writers.is_empty() {
                rewind_to = queue.next_avail();
            }
            continue;
        }
        let checked = check_chain(&chain, true).and_then(|()| {
            let w = Writer::new(mem, chain).map_err(|_| BadChain::OutsideMemory)?;
            let room = w.available_bytes();
            let need = if writers.is_empty() { VNET_HDR_LEN } else { 1 };
            if room < need {
                return Err(BadChain::TooShort(room));
            }
            Ok(w)
        });
        match checked {
            Ok(w) => {
                capacity += w.available_bytes();
                writers.push((head, w));
                if !mergeable {
                    break;
                }
            }
            Err(why) if writers.is_empty() => {
                // Nothing of this packet is placed yet: give the chain back right away.
                queue.add_used(mem, head, 0)?;
                on_bad(head, why);
                rewind_to = queue.next_avail();
            }
            Err(why) => deferred_bad.push((head, why)),
        }
    }
    if capacity < packet.len() {
        // Only without mergeable buffers: keep the chain for a smaller packet.
        queue.set_next_avail(rewind_to);
        return Ok(RxOutcome::TooBig);
    }
    let num_buffers = writers.len() as u16;
    packet[10..12].copy_from_slice(&num_buffers.to_le_bytes());
    let mut offset = 0;
    for (head, mut w) in writers {
        let n = w.available_bytes().min(packet.len() - offset);
        let written = match w.write_all(&packet[offset..offset + n]) {
            Ok(()) => n,
            Err(e) => {
                // Writer::new already mapped these buffers, so this is not expected.
                warn!("virtio-net: rx buffer {head} write failed: {e}");
                0
            }
        };
        offset += n;
        queue.add_used(mem, head, written as u32)?;
    }
    for (head, why) in deferred_bad {
        queue.add_used(mem, head, 0)?;
        on_bad(head, why);
    }
    Ok(RxOutcome::Delivered(num_buffers))
}

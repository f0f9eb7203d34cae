//! virtio-net: tx chains read into a packet buffer and rx packets written into chains,
//! both from descriptor chains and guest memory the fuzzer chooses.

use virtio_queue::QueueT;

use super::{fuzz_memory, fuzzed_queue};
use crate::virtio::net::backend::VNET_HDR_LEN;
use crate::virtio::net::chain::{
    read_tx_chain, write_rx_packet, RxOutcome, MAX_PACKET, MIN_TX_PACKET,
};

/// Packets written per rx input: enough to reach chains after a delivered packet.
const RX_PACKETS: usize = 4;

/// Fuzz virtio-net chain handling. Byte 0 picks the direction (bit 0: rx) and
/// mergeable rx buffers (bit 1); bytes 1-2 the rx frame length; the rest is a queue
/// as [`fuzzed_queue`] reads it. Besides never panicking, what the device reports must
/// be consistent: a tx packet is within the sizes it accepts, and a delivered rx
/// packet used at least one buffer, exactly one without mergeable buffers, and says
/// so in its header.
pub fn net_chains(data: &[u8]) {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let Some((len_bytes, queue_bytes)) = rest.split_at_checked(2) else {
        return;
    };
    let Some(mem) = fuzz_memory() else { return };
    let Some(mut queue) = fuzzed_queue(queue_bytes, &mem) else {
        return;
    };
    if mode & 1 == 0 {
        let mut buf = vec![0u8; MAX_PACKET];
        while let Some(chain) = queue.pop_descriptor_chain(&mem) {
            if let Ok(len) = read_tx_chain(&mem, chain, &mut buf) {
                assert!(
                    (MIN_TX_PACKET..=MAX_PACKET).contains(&len),
                    "tx length {len}"
                );
            }
        }
        return;
    }
    let mergeable = mode & 2 != 0;
    // A frame of 1 byte to 64 KiB (the largest a backend delivers is 18 bytes more).
    let frame = usize::from(u16::from_le_bytes([len_bytes[0], len_bytes[1]])) + 1;
    let mut packet = vec![0x5au8; VNET_HDR_LEN + frame];
    for _ in 0..RX_PACKETS {
        match write_rx_packet(&mem, &mut queue, &mut packet, mergeable, |_, _| {}) {
            Ok(RxOutcome::Delivered(n)) => {
                assert!(n >= 1 && (mergeable || n == 1), "delivered in {n} buffers");
                assert_eq!(packet[10..12], n.to_le_bytes(), "num_buffers");
            }
            Ok(RxOutcome::NoBuffers | RxOutcome::TooBig) | Err(_) => return,
        }
    }
}

use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};

use super::harness::*;
use crate::virtio::net::RX_QUEUE;

/// num_buffers from the header at `addr`.
fn num_buffers(s: &Setup<'_>, addr: u64) -> u16 {
    let h = s.read(addr, 12);
    u16::from_le_bytes([h[10], h[11]])
}

#[test]
fn rx_frame_lands_in_one_buffer_with_header() {
    let mem = new_mem();
    let mut s = Setup::new(&mem, true, false);
    let (head, addr) = s.add_rx_buffer(2048);
    let f = frame(98, 7);
    s.push_incoming(f.clone());
    s.net.process_rx();
    assert_eq!(s.rx.take_used(), vec![(head as u32, 110)]);
    let got = s.read(addr, 110);
    assert_eq!(
        got[..10],
        [0u8; 10],
        "flags/gso/etc. are zero for a plain backend"
    );
    assert_eq!(num_buffers(&s, addr), 1);
    assert_eq!(got[12..], f[..]);
    assert_eq!(s.irqs(RX_QUEUE), 1);
}

#[test]
fn mergeable_rx_spans_several_chains() {
    let mem = new_mem();
    let mut s = Setup::new(&mem, true, false);
    let bufs: Vec<(u16, u64)> = (0..5).map(|_| s.add_rx_buffer(1500)).collect();
    let f = frame(5000, 3);
    s.push_incoming(f.clone());
    s.net.process_rx();
    let used = s.rx.take_used();
    let expect: Vec<(u32, u32)> = bufs[..4]
        .iter()
        .zip([1500, 1500, 1500, 512])
        .map(|(&(h, _), len)| (h as u32, len))
        .collect();
    assert_eq!(used, expect);
    assert_eq!(num_buffers(&s, bufs[0].1), 4);
    let mut data = Vec::new();
    for (&(_, addr), &(_, len)) in bufs.iter().zip(&used) {
        data.extend(s.read(addr, len as usize));
    }
    assert_eq!(data[12..], f[..]);
    // The fifth buffer is still available for the next packet.
    s.push_incoming(frame(10, 1));
    s.net.process_rx();
    assert_eq!(s.rx.take_used(), vec![(bufs[4].0 as u32, 22)]);
}

#[test]
fn without_mergeable_a_too_big_frame_is_dropped_and_the_buffer_kept() {
    let mem = new_mem();
    let mut s = Setup::new(&mem, false, false);
    let (head, addr) = s.add_rx_buffer(1526);
    s.push_incoming(frame(4000, 1));
    let small = frame(60, 2);
    s.push_incoming(small.clone());
    s.net.process_rx();
    assert_eq!(s.rx.take_used(), vec![(head as u32, 72)]);
    assert_eq!(num_buffers(&s, addr), 1);
    assert_eq!(s.read(addr + 12, 60), small);
    assert_eq!(s.net.stats().rx_dropped, 1);
}

#[test]
fn full_rx_queue_holds_packets_then_delivers_them_intact_in_order() {
    let mem = new_mem();
    let mut s = Setup::new(&mem, true, false);
    let frames: Vec<Vec<u8>> = (0..6).map(|i| frame(200 + 300 * i, i as u8)).collect();
    for f in &frames {
        s.push_incoming(f.clone());
    }
    s.net.process_rx();
    assert!(s.rx.take_used().is_empty());
    assert_eq!(s.irqs(RX_QUEUE), 0);

    // One small buffer: the first frame (212 bytes) fits in it, the second does not.
    let (h0, a0) = s.add_rx_buffer(256);
    s.net.process_rx();
    assert_eq!(s.rx.take_used(), vec![(h0 as u32, 212)]);
    assert_eq!(s.read(a0 + 12, 200), frames[0]);

    // A buffer too small for frame 1 (512 bytes with header) is not consumed...
    let (h1, a1) = s.add_rx_buffer(256);
    s.net.process_rx();
    assert!(s.rx.take_used().is_empty());
    // ...until more buffers arrive; then every frame arrives whole and in order.
    let more: Vec<(u16, u64)> = (0..8).map(|_| s.add_rx_buffer(2048)).collect();
    s.net.process_rx();
    let used = s.rx.take_used();
    let mut chains = vec![(h1, a1)];
    chains.extend(more);
    let mut it = chains.iter().zip(&used);
    for f in &frames[1..] {
        let (&(head, addr), &(id, len)) = it.next().expect("frame missing");
        assert_eq!(id, head as u32);
        let n = num_buffers(&s, addr) as usize;
        let mut data = s.read(addr, len as usize);
        for _ in 1..n {
            let (&(head, addr), &(id, len)) = it.next().expect("buffer missing");
            assert_eq!(id, head as u32);
            data.extend(s.read(addr, len as usize));
        }
        assert_eq!(data[12..], f[..]);
    }
    assert!(it.next().is_none());
    assert_eq!(s.net.stats().rx_packets, 6);
}

#[test]
fn hostile_rx_chains_are_returned_empty_and_never_split_a_packet() {
    let mem = new_mem();
    let mut s = Setup::new(&mem, true, false);
    let raw = |addr: u64, len: u32, flags: u16, next: u16| {
        RawDescriptor::from(SplitDescriptor::new(addr, len, flags, next))
    };
    let scratch = s.buf(2048);
    let bad_read = s.rx.add_chain(&[(scratch, 2048, 0)]); // device-readable
    let bad_mem = s.rx.add_chain(&[(MEM_SIZE as u64 - 100, 2048, F_WRITE)]);
    let bad_zero = s.rx.add_chain(&[(scratch, 0, F_WRITE)]);
    let bad_tiny = s.rx.add_chain(&[(scratch, 8, F_WRITE)]); // no room for the header
    let looped = s.rx.add_raw(&[raw(scratch, 64, F_WRITE | F_NEXT, 0)]);
    s.rx.q
        .desc_table()
        .store(looped, raw(scratch, 64, F_WRITE | F_NEXT, looped))
        .unwrap();
    let (g1, a1) = s.add_rx_buffer(1000);
    let bad_mixed =
        s.rx.add_chain(&[(scratch, 100, F_WRITE), (scratch, 100, 0)]);
    let (g2, a2) = s.add_rx_buffer(1000);
    let f = frame(1500, 5);
    s.push_incoming(f.clone());
    s.net.process_rx();
    let used = s.rx.take_used();
    let ids: Vec<u32> = used.iter().map(|&(id, _)| id).collect();
    // Bad chains before the packet come first; the one between its buffers goes after,
    // so the packet's buffers are consecutive as num_buffers requires.
    let expect: Vec<u32> = [
        bad_read, bad_mem, bad_zero, bad_tiny, looped, g1, g2, bad_mixed,
    ]
    .iter()
    .map(|&h| h as u32)
    .collect();
    assert_eq!(ids, expect);
    assert_eq!(used[5].1, 1000);
    assert_eq!(used[6].1, 512);
    assert!(used
        .iter()
        .enumerate()
        .all(|(i, &(_, l))| l == 0 || i == 5 || i == 6));
    assert_eq!(num_buffers(&s, a1), 2);
    let mut data = s.read(a1, 1000);
    data.extend(s.read(a2, 512));
    assert_eq!(data[12..], f[..]);
    assert_eq!(s.net.stats().bad_chains, 6);
}

#[test]
fn vnet_rx_header_is_cleaned_for_what_the_driver_accepted() {
    let mem = new_mem();
    // Driver accepted neither GUEST_CSUM nor GUEST_TSO.
    let mut s = Setup::new(&mem, true, true);
    let (h1, a1) = s.add_rx_buffer(2048);
    let f = frame(100, 1);
    let mut valid = with_hdr(&f);
    valid[0] = 2; // DATA_VALID
    s.push_incoming(valid);
    let mut gso = with_hdr(&frame(100, 2));
    gso[1] = 1; // GSO_TCPV4
    s.push_incoming(gso);
    s.net.process_rx();
    assert_eq!(s.rx.take_used(), vec![(h1 as u32, 112)]);
    let got = s.read(a1, 112);
    assert_eq!(got[0], 0, "flags must be zero without GUEST_CSUM");
    assert_eq!(got[12..], f[..]);
    assert_eq!(s.net.stats().rx_dropped, 1);
}

#[test]
fn config_space_and_features() {
    use crate::virtio::VirtioDevice;
    use virtio_bindings::virtio_net::*;
    let mem = new_mem();
    let plain = Setup::unactivated(&mem, false);
    let f = plain.net.device_features();
    for bit in [
        VIRTIO_NET_F_MAC,
        VIRTIO_NET_F_STATUS,
        VIRTIO_NET_F_MRG_RXBUF,
    ] {
        assert_ne!(f & (1 << bit), 0, "feature {bit} missing");
    }
    assert_ne!(f & crate::virtio::VIRTIO_F_VERSION_1, 0);
    assert_eq!(
        f & (1 << VIRTIO_NET_F_CSUM),
        0,
        "plain-frame backend offers no offload"
    );
    let vnet = Setup::unactivated(&mem, true);
    assert_ne!(vnet.net.device_features() & (1 << VIRTIO_NET_F_CSUM), 0);

    let mut cfg = [0xffu8; 10];
    plain.net.read_config(0, &mut cfg);
    assert_eq!(cfg[..6], MAC.0);
    assert_eq!(
        u16::from_le_bytes([cfg[6], cfg[7]]),
        VIRTIO_NET_S_LINK_UP as u16
    );
    assert_eq!(cfg[8..], [0, 0]);
    let mut b = [0u8; 2];
    plain.net.read_config(4, &mut b);
    assert_eq!(b, [MAC.0[4], MAC.0[5]]);
    plain.net.read_config(u64::MAX, &mut b);
    assert_eq!(b, [0, 0]);
}

#[test]
fn with_event_idx_rx_asks_for_a_kick_past_buffers_it_left_unconsumed() {
    use crate::virtio::{VirtioDevice, VIRTIO_F_VERSION_1};
    use virtio_bindings::virtio_net::VIRTIO_NET_F_MRG_RXBUF;
    use virtio_bindings::virtio_ring::VIRTIO_RING_F_EVENT_IDX;
    use vm_memory::{Bytes, GuestAddress};
    let mem = new_mem();
    let mut s = Setup::unactivated(&mem, false);
    assert_ne!(
        s.net.device_features() & (1 << VIRTIO_RING_F_EVENT_IDX),
        0,
        "EVENT_IDX not offered"
    );
    s.net.ack_features(
        VIRTIO_F_VERSION_1 | (1 << VIRTIO_NET_F_MRG_RXBUF) | (1 << VIRTIO_RING_F_EVENT_IDX),
    );
    s.activate();
    // avail_event: after the 256 entries of the rx used ring.
    let avail_event = |s: &Setup<'_>| -> u16 {
        let at = s.rx.q.used_addr().0 + 4 + 8 * 256;
        u16::from_le(s.mem.read_obj(GuestAddress(at)).unwrap())
    };
    // A 512-byte packet (with header) and one 256-byte buffer: the buffer stays on the
    // ring, unconsumed, at avail index 0.
    let f = frame(500, 7);
    s.push_incoming(f.clone());
    s.add_rx_buffer(256);
    s.net.process_rx();
    assert!(s.rx.take_used().is_empty());
    // The driver's next buffer goes in at index 1: avail_event must be 1 for it to kick
    // (at 0, where the device's own position is, it would not, and rx would stall).
    assert_eq!(avail_event(&s), 1);
    s.add_rx_buffer(2048);
    s.net.process_rx();
    let used = s.rx.take_used();
    assert_eq!(used.len(), 2, "{used:?}");
    assert_eq!(s.net.stats().rx_packets, 1);
    assert_eq!(avail_event(&s), 1, "nothing waits for buffers now");
}

use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};

use super::harness::*;
use crate::virtio::net::backend::MAX_FRAME_LEN;
use crate::virtio::net::TX_QUEUE;

#[test]
fn tx_chains_become_backend_frames() {
    let mem = new_mem();
    let mut s = Setup::new(&mem, true, false);
    let f1 = frame(60, 1);
    let f2 = frame(1514, 2);
    let p1 = s.buf_with(&with_hdr(&f1));
    s.tx.add_chain(&[(p1, 72, 0)]);
    // Header, then the frame split over two descriptors.
    let h = s.buf_with(&[0u8; 12]);
    let a = s.buf_with(&f2[..100]);
    let b = s.buf_with(&f2[100..]);
    s.tx.add_chain(&[(h, 12, 0), (a, 100, 0), (b, 1414, 0)]);
    s.net.process_tx();
    assert_eq!(s.sent(), vec![f1, f2]);
    assert_eq!(s.tx.take_used(), vec![(0, 0), (1, 0)]);
    assert_eq!(s.irqs(TX_QUEUE), 1);
    assert_eq!(s.net.stats().tx_packets, 2);
}

#[test]
fn tx_keeps_the_header_for_a_vnet_backend() {
    let mem = new_mem();
    let mut s = Setup::new(&mem, true, true);
    let mut packet = with_hdr(&frame(200, 3));
    packet[0] = 1; // NEEDS_CSUM: passed to the host kernel as is.
    let p = s.buf_with(&packet);
    s.tx.add_chain(&[(p, packet.len() as u32, 0)]);
    s.net.process_tx();
    assert_eq!(s.sent(), vec![packet]);
}

#[test]
fn tx_offload_request_without_negotiation_is_dropped() {
    let mem = new_mem();
    let mut s = Setup::new(&mem, true, false);
    let mut bad = with_hdr(&frame(100, 4));
    bad[1] = 1; // GSO_TCPV4, never offered to this driver
    let good = frame(100, 5);
    let p = s.buf_with(&bad);
    s.tx.add_chain(&[(p, bad.len() as u32, 0)]);
    let p = s.buf_with(&with_hdr(&good));
    s.tx.add_chain(&[(p, 112, 0)]);
    s.net.process_tx();
    assert_eq!(s.sent(), vec![good]);
    assert_eq!(s.net.stats().tx_dropped, 1);
}

#[test]
fn hostile_tx_chains_are_dropped_and_later_ones_still_work() {
    let mem = new_mem();
    let mut s = Setup::new(&mem, true, false);
    let ok = s.buf_with(&with_hdr(&frame(64, 9)));
    let raw = |addr: u64, len: u32, flags: u16, next: u16| {
        RawDescriptor::from(SplitDescriptor::new(addr, len, flags, next))
    };
    // Buffer outside guest memory.
    s.tx.add_chain(&[(MEM_SIZE as u64 - 16, 76, 0)]);
    // Address + length wrapping around the address space.
    s.tx.add_chain(&[(u64::MAX - 8, 76, 0)]);
    // Zero length.
    s.tx.add_chain(&[(ok, 0, 0)]);
    // Device-writable descriptor where a device-readable one belongs.
    s.tx.add_chain(&[(ok, 76, F_WRITE)]);
    // Frame larger than any Ethernet frame, over several descriptors.
    let big = s.buf(MAX_FRAME_LEN as u32 + 100);
    s.tx.add_chain(&[(big, 40_000, 0), (big, 40_000, 0)]);
    // A descriptor pointing at itself.
    let head = s.tx.add_raw(&[raw(ok, 76, F_NEXT, 0)]);
    let looped = raw(ok, 76, F_NEXT, head);
    s.tx.q.desc_table().store(head, looped).unwrap();
    // A NEXT index past the descriptor table.
    s.tx.add_raw(&[raw(ok, 76, F_NEXT, 999)]);
    // An avail ring entry that is not a descriptor index.
    let idx = s.tx.q.avail().idx().load();
    s.tx.q
        .avail()
        .ring()
        .ref_at(idx as usize)
        .unwrap()
        .store(300);
    s.tx.q.avail().idx().store(idx + 1);
    // Finally a good one.
    s.tx.add_chain(&[(ok, 76, 0)]);
    s.net.process_tx();

    assert_eq!(s.sent(), vec![frame(64, 9)]);
    let used = s.tx.take_used();
    assert_eq!(used.len(), 8, "every real chain is returned: {used:?}");
    assert!(used.iter().all(|&(id, len)| len == 0 && id < 256));
    assert_eq!(s.net.stats().bad_chains, 8);
}

#[test]
fn broken_avail_index_stops_the_queue_without_panicking() {
    let mem = new_mem();
    let mut s = Setup::new(&mem, true, false);
    // avail.idx 1000 ahead of next_avail: more entries than the queue holds.
    s.tx.q.avail().idx().store(1000);
    s.net.process_tx();
    assert!(s.sent().is_empty());
    assert!(s.tx.take_used().is_empty());
    s.net.process_tx();
}

#[test]
fn full_backend_keeps_tx_frames_in_order() {
    let mem = new_mem();
    let mut s = Setup::new(&mem, true, false);
    s.backend.lock().unwrap().send_budget = Some(1);
    let frames: Vec<Vec<u8>> = (0..4).map(|i| frame(100 + i, i as u8)).collect();
    for f in &frames {
        let p = s.buf_with(&with_hdr(f));
        s.tx.add_chain(&[(p, f.len() as u32 + 12, 0)]);
    }
    s.net.process_tx();
    assert_eq!(s.sent(), frames[..1].to_vec());
    // The second frame was copied out of its chain and waits inside the device; the
    // rest stay in the queue.
    assert_eq!(s.tx.take_used().len(), 2);
    s.net.process_tx(); // a driver kick does not reorder anything
    assert!(s.sent().is_empty());

    s.backend.lock().unwrap().send_budget = None;
    s.net.process_backend_writable();
    assert_eq!(s.sent(), frames[1..].to_vec());
    assert_eq!(s.tx.take_used().len(), 2);
}

#[test]
fn without_event_idx_the_no_interrupt_flag_is_honoured() {
    use vm_memory::Bytes;
    let mem = new_mem();
    let mut s = Setup::new(&mem, true, false);
    // Linux sets VRING_AVAIL_F_NO_INTERRUPT while NAPI polls the queue.
    let flags = s.tx.q.avail_addr();
    mem.write_obj(1u16.to_le(), flags).unwrap();
    let p = s.buf_with(&with_hdr(&frame(60, 1)));
    s.tx.add_chain(&[(p, 72, 0)]);
    s.net.process_tx();
    assert_eq!((s.tx.take_used().len(), s.irqs(TX_QUEUE)), (1, 0));
    mem.write_obj(0u16, flags).unwrap();
    let p = s.buf_with(&with_hdr(&frame(60, 2)));
    s.tx.add_chain(&[(p, 72, 0)]);
    s.net.process_tx();
    assert_eq!((s.tx.take_used().len(), s.irqs(TX_QUEUE)), (1, 1));
}

//! Chains in indirect descriptor tables (VIRTIO_RING_F_INDIRECT_DESC), which Linux
//! uses for tx packets of more than one buffer once the feature is offered.

use virtio_bindings::virtio_ring::VIRTIO_RING_F_INDIRECT_DESC;

use super::harness::*;
use crate::virtio::VirtioDevice;

#[test]
fn indirect_descriptors_are_offered() {
    let mem = new_mem();
    let s = Setup::unactivated(&mem, false);
    assert_ne!(
        s.net.device_features() & (1 << VIRTIO_RING_F_INDIRECT_DESC),
        0
    );
}

#[test]
fn a_tx_packet_in_an_indirect_table_is_sent() {
    let mem = new_mem();
    let mut s = Setup::new(&mem, true, false);
    let f = frame(1000, 4);
    let h = s.buf_with(&[0u8; 12]);
    let a = s.buf_with(&f[..14]);
    let b = s.buf_with(&f[14..]);
    let table = s.indirect(&[(h, 12, 0), (a, 14, 0), (b, 986, 0)]);
    let head = s.tx.add_raw(&[table]);
    s.net.process_tx();
    assert_eq!(s.sent(), vec![f]);
    assert_eq!(s.tx.take_used(), vec![(u32::from(head), 0)]);
}

#[test]
fn an_rx_packet_fills_an_indirect_table_of_buffers() {
    let mem = new_mem();
    let mut s = Setup::new(&mem, true, false);
    let (a, b) = (s.buf(600), s.buf(1000));
    let table = s.indirect(&[(a, 600, F_WRITE), (b, 1000, F_WRITE)]);
    let head = s.rx.add_raw(&[table]);
    let f = frame(1200, 6);
    s.push_incoming(f.clone());
    s.net.process_rx();
    assert_eq!(s.rx.take_used(), vec![(u32::from(head), 1212)]);
    let mut got = s.read(a, 600);
    got.extend(s.read(b, 612));
    assert_eq!(got[12..], f[..]);
}

#[test]
fn a_device_readable_buffer_in_an_rx_table_drops_only_that_chain() {
    let mem = new_mem();
    let mut s = Setup::new(&mem, true, false);
    let (a, b) = (s.buf(600), s.buf(1000));
    let table = s.indirect(&[(a, 600, F_WRITE), (b, 1000, 0)]);
    let bad = s.rx.add_raw(&[table]);
    let (good, addr) = s.add_rx_buffer(2048);
    let f = frame(100, 8);
    s.push_incoming(f.clone());
    s.net.process_rx();
    assert_eq!(
        s.rx.take_used(),
        vec![(u32::from(bad), 0), (u32::from(good), 112)]
    );
    assert_eq!(s.read(addr + 12, 100), f);
}

use virtio_bindings::bindings::virtio_ring::VRING_AVAIL_F_NO_INTERRUPT;
use virtio_queue::mock::MockSplitQueue;
use vm_memory::{Bytes, GuestAddress};

use super::*;
use crate::virtio::test_utils::*;

/// Deterministic source: byte i of the stream is i (mod 256).
pub(super) struct Counting(pub(super) u8);

impl EntropySource for Counting {
    fn fill(&mut self, buf: &mut [u8]) -> std::io::Result<()> {
        for b in buf {
            *b = self.0;
            self.0 = self.0.wrapping_add(1);
        }
        Ok(())
    }
}

pub(super) fn read(mem: &GuestMemory, addr: u64, len: usize) -> Vec<u8> {
    let mut v = vec![0u8; len];
    mem.read_slice(&mut v, GuestAddress(addr)).unwrap();
    v
}

#[test]
fn fills_writable_buffers() {
    let mem = test_mem();
    let vq = MockSplitQueue::create(&mem, GuestAddress(0), 16);
    vq.add_desc_chains(&chain(0, &[(DATA, 16, true), (DATA + 0x100, 32, true)]), 0)
        .unwrap();
    let mut rng = Rng::with_source(Box::new(Counting(0))).unwrap();
    let irq = activate(&mut rng, &mem, &[&vq]);
    rng.process_queue();
    assert_eq!(used(&vq, 0), (0, 48));
    assert_eq!(read(&mem, DATA, 16), (0..16).collect::<Vec<u8>>());
    assert_eq!(read(&mem, DATA + 0x100, 32), (16..48).collect::<Vec<u8>>());
    assert_eq!(irq.used_count(), 1);
}

#[test]
fn getrandom_gives_fresh_bytes() {
    let mem = test_mem();
    let vq = MockSplitQueue::create(&mem, GuestAddress(0), 16);
    let mut descs = chain(0, &[(DATA, 64, true)]);
    descs.extend(chain(1, &[(DATA + 0x100, 64, true)]));
    vq.add_desc_chains(&descs, 0).unwrap();
    let mut rng = Rng::new().unwrap();
    activate(&mut rng, &mem, &[&vq]);
    rng.process_queue();
    let (a, b) = (read(&mem, DATA, 64), read(&mem, DATA + 0x100, 64));
    assert_ne!(a, vec![0; 64]);
    assert_ne!(a, b);
}

#[test]
fn hostile_buffers() {
    let mem = test_mem();
    let vq = MockSplitQueue::create(&mem, GuestAddress(0), 16);
    let mut descs = chain(0, &[(DATA, 16, false)]); // device-readable only: nothing to fill
    descs.extend(chain(1, &[(MEM_SIZE - 8, 64, true)])); // runs past guest memory
    descs.extend(chain(2, &[(DATA, 1 << 20, true)])); // larger than the per-request cap
    vq.add_desc_chains(&descs, 0).unwrap();
    let mut rng = Rng::with_source(Box::new(Counting(1))).unwrap();
    activate(&mut rng, &mem, &[&vq]);
    rng.process_queue();
    assert_eq!(used_idx(&vq), 3);
    assert_eq!(used(&vq, 0), (0, 0));
    assert_eq!(used(&vq, 1), (1, 0));
    assert_eq!(used(&vq, 2), (2, MAX_BYTES_PER_REQUEST as u32));
}

/// A device on a [`TestRing`] of 4 entries, with EVENT_IDX negotiated or not.
fn on_test_ring<'a>(mem: &'a GuestMemory, event_idx: bool) -> (Rng, TestRing<'a>) {
    let mut rng = Rng::with_source(Box::new(Counting(0))).unwrap();
    let offered = rng.device_features();
    assert_ne!(offered & EVENT_IDX, 0, "EVENT_IDX not offered");
    rng.ack_features(if event_idx {
        offered
    } else {
        offered & !EVENT_IDX
    });
    (rng, TestRing::new(mem, 0, 4))
}

#[test]
fn with_event_idx_used_event_decides_interrupts_and_avail_event_asks_for_kicks() {
    let mem = test_mem();
    let (mut rng, mut ring) = on_test_ring(&mem, true);
    let irq = activate_queues(&mut rng, &mem, vec![ring.queue()]);
    // "Interrupt me once the used index passes 1."
    ring.set_used_event(1);
    ring.post(0, &[(DATA, 8, true)]);
    rng.process_queue();
    assert_eq!(ring.used_idx(), 1);
    assert_eq!(
        irq.used_count(),
        0,
        "interrupted before used_event was passed"
    );
    assert_eq!(ring.avail_event(), 1, "the driver is not asked to kick");
    // Round the ring twice: every buffer served, avail_event following.
    for n in 1..9u16 {
        ring.post(n % 4, &[(DATA + 0x100 * u64::from(n), 8, true)]);
        rng.process_queue();
        assert_eq!(ring.used_entry(n), (u32::from(n % 4), 8));
        assert_eq!(ring.avail_event(), n + 1);
    }
    assert_eq!(irq.used_count(), 1, "one interrupt, when used passed 1");
}

#[test]
fn without_event_idx_the_no_interrupt_flag_is_honoured() {
    let mem = test_mem();
    let (mut rng, mut ring) = on_test_ring(&mem, false);
    let irq = activate_queues(&mut rng, &mem, vec![ring.queue()]);
    ring.set_avail_flags(VRING_AVAIL_F_NO_INTERRUPT as u16);
    ring.post(0, &[(DATA, 8, true)]);
    rng.process_queue();
    assert_eq!((ring.used_idx(), irq.used_count()), (1, 0));
    ring.set_avail_flags(0);
    ring.post(1, &[(DATA, 8, true)]);
    rng.process_queue();
    assert_eq!((ring.used_idx(), irq.used_count()), (2, 1));
    // Kicks were suppressed only while the device was looking at the ring.
    assert_eq!(ring.used_flags(), 0);
    assert_eq!(
        ring.avail_event(),
        0,
        "avail_event written without EVENT_IDX"
    );
}

#[test]
fn fills_the_buffers_of_an_indirect_table() {
    let mem = test_mem();
    let vq = MockSplitQueue::create(&mem, GuestAddress(0), 16);
    let bufs = [(DATA, 8, true), (DATA + 0x100, 24, true)];
    vq.add_desc_chains(&[indirect_table(&mem, DATA + 0x1000, &bufs)], 0)
        .unwrap();
    let mut rng = Rng::with_source(Box::new(Counting(0))).unwrap();
    assert_ne!(
        rng.device_features() & crate::virtio::VIRTIO_RING_F_INDIRECT,
        0
    );
    activate(&mut rng, &mem, &[&vq]);
    rng.process_queue();
    assert_eq!(used(&vq, 0), (0, 32));
    assert_eq!(read(&mem, DATA, 8), (0..8).collect::<Vec<u8>>());
    assert_eq!(read(&mem, DATA + 0x100, 24), (8..32).collect::<Vec<u8>>());
}

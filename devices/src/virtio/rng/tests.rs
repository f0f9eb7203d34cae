use virtio_queue::mock::MockSplitQueue;
use vm_memory::{Bytes, GuestAddress};

use super::*;
use crate::virtio::test_utils::*;

/// Deterministic source: byte i of the stream is i (mod 256).
struct Counting(u8);

impl EntropySource for Counting {
    fn fill(&mut self, buf: &mut [u8]) -> std::io::Result<()> {
        for b in buf {
            *b = self.0;
            self.0 = self.0.wrapping_add(1);
        }
        Ok(())
    }
}

fn read(mem: &GuestMemory, addr: u64, len: usize) -> Vec<u8> {
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

use std::io::Write;
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Mutex};

use event_manager::{EventManager, SubscriberOps};
use virtio_queue::mock::MockSplitQueue;
use vm_memory::{Bytes, GuestAddress};

use super::*;
use crate::virtio::test_utils::*;

#[derive(Clone, Default)]
struct SharedOut(Arc<Mutex<Vec<u8>>>);

impl Write for SharedOut {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

const RXQ: u64 = 0;
const TXQ: u64 = 0x8000;

fn queues(
    mem: &GuestMemory,
) -> (
    MockSplitQueue<'_, GuestMemory>,
    MockSplitQueue<'_, GuestMemory>,
) {
    (
        MockSplitQueue::create(mem, GuestAddress(RXQ), 16),
        MockSplitQueue::create(mem, GuestAddress(TXQ), 16),
    )
}

#[test]
fn guest_output_reaches_writer() {
    let mem = test_mem();
    let (rx, tx) = queues(&mem);
    mem.write_slice(b"hel", GuestAddress(DATA)).unwrap();
    mem.write_slice(b"lo\n", GuestAddress(DATA + 0x100))
        .unwrap();
    let mut descs = chain(0, &[(DATA, 3, false), (DATA + 0x100, 3, false)]);
    // A second chain partly outside guest memory: skipped, not a panic.
    descs.extend(chain(2, &[(MEM_SIZE - 2, 8, false)]));
    tx.add_desc_chains(&descs, 0).unwrap();
    let out = SharedOut::default();
    let mut c = Console::new(Box::new(out.clone()), None).unwrap();
    let irq = activate(&mut c, &mem, &[&rx, &tx]);
    c.process_tx();
    assert_eq!(out.0.lock().unwrap().as_slice(), b"hello\n");
    assert_eq!(used_idx(&tx), 2);
    assert_eq!(irq.used_count(), 1);
}

#[test]
fn input_fills_receive_buffers_in_order() {
    let mem = test_mem();
    let (rx, tx) = queues(&mem);
    let mut descs = chain(0, &[(DATA, 2, true)]);
    descs.extend(chain(1, &[(DATA + 0x100, 8, true)]));
    rx.add_desc_chains(&descs, 0).unwrap();
    let mut c = Console::new(Box::new(std::io::sink()), None).unwrap();
    c.push_input(b"hel"); // buffered: not active yet
    let irq = activate(&mut c, &mem, &[&rx, &tx]);
    c.push_input(b"lo");
    assert_eq!(used_idx(&rx), 2);
    assert_eq!(used(&rx, 0), (0, 2));
    assert_eq!(used(&rx, 1), (1, 3));
    let mut got = [0u8; 3];
    mem.read_slice(&mut got[..2], GuestAddress(DATA)).unwrap();
    assert_eq!(&got[..2], b"he");
    mem.read_slice(&mut got, GuestAddress(DATA + 0x100))
        .unwrap();
    assert_eq!(&got, b"llo");
    assert!(irq.used_count() >= 1);
    // No buffers left: input waits in the device.
    c.push_input(b"x");
    assert_eq!(used_idx(&rx), 2);
}

#[test]
fn event_loop_drives_input_and_queue_notifications() {
    let mem = test_mem();
    let (rx, tx) = queues(&mem);
    rx.add_desc_chains(&chain(0, &[(DATA, 16, true)]), 0)
        .unwrap();
    mem.write_slice(b"out", GuestAddress(DATA + 0x1000))
        .unwrap();
    tx.add_desc_chains(&chain(0, &[(DATA + 0x1000, 3, false)]), 0)
        .unwrap();

    let (mut host, guest_side) = UnixStream::pair().unwrap();
    guest_side.set_nonblocking(true).unwrap();
    let out = SharedOut::default();
    let console = Arc::new(Mutex::new(
        Console::new(Box::new(out.clone()), Some(Box::new(guest_side))).unwrap(),
    ));
    let mut em = EventManager::<Arc<Mutex<Console>>>::new().unwrap();
    em.add_subscriber(console.clone());

    // Activation as the transport does it: queue events handed over, subscriber woken.
    let queue_events: Vec<_> = (0..2)
        .map(|_| vmm_sys_util::eventfd::EventFd::new(vmm_sys_util::eventfd::EFD_NONBLOCK).unwrap())
        .collect();
    let notify_tx = queue_events[1].try_clone().unwrap();
    let irq = Arc::new(CountingInterrupt::default());
    console
        .lock()
        .unwrap()
        .activate(ActivateContext {
            mem: mem.clone(),
            queues: vec![rx.create_queue().unwrap(), tx.create_queue().unwrap()],
            queue_events,
            interrupt: irq.clone(),
        })
        .unwrap();
    em.run_with_timeout(100).unwrap(); // registers the queue events

    notify_tx.write(1).unwrap();
    em.run_with_timeout(100).unwrap();
    assert_eq!(out.0.lock().unwrap().as_slice(), b"out");

    host.write_all(b"typed").unwrap();
    em.run_with_timeout(100).unwrap();
    assert_eq!(used(&rx, 0), (0, 5));
    let mut got = [0u8; 5];
    mem.read_slice(&mut got, GuestAddress(DATA)).unwrap();
    assert_eq!(&got, b"typed");
}

//! The device driven through a real event manager, as the VMM runs it.

use std::sync::{Arc, Mutex};

use event_manager::{EventManager, SubscriberOps};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::harness::*;
use crate::virtio::net::{Net, RX_QUEUE, TX_QUEUE};
use crate::virtio::{ActivateContext, VirtioDevice, VIRTIO_F_VERSION_1};

#[test]
fn event_loop_moves_frames_both_ways_and_waits_for_rx_buffers() {
    let mem = new_mem();
    let mut s = Setup::unactivated(&mem, false);
    let backend = MockBackend {
        state: s.backend.clone(),
        evt: s.backend_evt.clone(),
    };
    let net = Arc::new(Mutex::new(Net::new(Box::new(backend), MAC).unwrap()));
    let mut em = EventManager::<Arc<Mutex<Net>>>::new().unwrap();
    em.add_subscriber(net.clone());

    {
        let mut n = net.lock().unwrap();
        n.ack_features(VIRTIO_F_VERSION_1 | (1 << 15));
        let ctx = ActivateContext {
            mem: mem.clone(),
            queues: vec![
                s.rx.q.create_queue().unwrap(),
                s.tx.q.create_queue().unwrap(),
            ],
            queue_events: s
                .queue_events
                .iter()
                .map(|e| e.try_clone().unwrap())
                .collect(),
            interrupt: s.irq.clone(),
        };
        n.activate(ctx).unwrap();
    }
    em.run_with_timeout(100).unwrap(); // activation registers queues and the backend

    // tx: a chain plus a notification.
    let f = frame(300, 1);
    let p = s.buf_with(&with_hdr(&f));
    s.tx.add_chain(&[(p, 312, 0)]);
    s.queue_events[TX_QUEUE].write(1).unwrap();
    em.run_with_timeout(100).unwrap();
    assert_eq!(s.sent(), vec![f]);
    assert_eq!(s.irqs(TX_QUEUE), 1);

    // rx with no buffers: the packet waits and the loop does not spin on the backend fd.
    let r = frame(400, 2);
    s.push_incoming(r.clone());
    em.run_with_timeout(100).unwrap();
    assert!(s.rx.take_used().is_empty());
    let spins = em.run_with_timeout(50).unwrap();
    assert_eq!(spins, 0, "backend fd still polled while rx is full");

    let (head, addr) = s.add_rx_buffer(2048);
    s.queue_events[RX_QUEUE].write(1).unwrap();
    em.run_with_timeout(100).unwrap();
    assert_eq!(s.rx.take_used(), vec![(head as u32, 412)]);
    assert_eq!(s.read(addr + 12, 400), r);

    // After a reset the device neither touches the queues nor polls the backend.
    assert!(net.lock().unwrap().reset());
    s.push_incoming(frame(50, 3));
    s.add_rx_buffer(2048);
    em.run_with_timeout(100).unwrap();
    let spins = em.run_with_timeout(50).unwrap();
    assert_eq!(spins, 0);
    assert!(s.rx.take_used().is_empty());
    let _unused = EventFd::new(EFD_NONBLOCK).unwrap();
}

use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::{Arc, Mutex};

use event_manager::{EventManager, SubscriberOps};
use virtio_bindings::bindings::virtio_ring::VRING_AVAIL_F_NO_INTERRUPT;
use virtio_queue::mock::MockSplitQueue;
use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

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

/// Console queues on [`TestRing`]s (rx at 0, tx at 0x2000) with EVENT_IDX negotiated or
/// not, and their notification EventFds.
pub(super) fn on_test_rings<'a>(
    console: &mut Console,
    mem: &'a GuestMemory,
    event_idx: bool,
) -> (
    TestRing<'a>,
    TestRing<'a>,
    Arc<CountingInterrupt>,
    Vec<EventFd>,
) {
    let offered = console.device_features();
    assert_ne!(offered & EVENT_IDX, 0, "EVENT_IDX not offered");
    console.ack_features(if event_idx {
        offered
    } else {
        offered & !EVENT_IDX
    });
    let (rx, tx) = (TestRing::new(mem, 0, 16), TestRing::new(mem, 0x2000, 16));
    let events: Vec<EventFd> = (0..2)
        .map(|_| EventFd::new(EFD_NONBLOCK).unwrap())
        .collect();
    let kicks = events.iter().map(|e| e.try_clone().unwrap()).collect();
    let irq = Arc::new(CountingInterrupt::default());
    console
        .activate(ActivateContext {
            mem: mem.clone(),
            queues: vec![rx.queue(), tx.queue()],
            queue_events: events,
            interrupt: irq.clone(),
        })
        .unwrap();
    (rx, tx, irq, kicks)
}

#[test]
fn output_follows_event_idx_and_the_no_interrupt_flag() {
    let mem = test_mem();
    let out = SharedOut::default();
    let mut c = Console::new(Box::new(out.clone()), None).unwrap();
    let (_rx, mut tx, irq, _) = on_test_rings(&mut c, &mem, true);
    mem.write_slice(b"abc", GuestAddress(DATA)).unwrap();
    // Linux's hvc polls the used ring for its output and wants no interrupt: with
    // EVENT_IDX it leaves used_event behind, here "once the used index passes 5".
    tx.set_used_event(5);
    for n in 0..3u16 {
        tx.post(n, &[(DATA + u64::from(n), 1, false)]);
        c.process_tx();
        assert_eq!(tx.avail_event(), n + 1, "the driver is not asked to kick");
    }
    assert_eq!(out.0.lock().unwrap().as_slice(), b"abc");
    assert_eq!(irq.used_count(), 0);

    let mut c = Console::new(Box::new(std::io::sink()), None).unwrap();
    let (_rx, mut tx, irq, _) = on_test_rings(&mut c, &mem, false);
    tx.set_avail_flags(VRING_AVAIL_F_NO_INTERRUPT as u16);
    tx.post(0, &[(DATA, 3, false)]);
    c.process_tx();
    assert_eq!((tx.used_idx(), irq.used_count()), (1, 0));
    assert_eq!(tx.used_flags(), 0, "kicks left suppressed");
}

#[test]
fn input_waiting_for_buffers_asks_for_a_kick_at_the_next_one() {
    let mem = test_mem();
    let mut c = Console::new(Box::new(std::io::sink()), None).unwrap();
    let (mut rx, _tx, irq, _) = on_test_rings(&mut c, &mem, true);
    rx.post(0, &[(DATA, 4, true)]);
    c.push_input(b"0123456789");
    assert_eq!(rx.used_entry(0), (0, 4));
    assert_eq!(irq.used_count(), 1);
    // Six bytes wait: the driver's next buffer must kick the device.
    assert_eq!(rx.avail_event(), 1);
    rx.post(1, &[(DATA + 0x100, 16, true)]);
    c.process_rx(); // the kick
    assert_eq!(rx.used_entry(1), (1, 6));
    let mut got = [0u8; 6];
    mem.read_slice(&mut got, GuestAddress(DATA + 0x100))
        .unwrap();
    assert_eq!(&got, b"456789");
}

/// An input that takes everything its fd has but gives it back a byte per read, as a
/// filter that gives back more than it read keeps what does not fit.
struct Holding {
    fd: UnixStream,
    held: std::collections::VecDeque<u8>,
}

impl Read for Holding {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let mut chunk = [0u8; 64];
        loop {
            match self.fd.read(&mut chunk) {
                Ok(0) => break,
                Ok(n) => self.held.extend(&chunk[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(e),
            }
        }
        match (self.held.pop_front(), buf.first_mut()) {
            (Some(b), Some(slot)) => {
                *slot = b;
                Ok(1)
            }
            _ => Err(std::io::ErrorKind::WouldBlock.into()),
        }
    }
}

impl std::os::unix::io::AsRawFd for Holding {
    fn as_raw_fd(&self) -> std::os::unix::io::RawFd {
        self.fd.as_raw_fd()
    }
}

impl ConsoleInput for Holding {
    fn holds_input(&self) -> bool {
        !self.held.is_empty()
    }
}

#[test]
fn input_the_input_holds_is_read_without_waiting_for_the_fd() {
    let (mut host, guest_side) = UnixStream::pair().unwrap();
    guest_side.set_nonblocking(true).unwrap();
    let input = Holding {
        fd: guest_side,
        held: Default::default(),
    };
    let mem = test_mem();
    let mut console = Console::new(Box::new(std::io::sink()), Some(Box::new(input))).unwrap();
    let (_rx, _tx, _irq, _kicks) = on_test_rings(&mut console, &mem, true);
    let console = Arc::new(Mutex::new(console));
    let mut em = EventManager::<Arc<Mutex<Console>>>::new().unwrap();
    em.add_subscriber(console.clone());
    // One readiness of the fd: the rest of the line is held by the input, not the fd.
    host.write_all(b"hello").unwrap();
    run_until(&mut em, "the held input", || {
        console.lock().unwrap().pending.len() == 5
    });
    let pending: Vec<u8> = console.lock().unwrap().pending.iter().copied().collect();
    assert_eq!(pending, b"hello");
}

#[test]
fn fast_input_is_paced_to_the_guest_not_dropped() {
    const TOTAL: usize = 1 << 20;
    const BUF: u32 = 4096;
    let pattern: Vec<u8> = (0..TOTAL).map(|i| (i * 7 % 251) as u8).collect();
    let (mut host, guest_side) = UnixStream::pair().unwrap();
    guest_side.set_nonblocking(true).unwrap();
    let writer = {
        let pattern = pattern.clone();
        std::thread::spawn(move || host.write_all(&pattern)) // blocks while paused
    };
    let mem = test_mem();
    let mut console = Console::new(Box::new(std::io::sink()), Some(Box::new(guest_side))).unwrap();
    let (mut rx, _tx, _irq, kicks) = on_test_rings(&mut console, &mem, true);
    let console = Arc::new(Mutex::new(console));
    let mut em = EventManager::<Arc<Mutex<Console>>>::new().unwrap();
    em.add_subscriber(console.clone());

    // No receive buffers yet: the device buffers what it may, then stops reading.
    // (Run until the buffer is full, however late the writer thread starts.)
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while console.lock().unwrap().pending.len() < MAX_PENDING_INPUT {
        assert!(
            std::time::Instant::now() < deadline,
            "input never filled the buffer"
        );
        em.run_with_timeout(20).unwrap();
    }
    // Full, with the writer blocked: the loop must go quiet, and stay so, not wake
    // for input it cannot take.
    let quiet = (0..200).any(|_| em.run_with_timeout(20).unwrap() == 0);
    assert!(quiet, "the event loop kept waking for input it cannot take");
    for _ in 0..3 {
        assert_eq!(em.run_with_timeout(20).unwrap(), 0, "the loop woke again");
    }
    assert_eq!(console.lock().unwrap().pending.len(), MAX_PENDING_INPUT);

    // Now the guest takes input in 4 KiB buffers, re-posting each one it consumed.
    let buf_addr = |slot: u16| DATA + u64::from(slot) * u64::from(BUF);
    for slot in 0..8 {
        rx.post(slot, &[(buf_addr(slot), BUF, true)]);
    }
    kicks[0].write(1).unwrap();
    let mut got = Vec::with_capacity(TOTAL);
    let mut seen = 0u16;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while got.len() < TOTAL && std::time::Instant::now() < deadline {
        em.run_with_timeout(20).unwrap();
        while seen != rx.used_idx() {
            let (head, len) = rx.used_entry(seen);
            let mut data = vec![0u8; len as usize];
            mem.read_slice(&mut data, GuestAddress(buf_addr(head as u16)))
                .unwrap();
            got.extend_from_slice(&data);
            rx.post(head as u16, &[(buf_addr(head as u16), BUF, true)]);
            seen = seen.wrapping_add(1);
        }
        kicks[0].write(1).unwrap();
    }
    assert_eq!(got.len(), TOTAL, "input lost or stalled");
    assert!(got == pattern, "input reordered or corrupted");
    writer.join().unwrap().unwrap();
}

/// The guest writing to the console one buffer at a time.
pub(super) struct GuestWriter<'a> {
    mem: &'a GuestMemory,
    kick: &'a EventFd,
    /// Buffers written so far.
    desc: u16,
}

impl<'a> GuestWriter<'a> {
    pub fn new(mem: &'a GuestMemory, kick: &'a EventFd) -> Self {
        GuestWriter { mem, kick, desc: 0 }
    }

    /// Post `text` on `tx`, kick, and run `em` until the device returned the buffer.
    pub fn write<S: event_manager::MutEventSubscriber>(
        &mut self,
        text: &[u8],
        tx: &mut TestRing,
        em: &mut EventManager<S>,
    ) {
        let at = DATA + 0x1000 * u64::from(self.desc);
        self.mem.write_slice(text, GuestAddress(at)).unwrap();
        tx.post(self.desc % 16, &[(at, text.len() as u32, false)]);
        self.desc += 1;
        self.kick.write(1).unwrap();
        let want = self.desc;
        run_until(em, "the output", || tx.used_idx() == want);
    }
}

/// Read exactly `n` bytes from `client`, or fail after a second.
pub(super) fn read_client(client: &mut UnixStream, n: usize) -> Vec<u8> {
    client
        .set_read_timeout(Some(std::time::Duration::from_secs(1)))
        .unwrap();
    let mut got = vec![0u8; n];
    client.read_exact(&mut got).unwrap();
    got
}

#[test]
fn a_listening_console_serves_one_client_at_a_time() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("console.sock");
    let mem = test_mem();
    let mut console = Console::listening(UnixListener::bind(&path).unwrap()).unwrap();
    let (mut rx, mut tx, _irq, kicks) = on_test_rings(&mut console, &mem, true);
    let console = Arc::new(Mutex::new(console));
    let mut em = EventManager::<Arc<Mutex<Console>>>::new().unwrap();
    em.add_subscriber(console.clone());
    let mut writer = GuestWriter::new(&mem, &kicks[TX]);

    // Nobody connected: the output is dropped, the guest's buffer returned.
    writer.write(b"nobody-hears-this", &mut tx, &mut em);
    let mut a = UnixStream::connect(&path).unwrap();
    run_until(&mut em, "client a", || console.lock().unwrap().has_client());
    writer.write(b"to-a", &mut tx, &mut em);
    assert_eq!(read_client(&mut a, 4), b"to-a");
    a.write_all(b"from-a").unwrap();
    rx.post(0, &[(DATA + 0x20000, 64, true)]);
    kicks[RX].write(1).unwrap();
    run_until(&mut em, "input from a", || rx.used_idx() == 1);
    assert_eq!(rx.used_entry(0), (0, 6));

    // A second client waits in the backlog while the first is served.
    let mut b = UnixStream::connect(&path).unwrap();
    writer.write(b"a-again", &mut tx, &mut em);
    assert_eq!(read_client(&mut a, 7), b"a-again");
    b.set_nonblocking(true).unwrap();
    let mut byte = [0u8; 1];
    assert_eq!(
        b.read(&mut byte).unwrap_err().kind(),
        std::io::ErrorKind::WouldBlock
    );
    b.set_nonblocking(false).unwrap();

    // a hangs up: b is served, and hears nothing said before it was.
    drop(a);
    em.run_with_timeout(20).unwrap(); // a's EOF
    run_until(&mut em, "client b", || console.lock().unwrap().has_client());
    writer.write(b"to-b", &mut tx, &mut em);
    assert_eq!(read_client(&mut b, 4), b"to-b");

    // b stops reading: its output fails (EPIPE), and the next client is served.
    b.shutdown(std::net::Shutdown::Read).unwrap();
    let mut c = UnixStream::connect(&path).unwrap();
    writer.write(b"b-is-gone", &mut tx, &mut em);
    run_until(&mut em, "client c", || console.lock().unwrap().has_client());
    writer.write(b"to-c", &mut tx, &mut em);
    assert_eq!(read_client(&mut c, 4), b"to-c");
}

#[test]
fn a_failing_output_is_given_up_once_and_the_guest_keeps_going() {
    #[derive(Clone, Default)]
    struct Broken(Arc<std::sync::atomic::AtomicUsize>);
    impl Write for Broken {
        fn write(&mut self, _: &[u8]) -> std::io::Result<usize> {
            self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            Err(std::io::ErrorKind::BrokenPipe.into())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mem = test_mem();
    let out = Broken::default();
    let mut c = Console::new(Box::new(out.clone()), None).unwrap();
    let (_rx, mut tx, _irq, _) = on_test_rings(&mut c, &mem, false);
    for n in 0..3u16 {
        tx.post(n * 2, &[(DATA, 8, false), (DATA + 0x100, 8, false)]);
        c.process_tx();
        assert_eq!(tx.used_idx(), n + 1, "guest buffer not returned");
    }
    assert_eq!(out.0.load(std::sync::atomic::Ordering::SeqCst), 1);
}

/// A size source whose size the test sets.
fn settable_size(initial: ConsoleSize) -> (SizeSource, Arc<Mutex<ConsoleSize>>, EventFd) {
    let size = Arc::new(Mutex::new(initial));
    let shared = size.clone();
    let changed = EventFd::new(EFD_NONBLOCK).unwrap();
    let signal = changed.try_clone().unwrap();
    let source = SizeSource {
        changed,
        query: Box::new(move || Some(*shared.lock().unwrap())),
    };
    (source, size, signal)
}

fn config(c: &Console, offset: u64, len: usize) -> Vec<u8> {
    let mut data = vec![0xffu8; len];
    c.read_config(offset, &mut data);
    data
}

#[test]
fn size_is_offered_only_with_a_source_and_read_from_config() {
    let plain = Console::new(Box::new(std::io::sink()), None).unwrap();
    assert_eq!(plain.device_features() & F_SIZE, 0);
    assert_eq!(config(&plain, 0, 4), [0; 4]);

    let (source, _, _) = settable_size((132, 43));
    let sized = Console::new(Box::new(std::io::sink()), None)
        .unwrap()
        .with_size(source);
    assert_ne!(sized.device_features() & F_SIZE, 0);
    assert_eq!(config(&sized, 0, 4), [132, 0, 43, 0]);
    assert_eq!(config(&sized, 2, 2), [43, 0], "rows alone");
    // max_nr_ports and emerg_wr read zero; past the end too, and nothing panics.
    assert_eq!(config(&sized, 4, 8), [0; 8]);
    assert_eq!(config(&sized, 10, 6), [0; 6]);
    assert_eq!(config(&sized, u64::MAX, 4), [0; 4]);
    let fixed = Console::new(Box::new(std::io::sink()), None)
        .unwrap()
        .with_size(SizeSource::fixed((80, 24)).unwrap());
    assert_eq!(fixed.size(), (80, 24));
}

#[test]
fn the_driver_hears_the_size_at_start_and_on_every_change() {
    let mem = test_mem();
    let (rx, tx) = queues(&mem);
    let (source, size, signal) = settable_size((80, 24));
    let console = Arc::new(Mutex::new(
        Console::new(Box::new(std::io::sink()), None)
            .unwrap()
            .with_size(source),
    ));
    let mut em = EventManager::<Arc<Mutex<Console>>>::new().unwrap();
    em.add_subscriber(console.clone());
    let irq = {
        let mut c = console.lock().unwrap();
        let offered = c.device_features();
        c.ack_features(offered);
        activate(&mut *c, &mem, &[&rx, &tx])
    };
    // Linux reads a single port's size only on a configuration change.
    assert_eq!(irq.config.load(std::sync::atomic::Ordering::SeqCst), 1);

    *size.lock().unwrap() = (200, 50);
    signal.write(1).unwrap();
    em.run_with_timeout(100).unwrap();
    assert_eq!(config(&console.lock().unwrap(), 0, 4), [200, 0, 50, 0]);
    assert_eq!(irq.config.load(std::sync::atomic::Ordering::SeqCst), 2);

    // A signal without a change (SIGWINCH for another reason) is not passed on.
    signal.write(1).unwrap();
    em.run_with_timeout(100).unwrap();
    assert_eq!(irq.config.load(std::sync::atomic::Ordering::SeqCst), 2);
}

#[test]
fn a_driver_without_f_size_gets_no_size_interrupts() {
    let mem = test_mem();
    let (rx, tx) = queues(&mem);
    let (source, size, _) = settable_size((80, 24));
    let mut c = Console::new(Box::new(std::io::sink()), None)
        .unwrap()
        .with_size(source);
    c.ack_features(c.device_features() & !F_SIZE);
    let irq = activate(&mut c, &mem, &[&rx, &tx]);
    *size.lock().unwrap() = (100, 30);
    c.refresh_size();
    assert_eq!(c.size(), (100, 30));
    assert_eq!(irq.config.load(std::sync::atomic::Ordering::SeqCst), 0);
}

#[test]
fn output_in_an_indirect_table_reaches_the_writer() {
    let mem = test_mem();
    let (rx, tx) = queues(&mem);
    mem.write_slice(b"indi", GuestAddress(DATA)).unwrap();
    mem.write_slice(b"rect\n", GuestAddress(DATA + 0x100))
        .unwrap();
    let table = indirect_table(
        &mem,
        DATA + 0x1000,
        &[(DATA, 4, false), (DATA + 0x100, 5, false)],
    );
    tx.add_desc_chains(&[table], 0).unwrap();
    let out = SharedOut::default();
    let mut c = Console::new(Box::new(out.clone()), None).unwrap();
    assert_ne!(
        c.device_features() & crate::virtio::VIRTIO_RING_F_INDIRECT,
        0
    );
    activate(&mut c, &mem, &[&rx, &tx]);
    c.process_tx();
    assert_eq!(out.0.lock().unwrap().as_slice(), b"indirect\n");
    assert_eq!(used_idx(&tx), 1);
}

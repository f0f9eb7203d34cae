use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use event_manager::{EventManager, SubscriberOps};
use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::control::*;
use super::*;
use crate::virtio::test_utils::*;

/// Control receive buffers (64 bytes each, by descriptor) and driver messages.
pub(super) const CONTROL_BUFS: u64 = DATA;
pub(super) const DRIVER_MSGS: u64 = DATA + 0x1_0000;
pub(super) const PORT_BUFS: u64 = DATA + 0x2_0000;

pub(super) struct Guest<'a> {
    mem: &'a GuestMemory,
    pub rings: Vec<TestRing<'a>>,
    pub kicks: Vec<EventFd>,
    /// Control messages read so far, and descriptors used on the control tx ring.
    control_seen: u16,
    sent: u16,
}

fn ports(names: &[&str]) -> (tempfile::TempDir, Vec<PathBuf>, SerialPorts) {
    let dir = tempfile::tempdir().unwrap();
    let mut paths = Vec::new();
    let mut ports = Vec::new();
    for name in names {
        let path = dir.path().join(format!("{name}.sock"));
        let listener = UnixListener::bind(&path).unwrap();
        ports.push((name.to_string(), PortSocket::Listening(listener)));
        paths.push(path);
    }
    (dir, paths, SerialPorts::new(ports).unwrap())
}

impl<'a> Guest<'a> {
    /// Activate `dev` with every feature and 16 control receive buffers posted.
    pub fn attach(dev: &mut SerialPorts, mem: &'a GuestMemory) -> Self {
        dev.ack_features(dev.device_features());
        let n = dev.queue_max_sizes().len();
        let rings: Vec<TestRing> = (0..n)
            .map(|i| TestRing::new(mem, 0x2000 * i as u64, 16))
            .collect();
        let events: Vec<EventFd> = (0..n)
            .map(|_| EventFd::new(EFD_NONBLOCK).unwrap())
            .collect();
        let kicks = events.iter().map(|e| e.try_clone().unwrap()).collect();
        dev.activate(ActivateContext {
            mem: mem.clone(),
            queues: rings.iter().map(TestRing::queue).collect(),
            queue_events: events,
            interrupt: Arc::new(CountingInterrupt::default()),
        })
        .unwrap();
        let mut guest = Guest {
            mem,
            rings,
            kicks,
            control_seen: 0,
            sent: 0,
        };
        for d in 0..16 {
            guest.rings[CONTROL_RX].post(d, &[(CONTROL_BUFS + 64 * u64::from(d), 64, true)]);
        }
        guest
    }

    /// Put `msg` on the control transmit ring (the caller processes it).
    fn send(&mut self, msg: &[u8]) {
        let d = self.sent % 16;
        let at = DRIVER_MSGS + 0x100 * u64::from(d);
        self.mem.write_slice(msg, GuestAddress(at)).unwrap();
        self.rings[CONTROL_TX].post(d, &[(at, msg.len() as u32, false)]);
        self.sent += 1;
        self.kicks[CONTROL_TX].write(1).unwrap();
    }

    pub fn send_control(&mut self, id: u32, event: u16, value: u16) {
        let mut msg = id.to_le_bytes().to_vec();
        msg.extend_from_slice(&event.to_le_bytes());
        msg.extend_from_slice(&value.to_le_bytes());
        self.send(&msg);
    }

    /// The control messages the device wrote since the last call: (id, event, value,
    /// payload).
    pub fn received(&mut self) -> Vec<(u32, u16, u16, Vec<u8>)> {
        let mut out = Vec::new();
        while self.control_seen != self.rings[CONTROL_RX].used_idx() {
            let (head, len) = self.rings[CONTROL_RX].used_entry(self.control_seen);
            let mut bytes = vec![0u8; len as usize];
            let at = CONTROL_BUFS + 64 * u64::from(head);
            self.mem.read_slice(&mut bytes, GuestAddress(at)).unwrap();
            let field = |r: std::ops::Range<usize>| bytes.get(r).unwrap_or(&[]).to_vec();
            let id = u32::from_le_bytes(field(0..4).try_into().unwrap_or_default());
            let event = u16::from_le_bytes(field(4..6).try_into().unwrap_or_default());
            let value = u16::from_le_bytes(field(6..8).try_into().unwrap_or_default());
            out.push((id, event, value, bytes.get(8..).unwrap_or(&[]).to_vec()));
            // Re-post the buffer, as the driver does.
            self.rings[CONTROL_RX].post(head as u16, &[(at, 64, true)]);
            self.control_seen += 1;
        }
        out
    }
}

pub(super) fn msg(id: u32, event: u16, value: u16) -> (u32, u16, u16, Vec<u8>) {
    (id, event, value, Vec::new())
}

#[test]
fn the_driver_learns_each_port_and_its_name() {
    let mem = test_mem();
    let (_dir, _paths, mut dev) = ports(&["org.kiln.a", "org.qemu.guest_agent.0"]);
    assert_ne!(dev.device_features() & F_MULTIPORT, 0);
    // max_nr_ports counts the unused port 0; queues for 3 ports and the control pair.
    let mut max_nr_ports = [0u8; 4];
    dev.read_config(4, &mut max_nr_ports);
    assert_eq!(u32::from_le_bytes(max_nr_ports), 3);
    assert_eq!(dev.queue_max_sizes().len(), 8);
    let mut guest = Guest::attach(&mut dev, &mem);

    guest.send_control(0, DEVICE_READY, 1);
    dev.process_control_tx();
    assert_eq!(
        guest.received(),
        [msg(1, DEVICE_ADD, 0), msg(2, DEVICE_ADD, 0)]
    );
    guest.send_control(2, PORT_READY, 1);
    dev.process_control_tx();
    // Named; not open, as no host client is connected.
    let name = b"org.qemu.guest_agent.0".to_vec();
    assert_eq!(guest.received(), [(2, PORT_NAME, 1, name)]);
    assert!(!dev.guest_has_open("org.qemu.guest_agent.0"));
    guest.send_control(2, PORT_OPEN, 1);
    dev.process_control_tx();
    assert!(dev.guest_has_open("org.qemu.guest_agent.0"));
    assert!(!dev.guest_has_open("org.kiln.a"));
    assert_eq!(guest.received(), []);
}

#[test]
fn a_driver_without_multiport_is_refused() {
    let mem = test_mem();
    let (_dir, _paths, mut dev) = ports(&["org.kiln.a"]);
    dev.ack_features(dev.device_features() & !F_MULTIPORT);
    let rings: Vec<TestRing> = (0..2)
        .map(|i| TestRing::new(&mem, 0x2000 * i, 16))
        .collect();
    let err = dev
        .activate(ActivateContext {
            mem: mem.clone(),
            queues: rings.iter().map(TestRing::queue).collect(),
            queue_events: (0..2)
                .map(|_| EventFd::new(EFD_NONBLOCK).unwrap())
                .collect(),
            interrupt: Arc::new(CountingInterrupt::default()),
        })
        .unwrap_err();
    assert!(err.to_string().contains("MULTIPORT"), "{err}");
}

#[test]
fn hostile_control_messages_are_ignored() {
    let mem = test_mem();
    let (_dir, _paths, mut dev) = ports(&["org.kiln.a"]);
    let mut guest = Guest::attach(&mut dev, &mem);
    guest.send(&[1, 0, 0, 0]); // short
    guest.send_control(99, PORT_READY, 1); // no such port
    guest.send_control(0, PORT_READY, 1); // port 0 is not offered
    guest.send_control(u32::MAX, PORT_OPEN, 1);
    guest.send_control(1, 42, 1); // unknown event
    guest.send_control(0, DEVICE_READY, 0); // the driver failed
    guest.send_control(1, PORT_READY, 0);
    // A message outside guest memory, and one as long as guest memory (only its
    // header is read).
    let d = guest.sent % 16;
    guest.rings[CONTROL_TX].post(d, &[(MEM_SIZE - 4, 8, false)]);
    guest.sent += 1;
    let d = guest.sent % 16;
    let mut huge = 1u32.to_le_bytes().to_vec();
    huge.extend_from_slice(&PORT_OPEN.to_le_bytes());
    huge.extend_from_slice(&1u16.to_le_bytes());
    mem.write_slice(&huge, GuestAddress(0)).unwrap();
    guest.rings[CONTROL_TX].post(d, &[(0, MEM_SIZE as u32, false)]);
    guest.sent += 1;
    dev.process_control_tx();
    assert_eq!(guest.rings[CONTROL_TX].used_idx(), guest.sent);
    assert_eq!(guest.received(), []);
    assert!(
        dev.guest_has_open("org.kiln.a"),
        "the long message's header"
    );
    // The device still answers a well-formed message.
    guest.send_control(0, DEVICE_READY, 1);
    dev.process_control_tx();
    assert_eq!(guest.received(), [msg(1, DEVICE_ADD, 0)]);
}

#[test]
fn ports_are_checked_when_made() {
    let dir = tempfile::tempdir().unwrap();
    let listener = |n: usize| {
        PortSocket::Listening(UnixListener::bind(dir.path().join(format!("{n}.sock"))).unwrap())
    };
    let err = |ports: Vec<(String, PortSocket)>| SerialPorts::new(ports).err().unwrap();
    assert!(err(vec![])
        .to_string()
        .contains("0 ports: a virtio-serial device takes 1 to 31"));
    for bad in ["", "has space", "a/b", &"x".repeat(256)] {
        let e = err(vec![(bad.to_string(), listener(1000))]);
        assert!(e.to_string().contains("is not 1-255"), "{bad}: {e}");
        std::fs::remove_file(dir.path().join("1000.sock")).unwrap();
    }
    let twice = vec![
        ("a".to_string(), listener(1)),
        ("a".to_string(), listener(2)),
    ];
    assert!(err(twice).to_string().contains("\"a\" is given twice"));
    let many = (0..32)
        .map(|i| (format!("p{i}"), listener(100 + i)))
        .collect();
    assert!(err(many).to_string().contains("32 ports"));
    let names = (0..31).map(|i| format!("org.kiln.{i}")).collect::<Vec<_>>();
    assert_eq!(check_port_names(names.iter().map(String::as_str)), Ok(()));
}

#[test]
fn a_client_talks_to_the_guest_and_its_coming_and_going_is_announced() {
    let mem = test_mem();
    let (_dir, paths, mut dev) = ports(&["org.kiln.test.0"]);
    let mut guest = Guest::attach(&mut dev, &mem);
    guest.send_control(0, DEVICE_READY, 1);
    guest.send_control(1, PORT_READY, 1);
    dev.process_control_tx();
    assert_eq!(guest.received().len(), 2, "DEVICE_ADD and PORT_NAME");
    let dev = Arc::new(Mutex::new(dev));
    let mut em = EventManager::<Arc<Mutex<SerialPorts>>>::new().unwrap();
    em.add_subscriber(dev.clone());
    let (rx, tx) = (SerialPorts::rx_queue(0), SerialPorts::rx_queue(0) + 1);

    // Guest output while no client is connected is dropped, not held.
    mem.write_slice(b"lost", GuestAddress(PORT_BUFS)).unwrap();
    guest.rings[tx].post(0, &[(PORT_BUFS, 4, false)]);
    guest.kicks[tx].write(1).unwrap();
    run_until(&mut em, "the dropped output", || {
        guest.rings[tx].used_idx() == 1
    });

    let mut client = UnixStream::connect(&paths[0]).unwrap();
    run_until(&mut em, "the client", || {
        dev.lock().unwrap().has_client("org.kiln.test.0")
    });
    assert_eq!(guest.received(), [msg(1, PORT_OPEN, 1)]);

    mem.write_slice(b"to-host", GuestAddress(PORT_BUFS))
        .unwrap();
    guest.rings[tx].post(1, &[(PORT_BUFS, 7, false)]);
    guest.kicks[tx].write(1).unwrap();
    run_until(&mut em, "the guest's output", || {
        guest.rings[tx].used_idx() == 2
    });
    let mut got = [0u8; 7];
    client.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"to-host");

    // Input waits, in the client's socket, until a guest program opens the port
    // (Linux drops what arrives for a closed port)...
    guest.rings[rx].post(0, &[(PORT_BUFS + 0x100, 64, true)]);
    guest.kicks[rx].write(1).unwrap();
    client.write_all(b"to-guest").unwrap();
    run_until(&mut em, "the client's input to be held", || {
        dev.lock().unwrap().ports[0].input_paused
    });
    em.run_with_timeout(50).unwrap();
    assert_eq!(dev.lock().unwrap().ports[0].pending.len(), 0);
    assert_eq!(guest.rings[rx].used_idx(), 0);
    // ...and then reaches it.
    guest.send_control(1, PORT_OPEN, 1);
    run_until(&mut em, "the guest's input", || {
        guest.rings[rx].used_idx() == 1
    });
    assert_eq!(guest.rings[rx].used_entry(0), (0, 8));
    let mut got = [0u8; 8];
    mem.read_slice(&mut got, GuestAddress(PORT_BUFS + 0x100))
        .unwrap();
    assert_eq!(&got, b"to-guest");
    assert!(dev.lock().unwrap().guest_has_open("org.kiln.test.0"));

    // Input that came while the port was open but the guest had no buffer waits
    // through a close, and goes when a guest program opens the port again.
    client.write_all(b"kept").unwrap();
    run_until(&mut em, "the input to wait", || {
        dev.lock().unwrap().ports[0].pending.len() == 4
    });
    guest.send_control(1, PORT_OPEN, 0);
    guest.rings[rx].post(1, &[(PORT_BUFS + 0x200, 64, true)]);
    guest.kicks[rx].write(1).unwrap();
    em.run_with_timeout(50).unwrap();
    assert_eq!(guest.rings[rx].used_idx(), 1, "delivered to a closed port");
    guest.send_control(1, PORT_OPEN, 1);
    run_until(&mut em, "the kept input", || {
        guest.rings[rx].used_idx() == 2
    });
    assert_eq!(guest.rings[rx].used_entry(1), (1, 4));

    // The client goes: the port is closed on the host side; the next one opens it.
    drop(client);
    run_until(&mut em, "the hang-up", || {
        !dev.lock().unwrap().has_client("org.kiln.test.0")
    });
    assert_eq!(guest.received(), [msg(1, PORT_OPEN, 0)]);
    let _next = UnixStream::connect(&paths[0]).unwrap();
    run_until(&mut em, "the next client", || {
        dev.lock().unwrap().has_client("org.kiln.test.0")
    });
    assert_eq!(guest.received(), [msg(1, PORT_OPEN, 1)]);
}

#[test]
fn a_connected_port_talks_to_its_listener_and_stays_closed_once_it_hangs_up() {
    let mem = test_mem();
    let dir = tempfile::tempdir().unwrap();
    let listener = UnixListener::bind(dir.path().join("agent.sock")).unwrap();
    let stream = UnixStream::connect(dir.path().join("agent.sock")).unwrap();
    let (mut peer, _) = listener.accept().unwrap();
    peer.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let port = PortSocket::Connected(stream);
    let mut dev = SerialPorts::new(vec![("org.kiln.c".into(), port)]).unwrap();
    assert!(dev.has_client("org.kiln.c"));
    let mut guest = Guest::attach(&mut dev, &mem);
    guest.send_control(0, DEVICE_READY, 1);
    guest.send_control(1, PORT_READY, 1);
    dev.process_control_tx();
    let got = guest.received();
    assert_eq!(got.len(), 3, "DEVICE_ADD, PORT_NAME and PORT_OPEN: {got:?}");
    assert_eq!(
        got[2],
        msg(1, PORT_OPEN, 1),
        "the host side is open from the start"
    );
    let dev = Arc::new(Mutex::new(dev));
    let mut em = EventManager::<Arc<Mutex<SerialPorts>>>::new().unwrap();
    em.add_subscriber(dev.clone());
    let (rx, tx) = (SerialPorts::rx_queue(0), SerialPorts::rx_queue(0) + 1);

    mem.write_slice(b"to-host", GuestAddress(PORT_BUFS))
        .unwrap();
    guest.rings[tx].post(0, &[(PORT_BUFS, 7, false)]);
    guest.kicks[tx].write(1).unwrap();
    run_until(&mut em, "the guest's output", || {
        guest.rings[tx].used_idx() == 1
    });
    let mut out = [0u8; 7];
    peer.read_exact(&mut out).unwrap();
    assert_eq!(&out, b"to-host");

    guest.send_control(1, PORT_OPEN, 1);
    guest.rings[rx].post(0, &[(PORT_BUFS + 0x100, 64, true)]);
    guest.kicks[rx].write(1).unwrap();
    peer.write_all(b"to-guest").unwrap();
    run_until(&mut em, "the peer's input", || {
        guest.rings[rx].used_idx() == 1
    });
    assert_eq!(guest.rings[rx].used_entry(0), (0, 8));

    // The peer goes: the port closes on the host side for good, and what the guest
    // writes then is dropped, not held.
    drop(peer);
    run_until(&mut em, "the hang-up", || {
        !dev.lock().unwrap().has_client("org.kiln.c")
    });
    assert_eq!(guest.received(), [msg(1, PORT_OPEN, 0)]);
    guest.rings[tx].post(1, &[(PORT_BUFS, 7, false)]);
    guest.kicks[tx].write(1).unwrap();
    run_until(&mut em, "the dropped output", || {
        guest.rings[tx].used_idx() == 2
    });
    let _late = UnixStream::connect(dir.path().join("agent.sock")).unwrap();
    em.run_with_timeout(100).unwrap();
    assert!(!dev.lock().unwrap().has_client("org.kiln.c"));
    assert_eq!(guest.received(), [], "reopened");
}

#[test]
fn a_port_whose_client_reads_nothing_holds_back_only_its_own_output() {
    use crate::virtio::console::backpressure_tests::{post_output, CHAINS};
    let mem = test_mem();
    let (_dir, paths, mut dev) = ports(&["org.kiln.slow", "org.kiln.fast"]);
    let mut guest = Guest::attach(&mut dev, &mem);
    guest.send_control(0, DEVICE_READY, 1);
    guest.send_control(1, PORT_READY, 1);
    guest.send_control(2, PORT_READY, 1);
    dev.process_control_tx();
    let dev = Arc::new(Mutex::new(dev));
    let mut em = EventManager::<Arc<Mutex<SerialPorts>>>::new().unwrap();
    em.add_subscriber(dev.clone());
    let mut slow = UnixStream::connect(&paths[0]).unwrap();
    let mut fast = UnixStream::connect(&paths[1]).unwrap();
    run_until(&mut em, "the clients", || {
        let d = dev.lock().unwrap();
        d.has_client("org.kiln.slow") && d.has_client("org.kiln.fast")
    });
    let (slow_tx, fast_tx) = (SerialPorts::rx_queue(0) + 1, SerialPorts::rx_queue(1) + 1);

    // 1 MiB for a client that is not reading: the socket fills and the port waits.
    let out = DATA + 0x10_0000;
    let pattern = post_output(&mem, &mut guest.rings[slow_tx], out);
    guest.kicks[slow_tx].write(1).unwrap();
    run_until(&mut em, "the slow socket to fill", || {
        dev.lock().unwrap().ports[0].writer.is_blocked()
    });
    // The other port, and the event loop, go on.
    mem.write_slice(b"fast", GuestAddress(PORT_BUFS)).unwrap();
    guest.rings[fast_tx].post(0, &[(PORT_BUFS, 4, false)]);
    guest.kicks[fast_tx].write(1).unwrap();
    run_until(&mut em, "the other port", || {
        guest.rings[fast_tx].used_idx() == 1
    });
    fast.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut got = [0u8; 4];
    fast.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"fast");
    assert!(guest.rings[slow_tx].used_idx() < CHAINS);
    // A port waits for its client as long as it takes, unless told otherwise.
    let in_an_hour = Instant::now() + Duration::from_secs(3600);
    let mut d = dev.lock().unwrap();
    assert!(d.ports[0].writer.give_up_if_stalled(in_an_hour).is_none());
    drop(d);

    // The slow client reads: all of it arrives, in order.
    let want = pattern.len();
    slow.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let reader = std::thread::spawn(move || {
        let mut got = vec![0u8; want];
        slow.read_exact(&mut got).map(|()| (slow, got))
    });
    run_until(&mut em, "the slow port's output", || {
        guest.rings[slow_tx].used_idx() == CHAINS
    });
    let (slow, got) = reader.join().unwrap().unwrap();
    assert!(got == pattern, "output lost, reordered or corrupted");

    // Then it stops reading for good: with a stall limit set (by default a port
    // waits), past it the client is dropped, the guest's buffers come back and the
    // driver hears the port closed on the host.
    dev.lock()
        .unwrap()
        .set_stall_limit(Some(Duration::from_millis(300)));
    guest.received();
    post_output(&mem, &mut guest.rings[slow_tx], out);
    guest.kicks[slow_tx].write(1).unwrap();
    run_until(&mut em, "the stuck client to go", || {
        !dev.lock().unwrap().has_client("org.kiln.slow")
    });
    run_until(&mut em, "the buffers", || {
        guest.rings[slow_tx].used_idx() == 2 * CHAINS
    });
    assert_eq!(guest.received(), [msg(1, PORT_OPEN, 0)]);
    assert!(dev.lock().unwrap().has_client("org.kiln.fast"));
    drop(slow);
}

//! Ports that connect again (`reconnect-ms`): a listener that comes late, goes and
//! comes back, and one that does not accept.

use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use event_manager::{EventManager, SubscriberOps};
use socket2::{Domain, SockAddr, Socket, Type};
use vm_memory::{Bytes, GuestAddress};

use super::control::*;
use super::tests::{msg, Guest, PORT_BUFS};
use super::*;
use crate::virtio::test_utils::*;

const NAME: &str = "org.kiln.agent";
const EVERY: Duration = Duration::from_millis(50);

fn reconnecting(path: &Path) -> SerialPorts {
    let port = PortSocket::Reconnecting {
        path: path.to_owned(),
        every: EVERY,
        first: None,
    };
    SerialPorts::new(vec![(NAME.into(), port)]).unwrap()
}

fn event_loop(dev: &Arc<Mutex<SerialPorts>>) -> EventManager<Arc<Mutex<SerialPorts>>> {
    let mut em = EventManager::new().unwrap();
    em.add_subscriber(dev.clone());
    em
}

#[test]
fn a_reconnecting_port_finds_its_listener_whenever_it_comes_back() {
    let mem = test_mem();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("agent.sock");
    let mut dev = reconnecting(&path);
    let mut guest = Guest::attach(&mut dev, &mem);
    guest.send_control(0, DEVICE_READY, 1);
    guest.send_control(1, PORT_READY, 1);
    guest.send_control(1, PORT_OPEN, 1); // a guest program opens the port
    dev.process_control_tx();
    let got = guest.received();
    assert_eq!(
        got.len(),
        2,
        "DEVICE_ADD and PORT_NAME, no PORT_OPEN: {got:?}"
    );
    let dev = Arc::new(Mutex::new(dev));
    let mut em = event_loop(&dev);
    let has_client = || dev.lock().unwrap().has_client(NAME);
    // Nobody listens yet: the tries fail quietly and the port stays closed.
    let start = Instant::now();
    while start.elapsed() < 4 * EVERY {
        em.run_with_timeout(20).unwrap();
    }
    assert!(!has_client());
    assert_eq!(guest.received(), []);

    let (rx, tx) = (SerialPorts::rx_queue(0), SerialPorts::rx_queue(0) + 1);
    for round in 0..2u16 {
        let listener = UnixListener::bind(&path).unwrap();
        run_until(&mut em, "the connection", has_client);
        assert_eq!(guest.received(), [msg(1, PORT_OPEN, 1)], "round {round}");
        let (mut peer, _) = listener.accept().unwrap();
        peer.set_read_timeout(Some(Duration::from_secs(5))).unwrap();

        let out = PORT_BUFS + 0x100 * u64::from(round);
        mem.write_slice(format!("out-{round}").as_bytes(), GuestAddress(out))
            .unwrap();
        guest.rings[tx].post(round, &[(out, 5, false)]);
        guest.kicks[tx].write(1).unwrap();
        let mut got = [0u8; 5];
        run_until(&mut em, "the guest's output", || {
            guest.rings[tx].used_idx() == round + 1
        });
        peer.read_exact(&mut got).unwrap();
        assert_eq!(got, *format!("out-{round}").as_bytes());

        let into = PORT_BUFS + 0x1000 + 0x100 * u64::from(round);
        guest.rings[rx].post(round, &[(into, 64, true)]);
        guest.kicks[rx].write(1).unwrap();
        peer.write_all(format!("in-{round}").as_bytes()).unwrap();
        run_until(&mut em, "the agent's input", || {
            guest.rings[rx].used_idx() == round + 1
        });
        let mut got = [0u8; 4];
        mem.read_slice(&mut got, GuestAddress(into)).unwrap();
        assert_eq!(got, *format!("in-{round}").as_bytes());

        // The agent stops (its socket file goes with it): the port closes until the
        // next one listens.
        drop((peer, listener));
        std::fs::remove_file(&path).unwrap();
        run_until(&mut em, "the hang-up", || !has_client());
        assert_eq!(guest.received(), [msg(1, PORT_OPEN, 0)], "round {round}");
    }
}

#[test]
fn a_listener_that_does_not_accept_holds_up_nothing() {
    // listen(0) with one connection waiting fills the backlog: a blocking connect(2)
    // would wait in the event loop until the listener accepts.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("busy.sock");
    let listener = Socket::new(Domain::UNIX, Type::STREAM, None).unwrap();
    listener.bind(&SockAddr::unix(&path).unwrap()).unwrap();
    listener.listen(0).unwrap();
    let _waiting = UnixStream::connect(&path).unwrap();
    let dev = Arc::new(Mutex::new(reconnecting(&path)));
    let mut em = event_loop(&dev);
    // A blocking connect would hang here: accept the waiting connection after a while
    // so that such a device fails the test instead of hanging it.
    let unblock = {
        let listener = listener.try_clone().unwrap();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(1500));
            listener.accept().unwrap()
        })
    };
    let start = Instant::now();
    while start.elapsed() < 6 * EVERY {
        let turn = Instant::now();
        em.run_with_timeout(20).unwrap();
        assert!(
            turn.elapsed() < Duration::from_secs(1),
            "the event loop waited {:?} in a connect",
            turn.elapsed()
        );
    }
    assert!(!dev.lock().unwrap().has_client(NAME));
    // Once the listener takes the waiting connection, there is room for the port's.
    let _first = unblock.join().unwrap();
    run_until(&mut em, "the connection", || {
        dev.lock().unwrap().has_client(NAME)
    });
}

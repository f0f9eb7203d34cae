//! A console that connects again (`server=off,reconnect-ms`): it starts without its
//! listener, finds it when it comes, and finds the next one after a hang-up.

use std::io::Write;
use std::os::unix::net::UnixListener;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use event_manager::{EventManager, SubscriberOps};
use vm_memory::{Bytes, GuestAddress};

use super::tests::{on_test_rings, read_client, GuestWriter};
use super::*;
use crate::virtio::test_utils::*;

const EVERY: Duration = Duration::from_millis(50);

#[test]
fn a_reconnecting_console_finds_its_listener_whenever_it_comes_back() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("log.sock");
    let mem = test_mem();
    let mut console = Console::reconnecting(path.clone(), EVERY, None).unwrap();
    let (mut rx, mut tx, _irq, kicks) = on_test_rings(&mut console, &mem, true);
    let console = Arc::new(Mutex::new(console));
    let mut em = EventManager::<Arc<Mutex<Console>>>::new().unwrap();
    em.add_subscriber(console.clone());
    let has_client = || console.lock().unwrap().has_client();
    let mut writer = GuestWriter::new(&mem, &kicks[TX]);

    // Nobody listens: the tries fail quietly, and the output is dropped meanwhile.
    let start = Instant::now();
    while start.elapsed() < 4 * EVERY {
        em.run_with_timeout(20).unwrap();
    }
    assert!(!has_client());
    writer.write(b"nobody-hears-this", &mut tx, &mut em);

    for round in 0..2u16 {
        let listener = UnixListener::bind(&path).unwrap();
        run_until(&mut em, "the connection", has_client);
        let (mut peer, _) = listener.accept().unwrap();
        let text = format!("out-{round}");
        writer.write(text.as_bytes(), &mut tx, &mut em);
        assert_eq!(read_client(&mut peer, 5), text.as_bytes(), "round {round}");
        peer.write_all(format!("in-{round}").as_bytes()).unwrap();
        let into = DATA + 0x20000 + 0x100 * u64::from(round);
        rx.post(round, &[(into, 64, true)]);
        kicks[RX].write(1).unwrap();
        run_until(&mut em, "the input", || rx.used_idx() == round + 1);
        let mut got = [0u8; 4];
        mem.read_slice(&mut got, GuestAddress(into)).unwrap();
        assert_eq!(got, *format!("in-{round}").as_bytes());

        // The listener goes, socket file and all: the console waits for the next.
        drop((peer, listener));
        std::fs::remove_file(&path).unwrap();
        run_until(&mut em, "the hang-up", || !has_client());
    }
}

#[test]
fn a_reconnecting_console_given_a_connection_uses_it_first() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("log.sock");
    let listener = UnixListener::bind(&path).unwrap();
    let first = connect_nonblocking(&path).unwrap();
    let (mut peer, _) = listener.accept().unwrap();
    let mem = test_mem();
    let mut console = Console::reconnecting(path, EVERY, Some(first)).unwrap();
    let (_rx, mut tx, _irq, kicks) = on_test_rings(&mut console, &mem, true);
    assert!(console.has_client());
    mem.write_slice(b"hello", GuestAddress(DATA)).unwrap();
    tx.post(0, &[(DATA, 5, false)]);
    kicks[TX].write(1).unwrap();
    let console = Arc::new(Mutex::new(console));
    let mut em = EventManager::<Arc<Mutex<Console>>>::new().unwrap();
    em.add_subscriber(console.clone());
    run_until(&mut em, "the output", || tx.used_idx() == 1);
    assert_eq!(read_client(&mut peer, 5), b"hello");
    // No second connection while the first lives.
    let start = Instant::now();
    while start.elapsed() < 4 * EVERY {
        em.run_with_timeout(20).unwrap();
    }
    listener.set_nonblocking(true).unwrap();
    assert!(listener.accept().is_err(), "connected twice");
}

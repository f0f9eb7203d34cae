//! Socket clients that read slowly or not at all: the guest's output waits for them
//! (past the stall limit the client goes), and the event loop never blocks on them.

use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use event_manager::{EventManager, SubscriberOps};
use vm_memory::{Bytes, GuestAddress};

use super::tests::on_test_rings;
use super::*;
use crate::virtio::test_utils::*;

/// The guest's output: CHAINS chains of two HALF-sized buffers at OUT, 1 MiB in all,
/// several times what a socket buffers.
pub(crate) const CHAINS: u16 = 8;
const HALF: u32 = 64 << 10;
pub(crate) const OUT: u64 = DATA + 0x10_0000;

type Loop = EventManager<Arc<Mutex<Console>>>;

/// Post the output chains on `tx`; returns the bytes they carry, in order.
pub(crate) fn post_output(mem: &GuestMemory, tx: &mut TestRing, out: u64) -> Vec<u8> {
    let total = usize::from(CHAINS) * 2 * HALF as usize;
    let pattern: Vec<u8> = (0..total).map(|i| (i * 13 % 251) as u8).collect();
    mem.write_slice(&pattern, GuestAddress(out)).unwrap();
    for n in 0..CHAINS {
        let at = out + u64::from(n) * 2 * u64::from(HALF);
        tx.post(
            2 * n,
            &[(at, HALF, false), (at + u64::from(HALF), HALF, false)],
        );
    }
    pattern
}

pub(crate) fn event_loop(console: Console) -> (Arc<Mutex<Console>>, Loop) {
    let console = Arc::new(Mutex::new(console));
    let mut em = Loop::new().unwrap();
    em.add_subscriber(console.clone());
    (console, em)
}

#[test]
fn a_full_socket_holds_the_output_while_the_loop_goes_on() {
    let mem = test_mem();
    let (mut host, guest_side) = UnixStream::pair().unwrap();
    let mut console = Console::connected(guest_side).unwrap();
    let (mut rx, mut tx, _irq, kicks) = on_test_rings(&mut console, &mem, true);
    let (console, mut em) = event_loop(console);
    let pattern = post_output(&mem, &mut tx, OUT);

    let start = Instant::now();
    kicks[TX].write(1).unwrap();
    run_until(&mut em, "the socket to fill", || {
        console.lock().unwrap().writer.is_blocked()
    });
    let returned_while_full = tx.used_idx();
    assert!(
        returned_while_full < CHAINS,
        "every chain taken by a full socket"
    );
    // The loop still serves the guest: its input goes in while its output waits.
    host.write_all(b"ping").unwrap();
    rx.post(0, &[(DATA, 16, true)]);
    kicks[RX].write(1).unwrap();
    run_until(&mut em, "the input", || rx.used_idx() == 1);
    assert!(
        start.elapsed() < Duration::from_secs(3),
        "the event loop waited for the socket ({:?})",
        start.elapsed()
    );
    assert_eq!(
        tx.used_idx(),
        returned_while_full,
        "a chain returned unwritten"
    );

    // The client reads: every byte arrives, in order, and every chain comes back.
    let want = pattern.len();
    host.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let reader = std::thread::spawn(move || {
        let mut got = vec![0u8; want];
        host.read_exact(&mut got).map(|()| got)
    });
    run_until(&mut em, "the rest of the output", || {
        tx.used_idx() == CHAINS
    });
    let got = reader.join().unwrap().unwrap();
    assert!(got == pattern, "output lost, reordered or corrupted");
    assert!(!console.lock().unwrap().writer.is_blocked());
    assert_goes_quiet(&mut em);
}

/// The loop stops waking: nothing is left watched that is always ready (a writable
/// socket), and the stall timer is off.
fn assert_goes_quiet(em: &mut Loop) {
    let quiet = (0..50).any(|_| em.run_with_timeout(20).unwrap() == 0);
    assert!(quiet, "the event loop keeps waking");
    for _ in 0..3 {
        assert_eq!(em.run_with_timeout(20).unwrap(), 0, "the loop woke again");
    }
    // Longer than the tests' stall timer periods.
    assert_eq!(
        em.run_with_timeout(600).unwrap(),
        0,
        "the stall timer ticks on"
    );
}

#[test]
fn a_slow_reader_that_keeps_taking_is_kept() {
    const LIMIT: Duration = Duration::from_millis(500);
    let mem = test_mem();
    let (mut host, guest_side) = UnixStream::pair().unwrap();
    let mut console = Console::connected(guest_side).unwrap();
    console.set_stall_limit(LIMIT);
    let (_rx, mut tx, _irq, kicks) = on_test_rings(&mut console, &mem, true);
    let (_console, mut em) = event_loop(console);
    let pattern = post_output(&mem, &mut tx, OUT);
    // 32 KiB every 100 ms: 1 MiB takes over 3 s, six times the stall limit.
    let want = pattern.len();
    host.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let reader = std::thread::spawn(move || {
        let mut got = vec![0u8; want];
        for piece in got.chunks_mut(32 << 10) {
            std::thread::sleep(Duration::from_millis(100));
            host.read_exact(piece)?;
        }
        Ok::<_, std::io::Error>(got)
    });
    kicks[TX].write(1).unwrap();
    run_until(&mut em, "the output", || reader.is_finished());
    let got = reader.join().unwrap().expect("the reader was cut off");
    assert!(got == pattern, "output lost, reordered or corrupted");
    assert_eq!(tx.used_idx(), CHAINS);
}

#[test]
fn a_client_that_hangs_up_while_the_output_waits_gives_the_buffers_back_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("console.sock");
    let mem = test_mem();
    let mut console = Console::listening(UnixListener::bind(&path).unwrap()).unwrap();
    console.set_stall_limit(Duration::from_secs(3600));
    let (_rx, mut tx, _irq, kicks) = on_test_rings(&mut console, &mem, true);
    let (console, mut em) = event_loop(console);
    let client = UnixStream::connect(&path).unwrap();
    run_until(&mut em, "the client", || {
        console.lock().unwrap().has_client()
    });
    post_output(&mem, &mut tx, OUT);
    kicks[TX].write(1).unwrap();
    run_until(&mut em, "the socket to fill", || {
        console.lock().unwrap().writer.is_blocked()
    });
    // It says it is done (EOF) but is still there, not reading: the console drops it
    // without a write failing, and must give the held chain back itself.
    client.shutdown(std::net::Shutdown::Write).unwrap();
    run_until(&mut em, "the buffers", || tx.used_idx() == CHAINS);
    assert!(!console.lock().unwrap().has_client());
    assert_goes_quiet(&mut em);
}

#[test]
fn a_client_that_takes_nothing_is_dropped_and_the_guest_gets_its_buffers_back() {
    const LIMIT: Duration = Duration::from_millis(800);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("console.sock");
    let mem = test_mem();
    let mut console = Console::listening(UnixListener::bind(&path).unwrap()).unwrap();
    console.set_stall_limit(LIMIT);
    let (_rx, mut tx, _irq, kicks) = on_test_rings(&mut console, &mem, true);
    let (console, mut em) = event_loop(console);
    let mut stuck = UnixStream::connect(&path).unwrap();
    run_until(&mut em, "the client", || {
        console.lock().unwrap().has_client()
    });

    let pattern = post_output(&mem, &mut tx, OUT);
    kicks[TX].write(1).unwrap();
    run_until(&mut em, "the socket to fill", || {
        console.lock().unwrap().writer.is_blocked()
    });
    let full_at = Instant::now();
    run_until(&mut em, "the stuck client to go", || {
        !console.lock().unwrap().has_client()
    });
    // (The stall began a little before `full_at`, so this is a lower bound.)
    assert!(
        full_at.elapsed() >= LIMIT / 2,
        "dropped after {:?}, before the stall limit",
        full_at.elapsed()
    );
    assert_eq!(
        tx.used_idx(),
        CHAINS,
        "the guest's buffers were not returned"
    );
    assert_goes_quiet(&mut em);
    // The stuck client finds what it was sent, a prefix of the output, then EOF.
    stuck
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut got = Vec::new();
    stuck.read_to_end(&mut got).unwrap();
    assert!(!got.is_empty() && got.len() < pattern.len());
    assert!(
        pattern.starts_with(&got),
        "the client got bytes out of order"
    );

    // The next client is served.
    let mut next = UnixStream::connect(&path).unwrap();
    run_until(&mut em, "the next client", || {
        console.lock().unwrap().has_client()
    });
    mem.write_slice(b"to-next", GuestAddress(OUT)).unwrap();
    tx.post(0, &[(OUT, 7, false)]);
    kicks[TX].write(1).unwrap();
    run_until(&mut em, "the output", || tx.used_idx() == CHAINS + 1);
    next.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut got = [0u8; 7];
    next.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"to-next");
}

#[test]
fn a_connected_socket_that_takes_nothing_has_the_output_dropped_after_the_limit() {
    let mem = test_mem();
    let (_host, guest_side) = UnixStream::pair().unwrap();
    let mut console = Console::connected(guest_side).unwrap();
    console.set_stall_limit(Duration::from_millis(300));
    let (_rx, mut tx, _irq, kicks) = on_test_rings(&mut console, &mem, true);
    let (console, mut em) = event_loop(console);
    post_output(&mem, &mut tx, OUT);
    kicks[TX].write(1).unwrap();
    run_until(&mut em, "the socket to fill", || {
        console.lock().unwrap().writer.is_blocked()
    });
    // Nobody to hand over to (no listening socket): the console gives up on the
    // socket, returns the held chain and drops the guest's output from then on.
    run_until(&mut em, "the buffers", || tx.used_idx() == CHAINS);
    mem.write_slice(b"later", GuestAddress(OUT)).unwrap();
    tx.post(0, &[(OUT, 5, false)]);
    kicks[TX].write(1).unwrap();
    run_until(&mut em, "later output", || tx.used_idx() == CHAINS + 1);
    assert_goes_quiet(&mut em);
}

#[test]
fn the_console_gives_a_stuck_client_five_seconds() {
    let mem = test_mem();
    let (_host, guest_side) = UnixStream::pair().unwrap();
    let mut console = Console::connected(guest_side).unwrap();
    let (_rx, mut tx, _irq, _kicks) = on_test_rings(&mut console, &mem, true);
    post_output(&mem, &mut tx, OUT);
    console.process_tx();
    assert!(console.writer.is_blocked());
    let later = |secs| Instant::now() + Duration::from_secs(secs);
    assert!(console.writer.give_up_if_stalled(later(4)).is_none());
    let Some(Stalled::GaveUp(err)) = console.writer.give_up_if_stalled(later(6)) else {
        panic!("a socket client is not skipped but given up");
    };
    assert_eq!(err.kind(), std::io::ErrorKind::TimedOut);
    assert!(!console.writer.is_blocked());
}

#[test]
fn a_blocking_output_that_would_block_fails_instead_of_holding_the_guest() {
    struct WouldBlock;
    impl Write for WouldBlock {
        fn write(&mut self, _: &[u8]) -> std::io::Result<usize> {
            Err(std::io::ErrorKind::WouldBlock.into())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mem = test_mem();
    let mut console = Console::new(Box::new(WouldBlock), None).unwrap();
    let (_rx, mut tx, _irq, _kicks) = on_test_rings(&mut console, &mem, true);
    post_output(&mem, &mut tx, OUT);
    console.process_tx();
    assert!(!console.writer.is_blocked(), "no readiness to wait for");
    assert_eq!(tx.used_idx(), CHAINS);
}

#[test]
fn a_chain_resumes_at_the_exact_byte_across_buffers_after_short_and_refused_writes() {
    let mem = test_mem();
    let mut ring = TestRing::new(&mem, 0, 16);
    let pattern: Vec<u8> = (0..8000u32).map(|i| (i * 7 % 253) as u8).collect();
    mem.write_slice(&pattern[..5000], GuestAddress(OUT))
        .unwrap();
    mem.write_slice(&pattern[5000..], GuestAddress(OUT + 0x2000))
        .unwrap();
    // Three buffers; the middle one runs past guest memory and is skipped.
    ring.post(
        0,
        &[
            (OUT, 5000, false),
            (MEM_SIZE - 4, 10, false),
            (OUT + 0x2000, 3000, false),
        ],
    );
    let mut queue = ring.queue();
    let chain = queue.pop_descriptor_chain(&mem).unwrap();
    let mut pending = PendingChain::new(chain);
    // Takes at most 777 bytes a call, and refuses every third call.
    let (mut got, mut calls, mut refusals) = (Vec::new(), 0, 0);
    loop {
        let result = pending.write_with(&mem, |b| {
            calls += 1;
            if calls % 3 == 0 {
                return Err(std::io::ErrorKind::WouldBlock.into());
            }
            let n = b.len().min(777);
            got.extend_from_slice(&b[..n]);
            Ok(n)
        });
        match result {
            Ok(()) => break,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => refusals += 1,
            Err(e) => panic!("{e}"),
        }
        assert!(refusals < 100, "no progress");
    }
    assert!(refusals > 3);
    assert!(got == pattern, "bytes lost, repeated or reordered");
}

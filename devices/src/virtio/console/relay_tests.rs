//! A console on a blocking output (stdout, a file) through its relay thread: an output
//! that stops taking data holds the guest, not the event loop; past the stall limit it
//! is skipped until it takes data again; dropping the console writes out the rest.

use std::io::{PipeReader, Read, Write};
use std::sync::mpsc::{channel, Sender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use vm_memory::{Bytes, GuestAddress};

use super::backpressure_tests::{event_loop, post_output, CHAINS, OUT};
use super::tests::on_test_rings;
use super::*;
use crate::virtio::test_utils::*;

/// A console writing to a pipe that nobody reads yet, as stdout piped to a pager.
fn on_a_pipe() -> (Console, PipeReader) {
    let (reader, writer) = std::io::pipe().unwrap();
    (Console::relayed(Box::new(writer), None).unwrap(), reader)
}

/// Read `reader` in a thread, once told to or after `patience` (so that an event loop
/// wrongly blocked on the pipe shows as a failure, not a hang), until `want` bytes or
/// EOF.
fn reader_thread(
    mut reader: PipeReader,
    want: usize,
    patience: Duration,
) -> (Sender<()>, JoinHandle<std::io::Result<Vec<u8>>>) {
    let (go, gate) = channel::<()>();
    let thread = std::thread::spawn(move || {
        let _ = gate.recv_timeout(patience);
        let mut got = Vec::new();
        let mut buf = vec![0u8; 64 << 10];
        while got.len() < want {
            match reader.read(&mut buf)? {
                0 => break,
                n => got.extend_from_slice(&buf[..n]),
            }
        }
        Ok(got)
    });
    (go, thread)
}

#[test]
fn an_output_that_takes_nothing_holds_the_guest_not_the_event_loop() {
    let mem = test_mem();
    let (mut console, reader) = on_a_pipe();
    console.set_stall_limit(Duration::from_secs(3600));
    let (_rx, mut tx, _irq, kicks) = on_test_rings(&mut console, &mem, true);
    let (console, mut em) = event_loop(console);
    let pattern = post_output(&mem, &mut tx, OUT);

    // Written directly, the first chain would block this thread in write(2) until the
    // pipe is read, which nobody does yet.
    let (go, reading) = reader_thread(reader, pattern.len(), Duration::from_secs(5));
    let start = Instant::now();
    kicks[TX].write(1).unwrap();
    run_until(&mut em, "the relay to fill", || {
        console.lock().unwrap().output_waiting()
    });
    assert!(
        start.elapsed() < Duration::from_secs(3),
        "the event loop waited for the output ({:?})",
        start.elapsed()
    );
    let returned_while_full = tx.used_idx();
    assert!(returned_while_full < CHAINS, "every chain taken");
    for _ in 0..5 {
        em.run_with_timeout(20).unwrap();
    }
    assert_eq!(
        tx.used_idx(),
        returned_while_full,
        "a chain returned unwritten"
    );

    // The output takes data again: all of it arrives, in order.
    go.send(()).unwrap();
    run_until(&mut em, "the rest of the output", || {
        tx.used_idx() == CHAINS
    });
    let got = reading.join().unwrap().unwrap();
    assert!(got == pattern, "output lost, reordered or corrupted");
    assert!(!console.lock().unwrap().output_waiting());
}

#[test]
fn an_output_stalled_past_the_limit_is_skipped_until_it_takes_data_again() {
    const LIMIT: Duration = Duration::from_millis(300);
    let mem = test_mem();
    let (mut console, reader) = on_a_pipe();
    console.set_stall_limit(LIMIT);
    let (_rx, mut tx, _irq, kicks) = on_test_rings(&mut console, &mem, true);
    let (console, mut em) = event_loop(console);
    let pattern = post_output(&mem, &mut tx, OUT);
    let (go, reading) = reader_thread(reader, usize::MAX, Duration::from_secs(20));

    kicks[TX].write(1).unwrap();
    run_until(&mut em, "the relay to fill", || {
        console.lock().unwrap().output_waiting()
    });
    let full_at = Instant::now();
    // Past the limit the guest gets every buffer back, written or not.
    run_until(&mut em, "the buffers back", || tx.used_idx() == CHAINS);
    assert!(
        full_at.elapsed() >= LIMIT / 2,
        "skipped after {:?}, before the stall limit",
        full_at.elapsed()
    );
    assert!(!console.lock().unwrap().output_waiting());

    // While skipped, what the guest writes is dropped at once, not held.
    let dropped = b"dropped while the output takes nothing";
    mem.write_slice(dropped, GuestAddress(DATA)).unwrap();
    tx.post(0, &[(DATA, dropped.len() as u32, false)]);
    kicks[TX].write(1).unwrap();
    run_until(&mut em, "the skipped chain back", || {
        tx.used_idx() == CHAINS + 1
    });

    // The reader comes back: it gets what the relay held, then the guest's next
    // output; nothing of the output is written twice or out of order.
    let marker = b"<after the stall>";
    go.send(()).unwrap();
    let mut posted = false;
    let deadline = Instant::now() + Duration::from_secs(10);
    // The relay may still hold a full socket of the old output, which takes a few
    // writes to drain: post the marker until one is taken whole.
    while !posted {
        assert!(Instant::now() < deadline, "the output never resumed");
        mem.write_slice(marker, GuestAddress(DATA + 0x1000))
            .unwrap();
        tx.post(1, &[(DATA + 0x1000, marker.len() as u32, false)]);
        kicks[TX].write(1).unwrap();
        let before = tx.used_idx();
        run_until(&mut em, "the marker chain back", || tx.used_idx() > before);
        posted = !console.lock().unwrap().writer.skipping();
    }
    drop(em);
    drop(console); // ends the relay, so the reader sees EOF
    let got = reading.join().unwrap().unwrap();
    let at = find(&got, marker).expect("the output after the stall is missing");
    assert!(
        at > 0 && at < pattern.len(),
        "nothing, or everything, was skipped"
    );
    assert!(
        got[..at] == pattern[..at],
        "the output before the stall is not a prefix of the guest's"
    );
    assert!(find(&got, dropped).is_none(), "skipped output was written");
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Appends to a shared buffer, a little slowly, as a terminal does.
struct SlowSink(Arc<Mutex<Vec<u8>>>);

impl Write for SlowSink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        std::thread::sleep(Duration::from_millis(2));
        let n = buf.len().min(4096);
        self.0.lock().unwrap().extend_from_slice(&buf[..n]);
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[test]
fn dropping_the_console_writes_out_what_the_relay_holds() {
    let mem = test_mem();
    let written = Arc::new(Mutex::new(Vec::new()));
    let mut console = Console::relayed(Box::new(SlowSink(written.clone())), None).unwrap();
    let (_rx, mut tx, _irq, kicks) = on_test_rings(&mut console, &mem, true);
    let (console, mut em) = event_loop(console);
    let pattern = post_output(&mem, &mut tx, OUT);
    kicks[TX].write(1).unwrap();
    run_until(&mut em, "every chain taken", || tx.used_idx() == CHAINS);
    assert!(
        written.lock().unwrap().len() < pattern.len(),
        "the sink took everything before the drop: the test shows nothing"
    );
    drop(em);
    drop(console);
    assert!(
        *written.lock().unwrap() == pattern,
        "output lost at the drop"
    );
}

#[test]
fn an_output_that_fails_drops_the_guests_output_without_holding_it() {
    struct Broken;
    impl Write for Broken {
        fn write(&mut self, _: &[u8]) -> std::io::Result<usize> {
            Err(std::io::ErrorKind::BrokenPipe.into())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mem = test_mem();
    let mut console = Console::relayed(Box::new(Broken), None).unwrap();
    console.set_stall_limit(Duration::from_secs(3600));
    let (_rx, mut tx, _irq, kicks) = on_test_rings(&mut console, &mem, true);
    let (console, mut em) = event_loop(console);
    post_output(&mem, &mut tx, OUT);
    kicks[TX].write(1).unwrap();
    run_until(&mut em, "every buffer back", || tx.used_idx() == CHAINS);
    assert!(!console.lock().unwrap().output_waiting());
}

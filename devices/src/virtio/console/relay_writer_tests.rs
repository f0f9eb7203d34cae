//! [`RelayWriter`]: a UART's byte-at-a-time writes to an output nobody reads wait for
//! the stall limit once, then are dropped until the output takes data again.

use std::io::{Read, Write};
use std::sync::mpsc::channel;
use std::time::{Duration, Instant};

use super::*;

const LIMIT: Duration = Duration::from_millis(300);

/// Write `line` a byte at a time, as the guest writes a 16550's transmit register.
fn put(out: &mut RelayWriter, line: &str) {
    for b in line.bytes() {
        out.write_all(&[b]).unwrap();
        out.flush().unwrap();
    }
}

#[test]
fn a_stalled_output_holds_the_writer_for_the_limit_then_drops_until_it_takes_data() {
    let (mut reader, writer) = std::io::pipe().unwrap();
    let relay = Relay::start(Box::new(writer), "test").unwrap();
    let mut out = RelayWriter::new(relay, LIMIT, "test").unwrap();
    // The reader starts when told, or after 10 s so that a writer wrongly blocked on
    // the pipe fails the test rather than hanging it.
    let (go, gate) = channel::<()>();
    let reading = std::thread::spawn(move || {
        let _ = gate.recv_timeout(Duration::from_secs(10));
        let mut got = Vec::new();
        reader.read_to_end(&mut got).map(|_| got)
    });

    // Nobody reads: the pipe and the relay fill, the writer waits for the limit, once.
    let start = Instant::now();
    let mut a = 0;
    while out.skipping().is_none() {
        assert!(start.elapsed() < Duration::from_secs(5), "never skipped");
        put(&mut out, &format!("A-{a}\n"));
        a += 1;
    }
    let stalled = start.elapsed();
    assert!(
        stalled >= LIMIT,
        "dropped after {stalled:?}, before the limit"
    );
    // Skipping: writes return at once, and what they write is lost.
    let start = Instant::now();
    for b in 0..1000 {
        put(&mut out, &format!("B-{b}\n"));
    }
    assert!(
        start.elapsed() < LIMIT,
        "skipped writes waited {:?}",
        start.elapsed()
    );
    assert!(out.skipping().unwrap() >= 5890, "{:?}", out.skipping());

    // The reader comes back: writes go through again.
    go.send(()).unwrap();
    let start = Instant::now();
    while out.skipping().is_some() {
        assert!(start.elapsed() < Duration::from_secs(5), "never resumed");
        put(&mut out, "C\n");
        std::thread::sleep(Duration::from_millis(1));
    }
    put(&mut out, "D-end\n");
    drop(out); // waits for the relay to write out what it holds
    let got = String::from_utf8(reading.join().unwrap().unwrap()).unwrap();
    assert!(got.starts_with("A-0\nA-1\nA-2\n"), "{:?}", &got[..40]);
    assert!(got.ends_with("D-end\n"), "{:?}", &got[got.len() - 40..]);
    assert!(!got.contains('B'), "output written while skipping came out");
    let first_a_lost = (0..a).find(|i| !got.contains(&format!("A-{i}\n")));
    let kept = first_a_lost.unwrap_or(a);
    assert!(
        kept > 1000,
        "only {kept} lines reached the output before the drop"
    );
}

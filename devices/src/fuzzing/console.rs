//! virtio-console's transmit path: descriptor chains and guest memory the fuzzer
//! chooses, written to a socket client with a small buffer that reads at a pace the
//! fuzzer chooses too, so chains are held and resumed part way (console/output.rs).

use std::io::{ErrorKind, Read};
use std::os::unix::io::AsRawFd;
use std::os::unix::net::UnixStream;

use virtio_queue::{Queue, QueueT};

use super::{fuzz_memory, fuzzed_queue, NoInterrupt};
use crate::virtio::console::Console;
use crate::virtio::{ActivateContext, VirtioDevice};

/// Rounds of transmit processing while the client reads slowly.
const SLOW_ROUNDS: usize = 16;
/// Drained rounds checked per input. Indirect tables in fuzzed memory can describe
/// over 100 MiB of output, more than is worth moving through a small socket; every
/// round checked must make progress.
const DRAIN_ROUNDS: usize = 4096;

/// The input's first byte sets how much the client reads per round (0-255 times
/// 64 bytes); the rest is a queue as [`fuzzed_queue`] reads it, used as the transmit
/// queue. Checks that once the client has read everything the socket held, the
/// console either has nothing left to send or sends more: it never waits on a
/// drained socket.
pub fn console_tx(data: &[u8]) {
    let Some((&pace, rest)) = data.split_first() else {
        return;
    };
    let Some(mem) = fuzz_memory() else { return };
    let Some(tx) = fuzzed_queue(rest, &mem) else {
        return;
    };
    let (mut host, guest_side) = UnixStream::pair().expect("cannot make a socket pair");
    shrink_send_buffer(&guest_side);
    host.set_nonblocking(true)
        .expect("cannot make the client non-blocking");
    let mut console = Console::connected(guest_side).expect("cannot make a console");
    console.ack_features(console.device_features());
    let events = (0..2)
        .map(|_| vmm_sys_util::eventfd::EventFd::new(0))
        .collect::<std::io::Result<Vec<_>>>()
        .expect("cannot make eventfds");
    let ctx = ActivateContext {
        mem,
        queues: vec![Queue::new(256).expect("a queue"), tx],
        queue_events: events,
        interrupt: std::sync::Arc::new(NoInterrupt),
    };
    if console.activate(ctx).is_err() {
        return;
    }
    let per_round = usize::from(pace) * 64;
    for _ in 0..SLOW_ROUNDS {
        console.process_tx();
        read_up_to(&mut host, per_round);
    }
    for _ in 0..DRAIN_ROUNDS {
        console.process_tx();
        let waiting = console.output_waiting();
        let got = read_up_to(&mut host, usize::MAX);
        if !waiting {
            return;
        }
        // It waited, so the socket was full: reading it must have found something.
        assert!(got > 0, "the console waits on a socket with room");
    }
}

/// Read and drop up to `limit` bytes the client has; returns how many.
fn read_up_to(host: &mut UnixStream, limit: usize) -> usize {
    let mut buf = [0u8; 4096];
    let mut total = 0;
    while total < limit {
        let want = (limit - total).min(buf.len());
        match host.read(&mut buf[..want]) {
            Ok(0) => break,
            Ok(n) => total += n,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(_) => break, // WouldBlock: nothing more for now
        }
    }
    total
}

/// The smallest send buffer the kernel allows, so that a few KiB fill the socket.
fn shrink_send_buffer(stream: &UnixStream) {
    let size: libc::c_int = 1;
    // SAFETY: SO_SNDBUF on a socket this function borrows, from a local int that
    // outlives the call; a failure only leaves the default size.
    unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_SNDBUF,
            (&size as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
}

//! A blocking output (stdout, a file) written from a thread of its own.
//!
//! The event loop serves every device, so it must not block on one console whose
//! reader stopped (a pager waiting for a key, a CI log collector that stalls). The
//! loop writes to a socket pair without blocking, exactly as to a socket client (see
//! output.rs), and a relay thread copies from the pair to the output with blocking
//! writes. When the output stops taking data, the pair fills, the port holds the
//! guest's chain and the guest waits, while disks and network go on.
//!
//! After a write error the relay drops what it reads, so the guest's further output
//! is lost, as when the output was written directly. Dropping the [`Relay`] closes the loop's end and waits (at most
//! [`DRAIN_LIMIT`]) for the thread to write out what the pair still holds, so the
//! last lines a guest prints before it powers off reach the output.

use std::io::{ErrorKind, Read, Write};
use std::net::Shutdown;
use std::os::unix::net::UnixStream;
use std::sync::mpsc::{channel, Receiver};
use std::thread::JoinHandle;
use std::time::Duration;

use log::warn;

/// How long dropping a relay waits for its output to take what is left.
pub const DRAIN_LIMIT: Duration = Duration::from_secs(5);

/// The event loop's end of a relay thread.
pub struct Relay {
    stream: UnixStream,
    thread: Option<JoinHandle<()>>,
    finished: Receiver<()>,
    /// The device, for messages.
    what: &'static str,
}

impl Relay {
    /// Start a thread that writes what arrives on [`Relay::stream`] to `output`,
    /// flushing after each piece (a prompt without a newline shows at once). `what`
    /// names the device in messages.
    pub fn start(output: Box<dyn Write + Send>, what: &'static str) -> std::io::Result<Self> {
        let (stream, theirs) = UnixStream::pair()?;
        let (done, finished) = channel();
        let thread = std::thread::Builder::new()
            .name(format!("kiln-{what}-out"))
            .spawn(move || {
                copy_out(theirs, output, what);
                let _ = done.send(());
            })?;
        Ok(Relay {
            stream,
            thread: Some(thread),
            finished,
            what,
        })
    }

    /// The socket the port writes (made non-blocking by the port).
    pub fn stream(&self) -> &UnixStream {
        &self.stream
    }
}

fn copy_out(mut from: UnixStream, mut to: Box<dyn Write + Send>, what: &str) {
    let mut buf = vec![0u8; 64 * 1024];
    let mut failed = false;
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => {
                warn!("{what}: cannot read the guest's output to relay it: {e}");
                break;
            }
        };
        if failed {
            continue;
        }
        if let Err(e) = to.write_all(&buf[..n]).and_then(|()| to.flush()) {
            // Keep reading, so the guest is not held, and drop what comes. (Closing
            // our end instead would make the port's writes raise SIGPIPE, which kills
            // the subcommands that leave it at its default.)
            warn!("{what}: cannot write the guest's output ({e}); dropping the rest");
            failed = true;
        }
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        let _ = self.stream.shutdown(Shutdown::Write);
        let Some(thread) = self.thread.take() else {
            return;
        };
        match self.finished.recv_timeout(DRAIN_LIMIT) {
            Ok(()) | Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                if thread.join().is_err() {
                    warn!("{}: the output thread panicked", self.what);
                }
            }
            // The output takes nothing: leave the thread; the process is ending or
            // the device going, and the output gets what it takes.
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => warn!(
                "{}: the output took nothing for {DRAIN_LIMIT:?}; \
                 the rest of the guest's console output is lost",
                self.what
            ),
        }
    }
}

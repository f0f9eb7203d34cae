//! The terminal on stdin as the virtio console's input (`--console virtio` on stdout
//! while the serial console is not on the terminal), minus the escape commands, as on
//! an interactive serial console: Ctrl-A x quits, Ctrl-A h prints the help.

use std::io::{ErrorKind, Read};
use std::os::unix::io::{AsRawFd, RawFd};
use std::sync::Arc;

use kiln_devices::virtio::console::ConsoleInput;

use crate::console_escape::EscapeFilter;
use crate::control::VmControl;

/// Reads `inner` (stdin) and yields what is meant for the guest.
pub struct EscapedInput<R> {
    inner: R,
    escape: EscapeFilter,
    control: Arc<VmControl>,
    /// Bytes for the guest that did not fit the caller's buffer: an unknown command
    /// whose Ctrl-A came in an earlier read gives back two bytes for one.
    carry: Vec<u8>,
}

impl<R> EscapedInput<R> {
    pub fn new(inner: R, control: Arc<VmControl>) -> Self {
        EscapedInput {
            inner,
            escape: EscapeFilter::default(),
            control,
            carry: Vec::new(),
        }
    }
}

impl<R: Read> Read for EscapedInput<R> {
    /// Input that held only escape commands reads as `WouldBlock` (nothing for the
    /// guest yet), not as 0, which would mean the end of the input.
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.carry.is_empty() {
            let mut raw = vec![0u8; buf.len()];
            let n = self.inner.read(&mut raw)?;
            if n == 0 {
                return Ok(0);
            }
            self.escape
                .feed_and_act(&raw[..n], &mut self.carry, &self.control);
            if self.carry.is_empty() {
                return Err(ErrorKind::WouldBlock.into());
            }
        }
        let n = self.carry.len().min(buf.len());
        buf[..n].copy_from_slice(&self.carry[..n]);
        self.carry.drain(..n);
        Ok(n)
    }
}

impl<R: Read + AsRawFd + Send> ConsoleInput for EscapedInput<R> {
    fn holds_input(&self) -> bool {
        !self.carry.is_empty()
    }
}

impl<R: AsRawFd> AsRawFd for EscapedInput<R> {
    fn as_raw_fd(&self) -> RawFd {
        self.inner.as_raw_fd()
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::time::Instant;

    use super::*;
    use crate::control::Outcome;

    fn input() -> (
        EscapedInput<std::io::PipeReader>,
        std::io::PipeWriter,
        Arc<VmControl>,
    ) {
        let (reader, writer) = std::io::pipe().unwrap();
        let control = Arc::new(VmControl::new(Instant::now()).unwrap());
        (EscapedInput::new(reader, control.clone()), writer, control)
    }

    fn read_some(input: &mut impl Read, room: usize) -> std::io::Result<Vec<u8>> {
        let mut buf = vec![0u8; room];
        let n = input.read(&mut buf)?;
        Ok(buf[..n].to_vec())
    }

    #[test]
    fn keys_reach_the_guest_and_ctrl_a_x_quits() {
        let (mut input, mut keys, control) = input();
        keys.write_all(b"ls\x03\r").unwrap();
        assert_eq!(read_some(&mut input, 64).unwrap(), b"ls\x03\r");
        // Only a command: nothing for the guest, and not the end of the input.
        keys.write_all(b"\x01h").unwrap();
        let err = read_some(&mut input, 64).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::WouldBlock);
        assert!(control.take().is_none());
        keys.write_all(b"\x01\x01\x01x").unwrap();
        assert_eq!(read_some(&mut input, 64).unwrap(), b"\x01");
        assert!(matches!(control.take(), Some(Outcome::ConsoleQuit)));
        drop(keys);
        assert_eq!(read_some(&mut input, 64).unwrap(), b"", "EOF is the end");
    }

    #[test]
    fn what_does_not_fit_the_buffer_comes_with_the_next_read() {
        let (mut input, mut keys, _control) = input();
        keys.write_all(b"\x01").unwrap();
        assert!(read_some(&mut input, 1).is_err());
        // "q" is no command: Ctrl-A and q both go on, one byte at a time here.
        keys.write_all(b"q").unwrap();
        assert_eq!(read_some(&mut input, 1).unwrap(), b"\x01");
        // Held, not in the pipe: the console must read again without waiting for it.
        assert!(input.holds_input());
        assert_eq!(read_some(&mut input, 1).unwrap(), b"q");
        assert!(!input.holds_input());
    }
}

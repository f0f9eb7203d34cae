//! The console escape key on an interactive serial console, as QEMU's `-nographic`:
//! in raw mode Ctrl-C goes to the guest, so the user needs another way out.
//! Ctrl-A x quits, Ctrl-A h prints the help, Ctrl-A Ctrl-A sends one Ctrl-A.

use crate::control::{Outcome, VmControl};

/// Ctrl-A.
pub const ESCAPE: u8 = 0x01;

pub const HELP: &str = "kiln console: Ctrl-A x  quit kiln (the guest does not shut down)\r\n\
                        kiln console: Ctrl-A h  this help\r\n\
                        kiln console: Ctrl-A Ctrl-A  send Ctrl-A to the guest\r\n";

#[derive(Debug, PartialEq, Eq)]
pub enum EscapeAction {
    Quit,
    Help,
}

/// Splits terminal input into bytes for the guest and escape commands. The state
/// carries over between reads, so Ctrl-A and its command may arrive apart.
#[derive(Default)]
pub struct EscapeFilter {
    pending_escape: bool,
}

impl EscapeFilter {
    /// Appends the guest's bytes from `input` to `to_guest`; returns the first
    /// command met. Input after a Quit is dropped; after Help it goes on.
    pub fn feed(&mut self, input: &[u8], to_guest: &mut Vec<u8>) -> Option<EscapeAction> {
        let mut action = None;
        for &byte in input {
            if !self.pending_escape {
                if byte == ESCAPE {
                    self.pending_escape = true;
                } else {
                    to_guest.push(byte);
                }
                continue;
            }
            self.pending_escape = false;
            match byte {
                b'x' | b'X' => return Some(EscapeAction::Quit),
                b'h' | b'H' | b'?' => action = action.or(Some(EscapeAction::Help)),
                ESCAPE => to_guest.push(ESCAPE),
                // Not a command: pass both bytes on rather than lose the user's input.
                other => to_guest.extend_from_slice(&[ESCAPE, other]),
            }
        }
        action
    }

    /// [`EscapeFilter::feed`], carrying out the command met: Quit ends the VM (kiln
    /// exits with 130), Help prints the help on stderr.
    pub fn feed_and_act(&mut self, input: &[u8], to_guest: &mut Vec<u8>, control: &VmControl) {
        match self.feed(input, to_guest) {
            Some(EscapeAction::Quit) => control.finish(Outcome::ConsoleQuit),
            Some(EscapeAction::Help) => eprint!("{HELP}"),
            None => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feed(filter: &mut EscapeFilter, input: &[u8]) -> (Vec<u8>, Option<EscapeAction>) {
        let mut out = Vec::new();
        let action = filter.feed(input, &mut out);
        (out, action)
    }

    #[test]
    fn plain_input_and_ctrl_c_pass_through() {
        let mut f = EscapeFilter::default();
        assert_eq!(feed(&mut f, b"ls\x03\r"), (b"ls\x03\r".to_vec(), None));
    }

    #[test]
    fn ctrl_a_x_quits_even_split_across_reads() {
        let mut f = EscapeFilter::default();
        assert_eq!(feed(&mut f, b"ab\x01"), (b"ab".to_vec(), None));
        assert_eq!(feed(&mut f, b"xcd"), (vec![], Some(EscapeAction::Quit)));
    }

    #[test]
    fn double_ctrl_a_sends_one_and_unknown_commands_pass_on() {
        let mut f = EscapeFilter::default();
        assert_eq!(feed(&mut f, b"\x01\x01z"), (b"\x01z".to_vec(), None));
        assert_eq!(feed(&mut f, b"\x01q"), (b"\x01q".to_vec(), None));
        assert_eq!(
            feed(&mut f, b"\x01h1"),
            (b"1".to_vec(), Some(EscapeAction::Help))
        );
    }
}

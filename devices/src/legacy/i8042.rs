//! The part of the i8042 keyboard controller a VMM needs: the CPU reset line.
//! The device covers the command/status port (0x64) only; the data port is left
//! unclaimed, so drivers probing it see no controller.

use std::sync::Arc;

use super::{ExitRequest, GuestExit, ResetSource};
use crate::bus::BusDevice;

/// Command that pulses the CPU reset line.
const CMD_RESET_CPU: u8 = 0xfe;

pub struct I8042<E: ExitRequest> {
    events: Arc<E>,
}

impl<E: ExitRequest> I8042<E> {
    pub fn new(events: Arc<E>) -> Self {
        Self { events }
    }
}

impl<E: ExitRequest> BusDevice for I8042<E> {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        // Status: output buffer empty, input buffer empty, so a guest waiting for
        // the controller to accept a command never spins.
        data.fill(0);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset == 0 && data.first() == Some(&CMD_RESET_CPU) {
            self.events
                .request_exit(GuestExit::Reset(ResetSource::KeyboardController));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::legacy::test_util::Recorder;

    #[test]
    fn only_the_reset_command_resets() {
        let events = Arc::new(Recorder::default());
        let mut kbc = I8042::new(events.clone());
        kbc.write(0, &[0xad]);
        let mut status = [0xaa];
        kbc.read(0, &mut status);
        assert_eq!(status, [0]);
        assert!(events.taken().is_empty());
        kbc.write(0, &[CMD_RESET_CPU]);
        assert_eq!(
            events.taken(),
            vec![GuestExit::Reset(ResetSource::KeyboardController)]
        );
    }
}

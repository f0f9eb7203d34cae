//! A QEMU isa-debug-exit-like port: a guest write of value V asks the VMM to stop
//! with exit code (V << 1) | 1, so a tiny guest can report a result even where HLT
//! never reaches the VMM.

use std::sync::Arc;

use super::{ExitRequest, GuestExit};
use crate::bus::BusDevice;

/// The debug-exit port. One byte wide; wider writes use their low byte, like
/// QEMU's device with its default iosize of 1.
pub struct DebugExit<E: ExitRequest> {
    events: Arc<E>,
}

impl<E: ExitRequest> DebugExit<E> {
    pub fn new(events: Arc<E>) -> Self {
        Self { events }
    }
}

impl<E: ExitRequest> BusDevice for DebugExit<E> {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(0xff);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset == 0 {
            if let Some(&value) = data.first() {
                self.events.request_exit(GuestExit::DebugExit(value));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::legacy::test_util::Recorder;

    #[test]
    fn write_reports_the_value_and_read_does_not() {
        let events = Arc::new(Recorder::default());
        let mut port = DebugExit::new(events.clone());
        let mut buf = [0u8; 1];
        port.read(0, &mut buf);
        assert_eq!(buf, [0xff]);
        assert!(events.taken().is_empty());
        port.write(0, &[0x21]);
        port.write(0, &[0x05, 0x77, 0, 0]);
        assert_eq!(
            events.taken(),
            vec![GuestExit::DebugExit(0x21), GuestExit::DebugExit(0x05)]
        );
    }

    #[test]
    fn empty_and_offset_writes_are_ignored() {
        let events = Arc::new(Recorder::default());
        let mut port = DebugExit::new(events.clone());
        port.write(0, &[]);
        port.write(1, &[3]);
        assert!(events.taken().is_empty());
    }
}

//! The hardware-reduced ACPI registers kiln's FADT points at: SLEEP_CONTROL_REG,
//! SLEEP_STATUS_REG and RESET_REG, one byte each in a small I/O block.
//! (ACPI 6.5 sections 4.8.3.7 and 4.8.3.6.)

use std::sync::Arc;

use super::{ExitRequest, GuestExit, ResetSource};
use crate::bus::BusDevice;

/// Offsets of the registers inside the block.
pub const SLEEP_CONTROL_OFFSET: u64 = 0;
pub const SLEEP_STATUS_OFFSET: u64 = 1;
pub const RESET_OFFSET: u64 = 2;
/// The value the FADT tells the guest to write to RESET_REG.
pub const RESET_VALUE: u8 = 0x01;

/// SLP_EN (bit 5) and SLP_TYPx (bits 4:2) of the sleep control register.
const SLP_EN: u8 = 1 << 5;
const SLP_TYP_SHIFT: u8 = 2;
const SLP_TYP_MASK: u8 = 0b111;
/// The SLP_TYP value kiln's DSDT gives \_S5 (soft-off).
pub const S5_SLP_TYP: u8 = 5;

pub struct AcpiPm<E: ExitRequest> {
    events: Arc<E>,
}

impl<E: ExitRequest> AcpiPm<E> {
    pub fn new(events: Arc<E>) -> Self {
        Self { events }
    }
}

impl<E: ExitRequest> BusDevice for AcpiPm<E> {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        // Sleep status: WAK_STS never set (no sleep state returns); others read 0.
        data.fill(0);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let Some(&value) = data.first() else { return };
        match offset {
            SLEEP_CONTROL_OFFSET => {
                let slp_typ = (value >> SLP_TYP_SHIFT) & SLP_TYP_MASK;
                if value & SLP_EN != 0 && slp_typ == S5_SLP_TYP {
                    self.events.request_exit(GuestExit::PowerOff);
                } else if value & SLP_EN != 0 {
                    log::warn!("guest asked for unsupported sleep type {slp_typ}; ignored");
                }
            }
            RESET_OFFSET if value == RESET_VALUE => {
                self.events
                    .request_exit(GuestExit::Reset(ResetSource::AcpiResetRegister));
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::legacy::test_util::Recorder;

    fn slp(typ: u8, enable: bool) -> u8 {
        (typ << SLP_TYP_SHIFT) | if enable { SLP_EN } else { 0 }
    }

    #[test]
    fn s5_with_slp_en_powers_off() {
        let events = Arc::new(Recorder::default());
        let mut pm = AcpiPm::new(events.clone());
        pm.write(SLEEP_CONTROL_OFFSET, &[slp(S5_SLP_TYP, false)]);
        pm.write(SLEEP_CONTROL_OFFSET, &[slp(3, true)]);
        assert!(events.taken().is_empty());
        pm.write(SLEEP_CONTROL_OFFSET, &[slp(S5_SLP_TYP, true)]);
        assert_eq!(events.taken(), vec![GuestExit::PowerOff]);
    }

    #[test]
    fn reset_register_needs_the_reset_value() {
        let events = Arc::new(Recorder::default());
        let mut pm = AcpiPm::new(events.clone());
        pm.write(RESET_OFFSET, &[0x02]);
        pm.write(SLEEP_STATUS_OFFSET, &[RESET_VALUE]);
        assert!(events.taken().is_empty());
        pm.write(RESET_OFFSET, &[RESET_VALUE]);
        assert_eq!(
            events.taken(),
            vec![GuestExit::Reset(ResetSource::AcpiResetRegister)]
        );
    }
}

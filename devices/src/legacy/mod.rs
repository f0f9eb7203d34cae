//! Simple port-I/O devices of the PC platform that need no KVM: the debug-exit
//! port, the boot timer, the i8042 reset line and the ACPI sleep/reset registers.
//!
//! Like vm-superio's serial port, each model is generic over how it reports what the
//! guest asked for ([`ExitRequest`], [`BootTimerEvents`]), so the models know nothing
//! of the VMM and their unit tests use recording mocks.

mod acpi_pm;
mod boot_timer;
mod debug_exit;
mod i8042;

pub use acpi_pm::{
    AcpiPm, RESET_OFFSET, RESET_VALUE, S5_SLP_TYP, SLEEP_CONTROL_OFFSET, SLEEP_STATUS_OFFSET,
};
pub use boot_timer::{BootTimer, BootTimerEvents, BOOT_TIMER_MAGIC};
pub use debug_exit::DebugExit;
pub use i8042::I8042;

/// Why the guest asked the machine to stop or restart.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GuestExit {
    /// ACPI S5 (soft-off) through the sleep control register.
    PowerOff,
    /// A reset, with the hardware that carried it.
    Reset(ResetSource),
    /// A write of this value to the debug-exit port.
    DebugExit(u8),
}

/// The hardware path of a reset request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ResetSource {
    /// The ACPI FADT RESET_REG.
    AcpiResetRegister,
    /// The i8042 keyboard controller's CPU reset command (0xFE).
    KeyboardController,
    /// A triple fault (the CPU shut down).
    TripleFault,
}

impl std::fmt::Display for ResetSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ResetSource::AcpiResetRegister => "ACPI reset register",
            ResetSource::KeyboardController => "i8042 reset command",
            ResetSource::TripleFault => "triple fault",
        })
    }
}

/// Where the legacy devices send the guest's requests to stop the machine.
pub trait ExitRequest: Send + Sync {
    fn request_exit(&self, exit: GuestExit);
}

#[cfg(test)]
pub(crate) mod test_util {
    use super::*;
    use std::sync::Mutex;

    /// Records every request, in order.
    #[derive(Default)]
    pub struct Recorder(pub Mutex<Vec<GuestExit>>);

    impl ExitRequest for Recorder {
        fn request_exit(&self, exit: GuestExit) {
            self.0.lock().unwrap().push(exit);
        }
    }

    impl Recorder {
        pub fn taken(&self) -> Vec<GuestExit> {
            std::mem::take(&mut *self.0.lock().unwrap())
        }
    }
}

//! How any thread ends the VM: the first outcome recorded wins, and an eventfd
//! wakes the main loop.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use kiln_devices::legacy::{BootTimerEvents, ExitRequest, GuestExit};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

/// Why the VM stopped.
#[derive(Debug)]
pub enum Outcome {
    Guest(GuestExit),
    /// A vCPU met something kiln cannot handle.
    Error(String),
    /// The user typed the console's quit escape (Ctrl-A x).
    ConsoleQuit,
}

pub struct VmControl {
    outcome: Mutex<Option<Outcome>>,
    stopping: AtomicBool,
    pub wake: EventFd,
    process_start: std::time::Instant,
}

impl VmControl {
    pub fn new(process_start: std::time::Instant) -> std::io::Result<Self> {
        Ok(Self {
            outcome: Mutex::new(None),
            stopping: AtomicBool::new(false),
            wake: EventFd::new(EFD_NONBLOCK)?,
            process_start,
        })
    }

    /// Record `outcome` unless another one came first, and wake the main loop.
    pub fn finish(&self, outcome: Outcome) {
        let mut slot = self.outcome.lock().expect("outcome lock");
        if slot.is_none() {
            *slot = Some(outcome);
        }
        self.stopping.store(true, Ordering::SeqCst);
        // A full counter still wakes the reader; nothing else to do on error.
        let _ = self.wake.write(1);
    }

    pub fn is_stopping(&self) -> bool {
        self.stopping.load(Ordering::SeqCst)
    }

    pub fn take(&self) -> Option<Outcome> {
        self.outcome.lock().expect("outcome lock").take()
    }
}

impl ExitRequest for VmControl {
    fn request_exit(&self, exit: GuestExit) {
        self.finish(Outcome::Guest(exit));
    }
}

impl BootTimerEvents for VmControl {
    fn guest_booted(&self) {
        let ms = self.process_start.elapsed().as_secs_f64() * 1000.0;
        log::info!("boot-timer: guest booted {ms:.0} ms after kiln started");
        eprintln!("kiln: boot-timer: {ms:.0} ms");
    }
}

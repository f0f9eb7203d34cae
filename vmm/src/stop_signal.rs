//! SIGINT and SIGTERM end the VM cleanly instead of killing kiln, so devices are
//! dropped (passt stopped, images flushed and closed) and the terminal restored.
//!
//! The handler may only do async-signal-safe work: it records the signal and
//! writes the main loop's wake eventfd.

use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicI32, Ordering};

use vmm_sys_util::eventfd::EventFd;

/// The signal that asked kiln to stop; 0 while none did.
static STOP_SIGNAL: AtomicI32 = AtomicI32::new(0);
/// The main loop's wake eventfd while a VM runs; -1 otherwise.
static WAKE_FD: AtomicI32 = AtomicI32::new(-1);

extern "C" fn on_stop_signal(
    signum: libc::c_int,
    _info: *mut libc::siginfo_t,
    _context: *mut libc::c_void,
) {
    STOP_SIGNAL.store(signum, Ordering::SeqCst);
    let fd = WAKE_FD.load(Ordering::SeqCst);
    if fd >= 0 {
        let one: u64 = 1;
        // SAFETY: write(2) is async-signal-safe; `one` outlives the call, and `fd` is
        // the wake eventfd, which `WakeGuard` keeps registered only while it is open.
        unsafe { libc::write(fd, (&one as *const u64).cast(), 8) };
    }
}

/// Catch SIGINT/SIGTERM from now on. Called before any device starts, so a signal
/// during set-up is not fatal either: the main loop sees it on its first turn.
pub fn install() -> std::io::Result<()> {
    for signum in [libc::SIGINT, libc::SIGTERM] {
        vmm_sys_util::signal::register_signal_handler(signum, on_stop_signal)
            .map_err(|e| std::io::Error::from_raw_os_error(e.errno()))?;
    }
    Ok(())
}

/// The signal that asked kiln to stop, if one did.
pub fn requested() -> Option<i32> {
    match STOP_SIGNAL.load(Ordering::SeqCst) {
        0 => None,
        signum => Some(signum),
    }
}

/// Wake `wake` on a stop signal while the returned guard lives.
pub fn watch(wake: &EventFd) -> WakeGuard {
    WAKE_FD.store(wake.as_raw_fd(), Ordering::SeqCst);
    WakeGuard
}

pub struct WakeGuard;

impl Drop for WakeGuard {
    fn drop(&mut self) {
        // The eventfd closes after this; the handler must not write to a reused fd.
        WAKE_FD.store(-1, Ordering::SeqCst);
    }
}

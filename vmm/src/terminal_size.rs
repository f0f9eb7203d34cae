//! The host terminal's size for virtio-console's VIRTIO_CONSOLE_F_SIZE, kept current
//! on SIGWINCH.
//!
//! The handler may only do async-signal-safe work: it writes one process-wide eventfd,
//! which each console watches through its own duplicate. That eventfd is never closed,
//! so the handler never writes to a reused descriptor.

use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::OnceLock;

use kiln_devices::virtio::console::{ConsoleSize, SizeSource};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

/// The SIGWINCH eventfd's descriptor once the handler is installed; -1 before.
static WINCH_FD: AtomicI32 = AtomicI32::new(-1);

extern "C" fn on_winch(
    _signum: libc::c_int,
    _info: *mut libc::siginfo_t,
    _context: *mut libc::c_void,
) {
    let fd = WINCH_FD.load(Ordering::SeqCst);
    if fd >= 0 {
        let one: u64 = 1;
        // SAFETY: write(2) is async-signal-safe; `one` outlives the call, and `fd` is
        // the eventfd in `winch_events`, which stays open for the process's life.
        unsafe { libc::write(fd, (&one as *const u64).cast(), 8) };
    }
}

/// The eventfd SIGWINCH writes; installs the handler on first use.
fn winch_events() -> std::io::Result<&'static EventFd> {
    static WINCH: OnceLock<EventFd> = OnceLock::new();
    if let Some(events) = WINCH.get() {
        return Ok(events);
    }
    let fresh = EventFd::new(EFD_NONBLOCK)?;
    let events = WINCH.get_or_init(|| fresh);
    if WINCH_FD
        .compare_exchange(-1, events.as_raw_fd(), Ordering::SeqCst, Ordering::SeqCst)
        .is_ok()
    {
        vmm_sys_util::signal::register_signal_handler(libc::SIGWINCH, on_winch)
            .map_err(|e| std::io::Error::from_raw_os_error(e.errno()))?;
    }
    Ok(events)
}

/// The size of the terminal on `fd`; `None` if it is not a terminal or has no size.
pub fn terminal_size(fd: RawFd) -> Option<ConsoleSize> {
    let mut ws = libc::winsize {
        ws_row: 0,
        ws_col: 0,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCGWINSZ writes one winsize into `ws`, which outlives the call; on a
    // descriptor that is not a terminal it fails and writes nothing.
    let rc = unsafe { libc::ioctl(fd, libc::TIOCGWINSZ, &mut ws) };
    (rc == 0 && ws.ws_col > 0 && ws.ws_row > 0).then_some((ws.ws_col, ws.ws_row))
}

/// A size source that follows the terminal on `fd` (which must stay open), or `None`
/// when `fd` is not a terminal with a size.
pub fn following_terminal(fd: RawFd) -> std::io::Result<Option<SizeSource>> {
    if terminal_size(fd).is_none() {
        return Ok(None);
    }
    Ok(Some(SizeSource {
        changed: winch_events()?.try_clone()?,
        query: Box::new(move || terminal_size(fd)),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::{FromRawFd, OwnedFd};

    fn pty(size: ConsoleSize) -> (OwnedFd, OwnedFd) {
        let (mut master, mut slave) = (-1, -1);
        let ws = libc::winsize {
            ws_row: size.1,
            ws_col: size.0,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        // SAFETY: openpty writes two new descriptors into the ints; the name and termios
        // pointers may be null, and `ws` outlives the call.
        let rc = unsafe {
            libc::openpty(
                &mut master,
                &mut slave,
                std::ptr::null_mut(),
                std::ptr::null(),
                &ws,
            )
        };
        assert_eq!(rc, 0, "openpty: {}", std::io::Error::last_os_error());
        // SAFETY: both descriptors are new and owned by nothing else.
        unsafe { (OwnedFd::from_raw_fd(master), OwnedFd::from_raw_fd(slave)) }
    }

    #[test]
    fn follows_the_terminal_through_sigwinch() {
        let (master, slave) = pty((100, 40));
        let mut source = following_terminal(slave.as_raw_fd()).unwrap().unwrap();
        assert_eq!((source.query)(), Some((100, 40)));
        let _ = source.changed.read(); // earlier signals, if any
        let ws = libc::winsize {
            ws_row: 50,
            ws_col: 160,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        // SAFETY: TIOCSWINSZ reads one winsize from `ws`, which outlives the call.
        assert_eq!(
            unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCSWINSZ, &ws) },
            0
        );
        // SAFETY: raise only sends SIGWINCH to this process, whose handler is installed.
        assert_eq!(unsafe { libc::raise(libc::SIGWINCH) }, 0);
        assert!(
            source.changed.read().unwrap() >= 1,
            "SIGWINCH did not reach the console"
        );
        assert_eq!((source.query)(), Some((160, 50)));
    }

    #[test]
    fn files_and_pipes_have_no_size() {
        let file = tempfile::tempfile().unwrap();
        assert_eq!(terminal_size(file.as_raw_fd()), None);
        assert!(following_terminal(file.as_raw_fd()).unwrap().is_none());
        // A terminal that reports 0x0 (a pty nobody sized) has none either.
        let (_master, slave) = pty((0, 0));
        assert_eq!(terminal_size(slave.as_raw_fd()), None);
    }
}

//! COM1: vm-superio's 16550 on the port bus, its IRQ through an irqfd, and stdin
//! fed to it (in raw mode) when stdin is a terminal.

use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::sync::{Arc, Mutex};

use event_manager::{EventOps, Events, MutEventSubscriber};
use kiln_devices::bus::BusDevice;
use vm_superio::serial::NoEvents;
use vm_superio::{Serial, Trigger};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::EventFd;

use crate::console_escape::EscapeFilter;
use crate::control::VmControl;

/// Raises the serial IRQ by writing the irqfd KVM listens on.
pub struct IrqTrigger(pub EventFd);

impl Trigger for IrqTrigger {
    type E = std::io::Error;
    fn trigger(&self) -> std::io::Result<()> {
        self.0.write(1)
    }
}

pub type SerialOut = Box<dyn Write + Send>;

/// The 16550 as a bus device.
pub struct SerialDevice(pub Serial<IrqTrigger, NoEvents, SerialOut>);

impl BusDevice for SerialDevice {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if let (Some(b), Ok(off)) = (data.first_mut(), u8::try_from(offset)) {
            *b = self.0.read(off);
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if let (Some(&b), Ok(off)) = (data.first(), u8::try_from(offset)) {
            if let Err(e) = self.0.write(off, b) {
                log::warn!("serial: {e}");
            }
        }
    }
}

/// Feeds the terminal on stdin to the serial port's receive FIFO, minus the
/// console escape commands (Ctrl-A x quits).
pub struct StdinInput {
    serial: Arc<Mutex<SerialDevice>>,
    control: Arc<VmControl>,
    escape: EscapeFilter,
}

impl StdinInput {
    pub fn new(serial: Arc<Mutex<SerialDevice>>, control: Arc<VmControl>) -> Self {
        Self {
            serial,
            control,
            escape: EscapeFilter::default(),
        }
    }
}

impl MutEventSubscriber for StdinInput {
    fn init(&mut self, ops: &mut EventOps) {
        if let Err(e) = ops.add(Events::new(&std::io::stdin(), EventSet::IN)) {
            log::warn!("serial: cannot watch stdin: {e}");
        }
    }

    fn process(&mut self, events: Events, ops: &mut EventOps) {
        let mut serial = self.serial.lock().expect("serial lock");
        let room = serial.0.fifo_capacity();
        if room == 0 {
            return;
        }
        let mut buf = [0u8; 64];
        let want = room.min(buf.len());
        match std::io::stdin().lock().read(&mut buf[..want]) {
            Ok(0) => {
                // EOF: stop watching.
                let _ = ops.remove(events);
            }
            Ok(n) => {
                let mut to_guest = Vec::with_capacity(n + 1);
                self.escape
                    .feed_and_act(&buf[..n], &mut to_guest, &self.control);
                if let Err(e) = serial.0.enqueue_raw_bytes(&to_guest) {
                    log::warn!("serial: input dropped: {e}");
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => {
                log::warn!("serial: stdin: {e}");
                let _ = ops.remove(events);
            }
        }
    }
}

/// Puts the terminal on stdin in raw mode and restores it when dropped.
pub struct RawTerminal {
    saved: libc::termios,
}

impl RawTerminal {
    /// Raw mode if stdin is a terminal; `None` otherwise.
    pub fn enable() -> Option<Self> {
        let fd = std::io::stdin().as_raw_fd();
        // SAFETY: isatty only inspects the descriptor.
        if unsafe { libc::isatty(fd) } != 1 {
            return None;
        }
        // SAFETY: termios is plain data; tcgetattr fills it for a valid fd.
        let mut saved: libc::termios = unsafe { std::mem::zeroed() };
        // SAFETY: fd is stdin, saved is a valid termios to fill.
        if unsafe { libc::tcgetattr(fd, &mut saved) } != 0 {
            return None;
        }
        let mut raw = saved;
        // SAFETY: cfmakeraw edits the struct we own.
        unsafe { libc::cfmakeraw(&mut raw) };
        // SAFETY: fd is stdin and raw a valid termios.
        if unsafe { libc::tcsetattr(fd, libc::TCSANOW, &raw) } != 0 {
            return None;
        }
        Some(Self { saved })
    }
}

impl Drop for RawTerminal {
    fn drop(&mut self) {
        // SAFETY: restores the settings read in enable() on the same fd.
        unsafe { libc::tcsetattr(std::io::stdin().as_raw_fd(), libc::TCSANOW, &self.saved) };
    }
}

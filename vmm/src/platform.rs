//! The PC platform's port devices (COM1, i8042, ACPI PM registers, boot timer,
//! debug exit) wired to a VM, and the serial output and VM-end watcher.

use std::fs::File;
use std::io::Write;
use std::sync::{Arc, Mutex};

use event_manager::{EventManager, EventOps, Events, MutEventSubscriber, SubscriberOps};
use kiln_devices::legacy::{AcpiPm, BootTimer, DebugExit, I8042};
use kiln_devices::virtio::console::{Relay, RelayWriter, STALL_LIMIT};
use kvm_ioctls::VmFd;
use vm_superio::Serial;
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::EventFd;

use crate::bus::Bus;
use crate::config::{SerialOutput, VmConfig};
use crate::control::VmControl;
use crate::device_manager::Subscriber;
use crate::layout::*;
use crate::serial::{IrqTrigger, SerialDevice, SerialOut, StdinInput};
use crate::vm::kvm_err;
use crate::VmmError;

/// Where serial output goes; opened once, so a reboot keeps appending. Stdout and
/// files are written by a relay thread shared by every boot (see [`RelayWriter`]): an
/// output that stops taking data holds a vCPU for the stall limit at most, not for as
/// long as it waits. Dropped at the end of the run, it writes out what the relay holds.
pub(crate) enum SerialWriter {
    Relayed(Arc<Mutex<Option<RelayWriter>>>),
    Sink,
}

impl SerialWriter {
    pub(crate) fn open(serial: &SerialOutput) -> Result<Self, VmmError> {
        let output: Box<dyn Write + Send> = match serial {
            SerialOutput::Stdio => Box::new(std::io::stdout()),
            SerialOutput::None => return Ok(SerialWriter::Sink),
            SerialOutput::File(path) => Box::new(File::create(path).map_err(|e| {
                VmmError::Device(format!(
                    "cannot create serial output file {}: {e}",
                    path.display()
                ))
            })?),
        };
        let relayed = Relay::start(output, "serial")
            .and_then(|relay| RelayWriter::new(relay, STALL_LIMIT, "serial"))
            .map_err(|e| VmmError::Device(format!("cannot start the serial output: {e}")))?;
        Ok(SerialWriter::Relayed(Arc::new(Mutex::new(Some(relayed)))))
    }

    fn writer(&self) -> SerialOut {
        match self {
            SerialWriter::Sink => Box::new(std::io::sink()),
            SerialWriter::Relayed(shared) => Box::new(SharedSerialOut(shared.clone())),
        }
    }
}

impl Drop for SerialWriter {
    fn drop(&mut self) {
        if let SerialWriter::Relayed(shared) = self {
            // Taken, not left to the last handle: a vCPU thread that outlives the run
            // must not keep the rest of the output from being written out now.
            let relay = shared.lock().unwrap_or_else(|e| e.into_inner()).take();
            drop(relay);
        }
    }
}

/// One boot's handle on the shared serial relay; writes after the run ended vanish.
struct SharedSerialOut(Arc<Mutex<Option<RelayWriter>>>);

impl Write for SharedSerialOut {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self.0.lock().unwrap_or_else(|e| e.into_inner()).as_mut() {
            Some(out) => out.write(buf),
            None => Ok(buf.len()),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(()) // the relay thread flushes after each piece
    }
}

/// Wakes the main loop when a vCPU or device ends the VM.
pub(crate) struct WakeWatcher(pub Arc<VmControl>);

impl MutEventSubscriber for WakeWatcher {
    fn init(&mut self, ops: &mut EventOps) {
        if let Err(e) = ops.add(Events::new(&self.0.wake, EventSet::IN)) {
            log::error!("cannot watch the VM control eventfd: {e}");
        }
    }
    fn process(&mut self, _events: Events, _ops: &mut EventOps) {
        let _ = self.0.wake.read();
    }
}

/// Put the port devices on `io_bus`; the serial IRQ goes through an irqfd.
pub(crate) fn add_port_devices(
    config: &VmConfig,
    vm: &VmFd,
    control: &Arc<VmControl>,
    output: &SerialWriter,
    stdin_input: bool,
    io_bus: &mut Bus,
    events: &mut EventManager<Subscriber>,
) -> Result<(), VmmError> {
    let serial_irq = EventFd::new(0).map_err(|e| VmmError::Device(format!("eventfd: {e}")))?;
    vm.register_irqfd(&serial_irq, COM1_IRQ)
        .map_err(kvm_err("register serial irqfd"))?;
    let serial = Arc::new(Mutex::new(SerialDevice(Serial::new(
        IrqTrigger(serial_irq),
        output.writer(),
    ))));
    io_bus.insert(u64::from(COM1_PORT), 8, serial.clone())?;
    if stdin_input {
        events.add_subscriber(Arc::new(Mutex::new(StdinInput::new(
            serial,
            control.clone(),
        ))));
    }
    let i8042 = Arc::new(Mutex::new(I8042::new(control.clone())));
    io_bus.insert(u64::from(I8042_COMMAND_PORT), 1, i8042)?;
    let pm = Arc::new(Mutex::new(AcpiPm::new(control.clone())));
    io_bus.insert(u64::from(ACPI_PM_PORT), ACPI_PM_LEN, pm)?;
    if config.boot_timer {
        let timer = Arc::new(Mutex::new(BootTimer::new(control.clone())));
        io_bus.insert(u64::from(BOOT_TIMER_PORT), 1, timer)?;
    }
    if let Some(port) = config.debug_exit_port {
        let debug_exit = Arc::new(Mutex::new(DebugExit::new(control.clone())));
        io_bus.insert(u64::from(port), 1, debug_exit)?;
    }
    Ok(())
}

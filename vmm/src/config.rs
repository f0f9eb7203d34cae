//! The typed configuration of one VM. The CLI fills it; nothing below parses strings.

use std::path::PathBuf;
use std::time::Duration;

/// Where the serial console's output goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SerialOutput {
    /// The process's stdout; input comes from stdin when stdin is a terminal.
    Stdio,
    /// Append to this file (created if missing, truncated first).
    File(PathBuf),
    /// Discard output.
    None,
}

/// What a guest reset does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum OnReset {
    /// Stop the VM with exit code 2.
    #[default]
    Exit,
    /// Build the VM again and boot the same kernel.
    Reboot,
}

/// Which entry point of an ELF vmlinux to use.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum EntryChoice {
    /// PVH when the image has the PVH note, else the 64-bit entry.
    #[default]
    Auto,
    /// The 64-bit boot protocol entry, even if a PVH note is present.
    Linux64,
    /// PVH; an image without the note is an error.
    Pvh,
}

/// A whole VM.
#[derive(Clone, Debug)]
pub struct VmConfig {
    pub kernel: PathBuf,
    pub initrd: Option<PathBuf>,
    /// ELF vmlinux entry point (a bzImage always uses the 64-bit entry).
    pub entry: EntryChoice,
    /// Extra kernel command line, appended after kiln's own parameters.
    pub append: String,
    pub memory_bytes: u64,
    pub vcpus: u8,
    pub serial: SerialOutput,
    pub timeout: Option<Duration>,
    pub on_reset: OnReset,
    /// I/O port of the isa-debug-exit-like device, if any.
    pub debug_exit_port: Option<u16>,
    /// Log the time to the guest's boot-timer write.
    pub boot_timer: bool,
    /// Apply host compatibility profiles (PVM) when the host needs them.
    pub host_quirks: bool,
    /// Root of sysfs, for host detection (tests point it elsewhere).
    pub sysfs_root: PathBuf,
    /// CPU model, template, topology (its vCPU count must equal `vcpus`) and nesting.
    pub cpu: crate::cpu::GuestCpu,
    /// virtio devices to attach on virtio-mmio, in order.
    pub virtio_devices: Vec<crate::device_manager::VirtioDeviceConfig>,
}

impl VmConfig {
    /// A configuration with kiln's defaults for everything but the kernel.
    pub fn new(kernel: PathBuf) -> Self {
        Self {
            kernel,
            initrd: None,
            entry: EntryChoice::Auto,
            append: String::new(),
            memory_bytes: 512 << 20,
            vcpus: 1,
            serial: SerialOutput::Stdio,
            timeout: None,
            on_reset: OnReset::Exit,
            debug_exit_port: None,
            boot_timer: false,
            host_quirks: true,
            sysfs_root: PathBuf::from("/sys"),
            cpu: crate::cpu::GuestCpu::default(),
            virtio_devices: Vec::new(),
        }
    }
}

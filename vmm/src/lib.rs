//! kiln's virtual machine monitor: KVM, guest memory, vCPUs, boot, ACPI, devices
//! and the event loop.
//!
//! Crates: the rust-vmm set (kvm-ioctls, vm-memory, linux-loader, event-manager,
//! vm-superio, acpi_tables) because they are the maintained building blocks of
//! Firecracker and Cloud Hypervisor; iced-x86 to decode instructions the host
//! could not emulate, because it is a complete, table-driven x86 decoder.

pub mod acpi;
pub mod boot;
pub mod bus;
pub mod config;
mod console_escape;
pub mod console_socket;
mod console_stdin;
pub mod control;
pub mod cpu;
pub mod device_manager;
pub mod guests;
pub mod host_check;
pub mod layout;
pub mod memory;
mod platform;
pub mod pvm;
pub mod serial;
mod stop_signal;
pub mod terminal_size;
pub mod vcpu;
pub mod vcpu_exit;
pub mod vm;

pub use config::{EntryChoice, OnReset, SerialOutput, VmConfig};
pub use vm::{run, VmExitStatus};

/// Everything that can stop kiln from running a VM.
#[derive(Debug, thiserror::Error)]
pub enum VmmError {
    #[error("cannot open /dev/kvm")]
    OpenKvm { source: kvm_ioctls::Error },
    #[error("KVM: cannot {what}")]
    Kvm {
        what: &'static str,
        source: kvm_ioctls::Error,
    },
    #[error(transparent)]
    Memory(#[from] memory::MemoryError),
    #[error(transparent)]
    Boot(#[from] boot::BootError),
    #[error(transparent)]
    Vcpu(#[from] vcpu::VcpuError),
    #[error(transparent)]
    Bus(#[from] bus::BusError),
    #[error(transparent)]
    VirtioDevice(#[from] device_manager::DeviceManagerError),
    #[error("{0}")]
    Device(String),
    /// The guest did something kiln cannot go on from.
    #[error("{0}")]
    Guest(String),
}

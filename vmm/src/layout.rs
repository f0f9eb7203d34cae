//! The guest-physical address map of a kiln VM (x86_64).
//!
//! Low memory below 640 KiB holds the boot structures; the BIOS area at 0xE0000
//! holds the ACPI tables (where an OS also scans for the RSDP); RAM runs from 1 MiB
//! up to the 32-bit MMIO hole at 3 GiB and continues at 4 GiB.

/// Start of the PVH `hvm_start_info`.
pub const PVH_INFO_START: u64 = 0x6000;
/// PVH module list (the initrd), right after the start info.
pub const PVH_MODLIST_START: u64 = 0x6040;
/// PVH memory map table.
pub const PVH_MEMMAP_START: u64 = 0x6100;
/// Linux zero page (`boot_params`).
pub const ZERO_PAGE_START: u64 = 0x7000;
/// Top of the boot stack given to the 64-bit entry.
pub const BOOT_STACK_POINTER: u64 = 0x8ff0;
/// Boot page tables: PML4, one PDPT, four page directories (2 MiB pages, 4 GiB).
pub const PML4_START: u64 = 0x9000;
pub const PDPTE_START: u64 = 0xa000;
pub const PDE_START: u64 = 0xb000;
/// Boot GDT.
pub const BOOT_GDT_START: u64 = 0x500;
/// Kernel command line, and its maximum size including the NUL.
pub const CMDLINE_START: u64 = 0x20000;
pub const CMDLINE_MAX_SIZE: usize = 0x10000;
/// End of conventional memory (640 KiB minus the usual EBDA kilobyte).
pub const EBDA_START: u64 = 0x9fc00;
/// ACPI tables: the RSDP first, then the other tables.
pub const ACPI_START: u64 = 0xe0000;
pub const ACPI_END: u64 = 0x100000;
/// Where high memory, and the kernel, start.
pub const HIMEM_START: u64 = 0x100000;
/// The 32-bit MMIO hole: RAM stops here and continues at 4 GiB.
pub const MMIO_HOLE_START: u64 = 0xc000_0000;
pub const MMIO_HOLE_END: u64 = 0x1_0000_0000;
/// virtio-mmio device windows, allocated upwards from here.
pub const VIRTIO_MMIO_START: u64 = 0xd000_0000;
pub const VIRTIO_MMIO_END: u64 = 0xe000_0000;
/// Interrupt controllers.
pub const IOAPIC_START: u64 = 0xfec0_0000;
pub const LAPIC_START: u64 = 0xfee0_0000;
/// KVM's three-page TSS and its identity-map page, just below the 4 GiB boundary
/// and outside any RAM (Intel's real-mode emulation needs them).
pub const KVM_TSS_START: u64 = 0xfffb_d000;
pub const KVM_IDENTITY_MAP_START: u64 = 0xfffb_c000;

/// I/O ports.
pub const COM1_PORT: u16 = 0x3f8;
pub const COM1_IRQ: u32 = 4;
pub const I8042_COMMAND_PORT: u16 = 0x64;
/// The ACPI sleep/reset register block (3 bytes, see kiln_devices::legacy::AcpiPm).
pub const ACPI_PM_PORT: u16 = 0x600;
pub const ACPI_PM_LEN: u64 = 3;
/// The boot-timer port (one of the unused POST-code ports).
pub const BOOT_TIMER_PORT: u16 = 0x440;
/// First IRQ for virtio-mmio devices (4 is COM1).
pub const VIRTIO_IRQ_START: u32 = 5;
/// Last usable IOAPIC input.
pub const IOAPIC_LAST_PIN: u32 = 23;

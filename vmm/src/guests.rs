//! Tiny purpose-built test guests, assembled from resources/guests/ by build.rs.
//! Each is a PVH ELF image loaded at 1 MiB.

/// Writes 0x21 to the debug-exit port (0xf4) at once: with `--debug-exit 0xf4`
/// kiln exits with code (0x21 << 1) | 1 = 67.
pub const DEBUG_EXIT: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/guests/debug_exit.elf"));

/// Disables interrupts and halts forever: for `--timeout`.
pub const HANG: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/guests/hang.elf"));

/// Loads an empty IDT and executes `ud2`: a triple fault.
pub const TRIPLE_FAULT: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/guests/triple_fault.elf"));

/// Writes "hello from kiln guest\n" to COM1, then 0x21 to the debug-exit port 0xf4.
pub const SERIAL_HELLO: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/guests/serial_hello.elf"));

/// Writes 4096 lines of 64 bytes (256 KiB) to COM1, then 0x21 to the debug-exit port
/// 0xf4: more than a stalled output and kiln's relay hold.
pub const SERIAL_FLOOD: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/guests/serial_flood.elf"));

/// ACPI S5 through the FADT sleep control register: power-off.
pub const ACPI_POWEROFF: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/guests/acpi_poweroff.elf"));

/// i8042 reset command (0xFE to port 0x64).
pub const I8042_RESET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/guests/i8042_reset.elf"));

/// Writes the boot-timer magic, then 0x21 to the debug-exit port 0xf4.
pub const BOOT_TIMER: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/guests/boot_timer.elf"));

/// `kiln cpu verify`: CPUID of a leaf list in ring 0 and ring 3, printed on COM1,
/// then 0x10 to port 0xf4. See resources/guests/cpuid.S for the layout.
pub const CPUID_VERIFY: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/guests/cpuid.elf"));

/// Reads virtio-mmio window 0 and reports its DeviceID on port 0xf4 (0x7f if
/// the magic value is wrong).
pub const VIRTIO_PROBE: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/guests/virtio_probe.elf"));

/// Every guest by file name, for tools and tests that write them out.
pub const ALL: &[(&str, &[u8])] = &[
    ("debug_exit.elf", DEBUG_EXIT),
    ("hang.elf", HANG),
    ("triple_fault.elf", TRIPLE_FAULT),
    ("serial_hello.elf", SERIAL_HELLO),
    ("serial_flood.elf", SERIAL_FLOOD),
    ("acpi_poweroff.elf", ACPI_POWEROFF),
    ("i8042_reset.elf", I8042_RESET),
    ("boot_timer.elf", BOOT_TIMER),
    ("cpuid.elf", CPUID_VERIFY),
];

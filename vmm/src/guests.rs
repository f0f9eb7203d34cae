//! Tiny purpose-built test guests, assembled from resources/guests/ by build.rs.
//! Each is a PVH ELF image loaded at 1 MiB.

/// Writes 0x21 to the debug-exit port (0xf4) at once: with `--debug-exit 0xf4`
/// kiln exits with code (0x21 << 1) | 1 = 67.
pub const DEBUG_EXIT: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/guests/debug_exit.elf"));

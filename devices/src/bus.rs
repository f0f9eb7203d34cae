//! The device side of the port-I/O and MMIO buses.

/// A device that sits on a bus and answers reads and writes at offsets
/// relative to the start of its range.
pub trait BusDevice: Send {
    /// Fill `data` with the value read at `offset`.
    fn read(&mut self, offset: u64, data: &mut [u8]);
    /// Handle a write of `data` at `offset`.
    fn write(&mut self, offset: u64, data: &[u8]);
}

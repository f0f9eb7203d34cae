//! Port-I/O and MMIO buses: address ranges mapped to devices. Built before the
//! vCPUs start and read-only afterwards, so lookups take no lock but the device's.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use kiln_devices::bus::BusDevice;

pub type SharedDevice = Arc<Mutex<dyn BusDevice>>;

#[derive(Debug, thiserror::Error)]
pub enum BusError {
    #[error("bus range {base:#x}+{len:#x} overlaps an existing device")]
    Overlap { base: u64, len: u64 },
    #[error("bus range at {0:#x} is empty")]
    Empty(u64),
}

#[derive(Default)]
pub struct Bus {
    /// base -> (length, device)
    devices: BTreeMap<u64, (u64, SharedDevice)>,
}

impl Bus {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn insert(&mut self, base: u64, len: u64, device: SharedDevice) -> Result<(), BusError> {
        if len == 0 {
            return Err(BusError::Empty(base));
        }
        let end = base
            .checked_add(len)
            .ok_or(BusError::Overlap { base, len })?;
        if self.find(base).is_some() || self.devices.range(base..end).next().is_some() {
            return Err(BusError::Overlap { base, len });
        }
        self.devices.insert(base, (len, device));
        Ok(())
    }

    fn find(&self, addr: u64) -> Option<(u64, &SharedDevice)> {
        let (base, (len, device)) = self.devices.range(..=addr).next_back()?;
        (addr - base < *len).then_some((addr - base, device))
    }

    /// Read from the device at `addr`; false (and `data` untouched) if none is there.
    pub fn read(&self, addr: u64, data: &mut [u8]) -> bool {
        match self.find(addr) {
            Some((offset, device)) => {
                device.lock().expect("device lock").read(offset, data);
                true
            }
            None => false,
        }
    }

    /// Write to the device at `addr`; false if none is there.
    pub fn write(&self, addr: u64, data: &[u8]) -> bool {
        match self.find(addr) {
            Some((offset, device)) => {
                device.lock().expect("device lock").write(offset, data);
                true
            }
            None => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Echo(Vec<(u64, Vec<u8>)>);
    impl BusDevice for Echo {
        fn read(&mut self, offset: u64, data: &mut [u8]) {
            data.fill(offset as u8);
        }
        fn write(&mut self, offset: u64, data: &[u8]) {
            self.0.push((offset, data.to_vec()));
        }
    }

    #[test]
    fn routes_by_range_and_offset() {
        let dev = Arc::new(Mutex::new(Echo(Vec::new())));
        let mut bus = Bus::new();
        bus.insert(0x3f8, 8, dev.clone()).unwrap();
        let mut b = [0u8; 1];
        assert!(bus.read(0x3fd, &mut b));
        assert_eq!(b, [5]);
        assert!(!bus.read(0x400, &mut b));
        assert!(!bus.read(0x3f7, &mut b));
        assert!(bus.write(0x3f8, &[7]));
        assert_eq!(dev.lock().unwrap().0, vec![(0, vec![7])]);
    }

    #[test]
    fn overlaps_are_refused() {
        let mut bus = Bus::new();
        let d = || -> SharedDevice { Arc::new(Mutex::new(Echo(Vec::new()))) };
        bus.insert(0x100, 0x10, d()).unwrap();
        assert!(bus.insert(0x108, 0x10, d()).is_err());
        assert!(bus.insert(0xf8, 0x10, d()).is_err());
        assert!(bus.insert(0x110, 0x10, d()).is_ok());
        assert!(bus.insert(0x200, 0, d()).is_err());
    }
}

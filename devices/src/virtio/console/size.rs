//! VIRTIO_CONSOLE_F_SIZE (virtio 1.2 §5.3.4): the console's columns and rows in its
//! configuration space, so programs on hvc0 know the host terminal's size.
//!
//! The device does not know where the size comes from: the VMM hands it a
//! [`SizeSource`], a fixed size or the host terminal's, whose `changed` EventFd it
//! writes when the size may have changed (on SIGWINCH). The device then reads the size
//! again and, if it differs, raises a configuration change. It also raises one when the
//! driver starts: Linux reads cols and rows of a single-port console only on a
//! configuration change, never at probe.

use event_manager::{EventOps, EventSet, Events};
use log::warn;
use vmm_sys_util::eventfd::EventFd;

use super::Console;

/// VIRTIO_CONSOLE_F_SIZE.
pub const F_SIZE: u64 = 1 << 0;
/// The configuration space: cols, rows (le16 each), max_nr_ports, emerg_wr (le32).
const CONFIG_LEN: usize = 12;
/// `Events::data` of the size-changed EventFd.
pub(super) const SIZE_DATA: u32 = u32::MAX - 3;

/// Columns and rows.
pub type ConsoleSize = (u16, u16);

/// Where a console's size comes from.
pub struct SizeSource {
    /// Readable when the size may have changed.
    pub changed: EventFd,
    /// The size now; `None` if it cannot be told (the last one is kept).
    pub query: Box<dyn FnMut() -> Option<ConsoleSize> + Send>,
}

impl SizeSource {
    /// A size that never changes (for a socket or file console).
    pub fn fixed(size: ConsoleSize) -> std::io::Result<Self> {
        Ok(SizeSource {
            changed: EventFd::new(vmm_sys_util::eventfd::EFD_NONBLOCK)?,
            query: Box::new(move || Some(size)),
        })
    }
}

impl Console {
    /// Offer VIRTIO_CONSOLE_F_SIZE with the sizes `source` gives.
    pub fn with_size(mut self, mut source: SizeSource) -> Self {
        self.size = (source.query)().unwrap_or_default();
        self.size_source = Some(source);
        self
    }

    /// The size the configuration space shows.
    pub fn size(&self) -> ConsoleSize {
        self.size
    }

    pub(super) fn size_features(&self) -> u64 {
        if self.size_source.is_some() {
            F_SIZE
        } else {
            0
        }
    }

    pub(super) fn config_bytes(&self) -> [u8; CONFIG_LEN] {
        let mut config = [0u8; CONFIG_LEN];
        if self.size_source.is_some() {
            config[0..2].copy_from_slice(&self.size.0.to_le_bytes());
            config[2..4].copy_from_slice(&self.size.1.to_le_bytes());
        }
        config
    }

    /// Read the size again; tell the driver if it changed.
    pub fn refresh_size(&mut self) {
        let Some(source) = self.size_source.as_mut() else {
            return;
        };
        let _ = source.changed.read(); // drained: one refresh covers every signal so far
        match (source.query)() {
            Some(size) if size != self.size => {
                self.size = size;
                self.announce_size();
            }
            _ => {}
        }
    }

    /// Raise a configuration change if the driver took F_SIZE.
    pub(super) fn announce_size(&self) {
        if self.acked_features & F_SIZE == 0 {
            return;
        }
        if let Some(a) = &self.active {
            if let Err(e) = a.interrupt.signal_config_change() {
                warn!("virtio-console: cannot signal the size change: {e}");
            }
        }
    }

    pub(super) fn watch_size(&self, ops: &mut EventOps) {
        if let Some(source) = &self.size_source {
            let fd = std::os::fd::AsRawFd::as_raw_fd(&source.changed);
            if let Err(e) = ops.add(Events::with_data_raw(fd, SIZE_DATA, EventSet::IN)) {
                warn!("virtio-console: cannot watch for size changes: {e}");
            }
        }
    }
}

//! Boot timer, after Firecracker's: the guest writes a magic byte when it has
//! booted, and the VMM logs the time since its own process started.

use std::sync::Arc;

use crate::bus::BusDevice;

/// The value the guest writes to say "booted" (Firecracker's value).
pub const BOOT_TIMER_MAGIC: u8 = 123;

/// How the boot timer reports that the guest has booted.
pub trait BootTimerEvents: Send + Sync {
    fn guest_booted(&self);
}

/// The boot-timer port. Only the first write of [`BOOT_TIMER_MAGIC`] at offset 0
/// counts; other values and later writes are ignored.
pub struct BootTimer<E: BootTimerEvents> {
    events: Arc<E>,
    fired: bool,
}

impl<E: BootTimerEvents> BootTimer<E> {
    pub fn new(events: Arc<E>) -> Self {
        Self {
            events,
            fired: false,
        }
    }
}

impl<E: BootTimerEvents> BusDevice for BootTimer<E> {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset == 0 && data.first() == Some(&BOOT_TIMER_MAGIC) && !self.fired {
            self.fired = true;
            self.events.guest_booted();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[derive(Default)]
    struct Count(AtomicUsize);
    impl BootTimerEvents for Count {
        fn guest_booted(&self) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[test]
    fn fires_once_on_the_magic_value_only() {
        let count = Arc::new(Count::default());
        let mut timer = BootTimer::new(count.clone());
        timer.write(0, &[1]);
        timer.write(1, &[BOOT_TIMER_MAGIC]);
        assert_eq!(count.0.load(Ordering::SeqCst), 0);
        timer.write(0, &[BOOT_TIMER_MAGIC]);
        timer.write(0, &[BOOT_TIMER_MAGIC]);
        assert_eq!(count.0.load(Ordering::SeqCst), 1);
    }
}

//! Drive the transport register by register, as the Linux virtio_mmio driver does.

use std::sync::{Arc, Mutex};

use vm_memory::GuestAddress;

use super::*;
use crate::virtio::{ActivateContext, ActivateError};

#[derive(Default)]
struct Recorder {
    acked: Option<u64>,
    activations: usize,
    resets: usize,
    queue_sizes: Vec<u16>,
    config: [u8; 8],
    fail_activate: bool,
}

struct TestDevice(Arc<Mutex<Recorder>>);

impl VirtioDevice for TestDevice {
    fn device_type(&self) -> u32 {
        super::super::device_type::RNG
    }
    fn queue_max_sizes(&self) -> &[u16] {
        &[16, 8]
    }
    fn device_features(&self) -> u64 {
        1 << 5
    }
    fn ack_features(&mut self, features: u64) {
        self.0.lock().unwrap().acked = Some(features);
    }
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        let r = self.0.lock().unwrap();
        for (i, b) in data.iter_mut().enumerate() {
            *b = r.config.get(offset as usize + i).copied().unwrap_or(0);
        }
    }
    fn write_config(&mut self, offset: u64, data: &[u8]) {
        let mut r = self.0.lock().unwrap();
        for (i, b) in data.iter().enumerate() {
            if let Some(slot) = r.config.get_mut(offset as usize + i) {
                *slot = *b;
            }
        }
    }
    fn activate(&mut self, ctx: ActivateContext) -> Result<(), ActivateError> {
        let mut r = self.0.lock().unwrap();
        if r.fail_activate {
            return Err(ActivateError::Backend("test".into()));
        }
        r.activations += 1;
        r.queue_sizes = ctx.queues.iter().map(|q| q.size()).collect();
        ctx.interrupt.signal_used_queue(0).unwrap();
        Ok(())
    }
    fn reset(&mut self) -> bool {
        self.0.lock().unwrap().resets += 1;
        true
    }
}

fn setup() -> (MmioTransport, Arc<Mutex<Recorder>>) {
    let mem = GuestMemory::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap();
    let rec = Arc::new(Mutex::new(Recorder::default()));
    let dev: Arc<Mutex<dyn VirtioDevice>> = Arc::new(Mutex::new(TestDevice(rec.clone())));
    (MmioTransport::new(mem, dev).unwrap(), rec)
}

fn rd(t: &mut MmioTransport, off: u64) -> u32 {
    let mut b = [0u8; 4];
    t.read(off, &mut b);
    u32::from_le_bytes(b)
}

fn wr(t: &mut MmioTransport, off: u64, v: u32) {
    t.write(off, &v.to_le_bytes());
}

fn negotiate(t: &mut MmioTransport, features: u64) {
    wr(t, 0x70, status::ACKNOWLEDGE);
    wr(t, 0x70, status::ACKNOWLEDGE | status::DRIVER);
    wr(t, 0x24, 0);
    wr(t, 0x20, features as u32);
    wr(t, 0x24, 1);
    wr(t, 0x20, (features >> 32) as u32);
    wr(
        t,
        0x70,
        status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK,
    );
}

fn setup_queue(t: &mut MmioTransport, index: u32, size: u32, base: u64) {
    wr(t, 0x30, index);
    wr(t, 0x38, size);
    wr(t, 0x80, base as u32);
    wr(t, 0x84, (base >> 32) as u32);
    wr(t, 0x90, (base + 0x1000) as u32);
    wr(t, 0x94, 0);
    wr(t, 0xa0, (base + 0x2000) as u32);
    wr(t, 0xa4, 0);
    wr(t, 0x44, 1);
}

const ALL: u32 = status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK | status::DRIVER_OK;

#[test]
fn identification_registers() {
    let (mut t, _) = setup();
    assert_eq!(rd(&mut t, 0x00), 0x7472_6976);
    assert_eq!(rd(&mut t, 0x04), 2);
    assert_eq!(rd(&mut t, 0x08), 4);
    assert_eq!(rd(&mut t, 0x0c), VENDOR_ID);
    wr(&mut t, 0x14, 0);
    assert_eq!(rd(&mut t, 0x10), 1 << 5);
    wr(&mut t, 0x14, 1);
    assert_eq!(rd(&mut t, 0x10), 1, "VERSION_1 is bit 32");
    wr(&mut t, 0x14, 2);
    assert_eq!(rd(&mut t, 0x10), 0);
    wr(&mut t, 0x30, 0);
    assert_eq!(rd(&mut t, 0x34), 16);
    wr(&mut t, 0x30, 1);
    assert_eq!(rd(&mut t, 0x34), 8);
    wr(&mut t, 0x30, 2);
    assert_eq!(rd(&mut t, 0x34), 0, "nonexistent queue has max size 0");
    assert_eq!(t.queue_count(), 2);
    assert_eq!(t.queue_events().len(), 2);
    // Narrow register reads are ignored.
    let mut b = [0xffu8; 2];
    t.read(0, &mut b);
    assert_eq!(b, [0, 0]);
}

#[test]
fn full_init_activates_with_configured_queues() {
    let (mut t, rec) = setup();
    negotiate(&mut t, VIRTIO_F_VERSION_1 | 1 << 5);
    assert_eq!(rd(&mut t, 0x70) & status::FEATURES_OK, status::FEATURES_OK);
    assert_eq!(rec.lock().unwrap().acked, Some(VIRTIO_F_VERSION_1 | 1 << 5));
    setup_queue(&mut t, 0, 8, 0x1_0000);
    setup_queue(&mut t, 1, 4, 0x2_0000);
    wr(&mut t, 0x30, 0);
    assert_eq!(rd(&mut t, 0x44), 1);
    wr(&mut t, 0x70, ALL);
    assert!(t.is_activated());
    assert_eq!(rd(&mut t, 0x70), ALL);
    let r = rec.lock().unwrap();
    assert_eq!(r.activations, 1);
    assert_eq!(r.queue_sizes, vec![8, 4]);
    drop(r);
    // The device raised a used-buffer interrupt: status bit + irqfd.
    assert_eq!(rd(&mut t, 0x60), INT_VRING);
    assert_eq!(t.irq_event().read().unwrap(), 1);
    wr(&mut t, 0x64, INT_VRING);
    assert_eq!(rd(&mut t, 0x60), 0);
    // A QueueNotify write without ioeventfd reaches the queue's EventFd.
    wr(&mut t, 0x50, 1);
    assert_eq!(t.queue_events()[1].read().unwrap(), 1);
    assert!(
        t.queue_events()[0].read().is_err(),
        "queue 0 was not notified"
    );
}

#[test]
fn features_ok_refused_without_version_1_or_with_unoffered_bits() {
    let (mut t, rec) = setup();
    negotiate(&mut t, 1 << 5);
    assert_eq!(rd(&mut t, 0x70) & status::FEATURES_OK, 0, "legacy driver");
    assert_eq!(rec.lock().unwrap().acked, None);
    wr(&mut t, 0x70, 0);
    negotiate(&mut t, VIRTIO_F_VERSION_1 | 1 << 6);
    assert_eq!(rd(&mut t, 0x70) & status::FEATURES_OK, 0, "unoffered bit 6");
    wr(&mut t, 0x70, 0);
    negotiate(&mut t, VIRTIO_F_VERSION_1);
    assert_ne!(rd(&mut t, 0x70) & status::FEATURES_OK, 0);
}

#[test]
fn status_bits_only_added_in_order() {
    let (mut t, rec) = setup();
    wr(&mut t, 0x70, status::DRIVER_OK);
    assert_eq!(rd(&mut t, 0x70), 0, "DRIVER_OK before ACKNOWLEDGE");
    wr(&mut t, 0x70, status::ACKNOWLEDGE);
    wr(
        &mut t,
        0x70,
        status::ACKNOWLEDGE | status::DRIVER | status::DRIVER_OK,
    );
    assert_eq!(
        rd(&mut t, 0x70),
        status::ACKNOWLEDGE,
        "DRIVER_OK before FEATURES_OK"
    );
    assert_eq!(rec.lock().unwrap().activations, 0);
    // Features cannot change after FEATURES_OK.
    negotiate(&mut t, VIRTIO_F_VERSION_1);
    wr(&mut t, 0x24, 0);
    wr(&mut t, 0x20, 1 << 5);
    wr(&mut t, 0x70, ALL);
    assert_eq!(rec.lock().unwrap().acked, Some(VIRTIO_F_VERSION_1));
    // FAILED may be set at any time.
    wr(&mut t, 0x70, ALL | status::FAILED);
    assert_ne!(rd(&mut t, 0x70) & status::FAILED, 0);
}

#[test]
fn queue_registers_locked_outside_features_ok_window_and_when_ready() {
    let (mut t, rec) = setup();
    wr(&mut t, 0x30, 0);
    wr(&mut t, 0x38, 4);
    wr(&mut t, 0x44, 1);
    assert_eq!(
        rd(&mut t, 0x44),
        0,
        "queue setup before FEATURES_OK ignored"
    );
    negotiate(&mut t, VIRTIO_F_VERSION_1);
    setup_queue(&mut t, 0, 8, 0x1_0000);
    wr(&mut t, 0x38, 2); // size change on a ready queue: ignored
    wr(&mut t, 0x70, ALL);
    assert_eq!(rec.lock().unwrap().queue_sizes, vec![8, 8]);
}

#[test]
fn invalid_queue_sets_needs_reset_instead_of_activating() {
    let (mut t, rec) = setup();
    negotiate(&mut t, VIRTIO_F_VERSION_1);
    setup_queue(&mut t, 0, 8, 0xffff_0000_0000); // outside guest memory
    wr(&mut t, 0x70, ALL);
    assert!(!t.is_activated());
    assert_eq!(rec.lock().unwrap().activations, 0);
    assert_ne!(rd(&mut t, 0x70) & status::DEVICE_NEEDS_RESET, 0);
    assert_ne!(rd(&mut t, 0x60) & INT_CONFIG, 0);
    assert_eq!(rd(&mut t, 0xfc), 1, "config generation bumped");
}

#[test]
fn activation_failure_sets_needs_reset() {
    let (mut t, rec) = setup();
    rec.lock().unwrap().fail_activate = true;
    negotiate(&mut t, VIRTIO_F_VERSION_1);
    setup_queue(&mut t, 0, 8, 0x1_0000);
    wr(&mut t, 0x70, ALL);
    assert!(!t.is_activated());
    assert_ne!(rd(&mut t, 0x70) & status::DEVICE_NEEDS_RESET, 0);
}

#[test]
fn reset_clears_state_and_resets_device() {
    let (mut t, rec) = setup();
    negotiate(&mut t, VIRTIO_F_VERSION_1);
    setup_queue(&mut t, 0, 8, 0x1_0000);
    wr(&mut t, 0x70, ALL);
    wr(&mut t, 0x50, 0);
    wr(&mut t, 0x70, 0);
    assert_eq!(rd(&mut t, 0x70), 0);
    assert_eq!(rd(&mut t, 0x60), 0);
    assert!(!t.is_activated());
    assert_eq!(rec.lock().unwrap().resets, 1);
    wr(&mut t, 0x30, 0);
    assert_eq!(rd(&mut t, 0x44), 0, "queue no longer ready");
    assert!(t.queue_events()[0].read().is_err(), "stale notify drained");
    // Second initialisation works.
    negotiate(&mut t, VIRTIO_F_VERSION_1);
    setup_queue(&mut t, 0, 4, 0x1_0000);
    wr(&mut t, 0x70, ALL);
    assert_eq!(rec.lock().unwrap().activations, 2);
    assert_eq!(rec.lock().unwrap().queue_sizes, vec![4, 8]);
}

#[test]
fn config_space_any_width() {
    let (mut t, rec) = setup();
    rec.lock().unwrap().config = [1, 2, 3, 4, 5, 6, 7, 8];
    let mut b = [0u8; 1];
    t.read(0x103, &mut b);
    assert_eq!(b, [4]);
    let mut b = [0u8; 8];
    t.read(0x100, &mut b);
    assert_eq!(b, [1, 2, 3, 4, 5, 6, 7, 8]);
    t.write(0x106, &[0xaa, 0xbb]);
    assert_eq!(rec.lock().unwrap().config[6..], [0xaa, 0xbb]);
}

#[test]
fn notify_before_activation_is_ignored() {
    let (mut t, _) = setup();
    wr(&mut t, 0x50, 0);
    wr(&mut t, 0x50, 99);
    assert!(t.queue_events()[0].read().is_err());
}

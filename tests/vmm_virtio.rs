//! virtio-mmio plumbing: a device given in `VmConfig::virtio_devices` appears
//! to the guest at the first window, behind kiln's MMIO bus.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use event_manager::{EventOps, Events, MutEventSubscriber};
use kiln_devices::virtio::{ActivateContext, ActivateError, VirtioDevice};
use kiln_vmm::device_manager::VirtioDeviceConfig;
use kiln_vmm::{SerialOutput, VmConfig, VmExitStatus};

/// A do-nothing entropy device: enough for the transport's registers.
struct Dummy;

impl VirtioDevice for Dummy {
    fn device_type(&self) -> u32 {
        kiln_devices::virtio::device_type::RNG
    }
    fn queue_max_sizes(&self) -> &[u16] {
        &[16]
    }
    fn device_features(&self) -> u64 {
        0
    }
    fn ack_features(&mut self, _features: u64) {}
    fn read_config(&self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }
    fn write_config(&mut self, _offset: u64, _data: &[u8]) {}
    fn activate(&mut self, _ctx: ActivateContext) -> Result<(), ActivateError> {
        Ok(())
    }
    fn reset(&mut self) -> bool {
        true
    }
}

impl MutEventSubscriber for Dummy {
    fn init(&mut self, _ops: &mut EventOps) {}
    fn process(&mut self, _events: Events, _ops: &mut EventOps) {}
}

/// Each test writes its own copy: tests run in parallel.
fn guest(test: &str) -> PathBuf {
    let path = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("virtio_probe-{test}.elf"));
    std::fs::write(&path, kiln_vmm::guests::VIRTIO_PROBE).unwrap();
    path
}

fn config(test: &str) -> VmConfig {
    let mut config = VmConfig::new(guest(test));
    config.serial = SerialOutput::None;
    config.debug_exit_port = Some(0xf4);
    config.timeout = Some(Duration::from_secs(10));
    config
}

#[test]
fn attached_device_answers_at_the_first_window() {
    let mut config = config("attached");
    config
        .virtio_devices
        .push(VirtioDeviceConfig::new("dummy rng", || Ok(Dummy)));
    let status = kiln_vmm::run(&config, Instant::now()).unwrap();
    // DeviceID 4 (entropy) reported by the guest.
    assert_eq!(status, VmExitStatus::DebugExit(4));
}

#[test]
fn without_devices_the_window_is_empty() {
    let status = kiln_vmm::run(&config("empty"), Instant::now()).unwrap();
    // Unclaimed MMIO reads as all ones: the magic check fails.
    assert_eq!(status, VmExitStatus::DebugExit(0x7f));
}

//! virtio-serial: the driver's control messages from descriptor chains and guest memory.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    kiln_devices::fuzzing::serial_control(data);
});

//! virtio-console: the guest's output chains, written to a slow socket client.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    kiln_devices::fuzzing::console_tx(data);
});

//! qcow2 header, L1, L2 and refcount parsing (kiln's own checks) on an image as bytes.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    kiln_devices::fuzzing::qcow2_metadata(data);
});

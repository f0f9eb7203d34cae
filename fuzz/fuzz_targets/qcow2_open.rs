//! The full qcow2 open path (kiln's checks, then imago's L1/L2 handling) and reads.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    kiln_devices::fuzzing::qcow2_open_and_read(data);
});

//! virtio-net: tx and rx descriptor chains and guest memory from the fuzzer's bytes.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    kiln_devices::fuzzing::net_chains(data);
});

//! qcow2 writes on hostile images with cache=none, through imago and through the
//! extents virtio-blk's io_uring path writes in place.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    kiln_devices::fuzzing::qcow2_write(data);
});

//! detect-zeroes (QEMU's name, see [`DetectZeroes`]): an OUT request whose data is all
//! zeroes becomes a write-zeroes of its range when it is popped, before the pipeline
//! routes it, so that it is ordered as the write-zeroes it is (an unmapping one frees
//! clusters) and never takes the io_uring data path.
//!
//! Looking costs a pass over the data on the event-loop thread (not measured), paid
//! only by disks that ask for it; the look stops at the first non-zero byte.

use vm_memory::{GuestMemoryBackend, VolatileMemory};

use super::request::{Request, RequestType, Segment};
use crate::block::config::DetectZeroes;
use crate::GuestMemory;

/// Bytes compared at a time.
const PROBE: usize = 4096;

/// Turn `req` into [`RequestType::ZeroedOut`] if it is an OUT of zeroes and `mode`
/// asks for it. Buffers outside guest memory are left to the write, which reports them.
pub fn detect(mem: &GuestMemory, req: &mut Request, mode: DetectZeroes) {
    if mode == DetectZeroes::Off || req.kind != RequestType::Out || req.data_len == 0 {
        return;
    }
    if all_zero(mem, &req.data) {
        req.kind = RequestType::ZeroedOut {
            unmap: mode == DetectZeroes::Unmap,
        };
    }
}

fn all_zero(mem: &GuestMemory, segments: &[Segment]) -> bool {
    let mut buf = [0u8; PROBE];
    for seg in segments {
        for slice in mem.get_slices(seg.addr, seg.len as usize) {
            let Ok(slice) = slice else {
                return false;
            };
            let mut at = 0;
            while at < slice.len() {
                let n = (slice.len() - at).min(PROBE);
                let Ok(part) = slice.get_slice(at, n) else {
                    return false;
                };
                part.copy_to(&mut buf[..n]);
                if buf[..n].iter().any(|b| *b != 0) {
                    return false;
                }
                at += n;
            }
        }
    }
    true
}

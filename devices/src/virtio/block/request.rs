//! Parsing a virtio-blk request out of a descriptor chain (virtio 1.2 §5.2.6).
//!
//! Everything here is guest-controlled. A chain has device-readable descriptors (the
//! 16-byte header, then write/discard payload) followed by device-writable ones (read
//! payload, then the one-byte status). Parsing never panics; it reports either that
//! the chain has no usable status byte (nothing can be reported to the driver), or a
//! request, or the reason the request gets VIRTIO_BLK_S_IOERR.

use virtio_bindings::bindings::virtio_blk::*;
use virtio_queue::desc::split::Descriptor;
use vm_memory::{Address, Bytes, GuestAddress, GuestMemory, GuestMemoryBackend};

/// Size of the request header (type, reserved, sector).
pub const HEADER_LEN: usize = 16;
/// Size of one discard / write-zeroes segment.
pub const SEGMENT_LEN: usize = 16;

/// One guest buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segment {
    pub addr: GuestAddress,
    pub len: u32,
}

/// Request kinds kiln handles.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestType {
    In,
    Out,
    Flush,
    GetId,
    Discard,
    WriteZeroes,
    Unsupported(u32),
    /// Never parsed from a chain: an OUT whose data is all zeroes, stored as a
    /// write-zeroes of its range, freeing the space with `unmap` (see `zeroes`).
    ZeroedOut {
        unmap: bool,
    },
}

impl From<u32> for RequestType {
    fn from(t: u32) -> Self {
        match t {
            VIRTIO_BLK_T_IN => RequestType::In,
            VIRTIO_BLK_T_OUT => RequestType::Out,
            VIRTIO_BLK_T_FLUSH => RequestType::Flush,
            VIRTIO_BLK_T_GET_ID => RequestType::GetId,
            VIRTIO_BLK_T_DISCARD => RequestType::Discard,
            VIRTIO_BLK_T_WRITE_ZEROES => RequestType::WriteZeroes,
            other => RequestType::Unsupported(other),
        }
    }
}

/// A well-formed request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub kind: RequestType,
    pub sector: u64,
    /// Payload buffers: device-writable for In and GetId, device-readable otherwise.
    pub data: Vec<Segment>,
    pub data_len: u64,
}

/// The chain has nowhere to put a status: the request is dropped with used length 0.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChainError {
    #[error("descriptor chain has no device-writable byte for the status")]
    NoStatusByte,
    #[error("status byte at {0:#x} is outside guest memory")]
    StatusOutsideMemory(u64),
}

/// The request is malformed; the driver gets VIRTIO_BLK_S_IOERR.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    #[error("request header needs {HEADER_LEN} device-readable bytes, chain has {0}")]
    HeaderTooShort(u64),
    #[error("device-readable descriptor after a device-writable one")]
    ReadableAfterWritable,
    #[error("buffer {addr:#x}+{len} is outside guest memory")]
    OutsideMemory { addr: u64, len: u32 },
    #[error("{kind:?} request has {len} bytes of payload in the wrong direction")]
    WrongDirection { kind: RequestType, len: u64 },
    #[error("chain has {0} descriptors; the device takes {MAX_DESCRIPTORS} (SEG_MAX + 2)")]
    TooManyDescriptors(usize),
}

/// Most descriptors a request may have: the header, SEG_MAX data buffers and the
/// status. Without indirect descriptors the ring's size bounds a chain; an indirect
/// table may hold 65535, more than the host's readv/writev take (UIO_MAXIOV, 1024).
pub const MAX_DESCRIPTORS: usize = super::SEG_MAX as usize + 2;

/// Result of parsing one chain whose status byte is usable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Parsed {
    /// Where the one-byte status goes.
    pub status: GuestAddress,
    pub request: Result<Request, RequestError>,
}

fn total(segs: &[Segment]) -> u64 {
    segs.iter().map(|s| u64::from(s.len)).sum()
}

/// Parse the descriptors of one chain.
pub fn parse<M: GuestMemory + GuestMemoryBackend>(
    mem: &M,
    descs: impl IntoIterator<Item = Descriptor>,
) -> Result<Parsed, ChainError> {
    let mut readable = Vec::new();
    let mut writable: Vec<Segment> = Vec::new();
    let mut misordered = false;
    let mut count = 0;
    for d in descs {
        count += 1;
        let seg = Segment {
            addr: d.addr(),
            len: d.len(),
        };
        if d.is_write_only() {
            writable.push(seg);
        } else {
            misordered |= !writable.is_empty();
            readable.push(seg);
        }
    }

    // The status is the last device-writable byte.
    while writable.last().is_some_and(|s| s.len == 0) {
        writable.pop();
    }
    let last = writable.last_mut().ok_or(ChainError::NoStatusByte)?;
    let status = last
        .addr
        .checked_add(u64::from(last.len) - 1)
        .ok_or(ChainError::StatusOutsideMemory(last.addr.raw_value()))?;
    if !GuestMemoryBackend::check_range(mem, status, 1) {
        return Err(ChainError::StatusOutsideMemory(status.raw_value()));
    }
    last.len -= 1;

    let request = if count > MAX_DESCRIPTORS {
        Err(RequestError::TooManyDescriptors(count))
    } else {
        parse_request(mem, misordered, readable, writable)
    };
    Ok(Parsed { status, request })
}

fn parse_request<M: GuestMemoryBackend>(
    mem: &M,
    misordered: bool,
    mut readable: Vec<Segment>,
    mut writable: Vec<Segment>,
) -> Result<Request, RequestError> {
    if misordered {
        return Err(RequestError::ReadableAfterWritable);
    }
    for s in readable.iter().chain(&writable) {
        if s.len > 0 && !mem.check_range(s.addr, s.len as usize) {
            return Err(RequestError::OutsideMemory {
                addr: s.addr.raw_value(),
                len: s.len,
            });
        }
    }
    let header = take_bytes::<HEADER_LEN, M>(mem, &mut readable)?;
    let kind = RequestType::from(u32::from_le_bytes([
        header[0], header[1], header[2], header[3],
    ]));
    let mut sector = [0u8; 8];
    sector.copy_from_slice(&header[8..16]);
    let sector = u64::from_le_bytes(sector);

    readable.retain(|s| s.len > 0);
    writable.retain(|s| s.len > 0);
    let (data, wrong) = match kind {
        RequestType::In | RequestType::GetId => (writable, readable),
        _ => (readable, writable),
    };
    let wrong_len = total(&wrong);
    // Flush and unknown types carry no payload we look at; extra buffers are harmless.
    let checks_direction = !matches!(kind, RequestType::Flush | RequestType::Unsupported(_));
    if checks_direction && wrong_len > 0 {
        return Err(RequestError::WrongDirection {
            kind,
            len: wrong_len,
        });
    }
    Ok(Request {
        kind,
        sector,
        data_len: total(&data),
        data,
    })
}

/// Read `N` bytes from the front of `segs` (which may split them anywhere) and drop them.
fn take_bytes<const N: usize, M: GuestMemoryBackend>(
    mem: &M,
    segs: &mut Vec<Segment>,
) -> Result<[u8; N], RequestError> {
    let available = total(segs);
    if available < N as u64 {
        return Err(RequestError::HeaderTooShort(available));
    }
    let mut out = [0u8; N];
    let mut got = 0;
    let mut consumed = 0;
    for s in segs.iter_mut() {
        if got == N {
            break;
        }
        let n = (N - got).min(s.len as usize);
        mem.read_slice(&mut out[got..got + n], s.addr)
            .map_err(|_| RequestError::OutsideMemory {
                addr: s.addr.raw_value(),
                len: s.len,
            })?;
        got += n;
        // n <= s.len, and the address was checked to be inside memory.
        s.addr = s.addr.unchecked_add(n as u64);
        s.len -= n as u32;
        if s.len == 0 {
            consumed += 1;
        }
    }
    segs.drain(..consumed);
    Ok(out)
}

/// One discard / write-zeroes segment (virtio_blk_discard_write_zeroes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DiscardSegment {
    pub sector: u64,
    pub num_sectors: u32,
    pub flags: u32,
}

impl DiscardSegment {
    /// Decode from its 16 little-endian bytes.
    pub fn from_bytes(b: &[u8; SEGMENT_LEN]) -> Self {
        let mut sector = [0u8; 8];
        sector.copy_from_slice(&b[0..8]);
        DiscardSegment {
            sector: u64::from_le_bytes(sector),
            num_sectors: u32::from_le_bytes([b[8], b[9], b[10], b[11]]),
            flags: u32::from_le_bytes([b[12], b[13], b[14], b[15]]),
        }
    }
}

/// Read the discard / write-zeroes segments of a request's payload.
pub fn read_segments<M: GuestMemoryBackend>(
    mem: &M,
    data: &[Segment],
    count: usize,
) -> Result<Vec<DiscardSegment>, RequestError> {
    let mut segs = data.to_vec();
    (0..count)
        .map(|_| {
            take_bytes::<SEGMENT_LEN, M>(mem, &mut segs).map(|b| DiscardSegment::from_bytes(&b))
        })
        .collect()
}

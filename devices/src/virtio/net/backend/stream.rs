//! The QEMU "stream" framing passt speaks on its UNIX socket: each Ethernet frame is
//! preceded by its length as a 4-byte big-endian integer.
//!
//! The socket is non-blocking, so both directions keep partial state: received bytes
//! are buffered until a whole frame is there, and the unsent tail of an accepted frame
//! is kept and written before anything else.

use std::io::{self, IoSlice, Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;

use super::MAX_FRAME_LEN;

const LEN_BYTES: usize = 4;
/// Receive buffer: room for several maximum-size frames so a read makes progress.
const IN_BUF_LEN: usize = 4 * (LEN_BYTES + MAX_FRAME_LEN);

/// A connected, non-blocking stream carrying length-prefixed frames.
pub struct FrameStream {
    sock: UnixStream,
    inbuf: Box<[u8]>,
    in_start: usize,
    in_end: usize,
    out: Vec<u8>,
    out_pos: usize,
}

impl FrameStream {
    /// Wrap `sock`, switching it to non-blocking mode.
    pub fn new(sock: UnixStream) -> io::Result<Self> {
        sock.set_nonblocking(true)?;
        Ok(FrameStream {
            sock,
            inbuf: vec![0; IN_BUF_LEN].into_boxed_slice(),
            in_start: 0,
            in_end: 0,
            out: Vec::new(),
            out_pos: 0,
        })
    }

    /// Length of the next whole frame in the receive buffer, skipping empty frames.
    fn next_frame_len(&mut self) -> io::Result<Option<usize>> {
        loop {
            let avail = &self.inbuf[self.in_start..self.in_end];
            let Some(len_bytes) = avail.get(..LEN_BYTES) else {
                return Ok(None);
            };
            let len = u32::from_be_bytes(len_bytes.try_into().unwrap()) as usize;
            if len > MAX_FRAME_LEN {
                // The stream cannot be resynchronised after a bad length.
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("peer sent a {len}-byte frame (limit {MAX_FRAME_LEN})"),
                ));
            }
            if len == 0 {
                self.in_start += LEN_BYTES;
                continue;
            }
            return Ok((avail.len() >= LEN_BYTES + len).then_some(len));
        }
    }

    /// Receive one frame into `buf`; `WouldBlock` if no whole frame has arrived yet.
    pub fn recv(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            if let Some(len) = self.next_frame_len()? {
                let frame = &self.inbuf[self.in_start + LEN_BYTES..][..len];
                let dst = buf.get_mut(..len).ok_or_else(|| {
                    io::Error::new(io::ErrorKind::InvalidInput, "receive buffer too small")
                })?;
                dst.copy_from_slice(frame);
                self.in_start += LEN_BYTES + len;
                return Ok(len);
            }
            if self.in_start == self.in_end {
                self.in_start = 0;
                self.in_end = 0;
            } else if self.in_end + LEN_BYTES + MAX_FRAME_LEN > self.inbuf.len() {
                // Not enough room behind the partial frame for the largest frame: compact.
                self.inbuf.copy_within(self.in_start..self.in_end, 0);
                self.in_end -= self.in_start;
                self.in_start = 0;
            }
            match self.sock.read(&mut self.inbuf[self.in_end..]) {
                Ok(0) => {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "peer closed the connection",
                    ))
                }
                Ok(n) => self.in_end += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }

    /// Send one frame. `WouldBlock`: not taken (an earlier frame is still being written).
    pub fn send(&mut self, frame: &[u8]) -> io::Result<()> {
        if frame.is_empty() || frame.len() > MAX_FRAME_LEN {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("frame of {} bytes cannot be sent", frame.len()),
            ));
        }
        self.flush()?;
        let len = (frame.len() as u32).to_be_bytes();
        let total = LEN_BYTES + frame.len();
        let mut sent = 0;
        while sent < total {
            let res = if sent < LEN_BYTES {
                self.sock
                    .write_vectored(&[IoSlice::new(&len[sent..]), IoSlice::new(frame)])
            } else {
                self.sock.write(&frame[sent - LEN_BYTES..])
            };
            match res {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => sent += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock && sent == 0 => return Err(e),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(e),
            }
        }
        if sent < total {
            // Part of the frame is on the wire: the rest must follow before anything else.
            self.out.clear();
            self.out_pos = 0;
            if sent < LEN_BYTES {
                self.out.extend_from_slice(&len[sent..]);
                self.out.extend_from_slice(frame);
            } else {
                self.out.extend_from_slice(&frame[sent - LEN_BYTES..]);
            }
        }
        Ok(())
    }

    pub fn has_pending_output(&self) -> bool {
        self.out_pos < self.out.len()
    }

    /// Write the unsent tail of the last frame; `WouldBlock` if some is left.
    pub fn flush(&mut self) -> io::Result<()> {
        while self.out_pos < self.out.len() {
            match self.sock.write(&self.out[self.out_pos..]) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => self.out_pos += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        self.out.clear();
        self.out_pos = 0;
        Ok(())
    }
}

impl AsRawFd for FrameStream {
    fn as_raw_fd(&self) -> RawFd {
        self.sock.as_raw_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn framed(frame: &[u8]) -> Vec<u8> {
        let mut v = (frame.len() as u32).to_be_bytes().to_vec();
        v.extend_from_slice(frame);
        v
    }

    #[test]
    fn reassembles_frames_split_across_reads() {
        let (a, mut peer) = UnixStream::pair().unwrap();
        let mut s = FrameStream::new(a).unwrap();
        let f1: Vec<u8> = (0..100u8).collect();
        let f2: Vec<u8> = vec![0xab; 3000];
        let mut wire = framed(&f1);
        wire.extend(framed(&[]));
        wire.extend(framed(&f2));
        let mut buf = vec![0; MAX_FRAME_LEN];
        // Dribble the bytes in odd-sized pieces; a frame appears only when complete.
        let mut got = Vec::new();
        for piece in wire.chunks(7) {
            peer.write_all(piece).unwrap();
            loop {
                match s.recv(&mut buf) {
                    Ok(n) => got.push(buf[..n].to_vec()),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) => panic!("{e}"),
                }
            }
        }
        assert_eq!(got, vec![f1, f2]);
    }

    #[test]
    fn oversize_length_and_eof_are_errors() {
        let (a, mut peer) = UnixStream::pair().unwrap();
        let mut s = FrameStream::new(a).unwrap();
        peer.write_all(&((MAX_FRAME_LEN as u32 + 1).to_be_bytes()))
            .unwrap();
        let mut buf = vec![0; MAX_FRAME_LEN];
        assert_eq!(
            s.recv(&mut buf).unwrap_err().kind(),
            io::ErrorKind::InvalidData
        );

        let (a, peer) = UnixStream::pair().unwrap();
        let mut s = FrameStream::new(a).unwrap();
        drop(peer);
        assert_eq!(
            s.recv(&mut buf).unwrap_err().kind(),
            io::ErrorKind::UnexpectedEof
        );
    }

    #[test]
    fn partial_writes_are_completed_in_order() {
        let (a, peer) = UnixStream::pair().unwrap();
        let mut s = FrameStream::new(a).unwrap();
        let frames: Vec<Vec<u8>> = (0..64u32)
            .map(|i| vec![i as u8; 1000 + (i as usize * 997) % MAX_FRAME_LEN])
            .collect();
        // Send until the socket is full; the frame that does not fit is refused, not lost.
        let mut accepted = 0;
        while accepted < frames.len() {
            match s.send(&frames[accepted]) {
                Ok(()) => accepted += 1,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => panic!("{e}"),
            }
        }
        assert!(accepted < frames.len(), "socket buffer never filled");
        // Drain the peer while pushing the rest; the byte stream must be exact.
        let reader = std::thread::spawn(move || {
            let mut peer = peer;
            let mut all = Vec::new();
            peer.read_to_end(&mut all).unwrap();
            all
        });
        while accepted < frames.len() || s.has_pending_output() {
            let res = if accepted < frames.len() {
                s.send(&frames[accepted]).map(|()| accepted += 1)
            } else {
                s.flush()
            };
            match res {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => std::thread::yield_now(),
                Err(e) => panic!("{e}"),
            }
        }
        drop(s);
        let wire = reader.join().unwrap();
        let expected: Vec<u8> = frames.iter().flat_map(|f| framed(f)).collect();
        assert_eq!(wire.len(), expected.len());
        assert!(wire == expected, "byte stream differs");
    }
}

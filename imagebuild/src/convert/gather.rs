//! Writes that continue one another, gathered into one system call: a conversion
//! writes its clusters one after the other, and a write per 64 KiB cluster (with a
//! seek before each) cost more than the copying itself.

use std::io::{self, Seek, SeekFrom, Write};

/// Bytes gathered before they are written.
const MAX_GATHER: usize = 2 << 20;

#[derive(Default)]
pub struct Gather {
    /// File offset of `buf`'s first byte.
    at: u64,
    buf: Vec<u8>,
}

impl Gather {
    /// Write `data` at `at` of `out`, now or with the writes that follow it.
    pub fn write_at<W: Write + Seek>(
        &mut self,
        out: &mut W,
        at: u64,
        data: &[u8],
    ) -> io::Result<()> {
        let continues = at == self.at + self.buf.len() as u64;
        if !self.buf.is_empty() && (!continues || self.buf.len() + data.len() > MAX_GATHER) {
            self.flush(out)?;
        }
        if data.len() >= MAX_GATHER {
            out.seek(SeekFrom::Start(at))?;
            return out.write_all(data);
        }
        if self.buf.is_empty() {
            self.at = at;
        }
        self.buf.extend_from_slice(data);
        Ok(())
    }

    /// Write what is gathered.
    pub fn flush<W: Write + Seek>(&mut self, out: &mut W) -> io::Result<()> {
        if !self.buf.is_empty() {
            out.seek(SeekFrom::Start(self.at))?;
            out.write_all(&self.buf)?;
            self.buf.clear();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A file that counts its writes.
    #[derive(Default)]
    struct Counted {
        file: io::Cursor<Vec<u8>>,
        writes: usize,
    }
    impl Write for Counted {
        fn write(&mut self, b: &[u8]) -> io::Result<usize> {
            self.writes += 1;
            self.file.write_all(b)?;
            Ok(b.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }
    impl Seek for Counted {
        fn seek(&mut self, to: SeekFrom) -> io::Result<u64> {
            self.file.seek(to)
        }
    }

    #[test]
    fn continuing_writes_go_together_and_land_where_asked() {
        let mut out = Counted::default();
        let mut g = Gather::default();
        g.write_at(&mut out, 10, b"abc").unwrap();
        g.write_at(&mut out, 13, b"def").unwrap();
        assert_eq!(out.writes, 0, "gathered, not written yet");
        g.write_at(&mut out, 100, b"xyz").unwrap(); // a gap: the first run goes
        assert_eq!(out.writes, 1);
        g.write_at(&mut out, 2, b"back").unwrap(); // backwards
        g.flush(&mut out).unwrap();
        g.flush(&mut out).unwrap(); // nothing left: no write
        assert_eq!(out.writes, 3);
        let bytes = out.file.into_inner();
        assert_eq!(&bytes[10..16], b"abcdef");
        assert_eq!(&bytes[100..103], b"xyz");
        assert_eq!(&bytes[2..6], b"back");
    }

    #[test]
    fn runs_are_cut_at_the_limit_and_big_writes_go_straight() {
        let mut out = Counted::default();
        let mut g = Gather::default();
        let half = vec![1u8; MAX_GATHER / 2];
        for i in 0..4 {
            g.write_at(&mut out, (i * half.len()) as u64, &half)
                .unwrap();
        }
        g.flush(&mut out).unwrap();
        assert_eq!(out.writes, 2);
        let big = vec![2u8; MAX_GATHER];
        g.write_at(&mut out, 7, &big).unwrap();
        assert_eq!(out.writes, 3, "a write of the limit or more is not copied");
        let bytes = out.file.into_inner();
        assert_eq!(bytes.len(), 2 * MAX_GATHER);
        let (before, rest) = bytes.split_at(7);
        let (overwritten, after) = rest.split_at(MAX_GATHER);
        assert!(overwritten.iter().all(|b| *b == 2));
        assert!(before.iter().chain(after).all(|b| *b == 1));
    }
}

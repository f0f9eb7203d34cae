//! A writer for the "newc" cpio format (magic `070701`), the format the Linux kernel
//! unpacks from an initramfs (Documentation/driver-api/early-userspace/buffer-format.rst).
//! Small enough that a crate would add more than it saves.

use std::io::{self, Write};

const MAGIC: &[u8] = b"070701";
const HEADER_LEN: usize = 110;
const TRAILER: &str = "TRAILER!!!";
const MODE_FILE: u32 = 0o100000;
const MODE_DIR: u32 = 0o040000;

/// Writes a newc archive to `W`. Call [`NewcWriter::finish`] to append the trailer.
pub struct NewcWriter<W: Write> {
    out: W,
    next_ino: u32,
    written: u64,
}

impl<W: Write> NewcWriter<W> {
    pub fn new(out: W) -> Self {
        // Inode numbers only matter for hard links (nlink > 1), which we never write.
        NewcWriter {
            out,
            next_ino: 1,
            written: 0,
        }
    }

    /// Adds a directory entry. `path` is relative to the archive root, without a leading `/`.
    pub fn add_dir(&mut self, path: &str, perm: u32) -> io::Result<()> {
        self.entry(path, MODE_DIR | (perm & 0o7777), 2, &[])
    }

    /// Adds a regular file. `path` is relative to the archive root, without a leading `/`.
    pub fn add_file(&mut self, path: &str, perm: u32, data: &[u8]) -> io::Result<()> {
        self.entry(path, MODE_FILE | (perm & 0o7777), 1, data)
    }

    /// Writes the trailer and returns the inner writer.
    pub fn finish(mut self) -> io::Result<W> {
        self.entry(TRAILER, 0, 1, &[])?;
        Ok(self.out)
    }

    fn entry(&mut self, name: &str, mode: u32, nlink: u32, data: &[u8]) -> io::Result<()> {
        let size = u32::try_from(data.len())
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "cpio member over 4 GiB"))?;
        if name.is_empty() || name.as_bytes().contains(&0) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("invalid cpio member name {name:?}"),
            ));
        }
        let ino = if name == TRAILER { 0 } else { self.next_ino };
        self.next_ino += 1;
        let namesize = name.len() as u32 + 1;
        let fields = [
            ino, mode, 0, 0, nlink, 0, size, 0, 0, 0, 0, namesize, 0, // check: unused by newc
        ];
        let mut header = Vec::with_capacity(HEADER_LEN + name.len() + 4);
        header.extend_from_slice(MAGIC);
        for f in fields {
            header.extend_from_slice(format!("{f:08X}").as_bytes());
        }
        header.extend_from_slice(name.as_bytes());
        header.push(0);
        pad4(&mut header, self.written);
        self.out.write_all(&header)?;
        self.written += header.len() as u64;
        self.out.write_all(data)?;
        self.written += data.len() as u64;
        let mut pad = Vec::new();
        pad4(&mut pad, self.written);
        self.out.write_all(&pad)?;
        self.written += pad.len() as u64;
        Ok(())
    }
}

/// Pads `buf` with NULs so that `base + buf.len()` is a multiple of 4.
fn pad4(buf: &mut Vec<u8>, base: u64) {
    while (base + buf.len() as u64) % 4 != 0 {
        buf.push(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_fields_and_alignment() {
        let mut w = NewcWriter::new(Vec::new());
        w.add_file("a", 0o644, b"xyz").unwrap();
        let out = w.finish().unwrap();
        assert_eq!(&out[..6], b"070701");
        // mode field is the second one.
        assert_eq!(&out[14..22], b"000081A4");
        // filesize is field 7.
        assert_eq!(&out[54..62], b"00000003");
        // name "a\0" at 110, padded to 112, then data, padded to 116.
        assert_eq!(&out[110..112], b"a\0");
        assert_eq!(&out[112..115], b"xyz");
        assert_eq!(out[115], 0);
        assert_eq!(&out[116..122], b"070701");
        assert_eq!(out.len() % 4, 0);
        assert!(out.windows(10).any(|w| w == b"TRAILER!!!"));
    }

    #[test]
    fn rejects_nul_in_name() {
        let mut w = NewcWriter::new(Vec::new());
        assert!(w.add_file("a\0b", 0o644, b"").is_err());
    }
}

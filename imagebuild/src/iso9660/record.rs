//! ISO 9660 directory records (ECMA-119 9.1). Every field is bounds-checked: the image is
//! untrusted input.

use super::IsoError;

pub const FLAG_DIRECTORY: u8 = 0x02;
pub const FLAG_MULTI_EXTENT: u8 = 0x80;

/// One parsed directory record.
#[derive(Debug, Clone)]
pub struct Record<'a> {
    pub extent: u32,
    pub size: u32,
    pub flags: u8,
    /// The raw file identifier (d-characters or UCS-2 for Joliet).
    pub ident: &'a [u8],
    /// System use area (where Rock Ridge entries live).
    pub system_use: &'a [u8],
}

impl Record<'_> {
    pub fn is_dir(&self) -> bool {
        self.flags & FLAG_DIRECTORY != 0
    }

    /// `.` and `..` are single bytes 0 and 1.
    pub fn is_self_or_parent(&self) -> bool {
        self.ident == [0] || self.ident == [1]
    }
}

/// Parses the record at the start of `buf`; `None` for a zero length byte (padding up to
/// the next sector).
pub fn parse(buf: &[u8]) -> Result<Option<Record<'_>>, IsoError> {
    let Some(&len) = buf.first() else {
        return Ok(None);
    };
    if len == 0 {
        return Ok(None);
    }
    let len = usize::from(len);
    if len < 34 || len > buf.len() {
        return Err(IsoError::Corrupt(format!(
            "directory record of length {len}"
        )));
    }
    let rec = &buf[..len];
    let ident_len = usize::from(rec[32]);
    let ident_end = 33 + ident_len;
    if ident_end > len {
        return Err(IsoError::Corrupt("file identifier past its record".into()));
    }
    // A padding byte follows an even-length identifier.
    let su_start = (ident_end + (ident_len + 1) % 2).min(len);
    Ok(Some(Record {
        extent: u32::from_le_bytes(rec[2..6].try_into().expect("4 bytes")),
        size: u32::from_le_bytes(rec[10..14].try_into().expect("4 bytes")),
        flags: rec[25],
        ident: &rec[33..ident_end],
        system_use: &rec[su_start..],
    }))
}

/// The plain ISO 9660 name: version (`;1`) and a trailing `.` removed.
pub fn plain_name(ident: &[u8]) -> String {
    let s = String::from_utf8_lossy(ident);
    let s = s.split(';').next().unwrap_or("");
    s.strip_suffix('.').unwrap_or(s).to_string()
}

/// A Joliet name: UCS-2 big endian, version removed.
pub fn joliet_name(ident: &[u8]) -> String {
    let units: Vec<u16> = ident
        .chunks_exact(2)
        .map(|c| u16::from_be_bytes([c[0], c[1]]))
        .collect();
    let s = String::from_utf16_lossy(&units);
    let s = s.split(';').next().unwrap_or("");
    s.strip_suffix('.').unwrap_or(s).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert_eq!(plain_name(b"VMLINUZ.;1"), "VMLINUZ");
        assert_eq!(plain_name(b"INITRD.GZ;1"), "INITRD.GZ");
        assert_eq!(joliet_name(&[0, b'a', 0, b';', 0, b'1']), "a");
    }

    #[test]
    fn short_or_overlong_records_are_errors() {
        assert!(parse(&[10, 0, 0]).is_err());
        let mut r = [0u8; 34];
        r[0] = 34;
        r[32] = 5; // identifier longer than the record
        assert!(parse(&r).is_err());
        assert!(parse(&[0, 1, 2]).unwrap().is_none());
    }
}

//! Rock Ridge alternate names (RRIP `NM` entries) from the SUSP entries of a directory
//! record, following `CE` continuation areas.

use super::{IsoError, IsoImage};

/// Whether the root's `.` record starts with the SUSP `SP` indicator (SUSP 5.3), which
/// says the tree carries SUSP/Rock Ridge entries.
pub fn has_sp(system_use: &[u8]) -> bool {
    system_use.len() >= 7 && &system_use[..2] == b"SP" && system_use[4..6] == [0xBE, 0xEF]
}

/// The Rock Ridge name of a record, if it has one.
pub fn nm_name(iso: &IsoImage, system_use: &[u8]) -> Result<Option<String>, IsoError> {
    let mut name: Vec<u8> = Vec::new();
    let mut found = false;
    let mut area = system_use.to_vec();
    // A hostile image could chain continuation areas forever.
    for _ in 0..16 {
        let mut next = None;
        let mut pos = 0;
        while pos + 4 <= area.len() {
            let sig = &area[pos..pos + 2];
            let len = usize::from(area[pos + 2]);
            if len < 4 || pos + len > area.len() {
                break;
            }
            let entry = &area[pos..pos + len];
            match sig {
                b"NM" if len >= 5 => {
                    found = true;
                    name.extend_from_slice(&entry[5..]);
                }
                b"CE" if len >= 28 => {
                    let block = u32::from_le_bytes(entry[4..8].try_into().expect("4 bytes"));
                    let offset = u32::from_le_bytes(entry[12..16].try_into().expect("4 bytes"));
                    let size = u32::from_le_bytes(entry[20..24].try_into().expect("4 bytes"));
                    next = Some((block, offset, size));
                }
                b"ST" => break,
                _ => {}
            }
            pos += len;
        }
        match next {
            Some((block, offset, size)) => {
                let start = u64::from(block) * super::SECTOR + u64::from(offset);
                area = iso.read_at(start, u64::from(size).min(super::SECTOR))?;
            }
            None => break,
        }
    }
    Ok(found.then(|| String::from_utf8_lossy(&name).into_owned()))
}

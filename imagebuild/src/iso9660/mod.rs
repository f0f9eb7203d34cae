//! A small read-only ISO 9660 reader: enough to find and copy files from installer
//! media. Names come from Rock Ridge when present, else Joliet, else plain ISO 9660
//! (matched case-insensitively, `.`/`-` as `_`, as mastering tools map them). No crate
//! fitted: the maintained ones either write only or pull in far more than this needs.

mod record;
mod rockridge;

use std::fs::File;
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use record::{joliet_name, plain_name, Record, FLAG_MULTI_EXTENT};

pub const SECTOR: u64 = 2048;
const FIRST_DESCRIPTOR: u64 = 16;
const MAX_DESCRIPTORS: u64 = 64;
const MAX_DIR_SIZE: u64 = 16 << 20;

#[derive(Debug, thiserror::Error)]
pub enum IsoError {
    #[error("cannot read ISO image {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("{path} is not an ISO 9660 image: {reason}")]
    NotIso { path: PathBuf, reason: String },
    #[error("corrupt ISO 9660 image: {0}")]
    Corrupt(String),
    #[error("no {0} on the ISO image")]
    NotFound(String),
}

/// Which naming the image's directory tree is read with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Naming {
    RockRidge,
    Joliet,
    Plain,
}

/// A file or directory on the image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub name: String,
    pub extent: u32,
    pub size: u32,
    pub is_dir: bool,
}

pub struct IsoImage {
    file: File,
    path: PathBuf,
    len: u64,
    root: Entry,
    naming: Naming,
}

impl IsoImage {
    pub fn open(path: &Path) -> Result<IsoImage, IsoError> {
        let io_err = |source| IsoError::Io {
            path: path.to_path_buf(),
            source,
        };
        let file = File::open(path).map_err(io_err)?;
        let len = file.metadata().map_err(io_err)?.len();
        let not_iso = |reason: &str| IsoError::NotIso {
            path: path.to_path_buf(),
            reason: reason.to_string(),
        };
        let mut iso = IsoImage {
            file,
            path: path.to_path_buf(),
            len,
            root: Entry {
                name: String::new(),
                extent: 0,
                size: 0,
                is_dir: true,
            },
            naming: Naming::Plain,
        };
        let mut primary = None;
        let mut joliet = None;
        for n in FIRST_DESCRIPTOR..FIRST_DESCRIPTOR + MAX_DESCRIPTORS {
            if (n + 1) * SECTOR > len {
                return Err(not_iso(
                    "truncated before the volume descriptor set terminator",
                ));
            }
            let d = iso.read_at(n * SECTOR, SECTOR)?;
            if &d[1..6] != b"CD001" {
                return Err(not_iso("no CD001 volume descriptor at sector 16"));
            }
            match d[0] {
                1 if primary.is_none() => primary = Some(d),
                // Joliet: a supplementary descriptor with a UCS-2 escape sequence.
                2 if matches!(&d[88..91], b"%/@" | b"%/C" | b"%/E") => joliet = Some(d),
                255 => break,
                _ => {}
            }
        }
        let primary = primary.ok_or_else(|| not_iso("no primary volume descriptor"))?;
        let root_of = |d: &[u8]| -> Result<Entry, IsoError> {
            let r = record::parse(&d[156..190])?
                .ok_or(IsoError::Corrupt("empty root record".into()))?;
            Ok(Entry {
                name: String::new(),
                extent: r.extent,
                size: r.size,
                is_dir: true,
            })
        };
        iso.root = root_of(&primary)?;
        // Rock Ridge is announced by SP in the system use area of the root's "." record.
        let first = iso.read_at(u64::from(iso.root.extent) * SECTOR, SECTOR)?;
        let rr = record::parse(&first)?.is_some_and(|r| rockridge::has_sp(r.system_use));
        if rr {
            iso.naming = Naming::RockRidge;
        } else if let Some(j) = joliet {
            iso.root = root_of(&j)?;
            iso.naming = Naming::Joliet;
        }
        Ok(iso)
    }

    pub fn naming(&self) -> Naming {
        self.naming
    }

    /// Reads `len` bytes at `offset`, refusing reads past the end of the image.
    pub(crate) fn read_at(&self, offset: u64, len: u64) -> Result<Vec<u8>, IsoError> {
        if offset.checked_add(len).is_none_or(|end| end > self.len) {
            return Err(IsoError::Corrupt(format!(
                "extent at byte {offset} (+{len}) past the end of the {}-byte image",
                self.len
            )));
        }
        let mut buf = vec![0u8; len as usize];
        self.file
            .read_exact_at(&mut buf, offset)
            .map_err(|source| IsoError::Io {
                path: self.path.clone(),
                source,
            })?;
        Ok(buf)
    }

    /// Lists a directory.
    pub fn list(&self, dir: &Entry) -> Result<Vec<Entry>, IsoError> {
        if !dir.is_dir || u64::from(dir.size) > MAX_DIR_SIZE {
            return Err(IsoError::Corrupt(format!("bad directory `{}`", dir.name)));
        }
        let data = self.read_at(u64::from(dir.extent) * SECTOR, u64::from(dir.size))?;
        let mut out = Vec::new();
        let mut pos = 0usize;
        while pos < data.len() {
            match record::parse(&data[pos..])? {
                Some(r) => {
                    pos += usize::from(data[pos]);
                    if !r.is_self_or_parent() {
                        out.push(self.entry(&r)?);
                    }
                }
                // Records do not cross sectors: skip to the next one.
                None => pos = (pos / SECTOR as usize + 1) * SECTOR as usize,
            }
        }
        Ok(out)
    }

    fn entry(&self, r: &Record<'_>) -> Result<Entry, IsoError> {
        let name = match self.naming {
            Naming::RockRidge => match rockridge::nm_name(self, r.system_use)? {
                Some(n) => n,
                None => plain_name(r.ident),
            },
            Naming::Joliet => joliet_name(r.ident),
            Naming::Plain => plain_name(r.ident),
        };
        if r.flags & FLAG_MULTI_EXTENT != 0 {
            return Err(IsoError::Corrupt(format!(
                "multi-extent file `{name}` is not supported"
            )));
        }
        Ok(Entry {
            name,
            extent: r.extent,
            size: r.size,
            is_dir: r.is_dir(),
        })
    }

    /// Finds `path` (`/`-separated, leading `/` optional).
    pub fn lookup(&self, path: &str) -> Result<Entry, IsoError> {
        let mut cur = self.root.clone();
        for part in path.split('/').filter(|p| !p.is_empty()) {
            if !cur.is_dir {
                return Err(IsoError::NotFound(path.to_string()));
            }
            let entries = self.list(&cur)?;
            cur = entries
                .iter()
                .find(|e| e.name == part)
                .or_else(|| entries.iter().find(|e| fold(&e.name) == fold(part)))
                .cloned()
                .ok_or_else(|| IsoError::NotFound(path.to_string()))?;
        }
        Ok(cur)
    }

    /// Copies a file's contents to `out`.
    pub fn copy_to(&self, entry: &Entry, out: &mut impl Write) -> Result<u64, IsoError> {
        let mut offset = u64::from(entry.extent) * SECTOR;
        let mut left = u64::from(entry.size);
        while left > 0 {
            let n = left.min(1 << 20);
            let buf = self.read_at(offset, n)?;
            out.write_all(&buf).map_err(|source| IsoError::Io {
                path: PathBuf::from("<output>"),
                source,
            })?;
            offset += n;
            left -= n;
        }
        Ok(u64::from(entry.size))
    }
}

/// Name folding for plain ISO 9660 names: case-insensitive, and the characters mastering
/// tools replace (`.` in directory names, `-`) compared as `_`.
fn fold(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '_'
            }
        })
        .collect()
}

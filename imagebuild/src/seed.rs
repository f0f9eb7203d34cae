//! cloud-init NoCloud seed images: a FAT file system labelled `cidata` holding
//! `user-data`, `meta-data` and optionally `network-config` in its root, which
//! cloud-init's NoCloud datasource finds by label. Built with `fatfs`, the maintained
//! pure-Rust FAT implementation, in memory and then written atomically.

use std::io::{self, Cursor, Write};
use std::path::{Path, PathBuf};

use crate::atomic::{write_atomically, AtomicError};

/// The volume label NoCloud looks for.
pub const LABEL: &str = "cidata";

#[derive(Debug, thiserror::Error)]
pub enum SeedError {
    #[error("cannot build the FAT file system: {0}")]
    Fat(io::Error),
    #[error("cannot add {name} to the seed: {source}")]
    AddFile { name: String, source: io::Error },
    #[error("cannot write seed image {path}: {source}")]
    Write { path: PathBuf, source: io::Error },
    #[error("seed contents too large ({0} bytes)")]
    TooLarge(u64),
}

/// File times: 1980-01-01 00:00, the FAT epoch, so the same inputs give the same image.
#[derive(Debug)]
struct FixedTime;

impl fatfs::TimeProvider for FixedTime {
    fn get_current_date(&self) -> fatfs::Date {
        fatfs::Date {
            year: 1980,
            month: 1,
            day: 1,
        }
    }
    fn get_current_date_time(&self) -> fatfs::DateTime {
        fatfs::DateTime {
            date: self.get_current_date(),
            time: fatfs::Time {
                hour: 0,
                min: 0,
                sec: 0,
                millis: 0,
            },
        }
    }
}

static FIXED_TIME: FixedTime = FixedTime;

/// Volume serial number derived from the contents (FNV-1a), so different seeds differ.
fn volume_id(entries: &[(&str, &[u8])]) -> u32 {
    let mut h: u32 = 0x811c9dc5;
    for (name, data) in entries {
        for b in name.bytes().chain(data.iter().copied()) {
            h ^= u32::from(b);
            h = h.wrapping_mul(0x01000193);
        }
    }
    h
}

/// The files of a NoCloud seed.
pub struct SeedFiles<'a> {
    pub user_data: &'a [u8],
    pub meta_data: &'a [u8],
    pub network_config: Option<&'a [u8]>,
}

/// Builds the seed's FAT image in memory.
pub fn build_image(files: &SeedFiles<'_>) -> Result<Vec<u8>, SeedError> {
    let mut entries: Vec<(&str, &[u8])> = vec![
        ("user-data", files.user_data),
        ("meta-data", files.meta_data),
    ];
    if let Some(n) = files.network_config {
        entries.push(("network-config", n));
    }
    let payload: u64 = entries.iter().map(|(_, d)| d.len() as u64).sum();
    // Room for the data rounded to clusters plus FAT and directory overhead; at least
    // 1 MiB, which makes a FAT12 file system like cloud-localds's.
    let size = (payload * 2 + (512 << 10))
        .max(1 << 20)
        .next_multiple_of(512);
    if size > u64::from(u32::MAX) * 512 {
        return Err(SeedError::TooLarge(payload));
    }
    let mut disk = Cursor::new(vec![0u8; size as usize]);
    let mut label = [b' '; 11];
    label[..LABEL.len()].copy_from_slice(LABEL.as_bytes());
    fatfs::format_volume(
        &mut disk,
        fatfs::FormatVolumeOptions::new()
            .volume_label(label)
            .volume_id(volume_id(&entries)),
    )
    .map_err(SeedError::Fat)?;
    {
        let fs = fatfs::FileSystem::new(
            &mut disk,
            fatfs::FsOptions::new().time_provider(&FIXED_TIME),
        )
        .map_err(SeedError::Fat)?;
        for (name, data) in entries {
            let root = fs.root_dir();
            let add = || -> io::Result<()> {
                let mut f = root.create_file(name)?;
                f.truncate()?;
                f.write_all(data)?;
                f.flush()
            };
            add().map_err(|source| SeedError::AddFile {
                name: name.to_string(),
                source,
            })?;
        }
        fs.unmount().map_err(SeedError::Fat)?;
    }
    Ok(disk.into_inner())
}

/// Writes the seed image to `output` (atomically).
pub fn create(output: &Path, files: &SeedFiles<'_>) -> Result<(), SeedError> {
    let image = build_image(files)?;
    write_atomically(output, |f| f.write_all(&image)).map_err(|e| match e {
        AtomicError::Write(source)
        | AtomicError::Create { source, .. }
        | AtomicError::Persist { source, .. } => SeedError::Write {
            path: output.to_path_buf(),
            source,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_back_with_fatfs() {
        let img = build_image(&SeedFiles {
            user_data: b"#cloud-config\n",
            meta_data: b"instance-id: x\n",
            network_config: None,
        })
        .unwrap();
        let fs = fatfs::FileSystem::new(Cursor::new(img), fatfs::FsOptions::new()).unwrap();
        assert_eq!(fs.volume_label().trim_end(), "cidata");
        let names: Vec<String> = fs
            .root_dir()
            .iter()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["user-data", "meta-data"]);
    }
}

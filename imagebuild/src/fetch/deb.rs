//! Extracting files from a Debian package: an `ar` archive whose `data.tar.xz` (or
//! `.gz`, or uncompressed) holds the files (`ar`, `lzma-rs` and `tar` crates).

use std::collections::BTreeMap;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum DebError {
    #[error("{path}: {message}")]
    Format { path: PathBuf, message: String },
    #[error("{path}: no {missing} in the package's data")]
    Missing { path: PathBuf, missing: String },
}

/// Reads the files at `wanted` (paths inside data.tar, without `./`) from the .deb at
/// `path`, each at most `limit` bytes.
pub fn extract_files(
    path: &Path,
    wanted: &[String],
    limit: u64,
) -> Result<BTreeMap<String, Vec<u8>>, DebError> {
    let fmt = |message: String| DebError::Format {
        path: path.to_path_buf(),
        message,
    };
    let file = std::fs::File::open(path).map_err(|e| fmt(e.to_string()))?;
    let mut ar = ar::Archive::new(io::BufReader::new(file));
    while let Some(entry) = ar.next_entry() {
        let mut entry = entry.map_err(|e| fmt(format!("bad ar archive: {e}")))?;
        let name = String::from_utf8_lossy(entry.header().identifier()).into_owned();
        let data: Box<dyn Read + '_> = match name.as_str() {
            "data.tar.xz" => {
                // lzma-rs decodes from a BufRead into a Write, so the tar is decoded in
                // memory: tens of MB for an installer package.
                let mut compressed = Vec::new();
                entry
                    .read_to_end(&mut compressed)
                    .map_err(|e| fmt(e.to_string()))?;
                let mut decoded = Vec::new();
                lzma_rs::xz_decompress(&mut &compressed[..], &mut decoded)
                    .map_err(|e| fmt(format!("bad data.tar.xz: {e:?}")))?;
                Box::new(io::Cursor::new(decoded))
            }
            "data.tar.gz" => Box::new(flate2::read::GzDecoder::new(entry)),
            "data.tar" => Box::new(entry),
            n if n.starts_with("data.tar") => {
                return Err(fmt(format!("unsupported compression of {n}")))
            }
            _ => continue,
        };
        return read_tar(path, data, wanted, limit);
    }
    Err(fmt("no data.tar member".into()))
}

fn read_tar(
    path: &Path,
    data: impl Read,
    wanted: &[String],
    limit: u64,
) -> Result<BTreeMap<String, Vec<u8>>, DebError> {
    let fmt = |message: String| DebError::Format {
        path: path.to_path_buf(),
        message,
    };
    let mut found = BTreeMap::new();
    let mut tar = tar::Archive::new(data);
    for entry in tar
        .entries()
        .map_err(|e| fmt(format!("bad data.tar: {e}")))?
    {
        let mut entry = entry.map_err(|e| fmt(format!("bad data.tar: {e}")))?;
        let name = entry
            .path()
            .map_err(|e| fmt(format!("bad path in data.tar: {e}")))?
            .to_string_lossy()
            .trim_start_matches("./")
            .to_string();
        if !wanted.contains(&name) || !entry.header().entry_type().is_file() {
            continue;
        }
        if entry.size() > limit {
            return Err(fmt(format!("{name} is larger than {limit} bytes")));
        }
        let mut buf = Vec::with_capacity(entry.size() as usize);
        entry
            .read_to_end(&mut buf)
            .map_err(|e| fmt(format!("reading {name}: {e}")))?;
        found.insert(name, buf);
    }
    for w in wanted {
        if !found.contains_key(w) {
            return Err(DebError::Missing {
                path: path.to_path_buf(),
                missing: w.clone(),
            });
        }
    }
    Ok(found)
}

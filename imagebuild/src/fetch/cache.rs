//! A content-addressed download cache: `<cache>/blobs/sha256/<hex>`. A cached file is
//! used only if its SHA256 still matches; otherwise it is fetched again. A download whose
//! hash or size differs from what the signed index says is refused.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use super::http::{download, HttpError};

#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error("cache {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error(transparent)]
    Http(#[from] HttpError),
    #[error("{url}: SHA256 {got} does not match {want} from the signed index; refusing it")]
    HashMismatch {
        url: String,
        want: String,
        got: String,
    },
    #[error("{url}: {got} bytes, but the signed index says {want}; refusing it")]
    SizeMismatch { url: String, want: u64, got: u64 },
}

/// `${KILN_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/kiln}`.
pub fn default_cache_dir() -> Option<PathBuf> {
    let nonempty = |k| {
        std::env::var_os(k)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    nonempty("KILN_CACHE_DIR")
        .or_else(|| nonempty("XDG_CACHE_HOME").map(|d| d.join("kiln")))
        .or_else(|| nonempty("HOME").map(|h| h.join(".cache/kiln")))
}

pub fn sha256_hex(reader: &mut impl Read) -> io::Result<String> {
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = reader.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(h.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

/// Download limit when the index gives no size.
const MAX_UNSIZED: u64 = 4 << 30;

pub struct Cache {
    root: PathBuf,
}

impl Cache {
    pub fn new(root: PathBuf) -> Cache {
        Cache { root }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn io(&self, path: &Path) -> impl Fn(io::Error) -> CacheError + '_ {
        let path = path.to_path_buf();
        move |source| CacheError::Io {
            path: path.clone(),
            source,
        }
    }

    /// The path of the verified file with `sha256` (and `size`, when the index gives
    /// one), downloading `url` if it is not cached or the cached copy is damaged.
    pub fn get(&self, url: &str, sha256: &str, size: Option<u64>) -> Result<PathBuf, CacheError> {
        let sha256 = sha256.to_ascii_lowercase();
        let dir = self.root.join("blobs/sha256");
        let path = dir.join(&sha256);
        if path.is_file() {
            let got = File::open(&path)
                .and_then(|mut f| sha256_hex(&mut f))
                .map_err(self.io(&path))?;
            if got == sha256 {
                log::info!("cached: {url} ({})", path.display());
                return Ok(path);
            }
            log::warn!(
                "cached copy of {url} at {} is damaged (SHA256 {got}); fetching it again",
                path.display()
            );
            eprintln!(
                "kiln: cached {} is damaged; fetching it again",
                path.display()
            );
            std::fs::remove_file(&path).map_err(self.io(&path))?;
        }
        std::fs::create_dir_all(&dir).map_err(self.io(&dir))?;
        let mut tmp = tempfile::Builder::new()
            .prefix(".download-")
            .tempfile_in(&dir)
            .map_err(self.io(&dir))?;
        let got_size = download(url, tmp.as_file_mut(), size.unwrap_or(MAX_UNSIZED))?;
        if let Some(want) = size.filter(|w| *w != got_size) {
            return Err(CacheError::SizeMismatch {
                url: url.to_string(),
                want,
                got: got_size,
            });
        }
        let f = tmp.as_file_mut();
        f.flush().map_err(self.io(&path))?;
        f.seek(SeekFrom::Start(0)).map_err(self.io(&path))?;
        let got = sha256_hex(f).map_err(self.io(&path))?;
        if got != sha256 {
            return Err(CacheError::HashMismatch {
                url: url.to_string(),
                want: sha256,
                got,
            });
        }
        tmp.persist(&path).map_err(|e| CacheError::Io {
            path: path.clone(),
            source: e.error,
        })?;
        Ok(path)
    }
}

//! Fetching installers from a Debian archive mirror the way apt would: the suite's
//! `InRelease` (OpenPGP-verified against the host's archive keyring) lists the SHA256 of
//! `Packages.xz`, which lists the SHA256 of the package's `.deb`, from which the kernel
//! and initrd are extracted. Everything downloaded is cached by hash.

pub mod cache;
pub mod deb;
pub mod http;
pub mod index;
pub mod signature;
pub mod sources;

use std::io::Write;
use std::path::{Path, PathBuf};

use crate::atomic::write_atomically;
use crate::installer::catalog::{Installer, Source};
use crate::mirror::Mirror;
use cache::{Cache, CacheError};

/// The host's Debian archive keyring, which apt also trusts.
pub const DEFAULT_KEYRING: &str = "/usr/share/keyrings/debian-archive-keyring.gpg";
/// InRelease files are a few hundred KB; installer packages tens of MB.
const MAX_INRELEASE: u64 = 16 << 20;
const MAX_FILE: u64 = 1 << 30;

#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("installer `{0}` is not fetched from a Debian archive")]
    NotDebian(String),
    #[error(transparent)]
    Http(#[from] http::HttpError),
    #[error(transparent)]
    Signature(#[from] signature::SignatureError),
    #[error(transparent)]
    Cache(#[from] CacheError),
    #[error(transparent)]
    Deb(#[from] deb::DebError),
    #[error("{url}: the signed InRelease lists no SHA256 for {path}")]
    NotInRelease { url: String, path: String },
    #[error("{url}: package {package} is not in the index")]
    NoPackage { url: String, package: String },
    #[error("{path}: bad xz data: {message}")]
    Xz { path: PathBuf, message: String },
    #[error("cannot write {path}: {source}")]
    Write { path: PathBuf, source: std::io::Error },
}

pub struct FetchOptions {
    pub mirror: Mirror,
    pub cache_dir: PathBuf,
    pub keyring: PathBuf,
}

/// Kernel and initrd of a fetched installer.
#[derive(Debug)]
pub struct Fetched {
    pub version: String,
    pub deb_sha256: String,
    pub kernel: PathBuf,
    pub initrd: PathBuf,
}

/// Fetches and verifies `installer`'s kernel and initrd; they end up under
/// `<cache>/installers/<name>/<version>/`.
pub fn fetch_installer(installer: &Installer, opts: &FetchOptions) -> Result<Fetched, FetchError> {
    let Source::DebianPackage {
        suite,
        arch,
        package,
        dir,
    } = installer.source
    else {
        return Err(FetchError::NotDebian(installer.name.to_string()));
    };
    let cache = Cache::new(opts.cache_dir.clone());

    let inrelease_url = opts.mirror.join(&format!("dists/{suite}/InRelease"));
    let mut raw = Vec::new();
    http::download(&inrelease_url, &mut raw, MAX_INRELEASE)?;
    log::info!("verifying {inrelease_url} against {}", opts.keyring.display());
    let release = signature::verify_clearsigned(
        &inrelease_url,
        &String::from_utf8_lossy(&raw),
        &opts.keyring,
    )?;

    let index_path = format!("main/binary-{arch}/Packages.xz");
    let listed = index::release_sha256(&release, &index_path).ok_or_else(|| FetchError::NotInRelease {
        url: inrelease_url.clone(),
        path: index_path.clone(),
    })?;
    let index_url = opts.mirror.join(&format!("dists/{suite}/{index_path}"));
    let index_file = cache.get(&index_url, &listed.sha256, listed.size)?;
    log::info!("reading {}", index_file.display());
    let packages = decompress_xz(&index_file)?;
    let entry = index::find_package(&packages, package).ok_or_else(|| FetchError::NoPackage {
        url: index_url.clone(),
        package: package.to_string(),
    })?;

    let deb_url = opts.mirror.join(&entry.filename);
    let deb = cache.get(&deb_url, &entry.sha256, entry.size)?;
    log::info!("extracting from {}", deb.display());
    let kernel_name = format!("{dir}/linux");
    let initrd_name = format!("{dir}/initrd.gz");
    let files = deb::extract_files(&deb, &[kernel_name.clone(), initrd_name.clone()], MAX_FILE)?;

    let out_dir = opts
        .cache_dir
        .join("installers")
        .join(installer.name)
        .join(sanitize(&entry.version));
    std::fs::create_dir_all(&out_dir).map_err(|source| FetchError::Write {
        path: out_dir.clone(),
        source,
    })?;
    let write = |name: &str, data: &[u8]| -> Result<PathBuf, FetchError> {
        let path = out_dir.join(name);
        write_atomically(&path, |f| f.write_all(data)).map_err(|e| FetchError::Write {
            path: path.clone(),
            source: std::io::Error::other(e.to_string()),
        })?;
        Ok(path)
    };
    Ok(Fetched {
        version: entry.version,
        deb_sha256: entry.sha256,
        kernel: write("linux", &files[&kernel_name])?,
        initrd: write("initrd.gz", &files[&initrd_name])?,
    })
}

fn decompress_xz(path: &Path) -> Result<String, FetchError> {
    let xz_err = |message: String| FetchError::Xz {
        path: path.to_path_buf(),
        message,
    };
    let data = std::fs::read(path).map_err(|e| xz_err(e.to_string()))?;
    let mut out = Vec::new();
    lzma_rs::xz_decompress(&mut &data[..], &mut out).map_err(|e| xz_err(format!("{e:?}")))?;
    String::from_utf8(out).map_err(|_| xz_err("index is not UTF-8".into()))
}

/// A version string as a single safe path component (`:` from epochs becomes `_`).
fn sanitize(version: &str) -> String {
    version
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || "+.~-".contains(c) { c } else { '_' })
        .collect()
}

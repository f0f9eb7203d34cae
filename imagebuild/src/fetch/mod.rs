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
pub mod tree;

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
    #[error("{url}: {message}")]
    TreeInfo { url: String, message: String },
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
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
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
    /// SHA256 of the .deb (Debian) or of the kernel (install tree).
    pub sha256: String,
    pub kernel: PathBuf,
    pub initrd: PathBuf,
}

/// Fetches and verifies `installer`'s kernel and initrd; they end up under
/// `<cache>/installers/<name>/<version>/`.
pub fn fetch_installer(installer: &Installer, opts: &FetchOptions) -> Result<Fetched, FetchError> {
    let (suite, arch, package, dir) = match installer.source {
        Source::DebianPackage {
            suite,
            arch,
            package,
            dir,
        } => (suite, arch, package, dir),
        Source::Tree { kernel, initrd } => {
            return tree::fetch_tree(installer.name, kernel, initrd, opts)
        }
    };
    let cache = Cache::new(opts.cache_dir.clone());

    let inrelease_url = opts.mirror.join(&format!("dists/{suite}/InRelease"));
    let mut raw = Vec::new();
    http::download(&inrelease_url, &mut raw, MAX_INRELEASE)?;
    log::info!(
        "verifying {inrelease_url} against {}",
        opts.keyring.display()
    );
    let release = signature::verify_clearsigned(
        &inrelease_url,
        &String::from_utf8_lossy(&raw),
        &opts.keyring,
    )?;

    // Keep the last verified InRelease, for inspection and offline mirrors.
    let keep = opts.cache_dir.join("dists").join(suite).join("InRelease");
    let _ = std::fs::create_dir_all(keep.parent().unwrap_or(&opts.cache_dir)).and_then(|_| {
        write_atomically(&keep, |f| f.write_all(&raw)).map_err(std::io::Error::other)
    });

    let index_path = format!("main/binary-{arch}/Packages.xz");
    let listed =
        index::release_sha256(&release, &index_path).ok_or_else(|| FetchError::NotInRelease {
            url: inrelease_url.clone(),
            path: index_path.clone(),
        })?;
    let index_url = opts.mirror.join(&format!("dists/{suite}/{index_path}"));
    let entry = package_entry(&cache, &index_url, &listed, package)?;

    let deb_url = opts.mirror.join(&entry.filename);
    let deb = cache.get(&deb_url, &entry.sha256, Some(entry.size))?;
    let out_dir = opts
        .cache_dir
        .join("installers")
        .join(installer.name)
        .join(sanitize(&entry.version));
    let kernel = out_dir.join("linux");
    let initrd = out_dir.join("initrd.gz");
    let sums = out_dir.join("SHA256SUMS");
    let expected_sums = std::fs::read_to_string(&sums).unwrap_or_default();
    if !extracted_intact(&expected_sums, &entry.sha256, &[&kernel, &initrd]) {
        log::info!("extracting from {}", deb.display());
        let kernel_name = format!("{dir}/linux");
        let initrd_name = format!("{dir}/initrd.gz");
        let files =
            deb::extract_files(&deb, &[kernel_name.clone(), initrd_name.clone()], MAX_FILE)?;
        let write = |path: &Path, data: &[u8]| -> Result<(), FetchError> {
            write_atomically(path, |f| f.write_all(data)).map_err(|e| FetchError::Write {
                path: path.to_path_buf(),
                source: std::io::Error::other(e.to_string()),
            })
        };
        std::fs::create_dir_all(&out_dir).map_err(|source| FetchError::Write {
            path: out_dir.clone(),
            source,
        })?;
        let (k, i) = (&files[&kernel_name], &files[&initrd_name]);
        write(&kernel, k)?;
        write(&initrd, i)?;
        let text = format!(
            "{}  deb\n{}  linux\n{}  initrd.gz\n",
            entry.sha256,
            cache::sha256_hex(&mut &k[..]).map_err(|source| FetchError::Write {
                path: kernel.clone(),
                source
            })?,
            cache::sha256_hex(&mut &i[..]).map_err(|source| FetchError::Write {
                path: initrd.clone(),
                source
            })?,
        );
        write(&sums, text.as_bytes())?;
    } else {
        log::info!("using verified extracted files in {}", out_dir.display());
    }
    Ok(Fetched {
        version: entry.version,
        sha256: entry.sha256,
        kernel,
        initrd,
    })
}

/// The package's entry in the index with the given (signed) hash: from a small cache
/// keyed by that hash, else by decompressing and reading the index.
fn package_entry(
    cache: &Cache,
    index_url: &str,
    listed: &index::IndexFile,
    package: &str,
) -> Result<index::PackageEntry, FetchError> {
    let memo = cache
        .root()
        .join("packages")
        .join(&listed.sha256)
        .join(package);
    if let Ok(text) = std::fs::read_to_string(&memo) {
        let f: Vec<&str> = text.lines().collect();
        if let [version, filename, sha256, size] = f[..] {
            if let Ok(size) = size.parse() {
                log::info!("index entry for {package} from {}", memo.display());
                return Ok(index::PackageEntry {
                    version: version.into(),
                    filename: filename.into(),
                    sha256: sha256.into(),
                    size,
                });
            }
        }
    }
    let index_file = cache.get(index_url, &listed.sha256, Some(listed.size))?;
    log::info!("reading {}", index_file.display());
    let packages = decompress_xz(&index_file)?;
    let entry = index::find_package(&packages, package).ok_or_else(|| FetchError::NoPackage {
        url: index_url.to_string(),
        package: package.to_string(),
    })?;
    let text = format!(
        "{}\n{}\n{}\n{}\n",
        entry.version, entry.filename, entry.sha256, entry.size
    );
    if let Some(dir) = memo.parent() {
        // Only a speed-up: failing to record it is not an error.
        let _ = std::fs::create_dir_all(dir).and_then(|_| {
            write_atomically(&memo, |f| f.write_all(text.as_bytes())).map_err(std::io::Error::other)
        });
    }
    Ok(entry)
}

/// Whether `sums` (our SHA256SUMS) records `deb_sha256` and every file still matches.
fn extracted_intact(sums: &str, deb_sha256: &str, files: &[&Path]) -> bool {
    let mut lines = sums.lines();
    if lines.next() != Some(&format!("{deb_sha256}  deb")) {
        return false;
    }
    let listed: Vec<(&str, &str)> = lines.filter_map(|l| l.split_once("  ")).collect();
    files.iter().all(|path| {
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        let Some((want, _)) = listed.iter().find(|(_, n)| *n == name) else {
            return false;
        };
        let got = std::fs::File::open(path).and_then(|mut f| cache::sha256_hex(&mut f));
        match got {
            Ok(got) if got == *want => true,
            Ok(_) => {
                eprintln!("kiln: {} is damaged; extracting it again", path.display());
                false
            }
            Err(_) => false,
        }
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
        .map(|c| {
            if c.is_ascii_alphanumeric() || "+.~-".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect()
}

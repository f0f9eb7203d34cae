//! Fetching an installer kernel and initrd from a Fedora/RHEL install tree, checked
//! against the SHA256 sums in the tree's `.treeinfo` (productmd format). `.treeinfo` is
//! not signed, so this guards against damaged transfers and caches, not against a
//! malicious mirror; Debian fetches are signature-checked.

use std::io::Write;

use super::cache::Cache;
use super::{http, FetchError, FetchOptions, Fetched};
use crate::atomic::write_atomically;

const MAX_TREEINFO: u64 = 1 << 20;

/// `key = value` pairs of `[section]` in INI text.
fn section<'a>(text: &'a str, name: &str) -> Vec<(&'a str, &'a str)> {
    let mut inside = false;
    let mut out = Vec::new();
    for line in text.lines().map(str::trim) {
        if line.starts_with('[') && line.ends_with(']') {
            inside = &line[1..line.len() - 1] == name;
        } else if inside && !line.starts_with('#') && !line.starts_with(';') {
            if let Some((k, v)) = line.split_once('=') {
                out.push((k.trim(), v.trim()));
            }
        }
    }
    out
}

/// The SHA256 `.treeinfo` lists for `path`.
pub fn treeinfo_sha256(treeinfo: &str, path: &str) -> Option<String> {
    section(treeinfo, "checksums")
        .into_iter()
        .find(|(k, _)| *k == path)
        .and_then(|(_, v)| v.strip_prefix("sha256:"))
        .filter(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()))
        .map(str::to_ascii_lowercase)
}

/// Kernel and initrd paths from `[images-x86_64]`, else the catalog's defaults.
fn image_paths<'a>(treeinfo: &'a str, kernel: &'a str, initrd: &'a str) -> (&'a str, &'a str) {
    let images = section(treeinfo, "images-x86_64");
    let get = |k: &str, default: &'a str| {
        images
            .iter()
            .find(|(key, _)| *key == k)
            .map_or(default, |(_, v)| *v)
    };
    (get("kernel", kernel), get("initrd", initrd))
}

pub fn fetch_tree(
    name: &str,
    kernel: &str,
    initrd: &str,
    opts: &FetchOptions,
) -> Result<Fetched, FetchError> {
    let url = opts.mirror.join(".treeinfo");
    let mut raw = Vec::new();
    http::download(&url, &mut raw, MAX_TREEINFO)?;
    let text = String::from_utf8_lossy(&raw);
    let tree_err = |message: String| FetchError::TreeInfo {
        url: url.clone(),
        message,
    };
    let (kernel, initrd) = image_paths(&text, kernel, initrd);
    let cache = Cache::new(opts.cache_dir.clone());
    let mut paths = Vec::new();
    for rel in [kernel, initrd] {
        if rel.starts_with('/') || rel.split('/').any(|p| p == "..") {
            return Err(tree_err(format!("refusing path {rel:?}")));
        }
        let sha = treeinfo_sha256(&text, rel)
            .ok_or_else(|| tree_err(format!("no sha256 checksum for {rel}")))?;
        let blob = cache.get(&opts.mirror.join(rel), &sha, None)?;
        paths.push((rel, sha, blob));
    }
    let dir = opts
        .cache_dir
        .join("installers")
        .join(name)
        .join(&paths[0].1[..16]);
    std::fs::create_dir_all(&dir).map_err(|source| FetchError::Write {
        path: dir.clone(),
        source,
    })?;
    let mut out = Vec::new();
    for (rel, _, blob) in &paths {
        let dest = dir.join(rel.rsplit('/').next().unwrap_or(rel));
        let data = std::fs::read(blob).map_err(|source| FetchError::Write {
            path: blob.clone(),
            source,
        })?;
        write_atomically(&dest, |f| f.write_all(&data)).map_err(|e| FetchError::Write {
            path: dest.clone(),
            source: std::io::Error::other(e.to_string()),
        })?;
        out.push(dest);
    }
    let initrd_path = out.pop().expect("two files");
    Ok(Fetched {
        version: format!("tree {}", opts.mirror),
        sha256: paths[0].1.clone(),
        kernel: out.pop().expect("two files"),
        initrd: initrd_path,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const TREEINFO: &str = "[header]\ntype = productmd.treeinfo\n[checksums]\nimages/pxeboot/vmlinuz = sha256:ABCDEF0123456789abcdef0123456789abcdef0123456789abcdef0123456789\nimages/pxeboot/initrd.img = md5:00\n[images-x86_64]\nkernel = images/pxeboot/vmlinuz\n";

    #[test]
    fn checksums_and_paths() {
        assert_eq!(
            treeinfo_sha256(TREEINFO, "images/pxeboot/vmlinuz").unwrap(),
            "abcdef0123456789abcdef0123456789abcdef0123456789abcdef0123456789"
        );
        assert!(treeinfo_sha256(TREEINFO, "images/pxeboot/initrd.img").is_none());
        assert_eq!(
            image_paths(TREEINFO, "k", "i"),
            ("images/pxeboot/vmlinuz", "i")
        );
    }
}

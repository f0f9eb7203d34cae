//! Debian archive index parsing: deb822 stanzas, the `SHA256:` list of a Release file,
//! and package stanzas of a Packages file.

/// The fields of one deb822 stanza, in order (continuation lines joined with `\n`).
pub type Stanza<'a> = Vec<(&'a str, String)>;

/// Splits deb822 text into stanzas.
pub fn stanzas(text: &str) -> Vec<Stanza<'_>> {
    let mut out = Vec::new();
    let mut cur: Stanza<'_> = Vec::new();
    for line in text.lines() {
        if line.trim().is_empty() {
            if !cur.is_empty() {
                out.push(std::mem::take(&mut cur));
            }
        } else if line.starts_with(' ') || line.starts_with('\t') {
            if let Some(last) = cur.last_mut() {
                last.1.push('\n');
                last.1.push_str(line.trim());
            }
        } else if let Some((k, v)) = line.split_once(':') {
            cur.push((k, v.trim().to_string()));
        }
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

pub fn field<'s>(stanza: &'s Stanza<'_>, name: &str) -> Option<&'s str> {
    stanza
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

/// A file listed in a Release file's `SHA256:` field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IndexFile {
    pub sha256: String,
    pub size: u64,
}

/// Finds `path` (e.g. `main/binary-amd64/Packages.xz`) in Release text's SHA256 list.
pub fn release_sha256(release: &str, path: &str) -> Option<IndexFile> {
    let first = stanzas(release).into_iter().next()?;
    let list = field(&first, "SHA256")?;
    list.lines().find_map(|l| {
        let mut w = l.split_whitespace();
        let (sha, size, p) = (w.next()?, w.next()?, w.next()?);
        if p != path || sha.len() != 64 || !sha.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        Some(IndexFile {
            sha256: sha.to_ascii_lowercase(),
            size: size.parse().ok()?,
        })
    })
}

/// A package as listed in a Packages index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PackageEntry {
    pub version: String,
    pub filename: String,
    pub sha256: String,
    pub size: u64,
}

/// The stanza for `package` (the last one if the index lists several versions).
pub fn find_package(packages: &str, package: &str) -> Option<PackageEntry> {
    // Only the matching paragraphs are parsed: a Packages index has tens of thousands.
    let head = format!("Package: {package}\n");
    packages
        .split("\n\n")
        .map(|p| p.trim_start_matches('\n'))
        .filter(|p| p.starts_with(&head))
        .flat_map(stanzas)
        .filter(|s| field(s, "Package") == Some(package))
        .filter_map(|s| {
            let sha = field(&s, "SHA256")?;
            let filename = field(&s, "Filename")?;
            // The pool path is joined to the mirror URL: refuse anything that climbs out.
            if filename.split('/').any(|p| p == ".." || p.is_empty()) || filename.starts_with('/') {
                return None;
            }
            Some(PackageEntry {
                version: field(&s, "Version")?.to_string(),
                filename: filename.to_string(),
                sha256: sha.to_ascii_lowercase(),
                size: field(&s, "Size")?.parse().ok()?,
            })
        })
        .filter(|p| p.sha256.len() == 64 && p.sha256.bytes().all(|b| b.is_ascii_hexdigit()))
        .last()
}

#[cfg(test)]
mod tests {
    use super::*;

    const RELEASE: &str = "Origin: Debian\nSuite: stable\nSHA256:\n 0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef 1234 main/binary-amd64/Packages.xz\n fedcba9876543210fedcba9876543210fedcba9876543210fedcba9876543210 99 main/binary-amd64/Packages\n";

    #[test]
    fn release_lookup() {
        let f = release_sha256(RELEASE, "main/binary-amd64/Packages.xz").unwrap();
        assert_eq!(f.size, 1234);
        assert!(f.sha256.starts_with("0123"));
        assert!(release_sha256(RELEASE, "main/binary-i386/Packages.xz").is_none());
    }

    #[test]
    fn package_lookup_and_path_checks() {
        let sha = "a".repeat(64);
        let p = format!("Package: other\nVersion: 1\n\nPackage: di\nVersion: 2\nFilename: pool/main/d/di/di_2.deb\nSize: 10\nSHA256: {sha}\nDescription: x\n more\n");
        let e = find_package(&p, "di").unwrap();
        assert_eq!(e.filename, "pool/main/d/di/di_2.deb");
        assert_eq!(e.size, 10);
        let evil = p.replace("pool/main/d/di/di_2.deb", "pool/../../etc/x.deb");
        assert!(find_package(&evil, "di").is_none());
    }
}

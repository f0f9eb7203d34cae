//! Finding an archive mirror in the host's apt configuration: one-line `sources.list`
//! files and deb822 `*.sources` files, read the way apt reads them (only `*.list` and
//! `*.sources` in `sources.list.d/`, `Enabled: no` stanzas skipped).

use std::path::{Path, PathBuf};

use crate::mirror::Mirror;

/// One `deb` source: a mirror URL and the suites it serves.
#[derive(Debug, Clone, PartialEq)]
pub struct AptSource {
    pub uri: String,
    pub suites: Vec<String>,
    pub components: Vec<String>,
    /// File it came from.
    pub file: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum SourcesError {
    #[error(
        "no apt source for suite `{suite}` in {searched}; pass --mirror URL or set `mirror` in \
         the recipe's [base]"
    )]
    NoMirror { suite: String, searched: String },
}

/// Parses one-line `sources.list` text.
pub fn parse_one_line(text: &str, file: &Path) -> Vec<AptSource> {
    let mut out = Vec::new();
    for line in text.lines() {
        let line = line.split('#').next().unwrap_or("").trim();
        let mut words = line.split_whitespace().peekable();
        if words.next() != Some("deb") {
            continue;
        }
        // Options: `[ key=value ... ]`, possibly spanning several words.
        if words.peek().is_some_and(|w| w.starts_with('[')) {
            for w in words.by_ref() {
                if w.ends_with(']') {
                    break;
                }
            }
        }
        let (Some(uri), Some(suite)) = (words.next(), words.next()) else {
            continue;
        };
        out.push(AptSource {
            uri: uri.to_string(),
            suites: vec![suite.to_string()],
            components: words.map(str::to_string).collect(),
            file: file.to_path_buf(),
        });
    }
    out
}

/// Parses deb822 `.sources` text.
pub fn parse_deb822(text: &str, file: &Path) -> Vec<AptSource> {
    let mut out = Vec::new();
    for stanza in text.split("\n\n") {
        let mut fields: Vec<(String, String)> = Vec::new();
        for line in stanza.lines() {
            if line.starts_with('#') || line.trim().is_empty() {
                continue;
            }
            if line.starts_with(' ') || line.starts_with('\t') {
                if let Some(last) = fields.last_mut() {
                    last.1.push(' ');
                    last.1.push_str(line.trim());
                }
                continue;
            }
            if let Some((k, v)) = line.split_once(':') {
                fields.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
            }
        }
        let get = |k: &str| {
            fields
                .iter()
                .find(|(key, _)| key == k)
                .map(|(_, v)| v.split_whitespace().map(str::to_string).collect::<Vec<_>>())
                .unwrap_or_default()
        };
        if !get("types").iter().any(|t| t == "deb") {
            continue;
        }
        if get("enabled")
            .first()
            .is_some_and(|e| e.eq_ignore_ascii_case("no"))
        {
            continue;
        }
        for uri in get("uris") {
            out.push(AptSource {
                uri,
                suites: get("suites"),
                components: get("components"),
                file: file.to_path_buf(),
            });
        }
    }
    out
}

/// All `deb` sources under an apt configuration root (normally `/etc/apt`).
pub fn read_sources(apt_dir: &Path) -> Vec<AptSource> {
    let mut out = Vec::new();
    let list = apt_dir.join("sources.list");
    if let Ok(text) = std::fs::read_to_string(&list) {
        out.extend(parse_one_line(&text, &list));
    }
    let mut files: Vec<PathBuf> = std::fs::read_dir(apt_dir.join("sources.list.d"))
        .map(|rd| rd.filter_map(|e| e.ok()).map(|e| e.path()).collect())
        .unwrap_or_default();
    files.sort();
    for f in files {
        let Ok(text) = std::fs::read_to_string(&f) else {
            continue;
        };
        match f.extension().and_then(|e| e.to_str()) {
            Some("list") => out.extend(parse_one_line(&text, &f)),
            Some("sources") => out.extend(parse_deb822(&text, &f)),
            _ => {}
        }
    }
    out
}

/// The first mirror in `apt_dir`'s sources that serves `suite` with the `main` component.
pub fn mirror_for_suite(apt_dir: &Path, suite: &str) -> Result<Mirror, SourcesError> {
    read_sources(apt_dir)
        .into_iter()
        .filter(|s| s.suites.iter().any(|x| x == suite))
        .filter(|s| s.components.iter().any(|c| c == "main"))
        .find_map(|s| Mirror::parse(&s.uri).ok().filter(|m| m.scheme != "ftp"))
        .ok_or_else(|| SourcesError::NoMirror {
            suite: suite.to_string(),
            searched: format!(
                "{0}/sources.list and {0}/sources.list.d/",
                apt_dir.display()
            ),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_with_options() {
        let s = parse_one_line(
            "# c\ndeb [arch=amd64 signed-by=/k.gpg] http://m.invalid/debian bookworm main contrib\ndeb-src http://x/ y main\n",
            Path::new("f"),
        );
        assert_eq!(s.len(), 1);
        assert_eq!(s[0].uri, "http://m.invalid/debian");
        assert_eq!(s[0].suites, ["bookworm"]);
        assert_eq!(s[0].components, ["main", "contrib"]);
    }

    #[test]
    fn deb822_stanzas() {
        let text = "Types: deb deb-src\nURIs: http://a.invalid/debian\nSuites: bookworm bookworm-updates\nComponents: main\n\nTypes: deb\nEnabled: no\nURIs: http://b.invalid/\nSuites: bookworm\nComponents: main\n";
        let s = parse_deb822(text, Path::new("f"));
        assert_eq!(s.len(), 1);
        assert_eq!(s[0].suites, ["bookworm", "bookworm-updates"]);
    }

    #[test]
    fn picks_suite_and_explains_when_missing() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("sources.list.d")).unwrap();
        std::fs::write(
            dir.path().join("sources.list.d/x.sources"),
            "Types: deb\nURIs: http://sec.invalid/debian-security\nSuites: bookworm-security\nComponents: main\n\nTypes: deb\nURIs: http://m.invalid/debian\nSuites: bookworm\nComponents: main\n",
        )
        .unwrap();
        std::fs::write(
            dir.path().join("sources.list.d/y.list.disabled"),
            "deb http://z.invalid/ bookworm main\n",
        )
        .unwrap();
        let m = mirror_for_suite(dir.path(), "bookworm").unwrap();
        assert_eq!(m.to_string(), "http://m.invalid/debian");
        let e = mirror_for_suite(dir.path(), "trixie")
            .unwrap_err()
            .to_string();
        assert!(e.contains("--mirror") && e.contains("trixie"), "{e}");
    }
}

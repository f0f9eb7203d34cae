//! Archive mirror URLs. kiln never knows a mirror by itself: one comes from a recipe,
//! `--mirror`, or the host's apt sources (see `fetch::sources`).

use std::fmt;

#[derive(Debug, thiserror::Error, PartialEq)]
#[error("invalid mirror URL {url:?}: {reason}")]
pub struct MirrorError {
    pub url: String,
    pub reason: &'static str,
}

/// A parsed `scheme://host[:port]/path` mirror URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mirror {
    pub scheme: String,
    /// `host` or `host:port`.
    pub host: String,
    /// Path on the host, starting with `/`, without a trailing `/` (empty path gives `/`).
    pub dir: String,
}

impl Mirror {
    pub fn parse(url: &str) -> Result<Mirror, MirrorError> {
        let err = |reason| MirrorError {
            url: url.to_string(),
            reason,
        };
        let (scheme, rest) = url.split_once("://").ok_or(err("missing `scheme://`"))?;
        let scheme = scheme.to_ascii_lowercase();
        if !matches!(scheme.as_str(), "http" | "https" | "ftp") {
            return Err(err("scheme must be http, https or ftp"));
        }
        let (host, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        if host.is_empty() {
            return Err(err("missing host"));
        }
        if url.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(err("contains whitespace"));
        }
        let dir = path.trim_end_matches('/');
        Ok(Mirror {
            scheme,
            host: host.to_string(),
            dir: if dir.is_empty() {
                "/".to_string()
            } else {
                dir.to_string()
            },
        })
    }

    /// URL of `rel` (a path relative to the mirror root, e.g. `dists/bookworm/InRelease`).
    pub fn join(&self, rel: &str) -> String {
        let base = self.to_string();
        format!(
            "{}/{}",
            base.trim_end_matches('/'),
            rel.trim_start_matches('/')
        )
    }
}

impl fmt::Display for Mirror {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}://{}{}", self.scheme, self.host, self.dir)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_joins() {
        let m = Mirror::parse("http://mirror.example:8080/debian/").unwrap();
        assert_eq!(m.host, "mirror.example:8080");
        assert_eq!(m.dir, "/debian");
        assert_eq!(
            m.join("dists/x/InRelease"),
            "http://mirror.example:8080/debian/dists/x/InRelease"
        );
        assert_eq!(Mirror::parse("http://h").unwrap().join("a"), "http://h/a");
    }

    #[test]
    fn rejects_garbage() {
        assert!(Mirror::parse("mirror.example/debian").is_err());
        assert!(Mirror::parse("gopher://h/").is_err());
        assert!(Mirror::parse("http:///x").is_err());
    }
}

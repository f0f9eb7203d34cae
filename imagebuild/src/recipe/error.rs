//! Recipe errors that point at `file:line:column`, name the offending key or value, and
//! suggest the closest valid name when one was probably misspelled.

use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};

/// A problem at a place in a recipe file.
#[derive(Debug, PartialEq)]
pub struct RecipeError {
    pub file: PathBuf,
    pub line: usize,
    pub column: usize,
    pub message: String,
    /// The offending key or value, when there is one.
    pub key: Option<String>,
    pub suggestion: Option<String>,
}

impl std::error::Error for RecipeError {}

impl fmt::Display for RecipeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}: {}",
            self.file.display(),
            self.line,
            self.column,
            self.message
        )?;
        if let Some(s) = &self.suggestion {
            write!(f, "; did you mean `{s}`?")?;
        }
        Ok(())
    }
}

/// 1-based line and column (in characters) of byte `offset` in `text`.
pub fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = &text[..text.floor_char_boundary_compat(offset)];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    (line, before[line_start..].chars().count() + 1)
}

trait FloorBoundary {
    fn floor_char_boundary_compat(&self, i: usize) -> usize;
}

impl FloorBoundary for str {
    fn floor_char_boundary_compat(&self, mut i: usize) -> usize {
        while i > 0 && !self.is_char_boundary(i) {
            i -= 1;
        }
        i
    }
}

/// The candidate closest to `word`, if it is close enough to be a likely misspelling.
pub fn suggest<'a>(word: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<String> {
    let limit = (word.chars().count() / 3).max(2);
    candidates
        .into_iter()
        .map(|c| (strsim::damerau_levenshtein(word, c), c))
        .filter(|(d, _)| *d <= limit)
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c.to_string())
}

/// Backquoted words in a serde message, in order.
fn backquoted(message: &str) -> Vec<&str> {
    message.split('`').skip(1).step_by(2).collect()
}

impl RecipeError {
    pub fn at(file: &Path, text: &str, span: Range<usize>, message: impl Into<String>) -> Self {
        let (line, column) = line_column(text, span.start);
        RecipeError {
            file: file.to_path_buf(),
            line,
            column,
            message: message.into(),
            key: None,
            suggestion: None,
        }
    }

    pub fn with_key(mut self, key: impl Into<String>) -> Self {
        self.key = Some(key.into());
        self
    }

    pub fn with_suggestion(mut self, suggestion: Option<String>) -> Self {
        self.suggestion = suggestion;
        self
    }

    /// Converts a TOML syntax or shape error, recovering the key and a suggestion from
    /// serde's "unknown field `x`, expected one of `a`, `b`" and toml's "unexpected keys
    /// in table: x, available keys: a, b" messages.
    pub fn from_toml(file: &Path, text: &str, err: &toml::de::Error) -> Self {
        let span = err.span().unwrap_or(0..0);
        let message = err.message().trim().to_string();
        let mut e = RecipeError::at(file, text, span, message.clone());
        let (kind, key, expected): (&str, String, Vec<String>) =
            if let Some(rest) = message.strip_prefix("unexpected keys in table: ") {
                let (keys, avail) = rest.split_once(", available keys: ").unwrap_or((rest, ""));
                let key = keys.split(", ").next().unwrap_or(keys).to_string();
                (
                    "key",
                    key,
                    avail
                        .split(", ")
                        .filter(|s| !s.is_empty())
                        .map(str::to_string)
                        .collect(),
                )
            } else {
                let words = backquoted(&message);
                let Some(first) = words.first() else {
                    return e;
                };
                let rest = words[1..].iter().map(|s| s.to_string()).collect();
                if message.starts_with("unknown field") {
                    ("key", first.to_string(), rest)
                } else if message.starts_with("unknown variant") {
                    ("name", first.to_string(), rest)
                } else if message.starts_with("missing field") {
                    e.message = format!("missing key `{first}`");
                    return e.with_key(*first);
                } else if message.starts_with("duplicate") {
                    return e.with_key(*first);
                } else {
                    return e;
                }
            };
        e.message = format!("unknown {kind} `{key}`");
        if !expected.is_empty() {
            e.message
                .push_str(&format!(" (expected one of {})", expected.join(", ")));
        }
        e.suggestion = suggest(&key, expected.iter().map(String::as_str));
        e.with_key(key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions() {
        let t = "a\nbc\nd";
        assert_eq!(line_column(t, 0), (1, 1));
        assert_eq!(line_column(t, 3), (2, 2));
        assert_eq!(line_column(t, 5), (3, 1));
        assert_eq!(line_column("é=x", 2), (1, 2));
    }

    #[test]
    fn suggestions() {
        assert_eq!(
            suggest("hostnme", ["hostname", "timezone"]).as_deref(),
            Some("hostname")
        );
        assert_eq!(suggest("xyzzy", ["hostname", "timezone"]), None);
    }
}

//! A deliberately tiny template language for answer files, so the templates in
//! `resources/answer/` stay plain preseed/kickstart text:
//! - `{{name}}` is replaced by the variable's value;
//! - a line starting with `{{?name}}` is kept (without the marker) only if `name` is set
//!   and non-empty; `{{!name}}` keeps the line only if it is empty or unset.

use std::collections::BTreeMap;

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum TemplateError {
    #[error("{template}:{line}: unknown variable `{name}`; known: {known}")]
    UnknownVariable {
        template: String,
        line: usize,
        name: String,
        known: String,
    },
    #[error("{template}:{line}: unterminated `{{{{`")]
    Unterminated { template: String, line: usize },
}

/// Renders `text` (named `template` in errors) with `vars`.
pub fn render(
    template: &str,
    text: &str,
    vars: &BTreeMap<&str, String>,
) -> Result<String, TemplateError> {
    let unknown = |line, name: &str| TemplateError::UnknownVariable {
        template: template.to_string(),
        line,
        name: name.to_string(),
        known: vars.keys().copied().collect::<Vec<_>>().join(", "),
    };
    let mut out = String::with_capacity(text.len());
    for (idx, raw_line) in text.split_inclusive('\n').enumerate() {
        let lineno = idx + 1;
        let mut line = raw_line;
        for (marker, keep_if_set) in [("{{?", true), ("{{!", false)] {
            if let Some(rest) = line.strip_prefix(marker) {
                let end = rest.find("}}").ok_or(TemplateError::Unterminated {
                    template: template.to_string(),
                    line: lineno,
                })?;
                let name = rest[..end].trim();
                let set = match vars.get(name) {
                    Some(v) => !v.is_empty(),
                    None => return Err(unknown(lineno, name)),
                };
                if set != keep_if_set {
                    line = "";
                } else {
                    line = &rest[end + 2..];
                }
                break;
            }
        }
        let mut rest = line;
        while let Some(start) = rest.find("{{") {
            out.push_str(&rest[..start]);
            let after = &rest[start + 2..];
            let end = after.find("}}").ok_or(TemplateError::Unterminated {
                template: template.to_string(),
                line: lineno,
            })?;
            let name = after[..end].trim();
            out.push_str(vars.get(name).ok_or_else(|| unknown(lineno, name))?);
            rest = &after[end + 2..];
        }
        out.push_str(rest);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars() -> BTreeMap<&'static str, String> {
        BTreeMap::from([("a", "1".to_string()), ("empty", String::new())])
    }

    #[test]
    fn substitutes_and_filters_lines() {
        let t = "x={{a}} {{ a }}\n{{?a}}kept\n{{?empty}}dropped\n{{!empty}}also kept\n";
        assert_eq!(render("t", t, &vars()).unwrap(), "x=1 1\nkept\nalso kept\n");
    }

    #[test]
    fn unknown_variable_names_line() {
        let e = render("t", "ok\n{{nope}}\n", &vars()).unwrap_err();
        assert!(
            matches!(e, TemplateError::UnknownVariable { line: 2, .. }),
            "{e}"
        );
    }
}

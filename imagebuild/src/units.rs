//! Human-readable sizes (`10G`, `512MiB`) and durations (`90m`, `2h`, `45s`) in recipes.

#[derive(Debug, thiserror::Error, PartialEq)]
#[error("invalid {what} {value:?}: {reason}")]
pub struct UnitError {
    pub what: &'static str,
    pub value: String,
    pub reason: &'static str,
}

/// Parses a byte size: a number with an optional binary suffix K, M, G, T (also KiB,
/// MiB, ... and lower case). No suffix means bytes.
pub fn parse_size(value: &str) -> Result<u64, UnitError> {
    let err = |reason| UnitError {
        what: "size",
        value: value.to_string(),
        reason,
    };
    let v = value.trim();
    let digits = v.find(|c: char| !c.is_ascii_digit()).unwrap_or(v.len());
    if digits == 0 {
        return Err(err("must start with a number"));
    }
    let n: u64 = v[..digits].parse().map_err(|_| err("number too large"))?;
    let shift = match v[digits..].trim().to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kib" | "kb" => 10,
        "m" | "mib" | "mb" => 20,
        "g" | "gib" | "gb" => 30,
        "t" | "tib" | "tb" => 40,
        _ => return Err(err("unknown suffix (use K, M, G or T)")),
    };
    n.checked_mul(1u64 << shift).ok_or(err("too large"))
}

/// Parses a duration in seconds: a number with an optional `s`, `m` or `h` suffix.
pub fn parse_duration_secs(value: &str) -> Result<u64, UnitError> {
    let err = |reason| UnitError {
        what: "duration",
        value: value.to_string(),
        reason,
    };
    let v = value.trim();
    let digits = v.find(|c: char| !c.is_ascii_digit()).unwrap_or(v.len());
    if digits == 0 {
        return Err(err("must start with a number"));
    }
    let n: u64 = v[..digits].parse().map_err(|_| err("number too large"))?;
    let mult = match v[digits..].trim() {
        "" | "s" => 1,
        "m" | "min" => 60,
        "h" => 3600,
        _ => return Err(err("unknown suffix (use s, m or h)")),
    };
    n.checked_mul(mult).ok_or(err("too large"))
}

/// Formats bytes with the largest exact binary suffix.
pub fn format_size(bytes: u64) -> String {
    for (shift, suffix) in [(40, "T"), (30, "G"), (20, "M"), (10, "K")] {
        if bytes != 0 && bytes % (1u64 << shift) == 0 {
            return format!("{}{suffix}", bytes >> shift);
        }
    }
    format!("{bytes}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("10G").unwrap(), 10 << 30);
        assert_eq!(parse_size("512MiB").unwrap(), 512 << 20);
        assert_eq!(parse_size("4096").unwrap(), 4096);
        assert!(parse_size("G").is_err());
        assert!(parse_size("1X").is_err());
        assert!(parse_size("99999999999999T").is_err());
        assert_eq!(format_size(3 << 30), "3G");
        assert_eq!(format_size(1000), "1000");
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration_secs("90m").unwrap(), 5400);
        assert_eq!(parse_duration_secs("2h").unwrap(), 7200);
        assert_eq!(parse_duration_secs("45").unwrap(), 45);
        assert!(parse_duration_secs("soon").is_err());
    }
}

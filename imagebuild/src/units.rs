//! Human-readable sizes (`10G`, `512MiB`) and durations (`90m`, `2h`, `45s`) in recipes.

#[derive(Debug, thiserror::Error, PartialEq)]
#[error("invalid {what} {value:?}: {reason}")]
pub struct UnitError {
    pub what: &'static str,
    pub value: String,
    pub reason: &'static str,
}

/// Parses a byte size, with qemu-img's grammar: a number, possibly with a decimal
/// fraction (`1.5G`), and an optional binary suffix B, K, M, G, T, P or E (also KB/KiB
/// and lower case). No suffix means bytes. The result must be a whole number of bytes;
/// the arithmetic is exact (no floating point), so `0.5K` is 512 and `0.3` an error.
/// kiln has this one size grammar: recipes, `kiln run --memory`, `kiln img create`.
pub fn parse_size(value: &str) -> Result<u64, UnitError> {
    let err = |reason| UnitError {
        what: "size",
        value: value.to_string(),
        reason,
    };
    let v = value.trim();
    let number_end = v
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(v.len());
    let (whole, fraction) = match v[..number_end].split_once('.') {
        Some((w, f)) => (w, f),
        None => (&v[..number_end], ""),
    };
    if whole.is_empty() || fraction.contains('.') {
        return Err(err("must start with a number"));
    }
    let shift = match v[number_end..].trim().to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kib" | "kb" => 10,
        "m" | "mib" | "mb" => 20,
        "g" | "gib" | "gb" => 30,
        "t" | "tib" | "tb" => 40,
        "p" | "pib" | "pb" => 50,
        "e" | "eib" | "eb" => 60,
        _ => return Err(err("unknown suffix (use K, M, G, T, P or E)")),
    };
    let whole: u64 = whole.parse().map_err(|_| err("number too large"))?;
    let mut bytes = whole.checked_mul(1u64 << shift).ok_or(err("too large"))?;
    if !fraction.is_empty() {
        // fraction / 10^digits * 2^shift must be whole: exact in u128 for any input
        // short enough to matter (longer fractions cannot divide evenly anyway).
        if fraction.len() > 20 {
            return Err(err("not a whole number of bytes"));
        }
        let numerator: u128 = fraction.parse().map_err(|_| err("bad fraction"))?;
        let scaled = numerator << shift;
        let denominator = 10u128.pow(fraction.len() as u32);
        if scaled % denominator != 0 {
            return Err(err("not a whole number of bytes"));
        }
        let extra = u64::try_from(scaled / denominator).map_err(|_| err("too large"))?;
        bytes = bytes.checked_add(extra).ok_or(err("too large"))?;
    }
    Ok(bytes)
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
        assert_eq!(parse_size("64k").unwrap(), 65536);
        assert_eq!(parse_size("1.5M").unwrap(), 3 << 19);
        assert_eq!(parse_size("0.5K").unwrap(), 512);
        assert_eq!(parse_size("2.25 G").unwrap(), 9 << 28);
        assert_eq!(parse_size("1E").unwrap(), 1 << 60);
        assert_eq!(parse_size("0").unwrap(), 0);
        for bad in [
            "G",
            "1X",
            "-1",
            "abc",
            "0.3",
            "1.2.3",
            ".5G",
            "",
            "99999999999999T",
            "16E",
            "0.000000000000000000001",
        ] {
            assert!(parse_size(bad).is_err(), "{bad:?} accepted");
        }
        // Errors name the value and say what is wrong with it.
        let e = parse_size("12X").unwrap_err().to_string();
        assert!(e.contains("\"12X\"") && e.contains("unknown suffix"), "{e}");
        let e = parse_size("0.3").unwrap_err().to_string();
        assert!(e.contains("not a whole number of bytes"), "{e}");
        let e = parse_size("16E").unwrap_err().to_string();
        assert!(e.contains("too large"), "{e}");
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

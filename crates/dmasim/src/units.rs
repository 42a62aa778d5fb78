//! Sizes and durations as scripts write them: `"4 KiB"`, `"2MiB"`, `"1500"`, `"10 us"`.
//!
//! K, M, G, T are powers of 1024 for sizes (as `SCRIPT_API.md` says); durations take
//! `ns`, `us`/`µs`, `ms` and `s`. Parsing never panics: a bad string or an overflow is
//! an [`UnitError`].

/// Why a size or duration string could not be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UnitError {
    /// The text is not a number with an optional unit.
    BadSize(String),
    /// The text is not a number with a time unit.
    BadDuration(String),
    /// The value does not fit in 64 bits.
    Overflow(String),
    /// A negative number where a size is needed.
    Negative(i64),
}

impl std::fmt::Display for UnitError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            UnitError::BadSize(s) => write!(
                f,
                "cannot read {s:?} as a size (examples: 4096, \"4 KiB\", \"2MiB\", \"1 GiB\")"
            ),
            UnitError::BadDuration(s) => write!(
                f,
                "cannot read {s:?} as a duration (examples: \"10 us\", \"2 ms\", \"500 ns\")"
            ),
            UnitError::Overflow(s) => write!(f, "{s:?} is too large"),
            UnitError::Negative(n) => write!(f, "a size cannot be negative: {n}"),
        }
    }
}

impl std::error::Error for UnitError {}

/// Parses a size: a plain number of bytes or a number with a binary unit.
///
/// # Errors
/// [`UnitError`] when the text is not a size or overflows `u64`.
///
/// # Examples
/// ```
/// assert_eq!(dmasim::units::parse_size("4 KiB").unwrap(), 4096);
/// assert_eq!(dmasim::units::parse_size("64M").unwrap(), 64 << 20);
/// assert!(dmasim::units::parse_size("lots").is_err());
/// ```
pub fn parse_size(text: &str) -> Result<u64, UnitError> {
    let t = text.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '_'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let num: String = num.chars().filter(|&c| c != '_').collect();
    if num.is_empty() {
        return Err(UnitError::BadSize(text.to_string()));
    }
    let value: u64 = num
        .parse()
        .map_err(|_| UnitError::Overflow(text.to_string()))?;
    let shift = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kb" | "kib" => 10,
        "m" | "mb" | "mib" => 20,
        "g" | "gb" | "gib" => 30,
        "t" | "tb" | "tib" => 40,
        _ => return Err(UnitError::BadSize(text.to_string())),
    };
    value
        .checked_mul(1u64 << shift)
        .ok_or_else(|| UnitError::Overflow(text.to_string()))
}

/// Parses a duration into nanoseconds.
///
/// # Errors
/// [`UnitError`] when the text is not a duration or overflows.
///
/// # Examples
/// ```
/// assert_eq!(dmasim::units::parse_duration_ns("10 us").unwrap(), 10_000);
/// assert_eq!(dmasim::units::parse_duration_ns("2ms").unwrap(), 2_000_000);
/// ```
pub fn parse_duration_ns(text: &str) -> Result<u64, UnitError> {
    let t = text.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let value: f64 = num
        .parse()
        .map_err(|_| UnitError::BadDuration(text.to_string()))?;
    let scale = match unit.trim() {
        "" | "ns" => 1.0,
        "us" | "µs" => 1e3,
        "ms" => 1e6,
        "s" => 1e9,
        "min" => 60e9,
        "h" => 3600e9,
        _ => return Err(UnitError::BadDuration(text.to_string())),
    };
    let ns = value * scale;
    if !ns.is_finite() || !(0.0..=1e18).contains(&ns) {
        return Err(UnitError::Overflow(text.to_string()));
    }
    Ok(ns.round() as u64)
}

/// Formats a duration in nanoseconds with the largest unit that divides it:
/// `1 h`, `90 s`, `250 us`, `7 ns`.
///
/// # Examples
/// ```
/// assert_eq!(dmasim::units::human_duration_ns(3_600_000_000_000), "1 h");
/// assert_eq!(dmasim::units::human_duration_ns(1_500_000), "1500 us");
/// ```
pub fn human_duration_ns(ns: u64) -> String {
    const UNITS: [(u64, &str); 5] = [
        (3_600_000_000_000, "h"),
        (60_000_000_000, "min"),
        (1_000_000_000, "s"),
        (1_000_000, "ms"),
        (1_000, "us"),
    ];
    for (scale, unit) in UNITS {
        if ns >= scale && ns % scale == 0 {
            return format!("{} {unit}", ns / scale);
        }
    }
    format!("{ns} ns")
}

/// Formats a byte count the way the kernel log does: `64MB`, `4KB`, or bytes.
pub fn human_size(bytes: u64) -> String {
    if bytes >= 1 << 30 && bytes % (1 << 30) == 0 {
        format!("{} GiB", bytes >> 30)
    } else if bytes >= 1 << 20 && bytes % (1 << 20) == 0 {
        format!("{} MiB", bytes >> 20)
    } else if bytes >= 1 << 10 && bytes % (1 << 10) == 0 {
        format!("{} KiB", bytes >> 10)
    } else {
        format!("{bytes} bytes")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_with_units_are_powers_of_1024() {
        assert_eq!(parse_size("1500").unwrap(), 1500);
        assert_eq!(parse_size("2MiB").unwrap(), 2 * 1024 * 1024);
        assert_eq!(parse_size("1 GiB").unwrap(), 1 << 30);
        assert_eq!(parse_size("900 TiB").unwrap(), 900 << 40);
        assert_eq!(parse_size("16_384").unwrap(), 16384);
    }

    #[test]
    fn bad_sizes_are_errors_not_panics() {
        assert!(matches!(parse_size("KiB"), Err(UnitError::BadSize(_))));
        assert!(matches!(
            parse_size("4 parsecs"),
            Err(UnitError::BadSize(_))
        ));
        assert!(matches!(
            parse_size("99999999999999999999"),
            Err(UnitError::Overflow(_))
        ));
        assert!(matches!(
            parse_size("99999999 TiB"),
            Err(UnitError::Overflow(_))
        ));
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration_ns("500").unwrap(), 500);
        assert_eq!(parse_duration_ns("1.5 us").unwrap(), 1500);
        assert_eq!(parse_duration_ns("3 s").unwrap(), 3_000_000_000);
        assert!(parse_duration_ns("soon").is_err());
        assert!(parse_duration_ns("1e30 s").is_err());
    }

    #[test]
    fn human_sizes() {
        assert_eq!(human_size(64 << 20), "64 MiB");
        assert_eq!(human_size(4096), "4 KiB");
        assert_eq!(human_size(1500), "1500 bytes");
    }
}

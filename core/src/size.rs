//! Sizes as people write them: `4M`, `10G`, `512`, `1.5T` is refused (whole numbers only).

/// The suffixes, with their shifts (powers of 1024).
const SUFFIXES: [(&str, u32); 6] = [("K", 10), ("M", 20), ("G", 30), ("T", 40), ("P", 50), ("E", 60)];

/// Parses a byte size with an optional K/M/G/T/P/E suffix (powers of 1024, `B` and `iB`
/// allowed). The largest is just under 16 EiB (`u64::MAX` bytes): `15E` is accepted, `16E` is
/// refused as too large.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let digits_end = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, suffix) = t.split_at(digits_end);
    if num.is_empty() {
        return Err(format!("invalid size {s:?}: expected a whole number with an optional K/M/G/T/P/E suffix"));
    }
    let too_large = || format!("invalid size {s:?}: too large (at most {} bytes, just under 16 EiB)", u64::MAX);
    let n: u64 = num.parse().map_err(|_| too_large())?;
    let upper = suffix.to_ascii_uppercase();
    let shift = if upper.is_empty() || upper == "B" {
        0
    } else {
        let unit = upper.strip_suffix("IB").or_else(|| upper.strip_suffix('B')).unwrap_or(&upper);
        match SUFFIXES.iter().find(|(u, _)| *u == unit) {
            Some(&(_, shift)) => shift,
            None => {
                return Err(format!("invalid size {s:?}: unknown suffix {suffix:?} (use K, M, G, T, P or E)"));
            }
        }
    };
    n.checked_mul(1u64 << shift).ok_or_else(too_large)
}

/// Formats bytes for people: `4.0 MiB`.
pub fn format_size(bytes: u64) -> String {
    const UNITS: [&str; 7] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    let mut v = bytes as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{bytes} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// A size limit for an error message: `4.0 TiB (4398046511104 bytes)`, or just `512 B`.
pub fn format_limit(bytes: u64) -> String {
    if bytes < 1024 {
        format_size(bytes)
    } else {
        format!("{} ({bytes} bytes)", format_size(bytes))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_suffixes() {
        assert_eq!(parse_size("512"), Ok(512));
        assert_eq!(parse_size("4M"), Ok(4 << 20));
        assert_eq!(parse_size("4MiB"), Ok(4 << 20));
        assert_eq!(parse_size("4mb"), Ok(4 << 20));
        assert_eq!(parse_size("10g"), Ok(10 << 30));
        assert_eq!(parse_size("1T"), Ok(1 << 40));
        assert_eq!(parse_size("2P"), Ok(2 << 50));
        assert_eq!(parse_size("3PiB"), Ok(3 << 50));
        assert_eq!(parse_size("1E"), Ok(1 << 60));
        assert_eq!(parse_size("15e"), Ok(15 << 60));
        assert_eq!(parse_size("16383P"), Ok(16383 << 50));
    }

    #[test]
    fn refuses_garbage() {
        for bad in ["", "M", "1.5G", "-1", "12X", "99999999999999999999", "16777216T", "16E", "16384P", "4iB", "4BB"] {
            assert!(parse_size(bad).is_err(), "{bad:?} should be refused");
        }
        let e = parse_size("16E").unwrap_err();
        assert!(e.contains("too large") && e.contains("16 EiB"), "{e}");
        let e = parse_size("3Z").unwrap_err();
        assert!(e.contains("K, M, G, T, P or E"), "{e}");
    }

    #[test]
    fn formats_for_people() {
        assert_eq!(format_size(100), "100 B");
        assert_eq!(format_size(4 << 20), "4.0 MiB");
        assert_eq!(format_size(10 << 30), "10.0 GiB");
        assert_eq!(format_size(3 << 50), "3.0 PiB");
        assert_eq!(format_size(u64::MAX), "16.0 EiB");
        assert_eq!(format_limit(512), "512 B");
        assert_eq!(format_limit(4 << 40), "4.0 TiB (4398046511104 bytes)");
    }
}

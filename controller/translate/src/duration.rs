//! Gateway API durations (GEP-2257): `1h`, `30m`, `10s`, `500ms`, combinations like `1m30s`.

/// Parses a Gateway API duration into milliseconds. `0s` means "no timeout" (None).
pub fn parse_gateway_duration(text: &str) -> Result<Option<u64>, String> {
    let bad = || format!("invalid duration {text:?}: expected e.g. 10s, 500ms, 1m30s");
    if text.is_empty() {
        return Err(bad());
    }
    let mut total: u64 = 0;
    let mut rest = text;
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 || digits > 5 {
            return Err(bad());
        }
        let value: u64 = rest[..digits].parse().map_err(|_| bad())?;
        rest = &rest[digits..];
        let (unit_ms, len) = if rest.starts_with("ms") {
            (1, 2)
        } else if rest.starts_with('h') {
            (3_600_000, 1)
        } else if rest.starts_with('m') {
            (60_000, 1)
        } else if rest.starts_with('s') {
            (1_000, 1)
        } else {
            return Err(bad());
        };
        total += value * unit_ms;
        rest = &rest[len..];
    }
    Ok((total > 0).then_some(total))
}

#[cfg(test)]
mod tests {
    use super::parse_gateway_duration as p;

    #[test]
    fn parses_the_gep_2257_forms() {
        assert_eq!(p("10s"), Ok(Some(10_000)));
        assert_eq!(p("500ms"), Ok(Some(500)));
        assert_eq!(p("1h30m"), Ok(Some(5_400_000)));
        assert_eq!(p("1m0s250ms"), Ok(Some(60_250)));
        assert_eq!(p("0s"), Ok(None));
        for bad in ["", "10", "s", "1.5s", "-1s", "10x", "1d", "123456s"] {
            assert!(p(bad).is_err(), "{bad}");
        }
    }
}

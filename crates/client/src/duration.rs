//! Go-style durations (`90s`, `30m`, `1h30m`, `500ms`), as etcd's flags take them.

use std::time::Duration;

/// The longest duration Go's `time.Duration` holds (`math.MaxInt64` nanoseconds).
pub const MAX: Duration = Duration::from_nanos(i64::MAX as u64);

/// Parses a Go-style duration; the error says what was expected.
pub fn parse(text: &str) -> Result<Duration, String> {
    let bad = || format!("{text:?} is not a duration like 500ms, 90s, 30m or 1h30m");
    let mut total = 0f64;
    let mut number = String::new();
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if c.is_ascii_digit() || c == '.' {
            number.push(c);
            continue;
        }
        let unit = if c == 'm' && chars.peek() == Some(&'s') {
            chars.next();
            0.001
        } else {
            match c {
                'h' => 3600.0,
                'm' => 60.0,
                's' => 1.0,
                _ => return Err(bad()),
            }
        };
        let n: f64 = number.parse().map_err(|_| bad())?;
        total += n * unit;
        number.clear();
    }
    if !number.is_empty() || text.is_empty() {
        return Err(bad());
    }
    // Go's durations end at about 292 years; beyond that (or not finite) is a typo.
    if !total.is_finite() || total > MAX.as_secs_f64() {
        return Err(format!(
            "{text:?} is longer than Go's longest duration (about 292 years)"
        ));
    }
    Duration::try_from_secs_f64(total).map_err(|_| bad())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_go_durations() {
        assert_eq!(parse("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse("2.5s"), Ok(Duration::from_millis(2500)));
        assert!(parse("10").is_err());
        assert!(parse("5x").is_err());
        assert!(parse("").is_err());
        assert!(parse("99999999999999999999s")
            .unwrap_err()
            .contains("292 years"));
        assert!(parse("1..5s").is_err());
    }
}

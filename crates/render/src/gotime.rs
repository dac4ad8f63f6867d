//! Enough of Go's `time` for confd's `datetime`: the current UTC time, printed the way Go
//! prints a `time.Time`, and Go's reference-time layouts for `datetime.Format`.

use std::time::{SystemTime, UNIX_EPOCH};

/// A UTC instant broken into calendar fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Utc {
    pub year: i64,
    pub month: u32,
    pub day: u32,
    pub hour: u32,
    pub minute: u32,
    pub second: u32,
    pub nanos: u32,
    pub weekday: u32,
}

const MONTHS: [&str; 12] = [
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
];
const DAYS: [&str; 7] = [
    "Sunday",
    "Monday",
    "Tuesday",
    "Wednesday",
    "Thursday",
    "Friday",
    "Saturday",
];

impl Utc {
    /// Calendar fields of `secs` seconds (and `nanos`) after the Unix epoch.
    pub fn from_unix(secs: i64, nanos: u32) -> Self {
        let days = secs.div_euclid(86_400);
        let rem = secs.rem_euclid(86_400);
        // Howard Hinnant's civil-from-days.
        let z = days + 719_468;
        let era = z.div_euclid(146_097);
        let doe = z.rem_euclid(146_097);
        let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        let mp = (5 * doy + 2) / 153;
        let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
        let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
        let year = yoe + era * 400 + i64::from(month <= 2);
        Self {
            year,
            month,
            day,
            hour: (rem / 3600) as u32,
            minute: (rem % 3600 / 60) as u32,
            second: (rem % 60) as u32,
            nanos,
            weekday: (days + 4).rem_euclid(7) as u32,
        }
    }

    /// Now.
    pub fn now() -> Self {
        let d = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        Self::from_unix(d.as_secs() as i64, d.subsec_nanos())
    }

    /// How Go prints a `time.Time` (`2006-01-02 15:04:05.999999999 +0000 UTC`).
    pub fn go_string(&self) -> String {
        self.format("2006-01-02 15:04:05.999999999 -0700 MST")
    }

    /// Go's `Time.Format` with the reference-time layout.
    pub fn format(&self, layout: &str) -> String {
        let mut out = String::new();
        let mut rest = layout;
        let hour12 = if self.hour.is_multiple_of(12) {
            12
        } else {
            self.hour % 12
        };
        while !rest.is_empty() {
            let tokens: [(&str, String); 27] = [
                ("January", MONTHS[self.month as usize - 1].to_string()),
                ("Monday", DAYS[self.weekday as usize].to_string()),
                ("2006", format!("{:04}", self.year)),
                ("-07:00", "+00:00".into()),
                ("-0700", "+0000".into()),
                ("Z07:00", "Z".into()),
                ("Z0700", "Z".into()),
                ("Jan", MONTHS[self.month as usize - 1][..3].to_string()),
                ("Mon", DAYS[self.weekday as usize][..3].to_string()),
                ("MST", "UTC".into()),
                ("-07", "+00".into()),
                ("002", format!("{:03}", day_of_year(self))),
                ("_2", format!("{:>2}", self.day)),
                ("01", format!("{:02}", self.month)),
                ("02", format!("{:02}", self.day)),
                ("03", format!("{hour12:02}")),
                ("04", format!("{:02}", self.minute)),
                ("05", format!("{:02}", self.second)),
                ("06", format!("{:02}", self.year % 100)),
                ("15", format!("{:02}", self.hour)),
                ("PM", if self.hour >= 12 { "PM" } else { "AM" }.into()),
                ("pm", if self.hour >= 12 { "pm" } else { "am" }.into()),
                ("1", self.month.to_string()),
                ("2", self.day.to_string()),
                ("3", hour12.to_string()),
                ("4", self.minute.to_string()),
                ("5", self.second.to_string()),
            ];
            if let Some(frac) = fraction(rest) {
                let digits = frac.len() - 1;
                let full = format!("{:09}", self.nanos);
                let mut shown = full[..digits.min(9)].to_string();
                if frac.as_bytes()[1] == b'9' {
                    shown = shown.trim_end_matches('0').to_string();
                    if !shown.is_empty() {
                        out.push('.');
                    }
                } else {
                    out.push('.');
                }
                out.push_str(&shown);
                rest = &rest[frac.len()..];
                continue;
            }
            match tokens.iter().find(|(t, _)| rest.starts_with(t)) {
                Some((t, v)) => {
                    out.push_str(v);
                    rest = &rest[t.len()..];
                }
                None => {
                    let c = rest.chars().next().unwrap_or_default();
                    out.push(c);
                    rest = &rest[c.len_utf8()..];
                }
            }
        }
        out
    }
}

/// `.000…` or `.999…` at the start of `s`.
fn fraction(s: &str) -> Option<&str> {
    let bytes = s.as_bytes();
    if bytes.first() != Some(&b'.') {
        return None;
    }
    let digit = *bytes.get(1)?;
    if digit != b'0' && digit != b'9' {
        return None;
    }
    let n = bytes[1..].iter().take_while(|b| **b == digit).count();
    // Go only treats it as a fraction when no other digit follows.
    if bytes.get(1 + n).is_some_and(|b| b.is_ascii_digit()) {
        return None;
    }
    Some(&s[..1 + n])
}

fn day_of_year(t: &Utc) -> u32 {
    let leap = (t.year % 4 == 0 && t.year % 100 != 0) || t.year % 400 == 0;
    let days = [
        31,
        if leap { 29 } else { 28 },
        31,
        30,
        31,
        30,
        31,
        31,
        30,
        31,
        30,
        31,
    ];
    days[..t.month as usize - 1].iter().sum::<u32>() + t.day
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_like_go() {
        // 2009-11-10 23:00:00 UTC, Go's playground time (a Tuesday).
        let t = Utc::from_unix(1_257_894_000, 0);
        assert_eq!(t.go_string(), "2009-11-10 23:00:00 +0000 UTC");
        assert_eq!(
            t.format("Jan 2, 2006 at 3:04pm (MST)"),
            "Nov 10, 2009 at 11:00pm (UTC)"
        );
        assert_eq!(
            t.format("Monday 02/01/06 15:04:05"),
            "Tuesday 10/11/09 23:00:00"
        );
        assert_eq!(t.format(time_rfc3339()), "2009-11-10T23:00:00Z");
        let t = Utc::from_unix(951_782_400, 120_000_000); // 2000-02-29
        assert_eq!(
            t.format("2006-01-02 .000 .999 _2 002"),
            "2000-02-29 .120 .12 29 060"
        );
    }

    fn time_rfc3339() -> &'static str {
        "2006-01-02T15:04:05Z07:00"
    }
}

//! The three time formats providers put in rate-limit headers, parsed without a date crate:
//! Go durations (OpenAI resets), RFC 3339 instants (Anthropic resets) and IMF-fixdate
//! (`retry-after` as an HTTP date). Each returns `None` on anything it does not recognise.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A Go `time.Duration` string: `12ms`, `1s`, `6m0s`, `2m59.56s`, `1h2m3.5s`, `0`.
pub(crate) fn go_duration(s: &str) -> Option<Duration> {
    let s = s.trim();
    if s == "0" {
        return Some(Duration::ZERO);
    }
    let mut rest = s.strip_prefix('+').unwrap_or(s);
    if rest.is_empty() {
        return None;
    }
    let mut total_ns = 0f64;
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let number = &rest[..num_len];
        // Go accepts "1.", ".5" but not "." alone; a number needs a digit.
        if !number.bytes().any(|b| b.is_ascii_digit()) || number.matches('.').count() > 1 {
            return None;
        }
        let value: f64 = number.parse().ok()?;
        rest = &rest[num_len..];
        let (unit_ns, unit_len) = unit(rest)?;
        rest = &rest[unit_len..];
        total_ns += value * unit_ns;
    }
    from_ns_f64(total_ns)
}

/// The unit at the start of `s`: nanoseconds per unit and the unit's length in bytes.
fn unit(s: &str) -> Option<(f64, usize)> {
    // Two-letter units first, so that "ms" is not read as minutes.
    const UNITS: [(&str, f64); 8] = [
        ("ns", 1.0),
        ("us", 1e3),
        ("µs", 1e3),
        ("μs", 1e3),
        ("ms", 1e6),
        ("s", 1e9),
        ("m", 60e9),
        ("h", 3600e9),
    ];
    UNITS
        .iter()
        .find(|(u, _)| s.starts_with(u))
        .map(|(u, ns)| (*ns, u.len()))
}

fn from_ns_f64(ns: f64) -> Option<Duration> {
    // Only digits and units get here, so NaN and negatives cannot, but keep the check local.
    if ns.is_nan() || ns < 0.0 {
        return None;
    }
    // Saturate: a reset further than u64 nanoseconds (584 years) away is "never" anyway, and
    // a number too long for an f64 (+inf) is read the same way, not rejected: a caller that
    // turns a reset into a wait must see the longest wait, which it then clamps.
    Some(Duration::from_nanos(if ns >= u64::MAX as f64 {
        u64::MAX
    } else {
        ns.round() as u64
    }))
}

/// Days from 1970-01-01 to the given civil date (proleptic Gregorian; Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m as i64 + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d as i64 - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn days_in_month(y: i64, m: u32) -> u32 {
    match m {
        2 if (y % 4 == 0 && y % 100 != 0) || y % 400 == 0 => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// A validated civil date-time (UTC) plus nanoseconds, as a `SystemTime`.
fn system_time(y: i64, mo: u32, d: u32, h: u32, mi: u32, s: u32, nanos: u32) -> Option<SystemTime> {
    if !(1..=12).contains(&mo) || d == 0 || d > days_in_month(y, mo) || h > 23 || mi > 59 {
        return None;
    }
    // Leap seconds (:60) are folded onto the next second's start, as most systems do.
    if s > 60 {
        return None;
    }
    let secs = days_from_civil(y, mo, d) * 86_400 + (h * 3600 + mi * 60 + s) as i64;
    let secs = u64::try_from(secs).ok()?; // before 1970: not a plausible reset time
    UNIX_EPOCH.checked_add(Duration::new(secs, nanos))
}

fn digits(s: &str, range: std::ops::Range<usize>) -> Option<u32> {
    let part = s.get(range)?;
    if part.bytes().all(|b| b.is_ascii_digit()) {
        part.parse().ok()
    } else {
        None
    }
}

/// An RFC 3339 date-time: `2024-05-01T12:00:07Z`, `2024-05-01t12:00:07.123+02:00`.
pub(crate) fn rfc3339(s: &str) -> Option<SystemTime> {
    let s = s.trim();
    let b = s.as_bytes();
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || !matches!(b[10], b'T' | b't' | b' ') {
        return None;
    }
    if b[13] != b':' || b[16] != b':' {
        return None;
    }
    let (y, mo, d) = (digits(s, 0..4)?, digits(s, 5..7)?, digits(s, 8..10)?);
    let (h, mi, sec) = (digits(s, 11..13)?, digits(s, 14..16)?, digits(s, 17..19)?);
    let mut rest = &s[19..];
    let mut nanos = 0u32;
    if let Some(frac) = rest.strip_prefix('.') {
        let len = frac
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(frac.len());
        if len == 0 {
            return None;
        }
        // Keep nanosecond precision; further digits are truncated.
        let kept = &frac[..len.min(9)];
        nanos = kept.parse::<u32>().ok()? * 10u32.pow(9 - kept.len() as u32);
        rest = &frac[len..];
    }
    let offset_secs: i64 = match rest {
        "Z" | "z" => 0,
        _ if rest.len() == 6 && rest.as_bytes()[3] == b':' => {
            let sign = match rest.as_bytes()[0] {
                b'+' => 1,
                b'-' => -1,
                _ => return None,
            };
            let (oh, om) = (digits(rest, 1..3)?, digits(rest, 4..6)?);
            if oh > 23 || om > 59 {
                return None;
            }
            sign * (oh * 3600 + om * 60) as i64
        }
        _ => return None,
    };
    let local = system_time(y as i64, mo, d, h, mi, sec, nanos)?;
    // local time = UTC + offset, so UTC = local - offset.
    if offset_secs >= 0 {
        local.checked_sub(Duration::from_secs(offset_secs as u64))
    } else {
        local.checked_add(Duration::from_secs(offset_secs.unsigned_abs()))
    }
}

/// An HTTP date in IMF-fixdate form: `Sun, 06 Nov 1994 08:49:37 GMT`.
pub(crate) fn imf_fixdate(s: &str) -> Option<SystemTime> {
    const DAYS: [&str; 7] = ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let parts: Vec<&str> = s.split_ascii_whitespace().collect();
    let [wkday, day, month, year, time, "GMT"] = parts.as_slice() else {
        return None;
    };
    if !DAYS.iter().any(|d| wkday.strip_suffix(',') == Some(*d)) || day.len() != 2 {
        return None;
    }
    let mo = MONTHS.iter().position(|m| m == month)? as u32 + 1;
    let t = time.as_bytes();
    if year.len() != 4 || t.len() != 8 || t[2] != b':' || t[5] != b':' {
        return None;
    }
    let (d, y) = (digits(day, 0..2)?, digits(year, 0..4)?);
    let (h, mi, sec) = (
        digits(time, 0..2)?,
        digits(time, 3..5)?,
        digits(time, 6..8)?,
    );
    system_time(y as i64, mo, d, h, mi, sec, 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    proptest::proptest! {
        /// The three parsers take any string without panicking.
        #[test]
        fn time_parsers_never_panic(s in ".{0,40}") {
            let _ = go_duration(&s);
            let _ = rfc3339(&s);
            let _ = imf_fixdate(&s);
        }
    }

    #[test]
    fn go_durations_as_openai_sends_them() {
        let ms = Duration::from_millis;
        assert_eq!(go_duration("12ms"), Some(ms(12)));
        assert_eq!(go_duration("1s"), Some(ms(1000)));
        assert_eq!(go_duration("6m0s"), Some(ms(360_000)));
        assert_eq!(go_duration("2m59.56s"), Some(ms(179_560)));
        assert_eq!(go_duration("1h2m3.5s"), Some(ms(3_723_500)));
        assert_eq!(go_duration("0"), Some(Duration::ZERO));
        assert_eq!(go_duration("250us"), Some(Duration::from_micros(250)));
        assert_eq!(go_duration("7ns"), Some(Duration::from_nanos(7)));
    }

    #[test]
    fn go_durations_reject_what_go_rejects() {
        for bad in [
            "", "s", "12", "1x", "-1s", ".s", "1..2s", "1 s", "ms12", "1.2.3s",
        ] {
            assert_eq!(go_duration(bad), None, "{bad:?}");
        }
        // Huge but well-formed: saturates instead of overflowing.
        assert_eq!(
            go_duration("99999999999999999h"),
            Some(Duration::from_nanos(u64::MAX))
        );
        // Too long for an f64: still "the longest wait", not a parse error.
        assert_eq!(
            go_duration(&format!("{}s", "9".repeat(400))),
            Some(Duration::from_nanos(u64::MAX))
        );
    }

    fn unix(t: SystemTime) -> u64 {
        t.duration_since(UNIX_EPOCH).unwrap().as_secs()
    }

    #[test]
    fn rfc3339_with_zones_and_fractions() {
        // 2024-05-01T12:00:07Z = 1714564807
        assert_eq!(
            rfc3339("2024-05-01T12:00:07Z").map(unix),
            Some(1_714_564_807)
        );
        assert_eq!(
            rfc3339("2024-05-01T14:00:07+02:00").map(unix),
            Some(1_714_564_807)
        );
        assert_eq!(
            rfc3339("2024-05-01T07:30:07-04:30").map(unix),
            Some(1_714_564_807)
        );
        let t = rfc3339("2024-05-01T12:00:07.250Z").unwrap();
        assert_eq!(t.duration_since(UNIX_EPOCH).unwrap().subsec_millis(), 250);
        assert_eq!(
            rfc3339("2024-02-29T00:00:00Z").map(unix),
            Some(1_709_164_800)
        );
    }

    #[test]
    fn rfc3339_rejects_malformed() {
        for bad in [
            "",
            "2024-05-01",
            "2024-05-01T12:00:07",
            "2023-02-29T00:00:00Z",
            "2024-13-01T00:00:00Z",
            "2024-05-01T24:00:00Z",
            "2024-05-01T12:00:07.Z",
            "2024-05-01T12:00:07+2:00",
            "1969-12-31T23:59:59Z",
            "２０２４-05-01T12:00:07Z",
        ] {
            assert_eq!(rfc3339(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn imf_fixdate_as_rfc9110_shows_it() {
        assert_eq!(
            imf_fixdate("Sun, 06 Nov 1994 08:49:37 GMT").map(unix),
            Some(784_111_777)
        );
        for bad in [
            "Sunday, 06-Nov-94 08:49:37 GMT",
            "Sun Nov  6 08:49:37 1994",
            "Sun, 06 Nov 1994 08:49:37 UTC",
            "Sun, 31 Nov 1994 08:49:37 GMT",
            "Sun, 6 Nov 1994 08:49:37 GMT",
        ] {
            assert_eq!(imf_fixdate(bad), None, "{bad:?}");
        }
    }
}

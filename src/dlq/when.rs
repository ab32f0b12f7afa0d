//! Times and ages as people type them on the `ferry dlq` command line: `2024-05-01T10:00:00Z`,
//! `2024-05-01`, or an age such as `2h` or `30d` meaning that long ago.

use std::time::Duration;

use chrono::{DateTime, NaiveDate, TimeDelta, Utc};

/// Why a time or an age was not understood; the message says what would have been.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WhenError {
    #[error(
        "{0:?} is not a time: write RFC 3339 (2024-05-01T10:00:00Z), a date (2024-05-01) or an age such as 90m, 2h or 7d"
    )]
    NotATime(String),
    #[error(
        "{0:?} is not an age: write a number and a unit (s, m, h, d, w), e.g. 30m, 12h, 30d or 1d12h"
    )]
    NotAnAge(String),
}

/// Parses an age: one or more `<number><unit>` parts, units `ms`, `s`, `m`, `h`, `d`, `w`.
/// Days are accepted (unlike in Go durations) because retention is thought of in days.
pub fn parse_age(text: &str) -> Result<Duration, WhenError> {
    let invalid = || WhenError::NotAnAge(text.to_owned());
    let mut rest = text.trim();
    if rest.is_empty() {
        return Err(invalid());
    }
    let mut total = Duration::ZERO;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        if digits == 0 {
            return Err(invalid());
        }
        let number: u64 = rest[..digits].parse().map_err(|_| invalid())?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len());
        let seconds_per_unit: u64 = match &rest[..unit_len] {
            "ms" => {
                total += Duration::from_millis(number);
                rest = &rest[unit_len..];
                continue;
            }
            "s" => 1,
            "m" => 60,
            "h" => 3_600,
            "d" => 86_400,
            "w" => 604_800,
            _ => return Err(invalid()),
        };
        let seconds = number.checked_mul(seconds_per_unit).ok_or_else(invalid)?;
        total = total
            .checked_add(Duration::from_secs(seconds))
            .ok_or_else(invalid)?;
        rest = &rest[unit_len..];
    }
    Ok(total)
}

/// The moment `age` before `now`.
pub fn ago(now: DateTime<Utc>, age: Duration) -> Option<DateTime<Utc>> {
    now.checked_sub_signed(TimeDelta::from_std(age).ok()?)
}

/// Parses a point in time: RFC 3339, a date (midnight UTC), or an age before `now`.
pub fn parse_time(text: &str, now: DateTime<Utc>) -> Result<DateTime<Utc>, WhenError> {
    let trimmed = text.trim();
    if let Ok(time) = DateTime::parse_from_rfc3339(trimmed) {
        return Ok(time.with_timezone(&Utc));
    }
    if let Ok(date) = NaiveDate::parse_from_str(trimmed, "%Y-%m-%d") {
        return Ok(date.and_time(chrono::NaiveTime::MIN).and_utc());
    }
    parse_age(trimmed)
        .ok()
        .and_then(|age| ago(now, age))
        .ok_or_else(|| WhenError::NotATime(text.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages_combine_units_including_days_and_reject_anything_else() {
        assert_eq!(parse_age("30d"), Ok(Duration::from_secs(30 * 86_400)));
        assert_eq!(parse_age("1h30m"), Ok(Duration::from_secs(5_400)));
        assert_eq!(parse_age("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_age("2w"), Ok(Duration::from_secs(14 * 86_400)));
        for bad in ["", "d", "30", "30x", "-1h", "1.5h", "h1"] {
            assert_eq!(
                parse_age(bad),
                Err(WhenError::NotAnAge(bad.to_owned())),
                "{bad}"
            );
        }
    }

    #[test]
    fn times_are_rfc3339_dates_or_ages_before_now() {
        let now = DateTime::parse_from_rfc3339("2024-05-02T12:00:00Z")
            .map(|t| t.with_timezone(&Utc))
            .expect("fixed time");
        let at = |text| parse_time(text, now).map(|t| t.to_rfc3339());
        assert_eq!(at("2h"), Ok("2024-05-02T10:00:00+00:00".to_owned()));
        assert_eq!(at("2024-05-01"), Ok("2024-05-01T00:00:00+00:00".to_owned()));
        assert_eq!(
            at("2024-05-01T10:00:00+02:00"),
            Ok("2024-05-01T08:00:00+00:00".to_owned())
        );
        assert_eq!(
            at("yesterday"),
            Err(WhenError::NotATime("yesterday".into()))
        );
    }
}

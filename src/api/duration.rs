//! A duration written the way Kubernetes writes them (`500ms`, `30s`, `1h30m`), with a schema pattern.

use std::{borrow::Cow, fmt, str::FromStr, time};

use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Deserializer, Serialize, Serializer, de};

/// The pattern every duration in the API matches: one or more `<number><unit>` parts, no sign.
/// It is the subset of Go's `time.ParseDuration` that CEL's `duration()` also accepts.
pub const DURATION_PATTERN: &str = r"^([0-9]+(\.[0-9]+)?(ns|us|µs|ms|s|m|h))+$";

/// A non-negative duration such as `250ms`, `30s` or `1h30m`.
///
/// Parsing is delegated to `kube::core::Duration` (Go's `time.ParseDuration` rules), so what the
/// API server's CEL `duration()` accepts and what Ferry accepts are the same strings. Negative
/// durations are rejected: no setting in Ferry's API means anything with a negative time.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Duration(time::Duration);

impl Duration {
    pub const fn from_secs(secs: u64) -> Self {
        Self(time::Duration::from_secs(secs))
    }

    pub const fn from_millis(millis: u64) -> Self {
        Self(time::Duration::from_millis(millis))
    }

    pub const fn as_std(&self) -> time::Duration {
        self.0
    }

    pub fn is_zero(&self) -> bool {
        self.0.is_zero()
    }
}

impl From<time::Duration> for Duration {
    fn from(value: time::Duration) -> Self {
        Self(value)
    }
}

/// Why a string is not a duration.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DurationError {
    #[error(
        "{0:?} is not a duration: write a number and a unit (ms, s, m, h), e.g. \"500ms\", \"30s\", \"1h30m\""
    )]
    Malformed(String),
    #[error("{0:?} is negative; durations must be zero or positive")]
    Negative(String),
}

impl FromStr for Duration {
    type Err = DurationError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        // Go accepts a bare "0"; the pattern (and so the API server) does not, so neither do we.
        if text.is_empty() || !text.starts_with(|c: char| c.is_ascii_digit()) {
            return Err(if text.starts_with('-') {
                DurationError::Negative(text.to_owned())
            } else {
                DurationError::Malformed(text.to_owned())
            });
        }
        let parsed: kube::core::Duration = text
            .parse()
            .map_err(|_| DurationError::Malformed(text.to_owned()))?;
        if parsed.is_negative() {
            return Err(DurationError::Negative(text.to_owned()));
        }
        Ok(Self(parsed.into()))
    }
}

impl fmt::Display for Duration {
    /// Writes the shortest Go-style form: `1h30m`, `45s`, `250ms`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let total_ms = self.0.as_millis();
        if total_ms == 0 {
            return f.write_str("0s");
        }
        let (hours, rest) = (total_ms / 3_600_000, total_ms % 3_600_000);
        let (minutes, rest) = (rest / 60_000, rest % 60_000);
        let (seconds, millis) = (rest / 1000, rest % 1000);
        for (value, unit) in [(hours, "h"), (minutes, "m"), (seconds, "s"), (millis, "ms")] {
            if value > 0 {
                write!(f, "{value}{unit}")?;
            }
        }
        Ok(())
    }
}

impl fmt::Debug for Duration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl Serialize for Duration {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Duration {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = Cow::<'de, str>::deserialize(deserializer)?;
        text.parse().map_err(de::Error::custom)
    }
}

impl JsonSchema for Duration {
    fn schema_name() -> Cow<'static, str> {
        "Duration".into()
    }

    fn inline_schema() -> bool {
        true
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "type": "string",
            "pattern": DURATION_PATTERN,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_go_style_durations() {
        assert_eq!("500ms".parse(), Ok(Duration::from_millis(500)));
        assert_eq!("1h30m".parse(), Ok(Duration::from_secs(5400)));
        assert_eq!("1.5s".parse(), Ok(Duration::from_millis(1500)));
    }

    #[test]
    fn rejects_negative_bare_and_unitless_durations() {
        assert!(matches!(
            "-5s".parse::<Duration>(),
            Err(DurationError::Negative(_))
        ));
        assert!(matches!(
            "5".parse::<Duration>(),
            Err(DurationError::Malformed(_))
        ));
        assert!(matches!(
            "5 seconds".parse::<Duration>(),
            Err(DurationError::Malformed(_))
        ));
        assert!(matches!(
            "".parse::<Duration>(),
            Err(DurationError::Malformed(_))
        ));
    }

    #[test]
    fn display_round_trips_through_parse() {
        for text in ["1h30m", "45s", "250ms", "2h", "1m1s1ms", "0s"] {
            let parsed: Duration = text.parse().expect(text);
            assert_eq!(parsed.to_string(), text);
        }
    }

    #[test]
    fn pattern_accepts_exactly_what_parses() {
        let pattern = regex_lite(DURATION_PATTERN);
        for good in ["1s", "1h30m", "1.5s", "250ms", "10us"] {
            assert!(pattern(good), "{good}");
        }
        for bad in ["-1s", "5", "1 s", "s", "1d"] {
            assert!(!pattern(bad), "{bad}");
            assert!(bad.parse::<Duration>().is_err(), "{bad}");
        }
    }

    fn regex_lite(pattern: &str) -> impl Fn(&str) -> bool {
        let schema = serde_json::json!({"type": "string", "pattern": pattern});
        let validator = jsonschema::validator_for(&schema).expect("pattern compiles");
        move |text| validator.is_valid(&serde_json::json!(text))
    }
}

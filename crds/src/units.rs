//! Human-friendly units used by the API: durations (`500ms`, `5s`, `5m`, `1h30m`) and
//! byte sizes (`64Ki`, `256Mi`, `1G`).
//!
//! They are kept as strings in the manifest (what the user wrote round-trips unchanged)
//! and parsed where they are used; `validate` reports every unparsable value with its
//! field path.

use std::borrow::Cow;
use std::fmt;

use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Serialize};

/// Regular expression every duration string must match (Go / Kubernetes duration syntax).
pub const DURATION_PATTERN: &str = r"^([0-9]+(\.[0-9]+)?(ns|us|ms|s|m|h))+$";
/// Regular expression every size string must match (Kubernetes quantity syntax, bytes).
pub const SIZE_PATTERN: &str = r"^[0-9]+(\.[0-9]+)?(Ki|Mi|Gi|Ti|k|M|G|T)?$";

/// Why a duration or size string could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UnitError {
    #[error("{0:?} is not a duration (use e.g. 500ms, 5s, 5m, 1h30m)")]
    Duration(String),
    #[error("{0:?} is not a size (use e.g. 64Ki, 256Mi, 1Gi)")]
    Size(String),
}

/// A duration written like `500ms`, `5s`, `5m`, `168h` or `1h30m`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Duration(pub String);

impl Duration {
    /// A duration from its textual form (not checked; see [`Duration::to_std`]).
    pub fn new(s: impl Into<String>) -> Self {
        Self(s.into())
    }

    /// Parses the string into a [`std::time::Duration`].
    pub fn to_std(&self) -> Result<std::time::Duration, UnitError> {
        parse_duration(&self.0)
    }
}

impl fmt::Display for Duration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
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
        json_schema!({"type": "string", "pattern": DURATION_PATTERN})
    }
}

/// A size in bytes written like `64Ki`, `256Mi`, `1Gi` or a plain number of bytes.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Size(pub String);

impl Size {
    /// A size from its textual form (not checked; see [`Size::to_bytes`]).
    pub fn new(s: impl Into<String>) -> Self {
        Self(s.into())
    }

    /// Parses the string into a number of bytes.
    pub fn to_bytes(&self) -> Result<u64, UnitError> {
        parse_size(&self.0)
    }
}

impl fmt::Display for Size {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl JsonSchema for Size {
    fn schema_name() -> Cow<'static, str> {
        "Size".into()
    }
    fn inline_schema() -> bool {
        true
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({"type": "string", "pattern": SIZE_PATTERN})
    }
}

/// Parses `500ms`, `5s`, `1h30m`, `1.5h` into a duration.
pub fn parse_duration(s: &str) -> Result<std::time::Duration, UnitError> {
    let err = || UnitError::Duration(s.to_string());
    if s.is_empty() {
        return Err(err());
    }
    let mut total = 0f64;
    let mut rest = s;
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(err)?;
        if num_len == 0 {
            return Err(err());
        }
        let number: f64 = rest[..num_len].parse().map_err(|_| err())?;
        rest = &rest[num_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let seconds_per_unit = match &rest[..unit_len] {
            "ns" => 1e-9,
            "us" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return Err(err()),
        };
        rest = &rest[unit_len..];
        total += number * seconds_per_unit;
    }
    std::time::Duration::try_from_secs_f64(total).map_err(|_| err())
}

/// Parses `64Ki`, `256Mi`, `1G`, `1000` into bytes.
pub fn parse_size(s: &str) -> Result<u64, UnitError> {
    let err = || UnitError::Size(s.to_string());
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    if split == 0 {
        return Err(err());
    }
    let number: f64 = s[..split].parse().map_err(|_| err())?;
    let multiplier: f64 = match &s[split..] {
        "" => 1.0,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "Ki" => 1024.0,
        "Mi" => 1024.0 * 1024.0,
        "Gi" => 1024.0 * 1024.0 * 1024.0,
        "Ti" => 1024.0 * 1024.0 * 1024.0 * 1024.0,
        _ => return Err(err()),
    };
    let bytes = number * multiplier;
    if !bytes.is_finite() || bytes < 0.0 || bytes > u64::MAX as f64 {
        return Err(err());
    }
    Ok(bytes.round() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration as Std;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("5s"), Ok(Std::from_secs(5)));
        assert_eq!(parse_duration("500ms"), Ok(Std::from_millis(500)));
        assert_eq!(parse_duration("1h30m"), Ok(Std::from_secs(5400)));
        assert_eq!(parse_duration("168h"), Ok(Std::from_secs(168 * 3600)));
        assert_eq!(parse_duration("1.5m"), Ok(Std::from_secs(90)));
        for bad in ["", "5", "s", "5x", "-5s", "5 s", "1d", "h5"] {
            assert!(parse_duration(bad).is_err(), "{bad:?} should not parse");
        }
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("256Mi"), Ok(256 * 1024 * 1024));
        assert_eq!(parse_size("64Ki"), Ok(65536));
        assert_eq!(parse_size("1G"), Ok(1_000_000_000));
        assert_eq!(parse_size("1000"), Ok(1000));
        assert_eq!(parse_size("1.5Ki"), Ok(1536));
        for bad in ["", "Mi", "12MB", "-1", "1 Mi"] {
            assert!(parse_size(bad).is_err(), "{bad:?} should not parse");
        }
    }

    #[test]
    fn patterns_agree_with_parsers() {
        // The schema patterns are what the API server enforces; the parsers are what the
        // agent uses. A string accepted by one must be accepted by the other.
        let dur = regex_lite_match(DURATION_PATTERN);
        for s in ["5s", "1h30m", "500ms", "1.5m", "10us", "3ns"] {
            assert!(dur(s) && parse_duration(s).is_ok(), "{s}");
        }
        let size = regex_lite_match(SIZE_PATTERN);
        for s in ["256Mi", "1", "1.5Gi", "10k"] {
            assert!(size(s) && parse_size(s).is_ok(), "{s}");
        }
    }

    /// Uses the JSON Schema validator the API layer is tested with to evaluate a pattern.
    fn regex_lite_match(pattern: &'static str) -> impl Fn(&str) -> bool {
        let schema = serde_json::json!({"type": "string", "pattern": pattern});
        let validator = jsonschema::validator_for(&schema).expect("pattern compiles");
        move |s| validator.is_valid(&serde_json::json!(s))
    }
}

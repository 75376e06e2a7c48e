//! Turning one MQTT message into a [`Reading`], or into the reason it is invalid.
//!
//! A payload is a JSON object read with the dotted paths of `spec.source.format`
//! (`value`, `device`, optional `timestamp`; a numeric segment indexes an array), or a
//! bare number (`23.4`, also as plain text such as `nan` from a failed sensor read). The
//! device may come from a topic segment (`topic[1]`). Every malformed input maps to one
//! [`InvalidReason`], which the caller counts and acknowledges: nothing here panics on
//! what arrives from the wire.

use edge_crds::PayloadFormat;
use serde_json::Value;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::record::{InvalidReason, Reading};

/// Unix timestamps below this are seconds, at or above it milliseconds (1e11 s is in
/// the year 5138, 1e11 ms in 1973).
const SECONDS_LIMIT: f64 = 1e11;
/// 9999-12-31T23:59:59.999Z, the largest timestamp RFC 3339 can write.
const MAX_TIMESTAMP_MS: f64 = 253_402_300_799_999.0;
/// Longest device id, in bytes of UTF-8.
pub const MAX_DEVICE_ID_BYTES: usize = 128;

/// One segment of a dotted path: an object key, which also indexes an array when it is
/// a number.
#[derive(Clone, Debug)]
struct Segment {
    key: String,
    index: Option<usize>,
}

/// A dotted path into a JSON document, e.g. `data.temp` or `readings.0.value`.
#[derive(Clone, Debug)]
struct JsonPath(Vec<Segment>);

impl JsonPath {
    fn new(path: &str) -> Self {
        Self(
            path.split('.')
                .map(|key| Segment {
                    key: key.to_string(),
                    index: key.parse().ok(),
                })
                .collect(),
        )
    }

    fn lookup<'a>(&self, root: &'a Value) -> Option<&'a Value> {
        self.0.iter().try_fold(root, |node, seg| match node {
            Value::Object(map) => map.get(&seg.key),
            Value::Array(items) => seg.index.and_then(|i| items.get(i)),
            _ => None,
        })
    }
}

/// Where the device id comes from.
#[derive(Clone, Debug)]
enum DeviceFrom {
    /// A dotted path in the payload.
    Path(JsonPath),
    /// A 0-based topic segment.
    Topic(usize),
}

/// Parses payloads of one pipeline (built once from `spec.source.format`).
#[derive(Clone, Debug)]
pub struct PayloadParser {
    value: JsonPath,
    device: DeviceFrom,
    timestamp: Option<JsonPath>,
    max_payload_bytes: usize,
}

impl PayloadParser {
    /// A parser for `format`; payloads over `max_payload_bytes` are [`InvalidReason::TooLarge`].
    ///
    /// The format is expected to have passed `edge_crds::validate`; a malformed
    /// `topic[N]` is read as a dotted path (and so never matches).
    pub fn new(format: &PayloadFormat, max_payload_bytes: usize) -> Self {
        let topic_index = format
            .device
            .strip_prefix("topic[")
            .and_then(|rest| rest.strip_suffix(']'))
            .and_then(|n| n.parse().ok());
        let device = match topic_index {
            Some(i) => DeviceFrom::Topic(i),
            None => DeviceFrom::Path(JsonPath::new(&format.device)),
        };
        Self {
            value: JsonPath::new(&format.value),
            device,
            timestamp: format.timestamp.as_deref().map(JsonPath::new),
            max_payload_bytes,
        }
    }

    /// Parses one message received at `received_ms` (unix milliseconds) on `topic`.
    pub fn parse(
        &self,
        topic: &str,
        payload: &[u8],
        received_ms: i64,
    ) -> Result<Reading, InvalidReason> {
        if payload.len() > self.max_payload_bytes {
            return Err(InvalidReason::TooLarge);
        }
        let root: Value = match serde_json::from_slice(payload) {
            Ok(root) => root,
            Err(_) => return self.parse_text(topic, payload, received_ms),
        };
        if !root.is_object() {
            let value = number(&root)?;
            return self.bare(topic, value, received_ms);
        }
        let value = number(self.value.lookup(&root).unwrap_or(&Value::Null))?;
        let device = match &self.device {
            DeviceFrom::Topic(i) => topic_segment(topic, *i)?,
            DeviceFrom::Path(path) => device_id(path.lookup(&root))?,
        };
        let timestamp_ms = match &self.timestamp {
            None => received_ms,
            Some(path) => match path.lookup(&root) {
                None | Some(Value::Null) => received_ms,
                Some(ts) => timestamp_ms(ts)?,
            },
        };
        Ok(Reading {
            device,
            topic: topic.to_string(),
            value,
            timestamp_ms,
            received_ms,
        })
    }

    /// A payload that is not JSON: plain text holding one number (`nan` and `inf`
    /// included, so a failed sensor read counts as `not_finite`).
    fn parse_text(
        &self,
        topic: &str,
        payload: &[u8],
        received_ms: i64,
    ) -> Result<Reading, InvalidReason> {
        let value: f64 = std::str::from_utf8(payload)
            .ok()
            .and_then(|text| text.trim().parse().ok())
            .ok_or(InvalidReason::NotJson)?;
        if !value.is_finite() {
            return Err(InvalidReason::NotFinite);
        }
        self.bare(topic, value, received_ms)
    }

    /// A reading from a payload that is only a value: the device must be a topic
    /// segment and the time is the receive time.
    fn bare(&self, topic: &str, value: f64, received_ms: i64) -> Result<Reading, InvalidReason> {
        let DeviceFrom::Topic(i) = self.device else {
            return Err(InvalidReason::MissingDevice);
        };
        Ok(Reading {
            device: topic_segment(topic, i)?,
            topic: topic.to_string(),
            value,
            timestamp_ms: received_ms,
            received_ms,
        })
    }
}

/// A JSON number or numeric string as a finite `f64`.
fn number(v: &Value) -> Result<f64, InvalidReason> {
    let x = match v {
        Value::Null => return Err(InvalidReason::MissingValue),
        Value::Number(n) => n.as_f64().ok_or(InvalidReason::NotNumeric)?,
        Value::String(s) => s
            .trim()
            .parse::<f64>()
            .map_err(|_| InvalidReason::NotNumeric)?,
        Value::Bool(_) | Value::Array(_) | Value::Object(_) => {
            return Err(InvalidReason::NotNumeric);
        }
    };
    if x.is_finite() {
        Ok(x)
    } else {
        Err(InvalidReason::NotFinite)
    }
}

/// The device id rule: 1 to [`MAX_DEVICE_ID_BYTES`] bytes, and no control character, no
/// whitespace, no invisible formatting character (zero-width, bidirectional overrides) and
/// none of the MQTT topic separator and wildcards (`/`, `+`, `#`). So a
/// device id rendered into a topic template stays one topic level of a valid topic name,
/// and it is at most a few cache lines of per-device state.
pub fn check_device_id(id: &str) -> Result<(), InvalidReason> {
    if id.is_empty() {
        return Err(InvalidReason::MissingDevice);
    }
    let bad = |c: char| {
        c.is_control()
            || c.is_whitespace()
            || matches!(c, '/' | '+' | '#' | '\u{200b}'..='\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2060}'..='\u{206f}' | '\u{feff}')
    };
    if id.len() > MAX_DEVICE_ID_BYTES || id.chars().any(bad) {
        return Err(InvalidReason::BadDevice);
    }
    Ok(())
}

/// Segment `i` of `topic`, if present, not empty and a valid device id.
pub fn topic_segment(topic: &str, i: usize) -> Result<String, InvalidReason> {
    let segment = topic
        .split('/')
        .nth(i)
        .ok_or(InvalidReason::MissingDevice)?;
    check_device_id(segment)?;
    Ok(segment.to_string())
}

/// A device id from a JSON string or number, checked by [`check_device_id`].
fn device_id(v: Option<&Value>) -> Result<String, InvalidReason> {
    let id = match v {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Number(n)) => n.to_string(),
        _ => return Err(InvalidReason::MissingDevice),
    };
    check_device_id(&id)?;
    Ok(id)
}

/// A present timestamp: unix seconds or milliseconds (number or numeric string), or an
/// RFC 3339 string.
fn timestamp_ms(v: &Value) -> Result<i64, InvalidReason> {
    match v {
        Value::Number(n) => n
            .as_f64()
            .ok_or(InvalidReason::BadTimestamp)
            .and_then(unix_ms),
        Value::String(s) => {
            let s = s.trim();
            match s.parse::<f64>() {
                Ok(x) => unix_ms(x),
                Err(_) => rfc3339_ms(s),
            }
        }
        _ => Err(InvalidReason::BadTimestamp),
    }
}

/// Unix seconds (below 1e11, may be fractional) or milliseconds to milliseconds.
fn unix_ms(x: f64) -> Result<i64, InvalidReason> {
    if !x.is_finite() || x < 0.0 {
        return Err(InvalidReason::BadTimestamp);
    }
    let ms = if x < SECONDS_LIMIT { x * 1000.0 } else { x }.round();
    if ms > MAX_TIMESTAMP_MS {
        return Err(InvalidReason::BadTimestamp);
    }
    // In range 0..=MAX_TIMESTAMP_MS, so the conversion is exact.
    Ok(ms as i64)
}

fn rfc3339_ms(s: &str) -> Result<i64, InvalidReason> {
    let t = OffsetDateTime::parse(s, &Rfc3339).map_err(|_| InvalidReason::BadTimestamp)?;
    i64::try_from(t.unix_timestamp_nanos().div_euclid(1_000_000))
        .map_err(|_| InvalidReason::BadTimestamp)
}

#[cfg(test)]
mod tests;

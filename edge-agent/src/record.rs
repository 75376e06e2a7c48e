//! The values that flow from one step of the agent to the next: a [`Reading`] parsed
//! from an MQTT message (or the [`InvalidReason`] it is not one), a [`Record`] that must
//! travel upstream (a reading that passed the processors, an aggregate, an anomaly or an
//! image classification), and the [`UnitContent`] a message becomes: its records and the
//! device state they change, committed to the queue together.
//!
//! [`UpstreamRecord`] is the wire format of DESIGN.md: one JSON object per record, a
//! batch is a JSON array of them.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Why a message is not a reading. The names are the `reason` label of the invalid
/// messages counter.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, thiserror::Error)]
pub enum InvalidReason {
    /// The payload is neither JSON nor a plain number.
    #[error("payload is neither JSON nor a number")]
    NotJson,
    /// The value path is absent (or `null`).
    #[error("payload has no value at the configured path")]
    MissingValue,
    /// The value is not a number or a numeric string.
    #[error("value is not a number")]
    NotNumeric,
    /// The value is NaN or infinite.
    #[error("value is NaN or infinite")]
    NotFinite,
    /// The payload is larger than `spec.source.maxPayloadSize`.
    #[error("payload is larger than the maximum payload size")]
    TooLarge,
    /// A timestamp is present but is not unix seconds, unix milliseconds or RFC 3339.
    #[error("timestamp is not unix seconds, unix milliseconds or RFC 3339")]
    BadTimestamp,
    /// No device id in the payload or the topic.
    #[error("no device id in the payload or the topic")]
    MissingDevice,
    /// The device id breaks the device id rule (see [`check_device_id`]).
    #[error(
        "device id is longer than 128 bytes or holds a control character, whitespace, '/', '+' or '#'"
    )]
    BadDevice,
}

impl InvalidReason {
    /// Every reason, e.g. to initialise metric label values.
    pub const ALL: [InvalidReason; 8] = [
        Self::NotJson,
        Self::MissingValue,
        Self::NotNumeric,
        Self::NotFinite,
        Self::TooLarge,
        Self::BadTimestamp,
        Self::MissingDevice,
        Self::BadDevice,
    ];

    /// Static name used as a metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::NotJson => "not_json",
            Self::MissingValue => "missing_value",
            Self::NotNumeric => "not_numeric",
            Self::NotFinite => "not_finite",
            Self::TooLarge => "too_large",
            Self::BadTimestamp => "bad_timestamp",
            Self::MissingDevice => "missing_device",
            Self::BadDevice => "bad_device",
        }
    }
}

/// What one MQTT message (or a window closed by the clock) commits.
#[derive(Debug, Default)]
pub struct UnitContent {
    /// The records derived from it.
    pub records: Vec<Record>,
    /// The per-device state it changed.
    pub state: Vec<StateChange>,
    /// The delivery it came from (QoS 1).
    pub delivery: Option<DeliveryId>,
}

impl From<Vec<Record>> for UnitContent {
    fn from(records: Vec<Record>) -> Self {
        Self {
            records,
            ..Self::default()
        }
    }
}

/// A change to one key of the per-device state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StateChange {
    /// `<owner>/<device>` (device ids never hold `/`).
    pub key: String,
    /// The new state; `None` deletes it (a device evicted).
    pub value: Option<Vec<u8>>,
}

/// Which MQTT delivery a unit came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DeliveryId {
    /// The packet identifier (QoS 1).
    pub pkid: u16,
    /// A hash of the topic and the payload.
    pub hash: i64,
}

impl DeliveryId {
    /// The delivery of a QoS 1 publish (`pkid` non-zero).
    pub fn of(pkid: u16, topic: &str, payload: &[u8]) -> Option<Self> {
        if pkid == 0 {
            return None;
        }
        let mut h = Sha256::new();
        h.update((topic.len() as u64).to_le_bytes());
        h.update(topic.as_bytes());
        h.update(payload);
        let digest = h.finalize();
        let mut first = [0u8; 8];
        first.copy_from_slice(&digest[..8]);
        Some(Self {
            pkid,
            hash: i64::from_le_bytes(first),
        })
    }
}

/// One sensor reading, as parsed from one MQTT message.
#[derive(Clone, Debug, PartialEq)]
pub struct Reading {
    /// Device id (from the payload or a topic segment).
    pub device: String,
    /// MQTT topic the message arrived on.
    pub topic: String,
    /// The numeric value.
    pub value: f64,
    /// Event time in unix milliseconds (the payload's timestamp, else receive time).
    pub timestamp_ms: i64,
    /// Wall-clock time the agent received the message, unix milliseconds. Time-based
    /// processors (`deadband.maxSilence`, `aggregate` windows) use this clock, so a
    /// device with a wrong clock cannot hold a window open or silence a heartbeat.
    pub received_ms: i64,
}

/// What a record is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RecordKind {
    /// A raw reading that passed every processor.
    Reading,
    /// A window aggregate.
    Aggregate,
    /// A reading whose window the model scored above the threshold.
    Anomaly,
    /// An image classified by the model.
    Classification,
}

impl RecordKind {
    /// Static name, used in metric labels and the wire format.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Reading => "reading",
            Self::Aggregate => "aggregate",
            Self::Anomaly => "anomaly",
            Self::Classification => "classification",
        }
    }
}

/// A record that must travel upstream, before the queue assigns its `seq`.
#[derive(Clone, Debug, PartialEq)]
pub struct Record {
    /// What the record is.
    pub kind: RecordKind,
    /// Device id.
    pub device: String,
    /// Topic of the (last) reading the record comes from.
    pub topic: String,
    /// The value (for an aggregate: the last value, also in `stats`).
    pub value: Option<f64>,
    /// Event time, unix milliseconds (for an aggregate: the window start).
    pub timestamp_ms: i64,
    /// Anomaly score (anomaly records).
    pub score: Option<f64>,
    /// Aggregate statistics by function name, or the anomaly window's summary.
    pub stats: Option<BTreeMap<String, f64>>,
    /// Top-k classes and scores (classification records).
    pub labels: Option<Vec<(String, f64)>>,
    /// A reading that passed a `threshold` processor: it travels in the urgent lane (see
    /// [`Record::lane`]).
    pub urgent: bool,
}

/// The queue lane a record waits in: urgent records go upstream before routine ones,
/// whatever the backlog. The value is what the queue file stores.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Lane {
    /// Readings and aggregates.
    Routine = 0,
    /// Anomalies, classifications and readings that crossed a threshold.
    Urgent = 1,
}

impl Record {
    /// A record for a raw reading.
    pub fn reading(r: &Reading) -> Self {
        Self {
            kind: RecordKind::Reading,
            device: r.device.clone(),
            topic: r.topic.clone(),
            value: Some(r.value),
            timestamp_ms: r.timestamp_ms,
            score: None,
            stats: None,
            labels: None,
            urgent: false,
        }
    }

    /// The lane the record waits in: anomalies, classifications and readings that crossed
    /// a threshold are urgent, readings and aggregates routine.
    pub fn lane(&self) -> Lane {
        match self.kind {
            RecordKind::Anomaly | RecordKind::Classification => Lane::Urgent,
            _ if self.urgent => Lane::Urgent,
            RecordKind::Reading | RecordKind::Aggregate => Lane::Routine,
        }
    }
}

/// A class and its score in a classification record.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LabelScore {
    /// Class label.
    pub label: String,
    /// Model score.
    pub score: f64,
}

/// The upstream wire format of one record (DESIGN.md).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct UpstreamRecord {
    /// `namespace/name` of the pipeline.
    pub pipeline: String,
    /// Node the agent runs on.
    pub node: String,
    /// Device id.
    pub device: String,
    /// MQTT topic.
    pub topic: String,
    /// `reading`, `aggregate`, `anomaly` or `classification`.
    pub kind: RecordKind,
    /// The value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<f64>,
    /// RFC 3339 UTC with milliseconds, e.g. `2026-11-25T12:00:00.123Z`.
    pub timestamp: String,
    /// Per pipeline and node, strictly increasing, never reused.
    pub seq: u64,
    /// Anomaly score.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub score: Option<f64>,
    /// Aggregate statistics or anomaly window summary.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stats: Option<BTreeMap<String, f64>>,
    /// Top-k classes (classification).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub labels: Option<Vec<LabelScore>>,
}

impl UpstreamRecord {
    /// The wire form of `record` with its queue sequence number.
    pub fn new(pipeline: &str, node: &str, seq: u64, record: &Record) -> Self {
        Self {
            pipeline: pipeline.to_string(),
            node: node.to_string(),
            device: record.device.clone(),
            topic: record.topic.clone(),
            kind: record.kind,
            value: record.value,
            timestamp: format_timestamp_ms(record.timestamp_ms),
            seq,
            score: record.score,
            stats: record.stats.clone(),
            labels: record.labels.as_ref().map(|l| {
                l.iter()
                    .map(|(label, score)| LabelScore {
                        label: label.clone(),
                        score: *score,
                    })
                    .collect()
            }),
        }
    }
}

/// Formats unix milliseconds as RFC 3339 UTC with millisecond precision.
pub fn format_timestamp_ms(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let millis = ms.rem_euclid(1000);
    let days = secs.div_euclid(86_400);
    let sod = secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{millis:03}Z",
        sod / 3600,
        (sod % 3600) / 60,
        sod % 60
    )
}

/// Days since 1970-01-01 to (year, month, day) in the proleptic Gregorian calendar
/// (Howard Hinnant's algorithm).
pub(crate) fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_are_rfc3339_utc_millis() {
        assert_eq!(format_timestamp_ms(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(
            format_timestamp_ms(1_795_608_000_123),
            "2026-11-25T12:00:00.123Z"
        );
        assert_eq!(
            format_timestamp_ms(951_782_400_000),
            "2000-02-29T00:00:00.000Z"
        );
        assert_eq!(format_timestamp_ms(-1), "1969-12-31T23:59:59.999Z");
    }

    #[test]
    fn wire_format_matches_the_design() {
        let r = Reading {
            device: "t1".into(),
            topic: "sensors/t1/temperature".into(),
            value: 23.4,
            timestamp_ms: 1_795_608_000_123,
            received_ms: 1_795_608_000_200,
        };
        let up = UpstreamRecord::new(
            "factory/line1-temperature",
            "edge-1",
            12345,
            &Record::reading(&r),
        );
        let json = serde_json::to_value(&up).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"pipeline":"factory/line1-temperature","node":"edge-1","device":"t1",
                "topic":"sensors/t1/temperature","kind":"reading","value":23.4,
                "timestamp":"2026-11-25T12:00:00.123Z","seq":12345})
        );
    }
}

//! Batch wire formats: the bytes a batch of records travels upstream as.
//!
//! v1 is a JSON array of [`UpstreamRecord`] objects, each repeating the pipeline, node,
//! device, topic and kind. v2 (`"format":"edgepipe.v2"`) names the pipeline and node once
//! and puts the records of each (device, topic, kind) into columns, which removes most of
//! that repetition. v3 ([`v3`]) is v2's groups and columns in binary, for metered links.
//! Every v1 record can be rebuilt exactly from v2 and v3 ([`decode_v2`], [`decode_v3`]).
//! The formats are specified in `deploy/wire-format.md`.
//!
//! The queue stores each record as its v1 JSON, so v1 is the stored bodies joined and v2
//! re-reads them. The drain runs at hundreds of thousands of records a second, so the
//! records are read into views that borrow their strings from the stored bodies, and the
//! v2 object is written straight into one buffer.

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet, HashMap};

use serde::{Deserialize, Serialize};

pub mod v3;

pub use v3::{V3_MAGIC, decode as decode_v3};

use crate::delivery::queue::Batch;
use crate::record::{LabelScore, RecordKind, UpstreamRecord, format_timestamp_ms};

/// The `format` field of a v2 batch.
pub const V2_FORMAT: &str = "edgepipe.v2";
/// The HTTP header that names the format of a v2 body (`Edgepipe-Format: v2`).
pub const FORMAT_HEADER: &str = "Edgepipe-Format";

/// How a batch is encoded (`sink.format`: `v1` or `v2`).
pub use edge_crds::WireFormat;

/// Why a batch could not be encoded or decoded.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    /// A stored record is not an upstream record.
    #[error("record {seq}: not an upstream record: {source}")]
    Body {
        seq: u64,
        #[source]
        source: serde_json::Error,
    },
    /// A stored record's timestamp is not in the form v2 can rebuild exactly.
    #[error("record {seq}: timestamp {timestamp:?} is not RFC 3339 UTC with milliseconds")]
    Timestamp { seq: u64, timestamp: String },
    /// A stored record belongs to another pipeline or node than the batch (v2 names them
    /// once, so the record could not be rebuilt as it is).
    #[error("record {seq}: {field} is {found:?}, the batch's is {expected:?}")]
    Identity {
        seq: u64,
        field: &'static str,
        found: String,
        expected: String,
    },
    /// Not a v2 object, or not valid JSON.
    #[error("v2 batch: {0}")]
    Json(#[source] serde_json::Error),
    /// A `format` other than [`V2_FORMAT`].
    #[error("unknown batch format {0:?}: expected \"edgepipe.v2\"")]
    UnknownFormat(String),
    /// A v3 body that does not follow the format.
    #[error("v3 batch, byte {at}: {what}")]
    Binary { at: usize, what: String },
    /// A column whose length differs from the group's `seq`.
    #[error("group {group}: column {column} has {len} entries, seq has {expected}")]
    Column {
        group: usize,
        column: String,
        len: usize,
        expected: usize,
    },
}

/// The format a sink writes and the identity v2 states once per batch.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Writer {
    /// `sink.format`.
    pub format: WireFormat,
    /// `namespace/name`.
    pub pipeline: String,
    /// Node name.
    pub node: String,
}

impl Writer {
    /// The body of `batch` and the format it is in. A batch v2 cannot hold (a record that
    /// is not an upstream record of this pipeline and node) goes as v1, logged: every
    /// retry would fail the same way, and every receiver of v2 reads v1 too.
    pub fn body(&self, batch: &Batch) -> (WireFormat, Vec<u8>) {
        match encode(self.format, &self.pipeline, &self.node, batch) {
            Ok(body) => (self.format, body),
            Err(e) => {
                tracing::warn!(first = batch.first_seq, last = batch.last_seq, error = %e, "this batch goes as v1");
                (WireFormat::V1, batch.json_array())
            }
        }
    }
}

/// Encodes `batch` for the upstream. v1 is the stored bodies as one JSON array; v2 and v3 need
/// every stored body to be an [`UpstreamRecord`] of `pipeline` and `node` whose timestamp
/// is in the form [`UpstreamRecord::new`] writes.
pub fn encode(
    format: WireFormat,
    pipeline: &str,
    node: &str,
    batch: &Batch,
) -> Result<Vec<u8>, WireError> {
    match format {
        WireFormat::V1 => Ok(batch.json_array()),
        WireFormat::V2 => encode_v2(pipeline, node, batch),
        WireFormat::V3 => v3::encode(pipeline, node, batch),
    }
}

/// A stored record read in place: the fields and rules of [`UpstreamRecord`], with the
/// strings borrowed from the body unless they hold escapes.
#[derive(Deserialize)]
struct View<'a> {
    #[serde(borrow)]
    pipeline: Cow<'a, str>,
    #[serde(borrow)]
    node: Cow<'a, str>,
    #[serde(borrow)]
    device: Cow<'a, str>,
    #[serde(borrow)]
    topic: Cow<'a, str>,
    kind: RecordKind,
    #[serde(default)]
    value: Option<f64>,
    #[serde(borrow)]
    timestamp: Cow<'a, str>,
    seq: u64,
    #[serde(default)]
    score: Option<f64>,
    #[serde(default, borrow)]
    stats: Option<BTreeMap<Cow<'a, str>, f64>>,
    #[serde(default, borrow)]
    labels: Option<Vec<LabelView<'a>>>,
}

/// A [`LabelScore`] read in place.
#[derive(Deserialize, Serialize)]
struct LabelView<'a> {
    #[serde(borrow)]
    label: Cow<'a, str>,
    score: f64,
}

/// A record of the batch and its event time in unix milliseconds.
struct Row<'a> {
    view: View<'a>,
    t: i64,
}

/// The records of `batch` read in place, and their groups: the indices of the records of
/// each (device, topic, kind), groups in the order of their first record, each in batch
/// order. Every record must be an upstream record of `pipeline` and `node` whose timestamp
/// [`format_timestamp_ms`] writes back exactly.
type Grouped<'a> = (Vec<Row<'a>>, Vec<Vec<usize>>);

fn grouped<'a>(pipeline: &str, node: &str, batch: &'a Batch) -> Result<Grouped<'a>, WireError> {
    let mut rows = Vec::with_capacity(batch.records.len());
    for stored in &batch.records {
        let seq = stored.seq;
        let view: View = serde_json::from_slice(&stored.body)
            .map_err(|source| WireError::Body { seq, source })?;
        for (field, found, expected) in [
            ("pipeline", &view.pipeline, pipeline),
            ("node", &view.node, node),
        ] {
            if found != expected {
                return Err(WireError::Identity {
                    seq,
                    field,
                    found: found.to_string(),
                    expected: expected.to_string(),
                });
            }
        }
        let Some(t) = parse_timestamp(&view.timestamp) else {
            return Err(WireError::Timestamp {
                seq,
                timestamp: view.timestamp.into_owned(),
            });
        };
        rows.push(Row { view, t });
    }
    let mut index: HashMap<(&str, &str, RecordKind), usize> = HashMap::new();
    let mut groups: Vec<Vec<usize>> = Vec::new();
    for (i, row) in rows.iter().enumerate() {
        let key = (&*row.view.device, &*row.view.topic, row.view.kind);
        let g = *index.entry(key).or_insert_with(|| {
            groups.push(Vec::new());
            groups.len() - 1
        });
        groups[g].push(i);
    }
    Ok((rows, groups))
}

/// The statistic names some member of a group has, in sorted order.
fn stat_names<'r>(rows: &'r [Row<'_>], members: &[usize]) -> BTreeSet<&'r str> {
    members
        .iter()
        .filter_map(|&i| rows[i].view.stats.as_ref())
        .flat_map(|s| s.keys().map(|k| &**k))
        .collect()
}

fn encode_v2(pipeline: &str, node: &str, batch: &Batch) -> Result<Vec<u8>, WireError> {
    let (rows, groups) = grouped(pipeline, node, batch)?;

    // v2 is smaller than v1: half of v1 is a fair first guess.
    let v1_len: usize = batch.records.iter().map(|r| r.body.len()).sum();
    let mut out = Vec::with_capacity(v1_len / 2 + 128);
    out.extend_from_slice(b"{\"format\":");
    put(&mut out, V2_FORMAT)?;
    out.extend_from_slice(b",\"pipeline\":");
    put(&mut out, pipeline)?;
    out.extend_from_slice(b",\"node\":");
    put(&mut out, node)?;
    out.extend_from_slice(b",\"groups\":[");
    for (g, members) in groups.iter().enumerate() {
        if g > 0 {
            out.push(b',');
        }
        let first = &rows[members[0]].view;
        out.extend_from_slice(b"{\"device\":");
        put(&mut out, &*first.device)?;
        out.extend_from_slice(b",\"topic\":");
        put(&mut out, &*first.topic)?;
        out.extend_from_slice(b",\"kind\":");
        put(&mut out, &first.kind)?;
        column(&mut out, "seq", &rows, members, |r| r.view.seq)?;
        column(&mut out, "t", &rows, members, |r| r.t)?;
        let has = |f: fn(&View) -> bool| members.iter().any(|&i| f(&rows[i].view));
        if has(|v| v.value.is_some()) {
            column(&mut out, "value", &rows, members, |r| r.view.value)?;
        }
        if has(|v| v.score.is_some()) {
            column(&mut out, "score", &rows, members, |r| r.view.score)?;
        }
        let names = stat_names(&rows, members);
        if !names.is_empty() {
            out.extend_from_slice(b",\"stats\":{");
            for (n, name) in names.iter().enumerate() {
                if n > 0 {
                    out.push(b',');
                }
                put(&mut out, *name)?;
                out.push(b':');
                array(&mut out, &rows, members, |r| {
                    r.view.stats.as_ref().and_then(|s| s.get(*name)).copied()
                })?;
            }
            out.push(b'}');
        }
        if has(|v| v.labels.is_some()) {
            column(&mut out, "labels", &rows, members, |r| &r.view.labels)?;
        }
        out.push(b'}');
    }
    out.extend_from_slice(b"]}");
    Ok(out)
}

/// Appends `value` as JSON.
fn put<T: Serialize + ?Sized>(out: &mut Vec<u8>, value: &T) -> Result<(), WireError> {
    serde_json::to_writer(out, value).map_err(WireError::Json)
}

/// Appends `,"name":` and the column of `members`.
fn column<'r, 'a, T: Serialize>(
    out: &mut Vec<u8>,
    name: &str,
    rows: &'r [Row<'a>],
    members: &[usize],
    cell: impl Fn(&'r Row<'a>) -> T,
) -> Result<(), WireError> {
    out.extend_from_slice(b",\"");
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b"\":");
    array(out, rows, members, cell)
}

/// Appends the JSON array of `cell` of each member.
fn array<'r, 'a, T: Serialize>(
    out: &mut Vec<u8>,
    rows: &'r [Row<'a>],
    members: &[usize],
    cell: impl Fn(&'r Row<'a>) -> T,
) -> Result<(), WireError> {
    out.push(b'[');
    for (n, &i) in members.iter().enumerate() {
        if n > 0 {
            out.push(b',');
        }
        put(out, &cell(&rows[i]))?;
    }
    out.push(b']');
    Ok(())
}

/// A v2 batch as read by [`decode_v2`]. Unknown fields are ignored: new optional columns
/// may be added within v2.
#[derive(Deserialize)]
struct V2Batch {
    pipeline: String,
    node: String,
    groups: Vec<V2Group>,
}

#[derive(Deserialize)]
struct V2Group {
    device: String,
    topic: String,
    kind: RecordKind,
    seq: Vec<u64>,
    t: Vec<i64>,
    #[serde(default)]
    value: Option<Vec<Option<f64>>>,
    #[serde(default)]
    score: Option<Vec<Option<f64>>>,
    #[serde(default)]
    stats: Option<BTreeMap<String, Vec<Option<f64>>>>,
    #[serde(default)]
    labels: Option<Vec<Option<Vec<LabelScore>>>>,
}

/// Rebuilds the v1 records of a v2 batch, in `seq` order (the batch's order).
pub fn decode_v2(bytes: &[u8]) -> Result<Vec<UpstreamRecord>, WireError> {
    // The version first, so that another version is reported as such rather than as
    // whatever its content fails on.
    #[derive(Deserialize)]
    struct Header<'a> {
        #[serde(borrow)]
        format: Cow<'a, str>,
    }
    let header: Header = serde_json::from_slice(bytes).map_err(WireError::Json)?;
    if header.format != V2_FORMAT {
        return Err(WireError::UnknownFormat(header.format.into_owned()));
    }
    let batch: V2Batch = serde_json::from_slice(bytes).map_err(WireError::Json)?;

    let mut records = Vec::with_capacity(batch.groups.iter().map(|g| g.seq.len()).sum());
    for (g, group) in batch.groups.into_iter().enumerate() {
        let expected = group.seq.len();
        let check = |column: &str, len: usize| {
            if len == expected {
                Ok(())
            } else {
                Err(WireError::Column {
                    group: g,
                    column: column.to_string(),
                    len,
                    expected,
                })
            }
        };
        check("t", group.t.len())?;
        if let Some(v) = &group.value {
            check("value", v.len())?;
        }
        if let Some(v) = &group.score {
            check("score", v.len())?;
        }
        for (name, v) in group.stats.iter().flatten() {
            check(&format!("stats.{name}"), v.len())?;
        }
        if let Some(v) = &group.labels {
            check("labels", v.len())?;
        }
        let mut labels = group.labels.map(Vec::into_iter);
        for i in 0..expected {
            let stats = group.stats.as_ref().and_then(|s| {
                let m: BTreeMap<String, f64> = s
                    .iter()
                    .filter_map(|(name, v)| Some((name.clone(), v[i]?)))
                    .collect();
                (!m.is_empty()).then_some(m)
            });
            records.push(UpstreamRecord {
                pipeline: batch.pipeline.clone(),
                node: batch.node.clone(),
                device: group.device.clone(),
                topic: group.topic.clone(),
                kind: group.kind,
                value: group.value.as_ref().and_then(|v| v[i]),
                timestamp: format_timestamp_ms(group.t[i]),
                seq: group.seq[i],
                score: group.score.as_ref().and_then(|v| v[i]),
                stats,
                labels: labels.as_mut().and_then(|l| l.next().flatten()),
            });
        }
    }
    records.sort_by_key(|r| r.seq);
    Ok(records)
}

/// Unix milliseconds of a v1 timestamp, if [`format_timestamp_ms`] writes it back exactly
/// (`YYYY-MM-DDTHH:MM:SS.mmmZ`), so that v2 can carry it as an integer.
fn parse_timestamp(s: &str) -> Option<i64> {
    // The tail after the year has a fixed width.
    const TAIL: usize = "-MM-DDTHH:MM:SS.mmmZ".len();
    let b = s.as_bytes();
    let (year, tail) = b.split_at(b.len().checked_sub(TAIL)?);
    let sep = |i: usize, c: u8| tail[i] == c;
    if !(sep(0, b'-') && sep(3, b'-') && sep(6, b'T') && sep(9, b':') && sep(12, b':'))
        || !(sep(15, b'.') && sep(19, b'Z'))
    {
        return None;
    }
    let (negative, digits) = match year.split_first() {
        Some((b'-', rest)) => (true, rest),
        _ => (false, year),
    };
    // 12 digits fit an i64 and reach far beyond what i64 milliseconds can hold.
    if digits.is_empty() || digits.len() > 12 {
        return None;
    }
    let y = number(digits)?;
    let y = if negative { -y } else { y };
    let month = number(&tail[1..3])?;
    let day = number(&tail[4..6])?;
    let hour = number(&tail[7..9])?;
    let minute = number(&tail[10..12])?;
    let second = number(&tail[13..15])?;
    let millis = number(&tail[16..19])?;
    if !(1..=12).contains(&month)
        || day < 1
        || day > days_in_month(y, month)
        || hour > 23
        || minute > 59
        || second > 59
    {
        return None;
    }
    let ms = i128::from(days_from_civil(y, month, day)) * 86_400_000
        + i128::from(((hour * 60 + minute) * 60 + second) * 1000 + millis);
    let ms = i64::try_from(ms).ok()?;
    // With every field in range and a four-digit year, the string is the only one for its
    // instant. Other years (before 0000, after 9999) are checked the slow way.
    if (!negative && digits.len() == 4) || format_timestamp_ms(ms) == s {
        Some(ms)
    } else {
        None
    }
}

/// The value of ASCII decimal digits (at most 12 of them).
fn number(digits: &[u8]) -> Option<i64> {
    digits.iter().try_fold(0i64, |n, &d| {
        d.is_ascii_digit().then(|| n * 10 + i64::from(d - b'0'))
    })
}

fn days_in_month(y: i64, m: i64) -> i64 {
    match m {
        2 if y % 4 == 0 && (y % 100 != 0 || y % 400 == 0) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 of a date in the proleptic Gregorian calendar (Howard Hinnant's
/// algorithm, the inverse of `record::civil_from_days`).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use proptest::prelude::*;

    use super::*;
    use crate::delivery::queue::StoredRecord;
    use crate::record::Lane;

    const PIPELINE: &str = "factory/line1-temperature";
    const NODE: &str = "edge-1";

    fn rec(seq: u64, kind: RecordKind, device: &str, topic: &str, ms: i64) -> UpstreamRecord {
        UpstreamRecord {
            pipeline: PIPELINE.into(),
            node: NODE.into(),
            device: device.into(),
            topic: topic.into(),
            kind,
            value: None,
            timestamp: format_timestamp_ms(ms),
            seq,
            score: None,
            stats: None,
            labels: None,
        }
    }

    fn reading(seq: u64, device: &str, ms: i64, value: f64) -> UpstreamRecord {
        let topic = format!("sensors/{device}/temperature");
        UpstreamRecord {
            value: Some(value),
            ..rec(seq, RecordKind::Reading, device, &topic, ms)
        }
    }

    fn stats(pairs: &[(&str, f64)]) -> Option<BTreeMap<String, f64>> {
        Some(pairs.iter().map(|(k, v)| (k.to_string(), *v)).collect())
    }

    fn batch_of(records: &[UpstreamRecord]) -> Batch {
        let stored: Vec<StoredRecord> = records
            .iter()
            .map(|r| StoredRecord {
                seq: r.seq,
                body: serde_json::to_vec(r).unwrap(),
            })
            .collect();
        Batch {
            lane: Lane::Routine,
            first_seq: stored.first().map_or(0, |r| r.seq),
            last_seq: stored.last().map_or(0, |r| r.seq),
            records: stored,
            backlog: false,
        }
    }

    fn v2(records: &[UpstreamRecord]) -> Vec<u8> {
        encode(WireFormat::V2, PIPELINE, NODE, &batch_of(records)).unwrap()
    }

    /// Records that exercise every column and the awkward values.
    fn mixed() -> Vec<UpstreamRecord> {
        let odd = "q\"uo\\te/ünï🦀\n\u{1}";
        let t0 = 1_764_072_000_123;
        vec![
            reading(1, "t1", t0, 23.4),
            UpstreamRecord {
                value: Some(-0.1),
                ..rec(
                    2,
                    RecordKind::Reading,
                    odd,
                    &format!("sensors/{odd}"),
                    t0 + 1,
                )
            },
            UpstreamRecord {
                value: Some(21.5),
                stats: stats(&[("count", 60.0), ("mean", 21.5), ("min", -40.25)]),
                ..rec(
                    3,
                    RecordKind::Aggregate,
                    "t1",
                    "sensors/t1/temperature",
                    t0 - 123,
                )
            },
            reading(4, "t1", t0 + 1000, -1e-300),
            UpstreamRecord {
                value: Some(99.1),
                score: Some(0.93),
                stats: stats(&[("max", 99.1)]),
                ..rec(
                    5,
                    RecordKind::Anomaly,
                    "t1",
                    "sensors/t1/temperature",
                    t0 + 1001,
                )
            },
            // An aggregate of the same group with other statistics and no value.
            UpstreamRecord {
                stats: stats(&[("max", 1.7976931348623157e308), ("sum", 0.1 + 0.2)]),
                ..rec(
                    6,
                    RecordKind::Aggregate,
                    "t1",
                    "sensors/t1/temperature",
                    t0 + 59_877,
                )
            },
            UpstreamRecord {
                labels: Some(vec![
                    LabelScore {
                        label: "cat \"tabby\"".into(),
                        score: 0.75,
                    },
                    LabelScore {
                        label: "dög".into(),
                        score: 0.125,
                    },
                ]),
                ..rec(7, RecordKind::Classification, "cam1", "images/cam1", 0)
            },
            // Same group: no labels at all, then an empty list.
            rec(8, RecordKind::Classification, "cam1", "images/cam1", -1),
            UpstreamRecord {
                labels: Some(vec![]),
                score: Some(-0.0),
                ..rec(
                    9,
                    RecordKind::Classification,
                    "cam1",
                    "images/cam1",
                    253_402_300_799_999,
                )
            },
            // A reading without a value, in the group of record 2.
            rec(
                10,
                RecordKind::Reading,
                odd,
                &format!("sensors/{odd}"),
                t0 + 2,
            ),
            reading(11, "t1", t0 + 2000, 1e21),
        ]
    }

    #[test]
    fn v1_records_come_back_exactly_from_v2() {
        let records = mixed();
        let bytes = v2(&records);
        assert_eq!(decode_v2(&bytes).unwrap(), records);
        // Each record also comes back as the same v1 JSON, byte for byte.
        let batch = batch_of(&records);
        let rebuilt = batch_of(&decode_v2(&bytes).unwrap());
        assert_eq!(rebuilt.json_array(), batch.json_array());
    }

    #[test]
    fn v1_records_come_back_exactly_from_v3() {
        let records = mixed();
        let batch = batch_of(&records);
        let bytes = encode(WireFormat::V3, PIPELINE, NODE, &batch).unwrap();
        assert_eq!(&bytes[..4], V3_MAGIC);
        assert_eq!(decode_v3(&bytes).unwrap(), records);
        let rebuilt = batch_of(&decode_v3(&bytes).unwrap());
        assert_eq!(rebuilt.json_array(), batch.json_array());
        // Every shorter body is refused, never misread.
        for n in 0..bytes.len() {
            assert!(decode_v3(&bytes[..n]).is_err(), "{n} bytes");
        }
        let mut longer = bytes.clone();
        longer.push(0);
        let err = decode_v3(&longer).unwrap_err();
        assert!(
            err.to_string().contains("1 bytes after the last group"),
            "{err}"
        );
        let err = decode_v3(br#"{"format":"edgepipe.v2"}"#).unwrap_err();
        assert!(matches!(&err, WireError::UnknownFormat(f) if f == "{\"fo"));
    }

    #[test]
    fn v3_refuses_what_v2_refuses() {
        let mut other = reading(2, "t1", 0, 1.0);
        other.pipeline = "factory/other".into();
        let batch = batch_of(&[reading(1, "t1", 0, 1.0), other]);
        let err = encode(WireFormat::V3, PIPELINE, NODE, &batch).unwrap_err();
        assert!(matches!(err, WireError::Identity { seq: 2, .. }), "{err}");
        let writer = Writer {
            format: WireFormat::V3,
            pipeline: PIPELINE.into(),
            node: NODE.into(),
        };
        assert_eq!(writer.body(&batch), (WireFormat::V1, batch.json_array()));
    }

    #[test]
    fn groups_follow_first_appearance_and_keep_batch_order() {
        let records = mixed();
        let doc: serde_json::Value = serde_json::from_slice(&v2(&records)).unwrap();
        let groups: Vec<(String, String, Vec<u64>)> = doc["groups"]
            .as_array()
            .unwrap()
            .iter()
            .map(|g| {
                (
                    g["device"].as_str().unwrap().chars().take(2).collect(),
                    g["kind"].as_str().unwrap().to_string(),
                    serde_json::from_value(g["seq"].clone()).unwrap(),
                )
            })
            .collect();
        let g = |d: &str, k: &str, s: &[u64]| (d.to_string(), k.to_string(), s.to_vec());
        assert_eq!(
            groups,
            vec![
                g("t1", "reading", &[1, 4, 11]),
                g("q\"", "reading", &[2, 10]),
                g("t1", "aggregate", &[3, 6]),
                g("t1", "anomaly", &[5]),
                g("ca", "classification", &[7, 8, 9]),
            ]
        );
        // Only the columns some record has, nulls where one lacks it, names sorted.
        let agg = &doc["groups"][2];
        assert_eq!(agg["value"], serde_json::json!([21.5, null]));
        assert!(agg.get("score").is_none() && agg.get("labels").is_none());
        let names: Vec<&String> = agg["stats"].as_object().unwrap().keys().collect();
        assert_eq!(names, ["count", "max", "mean", "min", "sum"]);
        assert_eq!(
            agg["stats"]["max"],
            serde_json::json!([null, 1.7976931348623157e308])
        );
        let cam = &doc["groups"][4];
        assert!(cam.get("value").is_none() && cam.get("stats").is_none());
        assert_eq!(cam["labels"][1], serde_json::Value::Null);
        assert_eq!(cam["labels"][2], serde_json::json!([]));
        assert_eq!(cam["t"], serde_json::json!([0, -1, 253_402_300_799_999i64]));
    }

    #[test]
    fn matches_the_documented_example() {
        let records = vec![
            reading(12345, "t1", 1_764_072_000_123, 23.4),
            reading(12346, "t1", 1_764_072_001_123, 23.5),
            UpstreamRecord {
                value: Some(21.5),
                stats: stats(&[
                    ("count", 60.0),
                    ("max", 21.6),
                    ("mean", 21.5),
                    ("min", 21.4),
                ]),
                ..rec(
                    12347,
                    RecordKind::Aggregate,
                    "t2",
                    "sensors/t2/temperature",
                    1_764_072_000_000,
                )
            },
            UpstreamRecord {
                value: Some(99.1),
                score: Some(0.93),
                ..rec(
                    12348,
                    RecordKind::Anomaly,
                    "t3",
                    "sensors/t3/temperature",
                    1_764_072_000_500,
                )
            },
        ];
        let expected = concat!(
            r#"{"format":"edgepipe.v2","pipeline":"factory/line1-temperature","node":"edge-1","groups":["#,
            r#"{"device":"t1","topic":"sensors/t1/temperature","kind":"reading","seq":[12345,12346],"t":[1764072000123,1764072001123],"value":[23.4,23.5]},"#,
            r#"{"device":"t2","topic":"sensors/t2/temperature","kind":"aggregate","seq":[12347],"t":[1764072000000],"value":[21.5],"stats":{"count":[60.0],"max":[21.6],"mean":[21.5],"min":[21.4]}},"#,
            r#"{"device":"t3","topic":"sensors/t3/temperature","kind":"anomaly","seq":[12348],"t":[1764072000500],"value":[99.1],"score":[0.93]}"#,
            "]}"
        );
        assert_eq!(String::from_utf8(v2(&records)).unwrap(), expected);
        assert_eq!(records[0].timestamp, "2025-11-25T12:00:00.123Z");

        // The same batch in v3, as deploy/wire-format.md shows it.
        let v3 = encode(WireFormat::V3, PIPELINE, NODE, &batch_of(&records)).unwrap();
        let hex: Vec<String> = v3
            .chunks(16)
            .map(|line| {
                line.iter()
                    .map(|b| format!("{b:02x}"))
                    .collect::<Vec<_>>()
                    .join(" ")
            })
            .collect();
        let doc = include_str!("../../../../deploy/wire-format.md");
        let shown = doc
            .split_once("The v2 example above in v3")
            .and_then(|(_, rest)| rest.split_once("```\n"))
            .and_then(|(head, rest)| Some((head, rest.split_once("\n```")?.0)))
            .unwrap();
        assert_eq!(shown.1, hex.join("\n"), "the hex in deploy/wire-format.md");
        assert!(
            shown.0.contains(&format!(", {} bytes", v3.len())),
            "{}",
            shown.0
        );
    }

    #[test]
    fn v1_is_the_stored_bodies_unchanged() {
        let batch = batch_of(&mixed());
        let v1 = encode(WireFormat::V1, PIPELINE, NODE, &batch).unwrap();
        assert_eq!(v1, batch.json_array());
        let back: Vec<UpstreamRecord> = serde_json::from_slice(&v1).unwrap();
        assert_eq!(back, mixed());
    }

    #[test]
    fn an_empty_batch_has_no_groups() {
        let bytes = v2(&[]);
        assert_eq!(
            bytes,
            br#"{"format":"edgepipe.v2","pipeline":"factory/line1-temperature","node":"edge-1","groups":[]}"#
        );
        assert!(decode_v2(&bytes).unwrap().is_empty());
    }

    #[test]
    fn an_empty_stats_object_travels_as_no_stats() {
        // v2 cannot tell `"stats":{}` from no stats; the agent never writes the former.
        let mut with_empty = rec(1, RecordKind::Aggregate, "t1", "sensors/t1", 0);
        with_empty.stats = Some(BTreeMap::new());
        let back = decode_v2(&v2(&[with_empty])).unwrap();
        assert_eq!(back[0].stats, None);
    }

    #[test]
    fn records_v2_cannot_carry_are_errors() {
        let encode_body = |body: &[u8]| {
            let mut batch = batch_of(&[reading(1, "t1", 0, 1.0)]);
            batch.records.push(StoredRecord {
                seq: 2,
                body: body.to_vec(),
            });
            encode(WireFormat::V2, PIPELINE, NODE, &batch)
        };
        for body in [&b"not json"[..], br#"{"device":"t1"}"#, b"", br#"[1,2]"#] {
            let err = encode_body(body).unwrap_err();
            assert!(matches!(err, WireError::Body { seq: 2, .. }), "{err}");
            let source = std::error::Error::source(&err).unwrap();
            assert!(source.is::<serde_json::Error>());
        }
        // v1 sends such a body as it is.
        let mut batch = batch_of(&[]);
        batch.records.push(StoredRecord {
            seq: 1,
            body: b"not json".to_vec(),
        });
        assert!(encode(WireFormat::V1, PIPELINE, NODE, &batch).is_ok());

        let mut odd = reading(2, "t1", 0, 1.0);
        odd.timestamp = "2025-11-25T12:00:00Z".into();
        let err = encode_body(&serde_json::to_vec(&odd).unwrap()).unwrap_err();
        assert!(matches!(err, WireError::Timestamp { seq: 2, .. }), "{err}");

        let mut other = reading(2, "t1", 0, 1.0);
        other.node = "edge-2".into();
        let err = encode_body(&serde_json::to_vec(&other).unwrap()).unwrap_err();
        assert_eq!(
            err.to_string(),
            r#"record 2: node is "edge-2", the batch's is "edge-1""#
        );
    }

    #[test]
    fn decoding_checks_the_version_and_the_columns() {
        let err = decode_v2(br#"{"format":"edgepipe.v3","groups":"whatever"}"#).unwrap_err();
        assert!(matches!(&err, WireError::UnknownFormat(f) if f == "edgepipe.v3"));
        assert!(matches!(decode_v2(b"[]"), Err(WireError::Json(_))));
        assert!(matches!(decode_v2(b"{"), Err(WireError::Json(_))));
        let short = br#"{"format":"edgepipe.v2","pipeline":"p","node":"n","groups":[
            {"device":"d","topic":"t","kind":"aggregate","seq":[1,2],"t":[0,1],
             "stats":{"max":[1.0]}}]}"#;
        let err = decode_v2(short).unwrap_err();
        assert_eq!(
            err.to_string(),
            "group 0: column stats.max has 1 entries, seq has 2"
        );
        // Columns added later within v2 are ignored.
        let newer = br#"{"format":"edgepipe.v2","pipeline":"p","node":"n","extra":1,"groups":[
            {"device":"d","topic":"t","kind":"reading","seq":[1],"t":[0],"unit":["C"]}]}"#;
        assert_eq!(
            decode_v2(newer).unwrap()[0].timestamp,
            "1970-01-01T00:00:00.000Z"
        );
    }

    #[test]
    fn wire_format_names() {
        assert_eq!(WireFormat::default(), WireFormat::V1);
        let f: WireFormat = serde_json::from_str(r#""v2""#).unwrap();
        assert_eq!(f, WireFormat::V2);
        assert_eq!(serde_json::to_string(&WireFormat::V1).unwrap(), r#""v1""#);
        assert!(serde_json::from_str::<WireFormat>(r#""V2""#).is_err());
        assert_eq!(WireFormat::V2.as_str(), "v2");
        let f: WireFormat = serde_json::from_str(r#""v3""#).unwrap();
        assert_eq!(f.as_str(), "v3");
    }

    #[test]
    fn only_canonical_timestamps_are_parsed() {
        for s in [
            "2025-11-25T12:00:00Z",
            "2025-11-25T12:00:00.12Z",
            "2025-11-25T12:00:00.123+00:00",
            "2025-11-25t12:00:00.123z",
            "2025-11-25 12:00:00.123Z",
            "2025-02-29T12:00:00.000Z",
            "2025-13-01T00:00:00.000Z",
            "2025-11-25T24:00:00.000Z",
            "2025-11-25T12:00:60.000Z",
            "02025-11-25T12:00:00.000Z",
            "+2025-11-25T12:00:00.000Z",
            "-0001-01-01T00:00:00.000Z",
            "2025-1a-25T12:00:00.000Z",
            "-11-25T12:00:00.000Z",
            "",
            "é",
        ] {
            assert_eq!(parse_timestamp(s), None, "{s}");
        }
        assert_eq!(
            parse_timestamp("2024-02-29T00:00:00.000Z"),
            Some(1_709_164_800_000)
        );
        assert_eq!(
            parse_timestamp("-001-12-31T23:59:59.999Z"),
            Some(-62_167_219_200_001)
        );
        assert_eq!(
            parse_timestamp("10000-01-01T00:00:00.000Z"),
            Some(253_402_300_800_000)
        );
    }

    proptest! {
        #[test]
        fn every_timestamp_the_agent_writes_parses_back(ms in any::<i64>()) {
            prop_assert_eq!(parse_timestamp(&format_timestamp_ms(ms)), Some(ms));
        }

        #[test]
        fn every_timestamp_of_years_0_to_9999_parses_back(ms in -62_167_219_200_000i64..253_402_300_800_000) {
            prop_assert_eq!(parse_timestamp(&format_timestamp_ms(ms)), Some(ms));
        }
    }

    fn gzip_len(bytes: &[u8]) -> usize {
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        gz.write_all(bytes).unwrap();
        gz.finish().unwrap().len()
    }

    /// Prints the sizes of both formats, raw and gzipped, and returns v2/v1 raw.
    fn compare_sizes(name: &str, records: &[UpstreamRecord]) -> f64 {
        let batch = batch_of(records);
        let v1 = encode(WireFormat::V1, PIPELINE, NODE, &batch).unwrap();
        let v2 = encode(WireFormat::V2, PIPELINE, NODE, &batch).unwrap();
        let v3 = encode(WireFormat::V3, PIPELINE, NODE, &batch).unwrap();
        assert_eq!(decode_v2(&v2).unwrap(), records);
        assert_eq!(decode_v3(&v3).unwrap(), records);
        let ratio = v2.len() as f64 / v1.len() as f64;
        let (g1, g2) = (gzip_len(&v1), gzip_len(&v2));
        eprintln!(
            "{name}: v1 {} B, v2 {} B, v3 {} B, v2/v1 {ratio:.3}; gzip: v1 {g1} B, v2 {g2} B, v2/v1 {:.3}",
            v1.len(),
            v2.len(),
            v3.len(),
            g2 as f64 / g1 as f64
        );
        assert!(
            v3.len() * 2 < v2.len(),
            "v3 {} B, v2 {} B",
            v3.len(),
            v2.len()
        );
        ratio
    }

    #[test]
    fn v2_is_smaller_than_v1() {
        let t0 = 1_764_072_000_000;
        // 100 devices reporting once a second, 5 times each, interleaved as they arrive.
        let readings: Vec<UpstreamRecord> = (0..500u64)
            .map(|i| {
                let (round, device) = (i / 100, i % 100);
                let value = 20.0 + (i * 37 % 100) as f64 / 10.0;
                let ms = t0 + round as i64 * 1000 + device as i64 * 7;
                reading(10_000 + i, &format!("sensor-{device:03}"), ms, value)
            })
            .collect();
        assert!(compare_sizes("500 readings, 100 devices", &readings) < 1.0);

        // One-minute aggregates of 100 devices, 5 statistics each.
        let aggregates: Vec<UpstreamRecord> = (0..100u64)
            .map(|i| {
                let device = format!("sensor-{i:03}");
                let mean = 20.0 + i as f64 / 8.0;
                UpstreamRecord {
                    value: Some(mean + 0.1),
                    stats: stats(&[
                        ("count", 60.0),
                        ("max", mean + 0.4),
                        ("mean", mean),
                        ("min", mean - 0.3),
                        ("last", mean + 0.1),
                    ]),
                    ..rec(
                        20_000 + i,
                        RecordKind::Aggregate,
                        &device,
                        &format!("sensors/{device}/temperature"),
                        t0,
                    )
                }
            })
            .collect();
        assert!(compare_sizes("100 aggregates, 5 stats", &aggregates) < 1.0);
    }
}

//! Wire format v3: v2's groups and columns in binary, for metered links.
//!
//! Numbers are what is left of a v2 body once names are stated once, and JSON spends a
//! byte per digit on them. v3 writes `seq` and event times as varint differences, and a
//! number column either as decimals (one scale for the column, each value a zigzag varint
//! difference from the previous one: a sensor at three decimals costs one or two bytes a
//! value) or, when some value is not a short decimal, as 8-byte IEEE 754 doubles. Both
//! read back bit for bit. A string that appeared before in the batch (a kind, a statistic
//! name) is written as its index. The layout is specified in `deploy/wire-format.md`.

use std::collections::{BTreeMap, HashMap};

use super::{Row, WireError, grouped, stat_names};
use crate::delivery::queue::Batch;
use crate::record::{LabelScore, RecordKind, UpstreamRecord, format_timestamp_ms};

/// The first four bytes of a v3 batch.
pub const V3_MAGIC: &[u8; 4] = b"EPv3";

/// Decimal scales a column may use: a value `v` at scale `s` is the integer `v * 10^s`.
const POW10: [f64; 10] = [1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9];
/// The largest integer magnitude a decimal column holds (every such integer is a double).
const MAX_DECIMAL: f64 = 9_007_199_254_740_992.0; // 2^53

/// Column tags: the encoding in the low four bits, and `BITMAP` when not every record of
/// the group has the field (a presence bitmap follows).
const ABSENT: u8 = 0;
const DECIMAL: u8 = 1;
const FLOAT: u8 = 2;
const LABELS: u8 = 3;
const BITMAP: u8 = 0x10;

/// The strings of a batch so far: one written before is written again as its index.
#[derive(Default)]
struct Strings<'a> {
    seen: HashMap<&'a str, u64>,
}

impl<'a> Strings<'a> {
    /// Appends `s`: `0`, its length and its bytes the first time, then `index + 1`.
    fn put(&mut self, out: &mut Vec<u8>, s: &'a str) {
        if let Some(&i) = self.seen.get(s) {
            put_varint(out, i + 1);
            return;
        }
        let i = self.seen.len() as u64;
        self.seen.insert(s, i);
        put_varint(out, 0);
        put_varint(out, s.len() as u64);
        out.extend_from_slice(s.as_bytes());
    }
}

pub(super) fn encode(pipeline: &str, node: &str, batch: &Batch) -> Result<Vec<u8>, WireError> {
    let (rows, groups) = grouped(pipeline, node, batch)?;
    let mut out = Vec::with_capacity(64 + rows.len() * 24);
    let mut strings = Strings::default();
    out.extend_from_slice(V3_MAGIC);
    strings.put(&mut out, pipeline);
    strings.put(&mut out, node);
    put_varint(&mut out, groups.len() as u64);
    for members in &groups {
        let first = &rows[members[0]].view;
        strings.put(&mut out, &first.device);
        strings.put(&mut out, &first.topic);
        strings.put(&mut out, first.kind.as_str());
        put_varint(&mut out, members.len() as u64);
        let mut prev = 0u64;
        for &i in members {
            let seq = rows[i].view.seq;
            put_varint(&mut out, seq.wrapping_sub(prev));
            prev = seq;
        }
        let mut prev = 0i64;
        for &i in members {
            let t = rows[i].t;
            put_varint(&mut out, zigzag(t.wrapping_sub(prev)));
            prev = t;
        }
        let cells = |f: &dyn Fn(&Row) -> Option<f64>| -> Vec<Option<f64>> {
            members.iter().map(|&i| f(&rows[i])).collect()
        };
        numbers(&mut out, &cells(&|r| r.view.value));
        numbers(&mut out, &cells(&|r| r.view.score));
        let names = stat_names(&rows, members);
        put_varint(&mut out, names.len() as u64);
        for name in names {
            strings.put(&mut out, name);
            numbers(
                &mut out,
                &cells(&|r| r.view.stats.as_ref().and_then(|s| s.get(name)).copied()),
            );
        }
        let labels: Vec<Option<String>> = members
            .iter()
            .map(|&i| {
                rows[i]
                    .view
                    .labels
                    .as_ref()
                    .map(serde_json::to_string)
                    .transpose()
            })
            .collect::<Result<_, _>>()
            .map_err(WireError::Json)?;
        if labels.iter().all(Option::is_none) {
            out.push(ABSENT);
        } else {
            presence(&mut out, LABELS, &labels);
            for l in labels.iter().flatten() {
                put_varint(&mut out, l.len() as u64);
                out.extend_from_slice(l.as_bytes());
            }
        }
    }
    Ok(out)
}

/// Appends a number column: its tag (with the presence bitmap if needed), the decimal
/// scale and the values.
fn numbers(out: &mut Vec<u8>, cells: &[Option<f64>]) {
    if cells.iter().all(Option::is_none) {
        out.push(ABSENT);
        return;
    }
    let scale = decimal_scale(cells.iter().flatten().copied());
    presence(out, if scale.is_some() { DECIMAL } else { FLOAT }, cells);
    if let Some(s) = scale {
        out.push(s);
    }
    let mut prev = 0i64;
    for &v in cells.iter().flatten() {
        match scale {
            Some(s) => {
                let m = (v * POW10[usize::from(s)]).round() as i64;
                put_varint(out, zigzag(m.wrapping_sub(prev)));
                prev = m;
            }
            None => out.extend_from_slice(&v.to_le_bytes()),
        }
    }
}

/// The smallest scale at which every value is an integer of at most 2^53 that divided by
/// `10^scale` gives the value back bit for bit, if there is one.
fn decimal_scale(values: impl Iterator<Item = f64> + Clone) -> Option<u8> {
    let fits = |v: f64, s: usize| {
        // Through the integer the column holds, so that -0.0 does not pass as 0.
        let m = (v * POW10[s]).round();
        m.abs() <= MAX_DECIMAL && ((m as i64) as f64 / POW10[s]).to_bits() == v.to_bits()
    };
    let mut scale = 0;
    for v in values.clone() {
        while !fits(v, scale) {
            scale += 1;
            if scale == POW10.len() {
                return None;
            }
        }
    }
    // A value that fits at a smaller scale may not at the column's (its integer grows).
    values
        .into_iter()
        .all(|v| fits(v, scale))
        .then_some(scale as u8)
}

/// Appends the column's `tag`, with `BITMAP` and one bit per cell (bit `i % 8` of byte
/// `i / 8`) unless every cell has a value.
fn presence<T>(out: &mut Vec<u8>, tag: u8, cells: &[Option<T>]) {
    if cells.iter().all(Option::is_some) {
        out.push(tag);
        return;
    }
    out.push(tag | BITMAP);
    for chunk in cells.chunks(8) {
        let byte = chunk
            .iter()
            .enumerate()
            .fold(0u8, |b, (i, c)| if c.is_some() { b | 1 << i } else { b });
        out.push(byte);
    }
}

fn zigzag(v: i64) -> u64 {
    ((v << 1) ^ (v >> 63)) as u64
}

fn unzigzag(v: u64) -> i64 {
    ((v >> 1) as i64) ^ -((v & 1) as i64)
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push(v as u8 | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// A cursor over a v3 body; every read checks the bounds, so no length in the body can
/// make the decoder allocate more than the body's size.
struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
    /// The strings read so far, for those written as an index.
    strings: Vec<&'a str>,
}

impl<'a> Reader<'a> {
    fn fail(&self, what: impl Into<String>) -> WireError {
        WireError::Binary {
            at: self.at,
            what: what.into(),
        }
    }

    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8], WireError> {
        let end = self
            .at
            .checked_add(n)
            .filter(|&e| e <= self.bytes.len())
            .ok_or_else(|| self.fail(format!("{what}: the batch ends too soon")))?;
        let s = &self.bytes[self.at..end];
        self.at = end;
        Ok(s)
    }

    fn byte(&mut self, what: &str) -> Result<u8, WireError> {
        Ok(self.take(1, what)?[0])
    }

    fn varint(&mut self, what: &str) -> Result<u64, WireError> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let b = self.byte(what)?;
            if shift == 63 && b > 1 {
                break;
            }
            v |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(self.fail(format!("{what}: a varint longer than 64 bits")))
    }

    /// A count of items that each take at least one byte: never more than what is left.
    fn count(&mut self, what: &str) -> Result<usize, WireError> {
        let n = self.varint(what)?;
        if n > (self.bytes.len() - self.at) as u64 {
            return Err(self.fail(format!("{what}: {n} is more than the batch holds")));
        }
        Ok(n as usize)
    }

    /// Length-prefixed UTF-8.
    fn text(&mut self, what: &str) -> Result<&'a str, WireError> {
        let n = self.count(what)?;
        let at = self.at;
        let bytes = self.take(n, what)?;
        std::str::from_utf8(bytes).map_err(|_| WireError::Binary {
            at,
            what: format!("{what}: not UTF-8"),
        })
    }

    /// A string: new (`0`, then its text), or one read before (`index + 1`).
    fn string(&mut self, what: &str) -> Result<&'a str, WireError> {
        match self.varint(what)? {
            0 => {
                let s = self.text(what)?;
                self.strings.push(s);
                Ok(s)
            }
            i => self
                .strings
                .get(i as usize - 1)
                .copied()
                .ok_or_else(|| self.fail(format!("{what}: no string {}", i - 1))),
        }
    }

    /// A column's tag without its `BITMAP` bit, and which of `n` records have the field.
    fn tag(&mut self, n: usize, what: &str) -> Result<(u8, Vec<bool>), WireError> {
        let tag = self.byte(what)?;
        if tag == ABSENT {
            return Ok((ABSENT, Vec::new()));
        }
        if tag & BITMAP == 0 {
            return Ok((tag, vec![true; n]));
        }
        let bits = self.take(n.div_ceil(8), what)?;
        let present = (0..n).map(|i| bits[i / 8] & (1 << (i % 8)) != 0).collect();
        Ok((tag & !BITMAP, present))
    }

    /// A number column of `n` records; `None` when the column is absent.
    fn numbers(&mut self, n: usize, what: &str) -> Result<Option<Vec<Option<f64>>>, WireError> {
        let (tag, present) = self.tag(n, what)?;
        let scale = match tag {
            ABSENT => return Ok(None),
            DECIMAL => {
                let s = self.byte(what)?;
                Some(
                    *POW10
                        .get(usize::from(s))
                        .ok_or_else(|| self.fail(format!("{what}: decimal scale {s}")))?,
                )
            }
            FLOAT => None,
            t => return Err(self.fail(format!("{what}: unknown column tag {t}"))),
        };
        let mut prev = 0i64;
        let mut cells = Vec::with_capacity(n);
        for has in present {
            if !has {
                cells.push(None);
                continue;
            }
            let v = match scale {
                Some(p) => {
                    let m = prev.wrapping_add(unzigzag(self.varint(what)?));
                    prev = m;
                    if m.unsigned_abs() > 1 << 53 {
                        return Err(self.fail(format!("{what}: decimal {m} beyond 2^53")));
                    }
                    m as f64 / p
                }
                None => {
                    let b = self.take(8, what)?;
                    f64::from_le_bytes(b.try_into().unwrap_or_default())
                }
            };
            if !v.is_finite() {
                return Err(self.fail(format!("{what}: {v} is not a finite number")));
            }
            cells.push(Some(v));
        }
        Ok(Some(cells))
    }
}

/// Rebuilds the v1 records of a v3 batch, in `seq` order (the batch's order).
pub fn decode(bytes: &[u8]) -> Result<Vec<UpstreamRecord>, WireError> {
    if bytes.get(..4) != Some(V3_MAGIC) {
        return Err(WireError::UnknownFormat(
            String::from_utf8_lossy(&bytes[..bytes.len().min(4)]).into_owned(),
        ));
    }
    let mut r = Reader {
        bytes,
        at: 4,
        strings: Vec::new(),
    };
    let pipeline = r.string("pipeline")?.to_string();
    let node = r.string("node")?.to_string();
    let groups = r.count("groups")?;
    let mut records = Vec::new();
    for g in 0..groups {
        let device = r.string("device")?.to_string();
        let topic = r.string("topic")?.to_string();
        let kind: RecordKind = {
            let at = r.at;
            let k = r.string("kind")?;
            serde_json::from_value(serde_json::Value::String(k.to_string())).map_err(|_| {
                WireError::Binary {
                    at,
                    what: format!("group {g}: unknown kind {k:?}"),
                }
            })?
        };
        let n = r.count("records")?;
        let mut seqs = Vec::with_capacity(n);
        let mut prev = 0u64;
        for _ in 0..n {
            prev = prev.wrapping_add(r.varint("seq")?);
            seqs.push(prev);
        }
        let mut times = Vec::with_capacity(n);
        let mut prev = 0i64;
        for _ in 0..n {
            prev = prev.wrapping_add(unzigzag(r.varint("t")?));
            times.push(prev);
        }
        let value = r.numbers(n, "value")?;
        let score = r.numbers(n, "score")?;
        let mut stats = BTreeMap::new();
        for _ in 0..r.count("stats")? {
            let name = r.string("stat name")?;
            if let Some(column) = r.numbers(n, name)? {
                stats.insert(name.to_string(), column);
            }
        }
        let labels = match r.tag(n, "labels")? {
            (ABSENT, _) => None,
            (LABELS, present) => {
                let mut cells = Vec::with_capacity(n);
                for has in present {
                    cells.push(if has {
                        let at = r.at;
                        let text = r.text("labels")?;
                        let l: Vec<LabelScore> =
                            serde_json::from_str(text).map_err(|e| WireError::Binary {
                                at,
                                what: format!("labels: {e}"),
                            })?;
                        Some(l)
                    } else {
                        None
                    });
                }
                Some(cells)
            }
            (t, _) => return Err(r.fail(format!("labels: unknown column tag {t}"))),
        };
        let mut labels = labels.map(Vec::into_iter);
        for i in 0..n {
            let row: BTreeMap<String, f64> = stats
                .iter()
                .filter_map(|(name, c): (&String, &Vec<Option<f64>>)| Some((name.clone(), c[i]?)))
                .collect();
            records.push(UpstreamRecord {
                pipeline: pipeline.clone(),
                node: node.clone(),
                device: device.clone(),
                topic: topic.clone(),
                kind,
                value: value.as_ref().and_then(|v| v[i]),
                timestamp: format_timestamp_ms(times[i]),
                seq: seqs[i],
                score: score.as_ref().and_then(|v| v[i]),
                stats: (!row.is_empty()).then_some(row),
                labels: labels.as_mut().and_then(|l| l.next().flatten()),
            });
        }
    }
    if r.at != bytes.len() {
        return Err(r.fail(format!("{} bytes after the last group", bytes.len() - r.at)));
    }
    records.sort_by_key(|r| r.seq);
    Ok(records)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn varints_and_zigzag_round_trip() {
        for v in [0, 1, 127, 128, 300, u64::MAX / 3, u64::MAX] {
            let mut out = Vec::new();
            put_varint(&mut out, v);
            let mut r = Reader {
                bytes: &out,
                at: 0,
                strings: Vec::new(),
            };
            assert_eq!(r.varint("v").unwrap(), v);
            assert_eq!(r.at, out.len());
        }
        for v in [0, -1, 1, i64::MIN, i64::MAX, -60_000, 60_000] {
            assert_eq!(unzigzag(zigzag(v)), v);
        }
        assert_eq!(zigzag(-1), 1);
        assert_eq!(zigzag(1), 2);
    }

    #[test]
    fn a_column_takes_the_smallest_scale_that_gives_every_value_back() {
        assert_eq!(decimal_scale([20.0, 21.0].into_iter()), Some(0));
        assert_eq!(decimal_scale([20.012, 20.5, 19.0].into_iter()), Some(3));
        assert_eq!(decimal_scale([0.1, 0.2, 0.3].into_iter()), Some(1));
        assert_eq!(decimal_scale([20.012, 1.0 / 3.0].into_iter()), None);
        assert_eq!(decimal_scale([1e300].into_iter()), None);
        // -0.0 would come back as 0.0.
        assert_eq!(decimal_scale([-0.0].into_iter()), None);
        // 2^53 + 2 is a double, but not an integer every double below it is.
        assert_eq!(decimal_scale([9_007_199_254_740_994.0].into_iter()), None);
        // The column's scale is its finest value's.
        assert_eq!(decimal_scale([1e6, 0.001].into_iter()), Some(3));
    }

    fn column_round_trip(cells: &[Option<f64>]) -> Option<Vec<Option<f64>>> {
        let mut out = Vec::new();
        numbers(&mut out, cells);
        let mut r = Reader {
            bytes: &out,
            at: 0,
            strings: Vec::new(),
        };
        let back = r.numbers(cells.len(), "c").unwrap();
        assert_eq!(r.at, out.len());
        back
    }

    fn bits(cells: &[Option<f64>]) -> Vec<Option<u64>> {
        cells.iter().map(|c| c.map(f64::to_bits)).collect()
    }

    #[test]
    fn sensor_decimals_cost_a_byte_or_two_each() {
        let cells: Vec<Option<f64>> = (0..100)
            .map(|i| Some(20.0 + f64::from(i % 7) * 0.013))
            .collect();
        let mut out = Vec::new();
        numbers(&mut out, &cells);
        assert!(out.len() <= 3 + 2 * cells.len(), "{} bytes", out.len());
        assert_eq!(
            bits(&column_round_trip(&cells).unwrap()),
            bits(&cells),
            "bit for bit"
        );
        assert_eq!(column_round_trip(&[None, None]), None);
    }

    proptest! {
        #[test]
        fn every_finite_column_comes_back_bit_for_bit(
            cells in proptest::collection::vec(
                proptest::option::of(prop_oneof![
                    any::<f64>().prop_filter("finite", |v| v.is_finite()),
                    (-1_000_000i64..1_000_000, 0u32..6).prop_map(|(m, s)| m as f64 / 10f64.powi(s as i32)),
                ]),
                0..40,
            )
        ) {
            let back = column_round_trip(&cells);
            if cells.iter().all(Option::is_none) {
                prop_assert_eq!(back, None);
            } else {
                prop_assert_eq!(bits(&back.unwrap()), bits(&cells));
            }
        }

        #[test]
        fn no_body_makes_the_decoder_panic(body in proptest::collection::vec(any::<u8>(), 0..200)) {
            let mut bytes = V3_MAGIC.to_vec();
            bytes.extend(body);
            let _ = decode(&bytes);
        }
    }
}

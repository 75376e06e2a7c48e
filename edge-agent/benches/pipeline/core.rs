//! B2 agent core without a broker (parse + processors + queue commit in one thread, per
//! core, against parse alone and against raw SQLite inserts of the same rows) and B4
//! bandwidth (bytes that would travel upstream / raw bytes received, per processor, on a
//! simulated hour of sensors; baseline = no processors).

use std::io::Write;
use std::path::Path;
use std::time::Instant;

use edge_agent::delivery::queue::seal::Keyring;
use edge_agent::delivery::queue::{Batch, Store, StoreSettings, StoredRecord};
use edge_agent::delivery::sink::http;
use edge_agent::delivery::sink::wire::{self, WireFormat};
use edge_agent::pipeline::parse::PayloadParser;
use edge_agent::pipeline::process::Processors;
use edge_agent::record::{Lane, Record, UpstreamRecord};
use edge_crds::{Compression, Durability, EdgePipelineSpec, WhenFull, parse_pipeline};

use crate::scaled;
use crate::util::{self, BenchResult};

/// Messages per queue transaction (group commit).
const GROUP: usize = 1_000;
const DEVICES: usize = 100;

/// A small deterministic generator (xorshift64*), so every run sees the same data.
struct Noise(u64);

impl Noise {
    fn next(&mut self) -> f64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Approximately normal (sum of 12 uniforms), mean 0, sd 1.
    fn normal(&mut self) -> f64 {
        (0..12).map(|_| self.next()).sum::<f64>() - 6.0
    }
}

fn spec(processors: &str) -> BenchResult<EdgePipelineSpec> {
    let text = util::pipeline(1883, processors, "os", "http://127.0.0.1:9/x", false);
    parse_pipeline(&text)
        .map(|f| f.spec)
        .map_err(|e| e.to_string())
}

/// CPU seconds used so far by the calling thread.
fn thread_cpu() -> f64 {
    let stat = std::fs::read_to_string("/proc/thread-self/stat").unwrap_or_default();
    let after = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let f: Vec<f64> = after
        .split_whitespace()
        .map(|v| v.parse().unwrap_or(0.0))
        .collect();
    (f.get(11).copied().unwrap_or(0.0) + f.get(12).copied().unwrap_or(0.0)) / 100.0
}

/// Wall and CPU seconds of `f`.
fn timed(f: impl FnOnce() -> BenchResult<()>) -> BenchResult<(f64, f64)> {
    let (c0, t0) = (thread_cpu(), Instant::now());
    f()?;
    Ok((t0.elapsed().as_secs_f64(), thread_cpu() - c0))
}

fn messages(n: usize) -> Vec<(String, Vec<u8>)> {
    let mut noise = Noise(0x9E37_79B9_7F4A_7C15);
    (0..n)
        .map(|i| {
            let d = i % DEVICES;
            let v = 20.0 + 0.05 * noise.normal();
            (
                format!("sensors/d{d}/temperature"),
                util::payload(d, (v * 1000.0).round() / 1000.0),
            )
        })
        .collect()
}

fn store(dir: &Path, durability: Durability, keys: Keyring) -> BenchResult<Store> {
    let settings = StoreSettings {
        pipeline: "bench/core".into(),
        node: "bench".into(),
        max_bytes: 1 << 34,
        max_dead_letter_bytes: 1 << 30,
        when_full: WhenFull::DropOldest,
        durability,
        keys,
    };
    Store::open(dir, settings)
        .map(|o| o.store)
        .map_err(|e| e.to_string())
}

/// parse + processors + queue commit (the agent's per-message work), in groups.
fn agent_core(
    dir: &Path,
    msgs: &[(String, Vec<u8>)],
    processors: &str,
    durability: Durability,
    keys: Keyring,
) -> BenchResult<(f64, f64)> {
    let spec = spec(processors)?;
    let parser = PayloadParser::new(&spec.source.format, 64 * 1024);
    let mut procs = Processors::new(&spec.processors, 10_000).map_err(|e| e.to_string())?;
    let mut store = store(dir, durability, keys)?;
    timed(|| {
        let now = edge_agent::runtime::clock::now_ms();
        for chunk in msgs.chunks(GROUP) {
            let units: Vec<Vec<Record>> = chunk
                .iter()
                .map(|(topic, payload)| match parser.parse(topic, payload, now) {
                    Ok(reading) => procs.apply(&reading).records,
                    Err(_) => Vec::new(),
                })
                .collect();
            let refs: Vec<&[Record]> = units.iter().map(Vec::as_slice).collect();
            store.append(&refs, now).map_err(|e| e.to_string())?;
        }
        Ok(())
    })
}

/// Raw SQLite inserts of the same rows (bodies serialised beforehand, not timed), same
/// schema, pragmas and transaction size as the queue.
fn raw_sqlite(dir: &Path, msgs: &[(String, Vec<u8>)]) -> BenchResult<(f64, f64)> {
    let spec = spec("")?;
    let parser = PayloadParser::new(&spec.source.format, 64 * 1024);
    let now = edge_agent::runtime::clock::now_ms();
    let bodies: Vec<Vec<u8>> = msgs
        .iter()
        .enumerate()
        .filter_map(|(i, (t, p))| {
            let r = parser.parse(t, p, now).ok()?;
            let up = UpstreamRecord::new("bench/core", "bench", i as u64, &Record::reading(&r));
            serde_json::to_vec(&up).ok()
        })
        .collect();
    let e = |e: rusqlite::Error| e.to_string();
    let mut conn = rusqlite::Connection::open(dir.join("raw.db")).map_err(e)?;
    conn.query_row("PRAGMA journal_mode = WAL", [], |_| Ok(()))
        .map_err(e)?;
    conn.pragma_update(None, "synchronous", "NORMAL")
        .map_err(e)?;
    conn.execute_batch(
        "CREATE TABLE records (seq INTEGER PRIMARY KEY, enqueued_ms INTEGER NOT NULL,
         size INTEGER NOT NULL, body BLOB NOT NULL)",
    )
    .map_err(e)?;
    timed(|| {
        let mut seq = 0i64;
        for chunk in bodies.chunks(GROUP) {
            let tx = conn.transaction().map_err(e)?;
            {
                let mut insert = tx
                    .prepare_cached("INSERT INTO records VALUES (?1, ?2, ?3, ?4)")
                    .map_err(e)?;
                for body in chunk {
                    seq += 1;
                    insert
                        .execute(rusqlite::params![seq, now, body.len() as i64, body])
                        .map_err(e)?;
                }
            }
            tx.commit().map_err(e)?;
        }
        Ok(())
    })
}

fn parse_only(msgs: &[(String, Vec<u8>)]) -> BenchResult<(f64, f64)> {
    let spec = spec("")?;
    let parser = PayloadParser::new(&spec.source.format, 64 * 1024);
    timed(|| {
        let now = edge_agent::runtime::clock::now_ms();
        for (t, p) in msgs {
            std::hint::black_box(parser.parse(t, p, now).ok());
        }
        Ok(())
    })
}

pub fn b2(dir: &Path) -> BenchResult<Vec<String>> {
    let n = scaled(300_000);
    let msgs = messages(n);
    let (pw, pc) = parse_only(&msgs)?;
    let raw_dir = dir.join("raw");
    std::fs::create_dir_all(&raw_dir).map_err(|e| e.to_string())?;
    let (rw, rc) = raw_sqlite(&raw_dir, &msgs)?;
    let raw_rate = n as f64 / rc.max(rw * 0.01);
    let raw_wall = n as f64 / rw;
    let chain = "  processors:\n    - range: {min: -40, max: 125}\n    - deadband: {absolute: 0.5, maxSilence: 5m}\n";
    let mut rows = vec![format!(
        "| B2 baselines, {n} msgs, 1 thread | parse only: {:.0} msg/s wall, {:.0}/s per CPU-second | raw SQLite insert of the same rows (os): {:.0} msg/s wall, {raw_rate:.0}/s per CPU-second | — | — |",
        n as f64 / pw,
        n as f64 / pc.max(pw * 0.01),
        n as f64 / rw,
    )];
    let mut plain = Vec::new();
    for (label, procs, durability) in [
        ("no processors, os", "", Durability::Os),
        ("no processors, fsync", "", Durability::Fsync),
        ("range+deadband, os", chain, Durability::Os),
    ] {
        let d = dir.join(label.replace([' ', ',', '+'], "-"));
        std::fs::create_dir_all(&d).map_err(|e| e.to_string())?;
        let (w, c) = agent_core(&d, &msgs, procs, durability, Keyring::default())?;
        plain.push((label, procs, durability, n as f64 / w));
        // One thread does everything, so its wall-clock rate is the rate per core (I/O
        // waits included); CPU seconds are shown too.
        let per_core = n as f64 / w;
        rows.push(format!(
            "| B2 core: parse+processors+commit ({label}), group {GROUP}, 1 thread | {per_core:.0} msg/s ({:.0}/s per CPU-second of the thread) | raw SQLite insert of the same rows: {raw_wall:.0} msg/s | {:.2} | ≥ 250k/s/core {} |",
            n as f64 / c.max(w * 0.01),
            per_core / raw_wall,
            if per_core >= 250_000.0 { "met" } else { "**missed**" },
        ));
    }
    // The same runs with buffer.encryption on; baseline: the unencrypted run above.
    for (label, procs, durability, plain_rate) in plain {
        let d = dir.join(format!("sealed-{}", label.replace([' ', ',', '+'], "-")));
        std::fs::create_dir_all(&d).map_err(|e| e.to_string())?;
        let (w, _) = agent_core(&d, &msgs, procs, durability, util::bench_keys())?;
        let rate = n as f64 / w;
        let ratio = rate / plain_rate;
        rows.push(format!(
            "| B2 core encrypted ({label}), group {GROUP}, 1 thread | {rate:.0} msg/s | unencrypted, same run: {plain_rate:.0} msg/s | {ratio:.2} | ≥ 0.85 (at most 15% slower) {} |",
            if ratio >= 0.85 { "met" } else { "**missed**" },
        ));
    }
    Ok(rows)
}

/// Upstream bytes of records in batches: v1 JSON, v1 gzip, v1 zstd, v2 JSON, v3 and v3
/// zstd.
#[derive(Clone, Copy, Default)]
struct Upstream {
    json: usize,
    gz: usize,
    zstd: usize,
    v2: usize,
    v3: usize,
    v3_zstd: usize,
}

fn upstream_bytes(records: &[Record], batch_size: usize) -> Upstream {
    let mut up = Upstream::default();
    for (b, batch) in records.chunks(batch_size).enumerate() {
        let stored: Vec<StoredRecord> = batch
            .iter()
            .enumerate()
            .map(|(i, r)| {
                let seq = (b * batch_size + i) as u64;
                let up = UpstreamRecord::new("factory/line1", "edge-1", seq, r);
                StoredRecord {
                    seq,
                    body: serde_json::to_vec(&up).unwrap_or_default(),
                }
            })
            .collect();
        let (Some(first), Some(last)) = (stored.first(), stored.last()) else {
            continue;
        };
        let batch = Batch {
            lane: Lane::Routine,
            first_seq: first.seq,
            last_seq: last.seq,
            records: stored,
            backlog: false,
        };
        let body = batch.json_array();
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        let _ = enc.write_all(&body);
        up.gz += enc.finish().map_or(0, |v| v.len());
        up.json += body.len();
        let size = |f| wire::encode(f, "factory/line1", "edge-1", &batch).map_or(0, |v| v.len());
        up.v2 += size(WireFormat::V2);
        up.v3 += size(WireFormat::V3);
        let zstd = |body: &[u8]| {
            http::compress(Compression::Zstd, body)
                .ok()
                .flatten()
                .map_or(0, |(_, z)| z.len())
        };
        up.zstd += zstd(&body);
        up.v3_zstd +=
            wire::encode(WireFormat::V3, "factory/line1", "edge-1", &batch).map_or(0, |v| zstd(&v));
    }
    up
}

/// One simulated hour of `DEVICES` sensors at 1 Hz through `processors`:
/// (raw payload bytes, readings, records).
type Simulated = (usize, usize, Vec<Record>);

fn simulate(processors: &str, changes: bool) -> BenchResult<Simulated> {
    let spec = spec(processors)?;
    let parser = PayloadParser::new(&spec.source.format, 64 * 1024);
    let mut procs = Processors::new(&spec.processors, 10_000).map_err(|e| e.to_string())?;
    let mut noise = Noise(42);
    let mut level = vec![20.0; DEVICES];
    let (mut raw, mut readings) = (0, 0);
    let mut out = Vec::new();
    let t0 = 1_764_000_000_000i64;
    for s in 0..3_600i64 {
        let now = t0 + s * 1_000;
        for (d, lvl) in level.iter_mut().enumerate() {
            // A real change: a step of 3 degrees, about every 10 minutes per device.
            if changes && noise.next() < 1.0 / 600.0 {
                *lvl += if noise.next() < 0.5 { 3.0 } else { -3.0 };
            }
            let v = ((*lvl + 0.05 * noise.normal()) * 1000.0).round() / 1000.0;
            let topic = format!("sensors/d{d}/temperature");
            let p = format!("{{\"device_id\":\"d{d}\",\"value\":{v},\"timestamp\":{now}}}");
            raw += p.len();
            readings += 1;
            if let Ok(r) = parser.parse(&topic, p.as_bytes(), now) {
                out.extend(procs.apply(&r).records);
            }
        }
        out.extend(procs.tick(now));
    }
    Ok((raw, readings, out))
}

pub fn b4() -> BenchResult<Vec<String>> {
    let mut rows = Vec::new();
    for (scenario, changes) in [("steady", false), ("steady + real changes", true)] {
        let (raw, readings, out) = simulate("", changes)?;
        let base = upstream_bytes(&out, 500);
        let share = |n: usize| 100.0 * n as f64 / raw as f64;
        rows.push(format!(
            "| B4 bandwidth, {scenario}: no processors (baseline) | {readings} readings, {raw} raw bytes -> {} bytes upstream ({:.1}%), gzip {} ({:.1}%), zstd {} ({:.1}%), v2 {} ({:.1}%), v3 {} ({:.1}%), v3+zstd {} ({:.1}%) | 100% | 1.00 | — |",
            base.json,
            share(base.json),
            base.gz,
            share(base.gz),
            base.zstd,
            share(base.zstd),
            base.v2,
            share(base.v2),
            base.v3,
            share(base.v3),
            base.v3_zstd,
            share(base.v3_zstd),
        ));
        let aggregate = "  processors:\n    - aggregate: {window: 60s, functions: [mean, min, max, count, last]}\n";
        // Batches of 500 records (the default batchSize), and for the aggregate also one
        // batch a window: what a flushInterval shorter than the window sends.
        for (name, procs, batch_size) in [
            (
                "significantChange {window: 10, threshold: 2.0}",
                "  processors:\n    - significantChange: {window: 10, threshold: 2.0}\n",
                500,
            ),
            (
                "deadband {absolute: 0.5, maxSilence: 5m}",
                "  processors:\n    - deadband: {absolute: 0.5, maxSilence: 5m}\n",
                500,
            ),
            ("aggregate {window: 60s, 5 functions}", aggregate, 500),
            (
                "aggregate {window: 60s, 5 functions}, one batch a window",
                aggregate,
                DEVICES,
            ),
        ] {
            let (raw, _, out) = simulate(procs, changes)?;
            let (records, up) = (out.len(), upstream_bytes(&out, batch_size));
            let share = |n: usize| 100.0 * n as f64 / raw as f64;
            let met = |n: usize| if share(n) <= 1.0 { "met" } else { "**missed**" };
            let goal = if changes {
                "—".to_string()
            } else {
                format!(
                    "≤ 1%: v1 {}, v2 {}, v3 {}",
                    met(up.json),
                    met(up.v2),
                    met(up.v3)
                )
            };
            rows.push(format!(
                "| B4 bandwidth, {scenario}: {name} | {records} records, {} bytes upstream = {:.2}% of raw (gzip {} = {:.2}%; zstd {} = {:.2}%; v2 {} = {:.2}%; v3 {} = {:.2}%; v3+zstd {} = {:.2}%) | no processors: {} bytes | {:.4} | {goal} |",
                up.json,
                share(up.json),
                up.gz,
                share(up.gz),
                up.zstd,
                share(up.zstd),
                up.v2,
                share(up.v2),
                up.v3,
                share(up.v3),
                up.v3_zstd,
                share(up.v3_zstd),
                base.json,
                up.json as f64 / base.json as f64,
            ));
        }
    }
    Ok(rows)
}

//! B11: a thin link after an outage, at full scale. 100 sensors at 1 Hz publish to a real
//! Mosquitto; the agent (release build, the autoencoder scoring every window) sends
//! through a 64 kbit/s link (the test kit's throttling proxy) with `rateLimit` 7000 B/s,
//! gzip and `liveFirst`. The link is cut for the outage (10 minutes at `BENCH_SCALE=1`),
//! then restored while the sensors go on until the backlog has drained.
//!
//! Reported per wire format: the delay of live readings (published after the agent's
//! first request got through again, received by the upstream) while the backlog drains,
//! p50 and p99 (goal: p99 under 5 s); the drain time against the ideal, the backlog's
//! bytes over the cap; and whether every anomaly of the outage came before the backlog.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use edge_agent::record::format_timestamp_ms;
use edge_testkit::{Agent, Link, Mosquitto, Publisher, Receiver, scenario};
use serde_json::Value;

use crate::util::{BenchResult, percentile};

const DEVICES: usize = 100;
const RATE: f64 = scenario::RATE as f64;

pub async fn b11(dir: &std::path::Path) -> BenchResult<Vec<String>> {
    let outage = ((600.0 * crate::scale()) as usize).max(60);
    let mut rows = Vec::new();
    for format in ["v1", "v2"] {
        rows.push(run(&dir.join(format), format, outage).await?);
    }
    Ok(rows)
}

async fn run(dir: &std::path::Path, format: &str, outage: usize) -> BenchResult<String> {
    std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
    // Spikes every 97 s on rotating devices: anomalies during the outage and after it.
    let spikes: Vec<(usize, usize)> = (1..)
        .map(|k| ((k * 37) % DEVICES, 20 + k * 97))
        .take_while(|(_, t)| *t < outage * 3)
        .collect();
    let broker = Mosquitto::start();
    let receiver = Receiver::start().await;
    let link = Link::start(receiver.port, scenario::LINK).await;
    link.cut();
    let model = edge_testkit::workspace_root().join("tests/models/anomaly_autoencoder.tflite");
    let yaml = scenario::thin_link_pipeline(broker.port, "agent-b11", &model, format, link.port);
    let mut agent = Agent::start(dir, &yaml);
    agent.wait_ready().await;

    let base_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_err(|e| e.to_string())?
        .as_millis() as i64;
    let backlog_readings = DEVICES * outage;
    let mut publisher = Publisher::connect(broker.port, "publisher-b11");
    let started = tokio::time::Instant::now();
    let mut published_at: Vec<Instant> = Vec::new();
    let mut second_of: BTreeMap<String, usize> = BTreeMap::new();
    let mut restored_at = None;
    let mut drained_for = 0;
    for t in 0.. {
        tokio::time::sleep_until(started + Duration::from_secs(t as u64)).await;
        if t == outage {
            link.restore();
            restored_at = Some(Instant::now());
        }
        // Until the backlog is through, then 30 s more; at most twice the outage.
        if t > outage && t % 5 == 0 {
            let through = receiver
                .accepted()
                .iter()
                .filter(|r| {
                    r["kind"] == "reading"
                        && r["timestamp"]
                            .as_str()
                            .is_some_and(|ts| second_of.get(ts).is_some_and(|s| *s < outage))
                })
                .count();
            if through >= backlog_readings {
                drained_for += 5;
            }
            if drained_for >= 30 || t >= outage * 3 {
                break;
            }
        }
        second_of.insert(format_timestamp_ms(base_ms + t as i64 * 1000), t);
        published_at.push(Instant::now());
        for d in 0..DEVICES {
            let value = scenario::sensor_value(d, t, spikes.contains(&(d, t)));
            let payload = scenario::sensor_payload(d, value, base_ms + t as i64 * 1000);
            publisher
                .send(&format!("sensors/s{d}/temperature"), payload)
                .await;
        }
    }
    publisher.flush().await;
    let restored_at = restored_at.ok_or("the link never returned")?;

    let requests: Vec<_> = receiver
        .requests()
        .into_iter()
        .filter(|q| q.status == 200)
        .collect();
    let second = |r: &Value| {
        r["timestamp"]
            .as_str()
            .and_then(|ts| second_of.get(ts).copied())
    };
    let is_backlog = |r: &Value| r["kind"] == "reading" && second(r).is_some_and(|s| s < outage);
    let back = requests.first().ok_or("nothing delivered")?.at;
    let last_backlog = requests
        .iter()
        .rev()
        .find(|q| q.records.iter().any(is_backlog))
        .ok_or("no backlog delivered")?
        .at;
    let first_backlog = requests
        .iter()
        .position(|q| q.records.iter().any(is_backlog))
        .unwrap_or(0);
    let late_anomalies = requests
        .iter()
        .enumerate()
        .skip(first_backlog)
        .flat_map(|(_, q)| &q.records)
        .filter(|r| r["kind"] == "anomaly" && second(r).is_some_and(|s| s < outage))
        .count();
    let mut delays = Vec::new();
    let mut backlog_bytes = 0.0;
    let mut delivered = 0;
    for q in &requests {
        let backlog = q.records.iter().filter(|r| is_backlog(r)).count();
        delivered += backlog;
        backlog_bytes += q.bytes as f64 * backlog as f64 / q.records.len().max(1) as f64;
        for r in q.records.iter().filter(|r| r["kind"] == "reading") {
            if let Some(t) = second(r)
                && published_at[t] > back
                && q.at <= last_backlog
            {
                delays.push((q.at - published_at[t]).as_secs_f64());
            }
        }
    }
    delays.sort_by(f64::total_cmp);
    let (p50, p99) = (percentile(&delays, 0.5), percentile(&delays, 0.99));
    let drain = (last_backlog - restored_at).as_secs_f64();
    let ideal = backlog_bytes / RATE;
    drop(agent);
    Ok(format!(
        "| B11 thin link 64 kbit/s (cap {RATE} B/s, gzip, {format}), {DEVICES} sensors at 1 Hz, {outage} s outage | live readings during the drain: p50 {p50:.2} s, p99 {p99:.2} s ({} readings); backlog {delivered} of {backlog_readings} readings ({backlog_bytes:.0} bytes) drained {drain:.0} s after the link returned; outage anomalies after the first backlog batch: {late_anomalies} | ideal drain (backlog bytes / cap): {ideal:.0} s | drain {:.2}x ideal | p99 < 5 s {} |",
        delays.len(),
        drain / ideal,
        if p99 < 5.0 { "met" } else { "**missed**" },
    ))
}

//! B1 end-to-end ingest (QoS 1 publishers -> Mosquitto -> agent -> durable queue, against
//! `mosquitto_sub -q 1` on the same broker) and B5 footprint (agent RSS and CPU at 0, 1k
//! and 10k msg/s, against Mosquitto's own in the same run).

use std::path::Path;
use std::time::{Duration, Instant};

use edge_testkit::Agent;
use edge_testkit::metrics::{quantile, quantile_since, sum};
use edge_testkit::process::{peak_rss, usage};
use rumqttc::QoS;

use crate::scaled;
use crate::util::{self, BenchResult, payload};

const TOPIC: &str = "sensors/+/temperature";
/// Concurrent QoS 1 publishers.
const PUBLISHERS: usize = 4;

/// Waits (up to `limit`) until the agent has committed `n` records.
async fn until_enqueued(agent: &mut Agent, n: f64, limit: Duration) -> BenchResult<()> {
    let committed = |m: &util::Series| {
        sum(m, "edge_agent_records_enqueued_total") + sum(m, "edge_agent_records_dropped_total")
    };
    util::until_metrics(agent, limit, Duration::from_millis(10), |m| {
        committed(m) >= n
    })
    .await
    .map(|_| ())
    .map_err(|m| {
        format!(
            "agent committed {} of {n} records in {limit:?}",
            committed(&m)
        )
    })
}

/// Publishes one message and waits until the agent has it: its subscription is in place.
async fn warm_up(port: u16, agent: &mut Agent) -> BenchResult<()> {
    let c = util::client(port, &util::client_id("bench-warmup"), |_, _, _| {}).await;
    c.client
        .publish(
            "sensors/d0/temperature",
            QoS::AtLeastOnce,
            false,
            payload(0, 1.0),
        )
        .await
        .map_err(|e| e.to_string())?;
    until_enqueued(agent, 1.0, Duration::from_secs(15)).await?;
    c.close().await;
    Ok(())
}

/// A URL nobody listens on: the sink is down, so the queue holds everything.
fn down_sink() -> String {
    format!("http://127.0.0.1:{}/ingest", edge_testkit::free_port())
}

/// Median and spread of per-round rates.
struct Rates(Vec<f64>);

impl Rates {
    fn median(&self) -> f64 {
        let mut sorted = self.0.clone();
        sorted.sort_by(f64::total_cmp);
        util::percentile(&sorted, 0.5)
    }

    /// `median msg/s (min–max of ROUNDS)`.
    fn describe(&self) -> String {
        let min = self.0.iter().copied().fold(f64::INFINITY, f64::min);
        let max = self.0.iter().copied().fold(0.0, f64::max);
        format!(
            "{:.0} msg/s (median of {ROUNDS}; {min:.0}–{max:.0})",
            self.median()
        )
    }
}

/// Rounds of each B1 measurement; the table shows the median.
const ROUNDS: usize = 3;

/// One baseline round: `n` messages published while `mosquitto_sub -q 1` receives them;
/// msg/s until the subscriber has all of them.
async fn baseline_round(port: u16, n: usize) -> BenchResult<f64> {
    let mut sub = util::mosquitto_sub(port, TOPIC, n)?;
    let start = Instant::now();
    util::publish(port, PUBLISHERS, n, None).await?;
    let end = Instant::now() + Duration::from_secs(120);
    while sub.0.try_wait().map_err(|e| e.to_string())?.is_none() {
        if Instant::now() > end {
            return Err("mosquitto_sub did not receive every message".into());
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    Ok(n as f64 / start.elapsed().as_secs_f64())
}

pub async fn b1(dir: &Path) -> BenchResult<Vec<String>> {
    let n = scaled(50_000);
    let broker = util::broker("");
    let port = broker.port;

    // What the publishers alone reach (nobody subscribed): the ceiling of this harness.
    let mut alone = Rates(Vec::new());
    for _ in 0..ROUNDS {
        let start = Instant::now();
        util::publish(port, PUBLISHERS, n, None).await?;
        alone.0.push(n as f64 / start.elapsed().as_secs_f64());
    }
    let mut base = Rates(Vec::new());
    for _ in 0..ROUNDS {
        base.0.push(baseline_round(port, n).await?);
    }
    let base_rate = base.median();

    let mut rows = Vec::new();
    for durability in ["fsync", "os"] {
        let run_dir = dir.join(durability);
        std::fs::create_dir_all(&run_dir).map_err(|e| e.to_string())?;
        let mut agent = util::agent(
            &run_dir,
            &util::pipeline(port, "", durability, &down_sink(), false),
        )
        .await;
        warm_up(port, &mut agent).await?;
        let mut rates = Rates(Vec::new());
        for round in 1..=ROUNDS {
            let start = Instant::now();
            util::publish(port, PUBLISHERS, n, None).await?;
            let total = (round * n + 1) as f64;
            until_enqueued(&mut agent, total, Duration::from_secs(180)).await?;
            rates.0.push(n as f64 / start.elapsed().as_secs_f64());
        }
        let m = agent.metrics();
        let h = "edge_agent_ingest_to_durable_seconds";
        let (p50, p99) = (
            quantile(&m, h, 0.5).unwrap_or(f64::NAN),
            quantile(&m, h, 0.99).unwrap_or(f64::NAN),
        );
        let dropped = sum(&m, "edge_agent_records_dropped_total");
        let ratio = rates.median() / base_rate;
        rows.push(format!(
            "| B1 ingest, durability {durability}, {n} msgs x {ROUNDS} rounds, {PUBLISHERS} QoS 1 publishers | {}; ingest_to_durable p50 {:.2} ms, p99 {:.2} ms; dropped {dropped} | mosquitto_sub -q 1: {} (publishers alone, no subscriber: {}) | {ratio:.2} | ≥ 0.9 {} |",
            rates.describe(),
            p50 * 1e3,
            p99 * 1e3,
            base.describe(),
            alone.describe(),
            verdict(ratio >= 0.9),
        ));
    }
    Ok(rows)
}

fn verdict(met: bool) -> &'static str {
    if met { "met" } else { "**missed**" }
}

/// Footprint of a process: resident and peak resident bytes, CPU seconds (user + system).
#[derive(Clone, Copy)]
struct Footprint {
    rss: u64,
    peak: u64,
    cpu_s: f64,
}

/// The footprint of process `pid` now (zeros once it is gone).
fn footprint(pid: Option<u32>) -> Footprint {
    let pid = pid.unwrap_or(0);
    let (rss, cpu_s) = usage(pid);
    Footprint {
        rss,
        peak: peak_rss(pid),
        cpu_s,
    }
}

/// RSS MiB, peak MiB and CPU % of one core between two readings `secs` apart.
fn describe(before: Footprint, after: Footprint, secs: f64) -> (f64, f64, f64) {
    (
        after.rss as f64 / 1_048_576.0,
        after.peak as f64 / 1_048_576.0,
        (after.cpu_s - before.cpu_s) / secs * 100.0,
    )
}

pub async fn b5(dir: &Path) -> BenchResult<Vec<String>> {
    let broker = util::broker("");
    let port = broker.port;
    let mut agent = util::agent(dir, &util::pipeline(port, "", "fsync", &down_sink(), false)).await;
    warm_up(port, &mut agent).await?;
    let secs = 5.0;
    let mut rows = Vec::new();
    for rate in [0.0, 1_000.0, 10_000.0] {
        let (a0, m0) = (footprint(agent.pid()), footprint(broker.pid()));
        let text0 = agent.metrics();
        let enq0 = sum(&text0, "edge_agent_records_enqueued_total");
        let start = Instant::now();
        if rate > 0.0 {
            util::publish(port, 2, (rate * secs) as usize, Some(rate)).await?;
        }
        let rest = Duration::from_secs_f64(secs).saturating_sub(start.elapsed());
        tokio::time::sleep(rest).await;
        let wall = start.elapsed().as_secs_f64();
        let (a1, m1) = (footprint(agent.pid()), footprint(broker.pid()));
        let text1 = agent.metrics();
        let enq = sum(&text1, "edge_agent_records_enqueued_total") - enq0;
        let (rss, hwm, cpu) = describe(a0, a1, wall);
        let (mrss, _, mcpu) = describe(m0, m1, wall);
        // Ingest latency at a steady, non-saturating rate (B1 measures it at saturation).
        let h = "edge_agent_ingest_to_durable_seconds";
        let latency = match (
            quantile_since(&text0, &text1, h, 0.5),
            quantile_since(&text0, &text1, h, 0.99),
        ) {
            (Some(p50), Some(p99)) => format!(
                "; ingest_to_durable p50 {:.2} ms, p99 {:.2} ms",
                p50 * 1e3,
                p99 * 1e3
            ),
            _ => String::new(),
        };
        rows.push(format!(
            "| B5 footprint at {rate:.0} msg/s (fsync; {:.0} committed/s{latency}) | agent RSS {rss:.1} MiB (peak {hwm:.1}), CPU {cpu:.1}% of a core | mosquitto RSS {mrss:.1} MiB, CPU {mcpu:.1}% | RSS {:.1}x, CPU {} | RSS ≤ 20 MB {} |",
            enq / wall,
            rss / mrss.max(0.001),
            if mcpu > 0.05 { format!("{:.1}x", cpu / mcpu) } else { "—".to_string() },
            verdict(hwm * 1.048_576 <= 20.0),
        ));
    }
    Ok(rows)
}

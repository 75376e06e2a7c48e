//! What the benchmark harness adds to the test kit (`edge-testkit`, which has the broker,
//! the agent process, the receiver and the metrics reader): the benches' broker limits and
//! agent settings, the load generator (QoS 1 publishers at a rate, timed subscribers),
//! the `mosquitto_sub` baseline, the benches' pipeline and the result rows.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use edge_testkit::{Agent, Mosquitto, Receiver, pipeline_yaml};
use rumqttc::{AsyncClient, Event, MqttOptions, Outgoing, Packet, QoS};

/// A harness failure: a message for the table.
pub type BenchResult<T> = Result<T, String>;

/// An agent's metrics, by series (`name{labels}`), as the kit reads them.
pub type Series = BTreeMap<String, f64>;

/// Mosquitto's limits for the benches (after the kit's own, which they override): a
/// backlog for `mosquitto_sub`, no cap on messages in flight, the clients' keep-alive.
const BROKER_LIMITS: &str =
    "max_queued_messages 1000000\nmax_inflight_messages 0\nmax_keepalive 65535\n";

/// A Mosquitto broker on a free port with the benches' limits and `extra` lines of
/// configuration.
pub fn broker(extra: &str) -> Mosquitto {
    Mosquitto::with_config(&format!("{BROKER_LIMITS}{extra}"))
}

/// Writes `pipeline` to `dir/pipeline.yaml` and runs the agent (the binary in
/// `EDGEPIPE_BIN_DIR`) on it with its queue in `dir/data`, logging errors only; waits
/// for `/readyz` to answer 200.
pub async fn agent(dir: &Path, pipeline: &str) -> Agent {
    let mut agent = Agent::start_with_env(
        dir,
        pipeline,
        &[("RUST_LOG", "error"), ("NODE_NAME", "bench")],
    );
    agent.wait_ready().await;
    agent
}

/// Scrapes the agent's metrics every `every` until `done` holds for them: the last
/// scrape, or (after `limit`) the last scrape as the error.
pub async fn until_metrics(
    agent: &mut Agent,
    limit: Duration,
    every: Duration,
    done: impl Fn(&Series) -> bool,
) -> Result<Series, Series> {
    let end = Instant::now() + limit;
    loop {
        let series = agent.metrics();
        if done(&series) {
            return Ok(series);
        }
        if Instant::now() > end {
            return Err(series);
        }
        tokio::time::sleep(every).await;
    }
}

/// Sorted-sample percentile.
pub fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * q).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// An MQTT client with its event loop driven on a task; `acked` counts PUBACKs and
/// incoming publishes go to the `on_publish` callback given to [`client`].
///
/// The event-loop task ends once the client's DISCONNECT is on the wire, or when the
/// `Client` is dropped: a task left running would reconnect under the same client id and
/// take the session over from a later client of that id.
pub struct Client {
    /// The client.
    pub client: AsyncClient,
    /// PUBACKs received.
    pub acked: Arc<AtomicU64>,
    /// The first connection error after the initial CONNACK, if any.
    lost: Arc<Mutex<Option<String>>>,
    /// Set when the client is being closed: the task stops instead of reconnecting.
    closing: Arc<AtomicBool>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Client {
    /// The first connection error seen while connected. Reconnecting to a clean session,
    /// rumqttc drops the unacknowledged publishes, so their PUBACKs never come.
    pub fn lost(&self) -> Option<String> {
        self.lost.lock().ok().and_then(|l| l.clone())
    }

    /// Sends DISCONNECT and waits (up to 5 s) until the event loop has written it.
    pub async fn close(mut self) {
        self.closing.store(true, Ordering::Relaxed);
        if self.client.disconnect().await.is_ok()
            && let Some(task) = self.task.take()
        {
            let _ = tokio::time::timeout(Duration::from_secs(5), task).await;
        }
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        self.closing.store(true, Ordering::Relaxed);
        let _ = self.client.try_disconnect();
    }
}

/// Connects a client (clean session, 200 publishes in flight); incoming publishes go to
/// `on_publish`.
pub async fn client(
    port: u16,
    id: &str,
    on_publish: impl Fn(&str, &[u8], Instant) + Send + 'static,
) -> Client {
    let mut options = MqttOptions::new(id, "127.0.0.1", port);
    options.set_inflight(200);
    options.set_max_packet_size(1 << 20, 1 << 20);
    options.set_keep_alive(Duration::from_secs(30));
    let (client, mut events) = AsyncClient::new(options, 10_000);
    let acked = Arc::new(AtomicU64::new(0));
    let lost = Arc::new(Mutex::new(None));
    let closing = Arc::new(AtomicBool::new(false));
    let (counted, lost_w, stop) = (acked.clone(), lost.clone(), closing.clone());
    let task = tokio::spawn(async move {
        let mut connected = false;
        loop {
            match events.poll().await {
                Ok(Event::Incoming(Packet::PubAck(_))) => {
                    counted.fetch_add(1, Ordering::Relaxed);
                }
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    on_publish(&p.topic, &p.payload, Instant::now());
                }
                Ok(Event::Incoming(Packet::ConnAck(_))) => connected = true,
                Ok(Event::Outgoing(Outgoing::Disconnect)) => return,
                Ok(_) => {}
                Err(e) => {
                    if stop.load(Ordering::Relaxed) {
                        return;
                    }
                    if connected && let Ok(mut l) = lost_w.lock() {
                        l.get_or_insert_with(|| e.to_string());
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    });
    Client {
        client,
        acked,
        lost,
        closing,
        task: Some(task),
    }
}

/// A client id unique within this process and run: `<prefix>-<pid>-<n>`.
pub fn client_id(prefix: &str) -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    format!(
        "{prefix}-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// One sensor payload as the benches publish it.
pub fn payload(device: usize, value: f64) -> Vec<u8> {
    format!("{{\"device_id\":\"d{device}\",\"value\":{value}}}").into_bytes()
}

/// Publishes `n` QoS 1 messages over `publishers` clients at up to `rate` msg/s in total
/// (`None` = as fast as the broker takes them); returns when every PUBACK is in. Fails
/// as soon as a publisher loses its connection (its unacknowledged publishes are gone
/// with the clean session) or when PUBACKs stop coming for 60 s.
pub async fn publish(port: u16, publishers: usize, n: usize, rate: Option<f64>) -> BenchResult<()> {
    let mut tasks = Vec::new();
    for p in 0..publishers {
        let c = client(port, &client_id("bench-pub"), |_, _, _| {}).await;
        let share = n / publishers + usize::from(p < n % publishers);
        let per_client_rate = rate.map(|r| r / publishers as f64);
        tasks.push(tokio::spawn(async move {
            let start = Instant::now();
            for i in 0..share {
                if let Some(r) = per_client_rate {
                    let due = start + Duration::from_secs_f64(i as f64 / r);
                    tokio::time::sleep_until(due.into()).await;
                }
                let device = (p * 7919 + i) % 100;
                let topic = format!("sensors/d{device}/temperature");
                let value = 20.0 + (i % 50) as f64 * 0.1;
                if let Err(e) = c
                    .client
                    .publish(topic, QoS::AtLeastOnce, false, payload(device, value))
                    .await
                {
                    return Err(format!("publisher {p}: publish {i}: {e}"));
                }
            }
            let mut seen = (0, Instant::now());
            loop {
                let acked = c.acked.load(Ordering::Relaxed);
                if acked >= share as u64 {
                    break;
                }
                if let Some(e) = c.lost() {
                    return Err(format!(
                        "publisher {p}: connection lost after {acked} of {share} PUBACKs: {e}"
                    ));
                }
                if acked != seen.0 {
                    seen = (acked, Instant::now());
                } else if seen.1.elapsed() > Duration::from_secs(60) {
                    return Err(format!(
                        "publisher {p}: {acked} of {share} PUBACKs, none for 60 s"
                    ));
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            c.close().await;
            Ok(())
        }));
    }
    for t in tasks {
        t.await.map_err(|e| e.to_string())??;
    }
    Ok(())
}

/// Starts `mosquitto_sub -q 1 -C n` on `topic` and waits until its SUBACK arrived; the
/// returned child exits after `n` messages.
pub fn mosquitto_sub(port: u16, topic: &str, n: usize) -> BenchResult<Sub> {
    // stdbuf: mosquitto_sub block-buffers its debug lines when stdout is a pipe.
    let mut child = Command::new("stdbuf")
        .args(["-oL", "mosquitto_sub"])
        .args(edge_testkit::mqtt::cli_args(port, 1))
        .args(["-d", "-C", &n.to_string(), "-t", topic])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("mosquitto_sub: {e}"))?;
    let stdout = child.stdout.take().ok_or("no stdout")?;
    let sub = Sub(child);
    let mut lines = BufReader::new(stdout).lines();
    loop {
        match lines.next() {
            Some(Ok(l)) if l.contains("SUBACK") => break,
            Some(Ok(_)) => {}
            _ => return Err("mosquitto_sub ended before SUBACK".into()),
        }
    }
    std::thread::spawn(move || for _ in lines {});
    Ok(sub)
}

/// A running `mosquitto_sub`, killed when dropped.
pub struct Sub(pub Child);

impl Drop for Sub {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A receiver answering 200 to every POST, counting requests and body bytes.
pub async fn receiver() -> Receiver {
    let receiver = Receiver::start().await;
    receiver.count_only();
    receiver
}

/// A pipeline manifest for the benches: source on `port`, the given processors/actions
/// YAML (indented for `spec:`), durability, sink URL and whether batches are gzipped.
pub fn pipeline(port: u16, extra: &str, durability: &str, sink: &str, gzip: bool) -> String {
    pipeline_yaml(
        "bench",
        "ingest",
        &format!(
            "  source:\n    mqtt:\n      url: mqtt://127.0.0.1:{port}\n      topics: [\"sensors/+/temperature\"]\n      qos: 1\n\
             \x20   format: {{value: value, device: device_id}}\n{extra}\
             \x20 buffer: {{maxBytes: 2Gi, maxAge: 168h, whenFull: dropOldest, durability: {durability}}}\n\
             \x20 sink:\n    http: {{url: \"{sink}\", batchSize: 1000, flushInterval: 1s, timeout: 5s{gzip}}}\n",
            gzip = if gzip { ", compression: gzip" } else { "" },
        ),
    )
}

/// Writes `bytes` to stdout with a trailing newline, flushed (rows are collected by run.sh).
pub fn row(line: &str) {
    let mut out = std::io::stdout();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

/// The key material of the encrypted runs (B2, B3): 64 hex digits.
const BENCH_KEY_HEX: &str = "0f1e2d3c4b5a69788796a5b4c3d2e1f00f1e2d3c4b5a69788796a5b4c3d2e1f0";

/// The keyring of the encrypted runs, for code that opens the store directly.
pub fn bench_keys() -> edge_agent::delivery::queue::seal::Keyring {
    edge_agent::delivery::queue::seal::Keyring::new(vec![("bench".into(), BENCH_KEY_HEX.into())])
        .expect("bench key")
}

/// The `durability` argument of [`pipeline`] with `buffer.encryption` on, the key in a
/// file under `dir`.
pub fn encrypted(durability: &str, dir: &Path) -> BenchResult<String> {
    let file = dir.join("queue-key.hex");
    std::fs::write(&file, BENCH_KEY_HEX).map_err(|e| e.to_string())?;
    Ok(format!(
        "{durability}, encryption: {{keys: [{{id: bench, keyFrom: {{file: \"{}\"}}}}]}}",
        file.display()
    ))
}

//! Shared pieces of the benchmark harness: free ports, a Mosquitto broker and an agent
//! process started and stopped by the harness, `/metrics` scraping (counters and histogram
//! quantiles), `/proc` footprint readings, QoS 1 publishers and a counting HTTP receiver.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rumqttc::{AsyncClient, Event, MqttOptions, Outgoing, Packet, QoS};

/// A harness failure: a message for the table.
pub type BenchResult<T> = Result<T, String>;

/// A free TCP port on 127.0.0.1.
pub fn free_port() -> BenchResult<u16> {
    let l = TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    l.local_addr().map(|a| a.port()).map_err(|e| e.to_string())
}

/// Polls `f` every 5 ms until it returns `Some` or `deadline` passes.
pub fn poll<T>(deadline: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let end = Instant::now() + deadline;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() > end {
            return None;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// A child process killed when dropped.
pub struct Proc(pub Child);

impl Proc {
    /// The process id.
    pub fn pid(&self) -> u32 {
        self.0.id()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A Mosquitto broker on a free port.
pub struct Broker {
    /// The broker process.
    pub proc: Proc,
    /// Its port.
    pub port: u16,
}

/// Starts `/usr/sbin/mosquitto` on a free port (config in `dir`) and waits until it accepts.
pub fn broker(dir: &Path) -> BenchResult<Broker> {
    broker_with(dir, "")
}

/// [`broker`] with `extra` lines of configuration.
pub fn broker_with(dir: &Path, extra: &str) -> BenchResult<Broker> {
    let port = free_port()?;
    let conf = dir.join(format!("mosquitto-{port}.conf"));
    std::fs::write(
        &conf,
        format!(
            "listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n\
             max_queued_messages 1000000\nmax_inflight_messages 0\nmax_keepalive 65535\n{extra}"
        ),
    )
    .map_err(|e| e.to_string())?;
    let child = Command::new("/usr/sbin/mosquitto")
        .arg("-c")
        .arg(&conf)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("mosquitto: {e}"))?;
    let proc = Proc(child);
    poll(Duration::from_secs(5), || {
        TcpStream::connect(("127.0.0.1", port)).ok()
    })
    .ok_or("mosquitto did not start")?;
    Ok(Broker { proc, port })
}

/// The release agent binary (`EDGE_AGENT_BIN`, else `target/release/edge-agent`).
pub fn agent_bin() -> PathBuf {
    std::env::var_os("EDGE_AGENT_BIN").map_or_else(
        || workspace().join("target/release/edge-agent"),
        PathBuf::from,
    )
}

/// The workspace root.
pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map_or_else(|| PathBuf::from("."), Path::to_path_buf)
}

/// A running agent and its metrics address.
pub struct Agent {
    /// The agent process.
    pub proc: Proc,
    /// Its `/metrics` address.
    pub listen: SocketAddr,
}

/// Writes `pipeline` to `dir/pipeline.yaml` and runs the agent on it with its queue in
/// `dir/data`; waits for `/readyz` to answer 200.
pub fn agent(dir: &Path, pipeline: &str) -> BenchResult<Agent> {
    let config = dir.join("pipeline.yaml");
    std::fs::write(&config, pipeline).map_err(|e| e.to_string())?;
    let listen: SocketAddr = format!("127.0.0.1:{}", free_port()?)
        .parse()
        .map_err(|e: std::net::AddrParseError| e.to_string())?;
    let child = Command::new(agent_bin())
        .arg("run")
        .arg("--config")
        .arg(&config)
        .arg("--data-dir")
        .arg(dir.join("data"))
        .arg("--listen")
        .arg(listen.to_string())
        .arg("--node-name")
        .arg("bench")
        .env("RUST_LOG", "error")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("{}: {e}", agent_bin().display()))?;
    let proc = Proc(child);
    poll(Duration::from_secs(15), || {
        http_get(listen, "/readyz")
            .filter(|(status, _)| *status == 200)
            .map(|_| ())
    })
    .ok_or("agent did not become ready")?;
    Ok(Agent { proc, listen })
}

/// A plain HTTP/1.0 GET: (status, body).
pub fn http_get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(1)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: bench\r\n\r\n").ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    let status = text.split_whitespace().nth(1)?.parse().ok()?;
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_string())?;
    Some((status, body))
}

/// The agent's metrics text.
pub fn metrics(agent: &Agent) -> String {
    http_get(agent.listen, "/metrics").map_or_else(String::new, |(_, b)| b)
}

/// Sum of every sample of metric `name` (all label sets).
pub fn counter(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with(' ') || rest.starts_with('{'))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Quantile `q` of histogram `name`, interpolated linearly inside the bucket like
/// PromQL's `histogram_quantile`.
pub fn quantile(text: &str, name: &str, q: f64) -> Option<f64> {
    quantile_of(&buckets(text, name), q)
}

/// Quantile `q` of what histogram `name` observed between two scrapes.
pub fn quantile_since(before: &str, after: &str, name: &str, q: f64) -> Option<f64> {
    let old = buckets(before, name);
    let delta: Vec<(f64, f64)> = buckets(after, name)
        .into_iter()
        .map(|(le, count)| {
            let was = old.iter().find(|(l, _)| *l == le).map_or(0.0, |(_, c)| *c);
            (le, count - was)
        })
        .collect();
    quantile_of(&delta, q)
}

/// The cumulative buckets `(le, count)` of histogram `name`, by `le`.
fn buckets(text: &str, name: &str) -> Vec<(f64, f64)> {
    let prefix = format!("{name}_bucket{{");
    let mut buckets: Vec<(f64, f64)> = text
        .lines()
        .filter(|l| l.starts_with(&prefix))
        .filter_map(|l| {
            let le = l.split("le=\"").nth(1)?.split('"').next()?;
            let le = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().ok()?
            };
            let count: f64 = l.rsplit(' ').next()?.parse().ok()?;
            Some((le, count))
        })
        .collect();
    buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    buckets
}

fn quantile_of(buckets: &[(f64, f64)], q: f64) -> Option<f64> {
    let total = buckets.last()?.1;
    if total <= 0.0 {
        return None;
    }
    let rank = q * total;
    let mut prev = (0.0, 0.0);
    for &(le, count) in buckets {
        if count >= rank {
            if le.is_infinite() {
                return Some(prev.0);
            }
            let width = count - prev.1;
            let frac = if width > 0.0 {
                (rank - prev.1) / width
            } else {
                1.0
            };
            return Some(prev.0 + (le - prev.0) * frac);
        }
        prev = (le, count);
    }
    None
}

/// Sorted-sample percentile.
pub fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * q).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// Footprint of a process: resident and peak resident KiB, CPU seconds (user + system).
#[derive(Clone, Copy, Debug, Default)]
pub struct Footprint {
    /// VmRSS, KiB.
    pub rss_kib: f64,
    /// VmHWM, KiB.
    pub hwm_kib: f64,
    /// utime + stime, seconds.
    pub cpu_s: f64,
}

/// Reads `/proc/<pid>/status` and `/proc/<pid>/stat`.
pub fn footprint(pid: u32) -> Footprint {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0)
    };
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    let after = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // `after` starts at field 3 (state), so field N is index N - 3.
    let cpu_s = (ticks(11) + ticks(12)) / 100.0;
    Footprint {
        rss_kib: field("VmRSS:"),
        hwm_kib: field("VmHWM:"),
        cpu_s,
    }
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
pub fn mosquitto_sub(port: u16, topic: &str, n: usize) -> BenchResult<Proc> {
    // stdbuf: mosquitto_sub block-buffers its debug lines when stdout is a pipe.
    let mut child = Command::new("stdbuf")
        .args([
            "-oL",
            "mosquitto_sub",
            "-h",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "-q",
            "1",
            "-d",
        ])
        .args(["-C", &n.to_string(), "-t", topic])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("mosquitto_sub: {e}"))?;
    let stdout = child.stdout.take().ok_or("no stdout")?;
    let proc = Proc(child);
    let mut lines = BufReader::new(stdout).lines();
    loop {
        match lines.next() {
            Some(Ok(l)) if l.contains("SUBACK") => break,
            Some(Ok(_)) => {}
            _ => return Err("mosquitto_sub ended before SUBACK".into()),
        }
    }
    std::thread::spawn(move || for _ in lines {});
    Ok(proc)
}

/// A counting HTTP receiver: answers 200 to every POST and counts requests and body
/// bytes (as they arrive on the wire).
pub struct Receiver {
    /// Its address.
    pub addr: SocketAddr,
    /// POSTs answered.
    pub requests: Arc<AtomicU64>,
    /// Body bytes received.
    pub bytes: Arc<AtomicU64>,
}

/// Starts a receiver on a tokio task.
pub async fn receiver() -> BenchResult<Receiver> {
    use http_body_util::{BodyExt, Full};
    use hyper::server::conn::http1;
    use hyper::service::service_fn;
    use hyper_util::rt::TokioIo;

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| e.to_string())?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    let requests = Arc::new(AtomicU64::new(0));
    let bytes = Arc::new(AtomicU64::new(0));
    let (r, b) = (requests.clone(), bytes.clone());
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let (r, b) = (r.clone(), b.clone());
            tokio::spawn(async move {
                let service = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                    let (r, b) = (r.clone(), b.clone());
                    async move {
                        let body = req.into_body().collect().await?.to_bytes();
                        b.fetch_add(body.len() as u64, Ordering::Relaxed);
                        r.fetch_add(1, Ordering::Relaxed);
                        Ok::<_, hyper::Error>(hyper::Response::new(Full::new(
                            bytes::Bytes::from_static(b"{}"),
                        )))
                    }
                });
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    Ok(Receiver {
        addr,
        requests,
        bytes,
    })
}

/// A pipeline manifest for the benches: source on `port`, the given processors/actions
/// YAML (indented for `spec:`), durability, sink URL and whether batches are gzipped.
pub fn pipeline(port: u16, extra: &str, durability: &str, sink: &str, gzip: bool) -> String {
    format!(
        "apiVersion: edgepipe.dev/v1alpha1\nkind: EdgePipeline\nmetadata: {{name: ingest, namespace: bench}}\n\
         spec:\n  source:\n    mqtt:\n      url: mqtt://127.0.0.1:{port}\n      topics: [\"sensors/+/temperature\"]\n      qos: 1\n\
         \x20   format: {{value: value, device: device_id}}\n{extra}\
         \x20 buffer: {{maxBytes: 2Gi, maxAge: 168h, whenFull: dropOldest, durability: {durability}}}\n\
         \x20 sink:\n    http: {{url: \"{sink}\", batchSize: 1000, flushInterval: 1s, timeout: 5s{gzip}}}\n",
        gzip = if gzip { ", compression: gzip" } else { "" },
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

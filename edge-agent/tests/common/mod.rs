//! Shared helpers of the agent's integration tests: a real Mosquitto broker on a free
//! port, a real HTTP receiver that records every request and can fail or be stopped,
//! the agent binary with a temporary config and data directory, an MQTT publisher that
//! waits for the broker's PUBACKs, and polling with deadlines.

#![allow(dead_code, unused_imports)]

pub mod ports;
pub mod receiver;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use rumqttc::{AsyncClient, Event, Incoming, MqttOptions, Outgoing, QoS};

pub use ports::free_port;
pub use receiver::{Receiver, Reply};

/// Polls `check` until it returns `Some`, or panics with `what` after `timeout`.
pub async fn eventually<T>(
    timeout: Duration,
    what: &str,
    mut check: impl AsyncFnMut() -> Option<T>,
) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// A Mosquitto broker started for one test; killed on drop.
pub struct Mosquitto {
    pub port: u16,
    child: Child,
    _dir: tempfile::TempDir,
}

impl Mosquitto {
    /// Starts `/usr/sbin/mosquitto` on a free loopback port, with room for large
    /// persistent-session backlogs.
    pub fn start() -> Self {
        Self::launch(None)
    }

    /// Starts the broker on `port` (which must be free).
    pub fn start_on(port: u16) -> Self {
        Self::launch(Some(port))
    }

    fn launch(fixed: Option<u16>) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        for _ in 0..5 {
            let port = fixed.unwrap_or_else(free_port);
            let conf = dir.path().join("mosquitto.conf");
            std::fs::write(
                &conf,
                format!(
                    "listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n\
                     max_inflight_messages 1000\nmax_queued_messages 0\nmax_keepalive 60\n"
                ),
            )
            .expect("write mosquitto.conf");
            let log = std::fs::File::create(dir.path().join("mosquitto.log")).expect("log file");
            let mut child = Command::new("/usr/sbin/mosquitto")
                .arg("-c")
                .arg(&conf)
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .expect("spawn /usr/sbin/mosquitto (apt install mosquitto)");
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                    return Self {
                        port,
                        child,
                        _dir: dir,
                    };
                }
                if let Ok(Some(_)) = child.try_wait() {
                    break; // port taken meanwhile: try another
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        panic!("mosquitto did not start");
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Opens the persistent session of `client_id` with `topics` subscribed (QoS 1), so the
/// broker keeps every matching message for the agent from now on, whether it is up or
/// not.
pub async fn prepare_session(port: u16, client_id: &str, topics: &[&str]) {
    let mut options = MqttOptions::new(client_id, "127.0.0.1", port);
    options.set_clean_session(false);
    let (client, mut events) = AsyncClient::new(options, 10);
    for t in topics {
        client
            .subscribe(*t, QoS::AtLeastOnce)
            .await
            .expect("subscribe request");
    }
    let mut acked = 0;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while acked < topics.len() {
        match tokio::time::timeout_at(deadline, events.poll()).await {
            Ok(Ok(Event::Incoming(Incoming::SubAck(_)))) => acked += 1,
            Ok(Ok(_)) => {}
            Ok(Err(e)) => panic!("preparing the session: {e}"),
            Err(_) => panic!("no SUBACK"),
        }
    }
    client.disconnect().await.expect("disconnect request");
    loop {
        match events.poll().await {
            Ok(Event::Outgoing(Outgoing::Disconnect)) | Err(_) => break,
            Ok(_) => {}
        }
    }
}

/// A QoS 1 publisher whose `publish` returns once the broker acknowledged the message.
pub struct Publisher {
    client: AsyncClient,
    acks: tokio::sync::mpsc::UnboundedReceiver<()>,
    task: tokio::task::JoinHandle<()>,
    outstanding: usize,
}

impl Publisher {
    pub fn connect(port: u16, client_id: &str) -> Self {
        let mut options = MqttOptions::new(client_id, "127.0.0.1", port);
        options.set_max_packet_size(1 << 20, 1 << 20);
        options.set_inflight(200);
        let (client, mut events) = AsyncClient::new(options, 100);
        let (tx, acks) = tokio::sync::mpsc::unbounded_channel();
        let task = tokio::spawn(async move {
            loop {
                match events.poll().await {
                    Ok(Event::Incoming(Incoming::PubAck(_))) => {
                        if tx.send(()).is_err() {
                            return;
                        }
                    }
                    Ok(_) => {}
                    Err(e) => panic!("test publisher: {e}"),
                }
            }
        });
        Self {
            client,
            acks,
            task,
            outstanding: 0,
        }
    }

    /// Queues a QoS 1 publish.
    pub async fn send(&mut self, topic: &str, payload: impl Into<Vec<u8>>) {
        self.client
            .publish(topic, QoS::AtLeastOnce, false, payload.into())
            .await
            .expect("publish request");
        self.outstanding += 1;
    }

    /// Waits until the broker acknowledged everything sent so far.
    pub async fn flush(&mut self) {
        while self.outstanding > 0 {
            tokio::time::timeout(Duration::from_secs(20), self.acks.recv())
                .await
                .expect("PUBACK in time")
                .expect("publisher alive");
            self.outstanding -= 1;
        }
    }
}

impl Drop for Publisher {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// (topic, payload) of a received message.
pub type Received = (String, Vec<u8>);

/// A subscriber collecting every message on a topic filter.
pub struct Subscriber {
    messages: std::sync::Arc<std::sync::Mutex<Vec<Received>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Subscriber {
    /// Subscribes (QoS 1) and returns once the broker confirmed the subscription.
    pub async fn connect(port: u16, client_id: &str, filter: &str) -> Self {
        let mut options = MqttOptions::new(client_id, "127.0.0.1", port);
        options.set_max_packet_size(16 << 20, 1 << 20);
        let (client, mut events) = AsyncClient::new(options, 10);
        client
            .subscribe(filter, QoS::AtLeastOnce)
            .await
            .expect("subscribe request");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            match tokio::time::timeout_at(deadline, events.poll()).await {
                Ok(Ok(Event::Incoming(Incoming::SubAck(_)))) => break,
                Ok(Ok(_)) => {}
                Ok(Err(e)) => panic!("subscriber: {e}"),
                Err(_) => panic!("no SUBACK"),
            }
        }
        let messages = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let sink = messages.clone();
        let task = tokio::spawn(async move {
            let _client = client;
            while let Ok(event) = events.poll().await {
                if let Event::Incoming(Incoming::Publish(p)) = event {
                    sink.lock()
                        .unwrap()
                        .push((p.topic.clone(), p.payload.to_vec()));
                }
            }
        });
        Self { messages, task }
    }

    /// Every message so far.
    pub fn messages(&self) -> Vec<Received> {
        self.messages.lock().unwrap().clone()
    }
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A JSON reading payload.
pub fn reading(device: &str, value: f64, timestamp_ms: i64) -> String {
    format!(r#"{{"device_id":"{device}","value":{value},"timestamp":{timestamp_ms}}}"#)
}

/// The agent binary, run with a config file and data directory of its own.
pub struct Agent {
    pub metrics_port: u16,
    pub data_dir: PathBuf,
    pub config: PathBuf,
    log: PathBuf,
    child: Option<Child>,
    starts: usize,
}

impl Agent {
    /// Writes `config_yaml` into `dir` and starts the agent on it.
    pub fn start(dir: &Path, config_yaml: &str) -> Self {
        let config = dir.join("pipeline.yaml");
        std::fs::write(&config, config_yaml).expect("write config");
        let mut agent = Self {
            metrics_port: free_port(),
            data_dir: dir.join("data"),
            config,
            log: dir.join("agent.log"),
            child: None,
            starts: 0,
        };
        agent.restart();
        agent
    }

    /// Starts the agent again (after a kill or a stop), on the same files.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "agent already running");
        self.starts += 1;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("agent log");
        let child = Command::new(env!("CARGO_BIN_EXE_edge-agent"))
            .arg("run")
            .arg("--config")
            .arg(&self.config)
            .arg("--data-dir")
            .arg(&self.data_dir)
            .arg("--listen")
            .arg(format!("127.0.0.1:{}", self.metrics_port))
            .arg("--node-name")
            .arg("edge-test")
            .env("RUST_LOG", "info,edge_agent=debug")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn edge-agent");
        self.child = Some(child);
    }

    /// SIGKILL: no chance to flush anything.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM, then waits for the exit.
    pub fn terminate(&mut self) -> ExitStatus {
        let mut child = self.child.take().expect("agent running");
        let status = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .expect("kill -TERM");
        assert!(status.success());
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(status) = child.try_wait().expect("wait") {
                return status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("agent did not stop on SIGTERM:\n{}", self.log_text());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Panics (with the agent's log) if the agent has exited.
    pub fn assert_running(&mut self) {
        if let Some(child) = self.child.as_mut()
            && let Ok(Some(status)) = child.try_wait()
        {
            panic!("agent exited with {status}:\n{}", self.log_text());
        }
    }

    /// The agent's log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// GET `path` on the agent's endpoint: (status, body), or `None` if not reachable.
    pub fn get(&self, path: &str) -> Option<(u16, String)> {
        http_get(self.metrics_port, path)
    }

    /// The agent's metrics, by series (`name{labels}` as exported).
    pub fn metrics(&mut self) -> BTreeMap<String, f64> {
        self.assert_running();
        self.get("/metrics")
            .map(|(_, body)| parse_metrics(&body))
            .unwrap_or_default()
    }

    /// One series' value (0 when absent).
    pub fn metric(&mut self, series: &str) -> f64 {
        self.metrics().get(series).copied().unwrap_or(0.0)
    }

    /// Waits for `/readyz` to answer 200.
    pub async fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            self.assert_running();
            if matches!(self.get("/readyz"), Some((200, _))) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "agent not ready:\n{}",
                self.log_text()
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// Waits until the series `series` reaches at least `value`.
    pub async fn wait_metric(&mut self, series: &str, value: f64, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let got = self.metric(series);
            if got >= value {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{series} = {got}, expected >= {value} within {timeout:?}\n{}",
                self.log_text()
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A bare HTTP/1.0 GET against 127.0.0.1.
pub fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").ok()?;
    let mut text = String::new();
    stream.read_to_string(&mut text).ok()?;
    let status = text.split_whitespace().nth(1)?.parse().ok()?;
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Some((status, body))
}

/// Parses the Prometheus text format into `series -> value`.
pub fn parse_metrics(text: &str) -> BTreeMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            Some((series.to_string(), value.parse().ok()?))
        })
        .collect()
}

/// The metric series name for the test pipeline `factory/test` with extra labels, as the
/// text format writes it (labels sorted by name).
pub fn series(name: &str, labels: &[(&str, &str)]) -> String {
    let mut all: Vec<(&str, &str)> = labels.to_vec();
    all.push(("pipeline", "factory/test"));
    all.sort();
    let labels: Vec<String> = all.iter().map(|(k, v)| format!("{k}=\"{v}\"")).collect();
    format!("{name}{{{}}}", labels.join(","))
}

/// Settings of the test pipeline that vary between tests.
pub struct Pipeline<'a> {
    pub broker_port: u16,
    pub client_id: &'a str,
    pub receiver_port: u16,
    pub processors: &'a str,
    pub buffer: &'a str,
    pub batch_size: u32,
    /// Extra lines under `spec.source` (indented by 4).
    pub extra_source: &'a str,
    /// Extra lines under `spec.sink.http` (indented by 6).
    pub extra_sink: &'a str,
}

impl Default for Pipeline<'_> {
    fn default() -> Self {
        Self {
            broker_port: 0,
            client_id: "agent-test",
            receiver_port: 0,
            processors: "[]",
            buffer: "{}",
            batch_size: 50,
            extra_source: "",
            extra_sink: "",
        }
    }
}

impl Pipeline<'_> {
    /// A pipeline `factory/test` reading `sensors/+/temperature` and syncing to the test
    /// receiver with short flush and backoff intervals.
    pub fn yaml(&self) -> String {
        format!(
            r#"apiVersion: edgepipe.dev/v1alpha1
kind: EdgePipeline
metadata: {{name: test, namespace: factory}}
spec:
  source:
    mqtt:
      url: mqtt://127.0.0.1:{broker}
      topics: ["sensors/+/temperature"]
      qos: 1
      clientId: {client}
    format: {{value: value, device: device_id, timestamp: timestamp}}
{extra}
  processors: {processors}
  buffer: {buffer}
  sink:
    http:
      url: http://127.0.0.1:{receiver}/ingest
      batchSize: {batch}
      flushInterval: 100ms
      timeout: 2s
      retry: {{initialBackoff: 50ms, maxBackoff: 400ms}}
{extra_sink}
"#,
            broker = self.broker_port,
            client = self.client_id,
            extra = self.extra_source,
            processors = self.processors,
            buffer = self.buffer,
            receiver = self.receiver_port,
            batch = self.batch_size,
            extra_sink = self.extra_sink,
        )
    }
}

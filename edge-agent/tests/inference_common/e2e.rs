//! Real components for the end-to-end inference tests: a Mosquitto broker on a free
//! port, an HTTP ingest receiver, MQTT publisher/subscriber clients and the
//! `edge-agent` binary itself, with its `/metrics` read over HTTP.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::eventually;
use edge_testkit::pipeline_yaml;

pub use edge_testkit::free_port;

/// The kit's Mosquitto broker (killed on drop).
#[allow(unused_imports)]
pub use edge_testkit::Mosquitto;

/// `(topic, payload)` of the messages an [`MqttPeer`] received.
pub type Inbox = Arc<Mutex<Vec<(String, Vec<u8>)>>>;

/// An MQTT client whose event loop runs in a task, keeping every publish it receives.
pub struct MqttPeer {
    /// The client.
    pub client: AsyncClient,
    /// `(topic, payload)` of every message received.
    pub received: Inbox,
    subscribed: Arc<Mutex<usize>>,
    task: tokio::task::JoinHandle<()>,
}

impl MqttPeer {
    /// Connects to the broker on `port`.
    pub fn connect(id: &str, port: u16) -> Self {
        let mut opts = MqttOptions::new(id, "127.0.0.1", port);
        opts.set_keep_alive(Duration::from_secs(30));
        opts.set_max_packet_size(1 << 20, 1 << 20);
        let (client, mut eventloop) = AsyncClient::new(opts, 1000);
        let received = Arc::new(Mutex::new(Vec::new()));
        let subscribed = Arc::new(Mutex::new(0));
        let (r, s) = (received.clone(), subscribed.clone());
        let task = tokio::spawn(async move {
            loop {
                match eventloop.poll().await {
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        r.lock()
                            .unwrap()
                            .push((p.topic.clone(), p.payload.to_vec()));
                    }
                    Ok(Event::Incoming(Packet::SubAck(_))) => *s.lock().unwrap() += 1,
                    Ok(_) => {}
                    Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
                }
            }
        });
        Self {
            client,
            received,
            subscribed,
            task,
        }
    }

    /// Subscribes to `filter` and waits for the broker's SUBACK.
    pub async fn subscribe(&self, filter: &str) {
        let before = *self.subscribed.lock().unwrap();
        self.client
            .subscribe(filter, QoS::AtLeastOnce)
            .await
            .expect("subscribe");
        let acked = eventually(Duration::from_secs(10), || {
            *self.subscribed.lock().unwrap() > before
        })
        .await;
        assert!(acked, "no SUBACK for {filter}");
    }

    /// Publishes with QoS 1.
    pub async fn publish(&self, topic: &str, payload: Vec<u8>) {
        self.client
            .publish(topic, QoS::AtLeastOnce, false, payload)
            .await
            .expect("publish");
    }

    /// Messages received so far.
    pub fn messages(&self) -> Vec<(String, Vec<u8>)> {
        self.received.lock().unwrap().clone()
    }
}

impl Drop for MqttPeer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// An HTTP ingest API keeping every record of every POSTed JSON array.
pub struct Receiver {
    /// `http://127.0.0.1:<port>/ingest`.
    pub url: String,
    records: Arc<Mutex<Vec<Value>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Receiver {
    /// Starts the receiver on a free port.
    pub async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let url = format!("http://{}/ingest", listener.local_addr().expect("addr"));
        let records = Arc::new(Mutex::new(Vec::new()));
        let store = records.clone();
        let task = tokio::spawn(async move {
            while let Ok((conn, _)) = listener.accept().await {
                tokio::spawn(serve_connection(conn, store.clone()));
            }
        });
        Self { url, records, task }
    }

    /// Every record received so far.
    pub fn records(&self) -> Vec<Value> {
        self.records.lock().unwrap().clone()
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Serves HTTP/1.1 requests on one (keep-alive) connection: every body is a JSON array.
async fn serve_connection(mut conn: tokio::net::TcpStream, store: Arc<Mutex<Vec<Value>>>) {
    let mut buf = Vec::new();
    loop {
        let head_end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            let mut chunk = [0u8; 8192];
            match conn.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
        let length: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0);
        while buf.len() < head_end + length {
            let mut chunk = [0u8; 8192];
            match conn.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        let body: Vec<u8> = buf.drain(..head_end + length).skip(head_end).collect();
        let status = match serde_json::from_slice::<Vec<Value>>(&body) {
            Ok(batch) => {
                store.lock().unwrap().extend(batch);
                "200 OK"
            }
            Err(_) => "400 Bad Request",
        };
        let response = format!("HTTP/1.1 {status}\r\ncontent-length: 0\r\n\r\n");
        if conn.write_all(response.as_bytes()).await.is_err() {
            return;
        }
    }
}

/// The `edge-agent` binary running a pipeline; killed on drop.
pub struct Agent {
    /// `http://127.0.0.1:<port>`.
    pub metrics_url: String,
    child: Child,
    /// The agent's data directory.
    pub data_dir: tempfile::TempDir,
    config: tempfile::NamedTempFile,
}

impl Agent {
    /// Runs `edge-agent run` with `pipeline` (YAML) and waits for `/metrics`.
    pub async fn start(pipeline: &str) -> Self {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let mut config = tempfile::NamedTempFile::new().expect("config file");
        config.write_all(pipeline.as_bytes()).expect("write config");
        let data_dir = tempfile::tempdir().expect("data dir");
        let log = std::fs::File::create(data_dir.path().join("agent.log")).expect("agent log");
        let port = free_port();
        let child = Command::new(env!("CARGO_BIN_EXE_edge-agent"))
            .args(["run", "--config"])
            .arg(config.path())
            .arg("--data-dir")
            .arg(data_dir.path())
            .args([
                "--listen",
                &format!("127.0.0.1:{port}"),
                "--node-name",
                "edge-test",
            ])
            .env("RUST_LOG", "warn,edge_agent=info")
            .stdout(Stdio::null())
            .stderr(Stdio::from(log))
            .spawn()
            .expect("starting edge-agent");
        let agent = Self {
            metrics_url: format!("http://127.0.0.1:{port}"),
            child,
            data_dir,
            config,
        };
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        while agent.metrics().await.is_none() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the agent does not serve /metrics:\n{}",
                agent.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        agent
    }

    /// Replaces the pipeline file the way a ConfigMap update does: a new file renamed
    /// over the old one.
    pub fn rewrite_config(&self, pipeline: &str) {
        let path = self.config.path();
        let tmp = path.with_extension("new");
        std::fs::write(&tmp, pipeline).expect("write the new pipeline");
        std::fs::rename(&tmp, path).expect("replace the pipeline file");
    }

    /// Polls the log until it contains `text` (or 30 s pass).
    pub async fn wait_log(&self, text: &str) -> bool {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while !self.log().contains(text) {
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        true
    }

    /// What the agent logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.data_dir.path().join("agent.log")).unwrap_or_default()
    }

    /// The `/metrics` text, if it can be read.
    pub async fn metrics(&self) -> Option<String> {
        let response = reqwest::get(format!("{}/metrics", self.metrics_url))
            .await
            .ok()?;
        response.text().await.ok()
    }

    /// The value of the series `name{labels...}` (labels as `key="value"`, in any order
    /// among the series' labels), or 0 when absent.
    pub async fn metric(&self, name: &str, labels: &[&str]) -> f64 {
        let text = self.metrics().await.unwrap_or_default();
        text.lines()
            .filter(|l| l.starts_with(&format!("{name}{{")) || l.starts_with(&format!("{name} ")))
            .filter(|l| labels.iter().all(|lab| l.contains(lab)))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }

    /// Polls `name{labels}` until `pred` holds (or 30 s pass); returns the last value.
    pub async fn wait_metric(
        &self,
        name: &str,
        labels: &[&str],
        pred: impl Fn(f64) -> bool,
    ) -> f64 {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let v = self.metric(name, labels).await;
            if pred(v) || tokio::time::Instant::now() >= deadline {
                return v;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The pipeline manifest the end-to-end tests run: readings on
/// `sensors/<device>/vibration`, inference per `inference` (YAML, indented for the
/// `inference:` key), the given processors and payload encoding, alerts on
/// `alerts/{device}` and `labels/{device}`, HTTP sink.
pub fn pipeline(
    broker: u16,
    receiver: &str,
    inference: &str,
    processors: &str,
    encoding: &str,
) -> String {
    pipeline_yaml(
        "e2e",
        "vibration",
        &format!(
            r#"  source:
    mqtt:
      url: mqtt://127.0.0.1:{broker}
      topics: ["sensors/+/vibration", "cameras/+/frame"]
      qos: 1
    format: {{value: value, device: "topic[1]", timestamp: timestamp, encoding: {encoding}}}
    maxPayloadSize: 1Mi
  inference:
{inference}
  processors: {processors}
  actions:
    - trigger: anomaly
      mqtt: {{topic: "alerts/{{device}}", qos: 1}}
      resolved: {{}}
    - trigger: classification
      mqtt: {{topic: "labels/{{device}}", qos: 1}}
  buffer: {{durability: os}}
  sink:
    http: {{url: "{receiver}", batchSize: 200, flushInterval: 100ms, timeout: 5s}}
"#
        ),
    )
}

/// A fixture path as a string for YAML.
pub fn yaml_path(p: &Path) -> String {
    PathBuf::from(p).display().to_string()
}

//! `edge-agent demo`: the whole product on one machine with nothing else installed.
//!
//! The agent runs in this process on the example anomaly pipeline
//! (`deploy/examples/anomaly-detection.yaml`: the autoencoder shipped inside the binary,
//! a range and a dead band, `alerts/{device}` on every anomaly) with its embedded broker
//! on a free loopback port; simulated sensors publish to that broker; a local "cloud"
//! receiver stores what the agent syncs, and goes offline for the middle stretch of the
//! run so the queue buffers and then drains. A live view shows the counters about once a
//! second; after `--duration` the sensors stop, the backlog drains (bounded wait), and a
//! summary line is printed.

mod cloud;
mod sensors;
mod view;

use std::io::{IsTerminal, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use rumqttc::{AsyncClient, Event, Incoming, MqttOptions, QoS};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::config::{AgentConfig, ConfigError};
use crate::pipeline::metrics_for;
use crate::run::{RunError, RunOptions, run_with_metrics};
use crate::runtime::telemetry::{DROP_REASONS, Metrics, MetricsError, RECORD_KINDS};

pub use cloud::{Cloud, Stored};
pub use sensors::{Published, Sample, Sensor, Simulator};
pub use view::{Snapshot, Summary, bandwidth_saved, progress_line, table};

/// The anomaly autoencoder of `tests/models` (see its README), shipped in the binary.
pub const MODEL: &[u8] = include_bytes!("../../../../tests/models/anomaly_autoencoder.tflite");
/// File name of the model in the data directory.
pub const MODEL_FILE: &str = "anomaly_autoencoder.tflite";

/// How long the agent may take to connect to its embedded broker.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);
/// How long the backlog may take to drain after the sensors stop.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(60);
/// How long the agent may take to stop.
const STOP_TIMEOUT: Duration = Duration::from_secs(15);
/// The cloud is offline from this share of the run to the next.
const OFFLINE_WINDOW: (f64, f64) = (0.3, 0.6);
/// Upper bound on readings per second, all sensors together.
const MAX_TOTAL_RATE: f64 = 20_000.0;

/// The demo's flags.
#[derive(Clone, Debug)]
pub struct DemoOptions {
    /// How long the sensors publish.
    pub duration: Duration,
    /// Number of simulated sensors.
    pub sensors: u32,
    /// Readings per second per sensor.
    pub rate: f64,
    /// Where the queue and the model go (default: a temporary directory, removed after).
    pub data_dir: Option<PathBuf>,
    /// Address of the agent's `/metrics` (default: a free loopback port).
    pub listen: Option<SocketAddr>,
    /// Seed of the simulated signals.
    pub seed: u64,
}

/// Why the demo could not run.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    /// A flag is out of range.
    #[error("{0}")]
    Options(String),
    /// The data directory or the model file.
    #[error("preparing {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The demo pipeline did not load (a bug in the demo).
    #[error("the demo pipeline: {0}")]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Metrics(#[from] MetricsError),
    /// The agent stopped with an error.
    #[error("the agent: {0}")]
    Agent(#[from] RunError),
    /// The agent stopped without being asked to.
    #[error("the agent stopped unexpectedly")]
    AgentGone,
    /// The agent never connected to its broker.
    #[error("the agent did not connect to its embedded broker within {0:?}")]
    NotConnected(Duration),
    /// The local cloud receiver could not listen.
    #[error("the local cloud receiver: {0}")]
    Cloud(#[source] std::io::Error),
}

impl DemoOptions {
    fn check(&self) -> Result<(), DemoError> {
        let bad = |m: &str| Err(DemoError::Options(m.to_string()));
        if !(1..=1000).contains(&self.sensors) {
            return bad("--sensors must be between 1 and 1000");
        }
        if !(self.rate.is_finite() && self.rate > 0.0 && self.rate <= 1000.0) {
            return bad("--rate must be above 0 and at most 1000 readings/s");
        }
        if f64::from(self.sensors) * self.rate > MAX_TOTAL_RATE {
            return bad("--sensors x --rate must be at most 20000 readings/s");
        }
        if self.duration < Duration::from_secs(1) || self.duration > Duration::from_secs(86_400) {
            return bad("--duration must be between 1s and 24h");
        }
        Ok(())
    }
}

/// The demo's pipeline: the example anomaly pipeline on the embedded broker at
/// `broker_port`, the model at `model`, syncing to `cloud_url`.
pub fn pipeline_yaml(broker_port: u16, model: &Path, cloud_url: &str) -> String {
    format!(
        r#"apiVersion: edgepipe.dev/v1alpha1
kind: EdgePipeline
metadata:
  name: pump-vibration
  namespace: demo
spec:
  source:
    mqtt:
      embedded: {{listen: "127.0.0.1:{broker_port}"}}
      topics: ["sensors/+/vibration"]
    format:
      value: rms
      device: topic[1]
  inference:
    model: {{path: {model:?}}}
    window: 16
    threshold: 0.8
    normalize: {{mean: 20.0, std: 3.5}}
  processors:
    - range: {{min: -50, max: 50}}
    - deadband: {{absolute: 2.0, maxSilence: 5m}}
  actions:
    - trigger: anomaly
      mqtt: {{topic: "alerts/{{device}}", qos: 1}}
      clearBelow: 0.5
      clearAfter: 3
  buffer:
    maxBytes: 64Mi
    maxAge: 1h
    durability: os
  sink:
    http:
      url: {cloud_url}
      batchSize: 200
      flushInterval: 500ms
      timeout: 2s
      compression: gzip
      retry: {{initialBackoff: 100ms, maxBackoff: 1s}}
"#,
        model = model.display().to_string(),
    )
}

/// A temporary data directory, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn create() -> Result<Self, DemoError> {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let path =
            std::env::temp_dir().join(format!("edgepipe-demo-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&path).map_err(|source| DemoError::Io {
            path: path.clone(),
            source,
        })?;
        Ok(Self(path))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A port nothing listens on right now.
fn free_port() -> Result<u16, DemoError> {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(DemoError::Cloud)
}

/// Runs the demo, writing the live view to stdout; returns the summary (also printed).
pub async fn run(options: DemoOptions) -> Result<Summary, DemoError> {
    options.check()?;
    let (data_dir, _temp) = match &options.data_dir {
        Some(dir) => (dir.clone(), None),
        None => {
            let temp = TempDir::create()?;
            (temp.0.clone(), Some(temp))
        }
    };
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| DemoError::Io { path, source }
    };
    std::fs::create_dir_all(&data_dir).map_err(io(&data_dir))?;
    let model = data_dir.join(MODEL_FILE);
    std::fs::write(&model, MODEL).map_err(io(&model))?;

    let mut cloud = Cloud::start().await.map_err(DemoError::Cloud)?;
    let broker_port = free_port()?;
    let listen = match options.listen {
        Some(addr) => addr,
        None => SocketAddr::from(([127, 0, 0, 1], free_port()?)),
    };
    let config = AgentConfig::from_text(
        &pipeline_yaml(broker_port, &model, &cloud.url()),
        "demo",
        &|_| None,
    )?;
    let metrics = Arc::new(metrics_for(&config)?);
    let stop = CancellationToken::new();
    let mut agent = tokio::spawn(run_with_metrics(
        config,
        RunOptions {
            data_dir: data_dir.clone(),
            listen,
            config_path: None,
            mode: crate::runtime::datadir::lock::Mode::Agent,
        },
        metrics.clone(),
        stop.clone(),
    ));
    let outcome = drive(&options, broker_port, &metrics, &mut cloud, &mut agent).await;
    stop.cancel();
    let stopped = tokio::time::timeout(STOP_TIMEOUT, &mut agent).await;
    let summary = outcome?;
    match stopped {
        Ok(Ok(Ok(()))) => {}
        Ok(Ok(Err(e))) => return Err(e.into()),
        Ok(Err(_)) | Err(_) => return Err(DemoError::AgentGone),
    }
    println!("{summary}");
    Ok(summary)
}

/// Everything between the agent's start and its stop.
async fn drive(
    options: &DemoOptions,
    broker_port: u16,
    metrics: &Metrics,
    cloud: &mut Cloud,
    agent: &mut JoinHandle<Result<(), RunError>>,
) -> Result<Summary, DemoError> {
    let deadline = Instant::now() + CONNECT_TIMEOUT;
    while metrics.mqtt_connected.get() != 1 {
        if agent.is_finished() {
            return Err(agent_end(agent).await);
        }
        if Instant::now() > deadline {
            return Err(DemoError::NotConnected(CONNECT_TIMEOUT));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let alerts = AlertCounter::start(broker_port).await;
    let simulator = Simulator::start(broker_port, options.sensors, options.rate, options.seed);
    let started = Instant::now();
    let mut screen = Screen::new();

    let offline_at = options.duration.mul_f64(OFFLINE_WINDOW.0);
    let online_at = options.duration.mul_f64(OFFLINE_WINDOW.1);
    let mut went_offline = false;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let snapshot = |cloud: &Cloud, published: u64| Snapshot {
        elapsed: started.elapsed(),
        published,
        readings_in: metrics.messages_received.get(),
        forwarded: forwarded(metrics),
        delivered: cloud.stored().records,
        anomalies: metrics.anomalies.get(),
        alerts: alerts.count(),
        backlog: metrics.queue_records.get().max(0) as u64,
        cloud_online: cloud.online(),
        upstream_up: metrics.upstream_up.get() == 1,
    };
    loop {
        let elapsed = started.elapsed();
        if elapsed >= options.duration {
            break;
        }
        let next_switch = if !went_offline {
            offline_at
        } else if cloud.online() {
            options.duration
        } else {
            online_at
        };
        tokio::select! {
            _ = tick.tick() => screen.show(&snapshot(cloud, simulator.published().readings)),
            _ = tokio::time::sleep(next_switch.saturating_sub(elapsed)) => {
                let now = started.elapsed();
                if !went_offline && now >= offline_at {
                    cloud.go_offline().await;
                    went_offline = true;
                } else if went_offline && now >= online_at {
                    cloud.go_online().await.map_err(DemoError::Cloud)?;
                }
            }
            _ = &mut *agent => return Err(agent_end(agent).await),
        }
    }
    let duration = started.elapsed();
    cloud.go_online().await.map_err(DemoError::Cloud)?;
    let published = simulator.stop(Duration::from_secs(5)).await;

    // Drain: everything received is processed and everything forwarded is stored.
    let drain_started = Instant::now();
    let drain_deadline = drain_started + DRAIN_TIMEOUT;
    let mut last_in = u64::MAX;
    let mut quiet_polls = 0;
    while Instant::now() < drain_deadline && !agent.is_finished() {
        let s = snapshot(cloud, published.readings);
        quiet_polls = if s.readings_in == last_in {
            quiet_polls + 1
        } else {
            0
        };
        last_in = s.readings_in;
        if quiet_polls >= 3 && s.backlog == 0 && s.delivered >= s.forwarded {
            break;
        }
        tokio::select! {
            _ = tick.tick() => screen.show(&s),
            _ = tokio::time::sleep(Duration::from_millis(200)) => {}
        }
    }
    let drain = drain_started.elapsed();
    let last = snapshot(cloud, published.readings);
    screen.show(&last);
    let stored = cloud.stored();
    Ok(Summary {
        published: published.readings,
        readings_in: last.readings_in,
        forwarded: last.forwarded,
        delivered: stored.records,
        duplicates: stored.duplicates,
        anomalies: last.anomalies,
        alerts: last.alerts,
        spikes: published.spikes,
        backlog: last.backlog,
        dropped: DROP_REASONS
            .iter()
            .map(|r| metrics.records_dropped.with_label_values(&[*r]).get())
            .sum(),
        cloud_offline: cloud.offline_for(),
        duration,
        drain,
    })
}

/// Records committed to the queue, all kinds.
fn forwarded(metrics: &Metrics) -> u64 {
    RECORD_KINDS
        .iter()
        .map(|k| metrics.records_enqueued.with_label_values(&[*k]).get())
        .sum()
}

/// The error of an agent task that has finished.
async fn agent_end(agent: &mut JoinHandle<Result<(), RunError>>) -> DemoError {
    match agent.await {
        Ok(Err(e)) => DemoError::Agent(e),
        Ok(Ok(())) | Err(_) => DemoError::AgentGone,
    }
}

/// Counts the alerts the agent publishes on its broker (`alerts/+`).
struct AlertCounter {
    count: Arc<AtomicU64>,
    task: JoinHandle<()>,
}

impl AlertCounter {
    async fn start(port: u16) -> Self {
        let mut options = MqttOptions::new("edgepipe-demo-alerts", "127.0.0.1", port);
        options.set_keep_alive(Duration::from_secs(30));
        let (client, mut events) = AsyncClient::new(options, 10);
        let count = Arc::new(AtomicU64::new(0));
        let seen = count.clone();
        let (subscribed_tx, subscribed) = tokio::sync::oneshot::channel();
        let task = tokio::spawn(async move {
            let mut subscribed_tx = Some(subscribed_tx);
            if client
                .subscribe("alerts/+", QoS::AtLeastOnce)
                .await
                .is_err()
            {
                return;
            }
            loop {
                match events.poll().await {
                    Ok(Event::Incoming(Incoming::Publish(_))) => {
                        seen.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(Event::Incoming(Incoming::SubAck(_))) => {
                        if let Some(tx) = subscribed_tx.take() {
                            let _ = tx.send(());
                        }
                    }
                    Ok(_) => {}
                    Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
                }
            }
        });
        // The sensors start once alerts can be seen (bounded: the count is a bonus).
        let _ = tokio::time::timeout(Duration::from_secs(5), subscribed).await;
        Self { count, task }
    }

    fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }
}

impl Drop for AlertCounter {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Where the live view goes: a table redrawn in place on a terminal, one progress line
/// per refresh otherwise.
struct Screen {
    tty: bool,
    drawn: usize,
}

impl Screen {
    fn new() -> Self {
        Self {
            tty: std::io::stdout().is_terminal(),
            drawn: 0,
        }
    }

    fn show(&mut self, s: &Snapshot) {
        let text = if self.tty {
            let lines = table(s);
            let text = view::redraw(self.drawn, &lines);
            self.drawn = lines.len();
            text
        } else {
            format!("{}\n", progress_line(s))
        };
        let mut out = std::io::stdout().lock();
        let _ = out.write_all(text.as_bytes());
        let _ = out.flush();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_demo_pipeline_is_the_example_on_the_embedded_broker() {
        let yaml = pipeline_yaml(
            18830,
            Path::new("/tmp/d/anomaly_autoencoder.tflite"),
            "http://127.0.0.1:9/sensor-data/batch",
        );
        let config = AgentConfig::from_text(&yaml, "demo", &|_| None).expect("valid pipeline");
        assert_eq!(config.source.url, "mqtt://127.0.0.1:18830");
        assert_eq!(
            config.source.embedded_listen,
            "127.0.0.1:18830".parse().ok()
        );
        let inference = config.spec.inference.as_ref().expect("inference");
        assert_eq!(inference.window, 16);
        assert_eq!(inference.threshold, 0.8);
        assert_eq!(config.spec.processors.len(), 2);
        assert_eq!(config.spec.actions.len(), 1);
    }

    #[test]
    fn the_shipped_model_is_the_test_fixture() {
        let fixture = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../tests/models/anomaly_autoencoder.tflite"
        );
        assert_eq!(std::fs::read(fixture).expect("fixture"), MODEL);
    }

    #[test]
    fn flags_out_of_range_are_refused() {
        let ok = DemoOptions {
            duration: Duration::from_secs(10),
            sensors: 5,
            rate: 10.0,
            data_dir: None,
            listen: None,
            seed: 1,
        };
        assert!(ok.check().is_ok());
        for bad in [
            DemoOptions {
                sensors: 0,
                ..ok.clone()
            },
            DemoOptions {
                rate: 0.0,
                ..ok.clone()
            },
            DemoOptions {
                rate: f64::NAN,
                ..ok.clone()
            },
            DemoOptions {
                sensors: 1000,
                rate: 1000.0,
                ..ok.clone()
            },
            DemoOptions {
                duration: Duration::ZERO,
                ..ok.clone()
            },
        ] {
            assert!(matches!(bad.check(), Err(DemoError::Options(_))), "{bad:?}");
        }
    }
}

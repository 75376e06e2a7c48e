//! Shared helpers of the agent's integration tests: the real components come from the
//! test kit (`edge-testkit`: Mosquitto, the agent process, the HTTP receiver, ports,
//! polling); what is left here is the test pipeline every agent test runs, how to start
//! the agent with it between a broker and a receiver, and how to publish readings.

#![allow(dead_code, unused_imports)]

pub use edge_testkit::receiver;
pub use edge_testkit::*;

/// The topics the test pipeline reads.
pub const TOPIC: &str = "sensors/+/temperature";
/// The timestamp (ms since the epoch) of the first reading of a test.
pub const T0: i64 = 1_795_608_000_000;

/// The values of `records`, as integers (the tests publish whole numbers).
pub fn values(records: &[serde_json::Value]) -> std::collections::BTreeSet<i64> {
    records
        .iter()
        .filter_map(|r| r["value"].as_f64())
        .map(|v| v as i64)
        .collect()
}

/// A JSON reading payload.
pub fn reading(device: &str, value: f64, timestamp_ms: i64) -> String {
    format!(r#"{{"device_id":"{device}","value":{value},"timestamp":{timestamp_ms}}}"#)
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
    /// Lines under `spec.sink` before `http` (indented by 4, each ending in a newline):
    /// the sink's `format` or `rateLimit`.
    pub sink_settings: &'a str,
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
            sink_settings: "",
        }
    }
}

impl Pipeline<'_> {
    /// Starts the agent with this pipeline from `broker` to the receiver on
    /// `receiver_port`, in a data directory of its own (returned with the agent: keep it
    /// as long as the agent runs), after preparing the agent's persistent session (client
    /// `client_id`, subscribed to [`TOPIC`]) so that nothing published from now on is
    /// lost. Does not wait for the agent to be ready.
    pub async fn start_agent(
        self,
        broker: &Mosquitto,
        receiver_port: u16,
    ) -> (tempfile::TempDir, Agent) {
        let dir = tempfile::tempdir().expect("tempdir");
        prepare_session(broker.port, self.client_id, &[TOPIC]).await;
        let yaml = Pipeline {
            broker_port: broker.port,
            receiver_port,
            ..self
        }
        .yaml();
        let agent = Agent::start(dir.path(), &yaml);
        (dir, agent)
    }

    /// A pipeline `factory/test` reading `sensors/+/temperature` and syncing to the test
    /// receiver with short flush and backoff intervals.
    pub fn yaml(&self) -> String {
        pipeline_yaml(
            "factory",
            "test",
            &format!(
                r#"  source:
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
{sink_settings}    http:
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
                sink_settings = self.sink_settings,
            ),
        )
    }
}

/// Publishes one reading of `device` for each `i` of `values` on
/// `sensors/<device>/temperature` (value `i`, timestamp [`T0`] + `i` ms), then waits until
/// the broker has acknowledged them all.
pub async fn publish_readings(
    publisher: &mut Publisher,
    device: &str,
    values: std::ops::Range<i64>,
) {
    let topic = format!("sensors/{device}/temperature");
    for i in values {
        publisher
            .send(&topic, reading(device, i as f64, T0 + i))
            .await;
    }
    publisher.flush().await;
}

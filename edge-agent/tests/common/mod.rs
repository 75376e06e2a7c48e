//! Shared helpers of the agent's integration tests: the real components come from the
//! test kit (`edge-testkit`: Mosquitto, the agent process, the HTTP receiver, ports,
//! polling); what is left here is the test pipeline every agent test runs.

#![allow(dead_code, unused_imports)]

pub use edge_testkit::receiver;
pub use edge_testkit::*;

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

//! The thin-link scenario shared by the sink test and benchmark B11: sensors whose
//! readings look like the anomaly autoencoder's training data, and a pipeline that scores
//! them and sends through a capped, gzipped HTTP sink to a [`crate::Link`].

use crate::pipeline_yaml;
use std::path::Path;

/// Bytes per second the scenario's `sink.rateLimit` allows: a little under the 64 kbit/s
/// link, for the request headers.
pub const RATE: u64 = 7000;
/// The scenario's `sink.rateLimit.burst`.
pub const BURST: u64 = 2048;
/// The link's bytes per second each way (64 kbit/s).
pub const LINK: u64 = 8000;

/// Sensor `d`'s reading at second `t`: `20 + 5 sin(2 pi f t / 16 + phase)` like the model's
/// training data, plus 21 (an anomaly the model scores above 0.8) when `spiked`.
pub fn sensor_value(d: usize, t: usize, spiked: bool) -> f64 {
    let f = 0.6 + 0.2 * (d % 5) as f64;
    let spike = if spiked { 21.0 } else { 0.0 };
    20.0 + 5.0 * (2.0 * std::f64::consts::PI * f * t as f64 / 16.0 + d as f64 * 0.9).sin() + spike
}

/// The payload of sensor `d`'s reading at `timestamp_ms` (device `s<d>`).
pub fn sensor_payload(d: usize, value: f64, timestamp_ms: i64) -> String {
    format!(r#"{{"device_id":"s{d}","value":{value},"timestamp":{timestamp_ms}}}"#)
}

/// A pipeline reading `sensors/+/temperature` from the broker on `broker`, scoring every
/// 16-reading window with the autoencoder at `model`, and sending batches of 200 in
/// `format` (`v1` or `v2`), gzipped, capped at [`RATE`], to the receiver behind the link
/// on `link`.
pub fn thin_link_pipeline(
    broker: u16,
    client_id: &str,
    model: &Path,
    format: &str,
    link: u16,
) -> String {
    pipeline_yaml(
        "factory",
        "thin",
        &format!(
            r#"  source:
    mqtt: {{url: "mqtt://127.0.0.1:{broker}", topics: ["sensors/+/temperature"], qos: 1, clientId: {client_id}}}
    format: {{value: value, device: device_id, timestamp: timestamp}}
  inference:
    model: {{path: {model:?}}}
    window: 16
    threshold: 0.8
    normalize: {{mean: 20.0, std: 3.5}}
  processors: []
  sink:
    format: {format}
    rateLimit: {{bytesPerSecond: "{RATE}", burst: "{BURST}"}}
    http:
      url: http://127.0.0.1:{link}/ingest
      batchSize: 200
      flushInterval: 1s
      timeout: 10s
      compression: gzip
      retry: {{initialBackoff: 100ms, maxBackoff: 1s}}
"#,
            model = model.display().to_string(),
        ),
    )
}

//! The agent's Prometheus metrics: one explicit [`prometheus::Registry`] owned by
//! [`Metrics`] and passed to every part of the agent (no global statics).
//!
//! Names are fixed because the shipped dashboard and alert rules rely on them. Every series
//! carries the constant label `pipeline="<namespace>/<name>"`; the other labels take values
//! from small closed sets of static strings, all pre-initialised at zero so the series
//! exist from the first scrape (the inference labels by `inference::InferenceMetrics`,
//! the processor and invalid-reason labels by the agent once it knows its pipeline). The
//! one exception is a certificate's expiry, which exists only for a configured
//! certificate (a zero would read as "expired").

use prometheus::{
    Counter, Encoder, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec,
    Opts, Registry, TextEncoder,
};

/// Reasons a local action is not published (`edge_agent_actions_failed_total{reason}`).
pub const ACTION_FAILURES: [&str; 3] = ["bad_topic", "backlog", "disconnected"];

/// Reasons a firing reading publishes no alert (`edge_agent_actions_suppressed_total{reason}`).
pub const ACTION_SUPPRESSIONS: [&str; 2] = ["episode", "cooldown"];

/// Reasons a record is dropped (`edge_agent_records_dropped_total{reason}`).
pub const DROP_REASONS: [&str; 6] = [
    "queue_full",
    "max_age",
    "dead_letter",
    "device_evicted",
    "disk_full",
    "unreadable",
];
/// Outcomes of one upstream request (`edge_agent_sync_requests_total{outcome}`).
pub const SYNC_OUTCOMES: [&str; 3] = ["success", "retry", "rejected"];
/// Clients whose credentials are reloaded (`edge_agent_credential_reloads_total{use}`).
pub const CREDENTIAL_USES: [&str; 2] = ["sink", "source"];
/// Outcomes of a credential reload (`edge_agent_credential_reloads_total{result}`).
pub const RELOAD_RESULTS: [&str; 2] = ["ok", "failed"];
/// Certificates whose expiry is exported
/// (`edge_agent_certificate_expiry_timestamp_seconds{use}`); only those configured exist.
pub const CERTIFICATE_USES: [&str; 6] = [
    "sink_client",
    "sink_ca",
    "source_client",
    "source_ca",
    "embedded_server",
    "embedded_client_ca",
];
/// Outcomes of a write of the node's fleet record (`edge_agent_heartbeats_total{outcome}`).
pub const HEARTBEAT_OUTCOMES: [&str; 2] = ["ok", "failed"];
/// Record kinds (`edge_agent_records_enqueued_total{kind}`).
pub const RECORD_KINDS: [&str; 4] = ["reading", "aggregate", "anomaly", "classification"];

/// Buckets for latencies from 100 µs to 10 s.
const LATENCY_BUCKETS: [f64; 16] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];
/// Buckets for upstream requests, 5 ms to 60 s.
const SYNC_BUCKETS: [f64; 13] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

/// Why the metrics could not be registered (a duplicate name: a programming error).
#[derive(Debug, thiserror::Error)]
#[error("registering metrics: {0}")]
pub struct MetricsError(#[from] prometheus::Error);

/// Every metric the agent exports, registered in one registry.
pub struct Metrics {
    registry: Registry,
    /// MQTT messages received.
    pub messages_received: IntCounter,
    /// Raw payload bytes received.
    pub received_bytes: IntCounter,
    /// Messages skipped as malformed, by reason.
    pub messages_invalid: IntCounterVec,
    /// Readings a processor did not pass, by processor.
    pub records_filtered: IntCounterVec,
    /// Records committed to the queue, by kind.
    pub records_enqueued: IntCounterVec,
    /// Records dropped, by reason.
    pub records_dropped: IntCounterVec,
    /// Records the sink acknowledged.
    pub records_synced: IntCounter,
    /// Request bytes sent upstream (as on the wire, after compression).
    pub sent_bytes: IntCounter,
    /// Upstream requests, by outcome.
    pub sync_requests: IntCounterVec,
    /// Seconds the upstream was unreachable or failing.
    pub upstream_down_seconds: Counter,
    /// Model runs.
    pub inferences: IntCounter,
    /// Anomalies detected.
    pub anomalies: IntCounter,
    /// Local actions published.
    pub actions_published: IntCounter,
    /// Requests the upstream refused for their credentials (401, 403, 407).
    pub upstream_auth_failures: IntCounter,
    /// Local actions not published, by reason (one of [`ACTION_FAILURES`]).
    pub actions_failed: IntCounterVec,
    /// Firing readings that published no alert, by reason (one of [`ACTION_SUPPRESSIONS`]).
    pub actions_suppressed: IntCounterVec,
    /// Corrupt queue files moved aside.
    pub queue_corruptions: IntCounter,
    /// Queues of a deleted pipeline of the same name set aside at start.
    pub queues_set_aside: IntCounter,
    /// 1 while this process runs as the node's fallback (`edge-agent fallback`).
    pub fallback_active: IntGauge,
    /// How long the node's fallback last ran this queue, seconds (0: never).
    pub fallback_last_seconds: IntGauge,
    /// When the node's fallback last stopped, unix seconds (0: never).
    pub fallback_last_end: IntGauge,
    /// 1 when the fallback's last run was of another pipeline revision than this one.
    pub fallback_last_outdated: IntGauge,
    /// Connections to the agent's endpoint closed at once: the connection cap was reached.
    pub http_connections_rejected: IntCounter,
    /// Failed inferences, by reason.
    pub inference_errors: IntCounterVec,
    /// Model loads, by outcome.
    pub model_loads: IntCounterVec,
    /// Credential reloads from files, by client (`use`) and `result`.
    pub credential_reloads: IntCounterVec,
    /// `notAfter` of the certificates in use (unix seconds), by `use`.
    pub certificate_expiry: IntGaugeVec,
    /// Records in the queue.
    pub queue_records: IntGauge,
    /// Payload bytes in the queue.
    pub queue_bytes: IntGauge,
    /// Age of the oldest record in the queue (0 when empty).
    pub queue_oldest_age_seconds: prometheus::Gauge,
    /// Expected seconds to drain the queue at the recent delivery rate.
    pub queue_drain_seconds: prometheus::Gauge,
    /// Inference windows evicted for new devices.
    pub inference_windows_evicted: IntCounter,
    /// Redelivered messages already committed, acknowledged without processing.
    pub messages_redelivered: IntCounter,
    /// Bytes the queue's files take on disk.
    pub queue_file_bytes: IntGauge,
    /// Integrity checks of the queue file at start (after an unclean shutdown).
    pub queue_integrity_checks: IntCounter,
    /// Records in the dead letters.
    pub dead_letter_records: IntGauge,
    /// Bytes the dead letters hold (within `buffer.maxBytes`).
    pub dead_letter_bytes: IntGauge,
    /// Records of dead letters deleted to keep within `buffer.maxDeadLetterBytes`.
    pub dead_letter_overflow: IntCounter,
    /// `buffer.maxBytes`.
    pub queue_capacity_bytes: IntGauge,
    /// 1 when the last upstream request succeeded.
    pub upstream_up: IntGauge,
    /// The cap of `sink.rateLimit` in force, in bytes per second (0: none, or a window of
    /// 0).
    pub sink_rate_limit: IntGauge,
    /// Seconds the sink waited for `sink.rateLimit`.
    pub sink_throttled_seconds: Counter,
    /// `edge_agent_upstream_last_error_info{error}`: the last failure while the upstream is
    /// down (one series, gone once it is up again).
    pub upstream_last_error: IntGaugeVec,
    /// `edge_agent_model_info{sha256}`: the model running (one series).
    pub model_info: IntGaugeVec,
    /// 1 while connected to the source broker.
    pub mqtt_connected: IntGauge,
    /// Connections to the source broker established (the first and every reconnect).
    pub mqtt_connections: IntCounter,
    /// Writes of the node's fleet record (see [`crate::runtime::heartbeat`]), by outcome (one of
    /// [`HEARTBEAT_OUTCOMES`]).
    pub heartbeats: IntCounterVec,
    /// When the node's fleet record was last written, unix seconds (0: never).
    pub heartbeat_last_success: IntGauge,
    /// Always 1, labelled with the agent version.
    pub build_info: IntGaugeVec,
    /// Duration of upstream requests.
    pub sync_duration: Histogram,
    /// From receiving an MQTT message to its outcome being committed (its records stored,
    /// or dropped and counted), i.e. to the moment it may be acknowledged.
    pub ingest_to_durable: Histogram,
    /// Duration of model runs.
    pub inference_duration: Histogram,
    /// From receiving a reading to publishing its local action.
    pub action_latency: Histogram,
}

impl Metrics {
    /// Registers every metric with the constant label `pipeline` (`namespace/name`).
    pub fn new(pipeline: &str) -> Result<Self, MetricsError> {
        let registry = Registry::new();
        let opts = |name: &str, help: &str| Opts::new(name, help).const_label("pipeline", pipeline);
        let hopts = |name: &str, help: &str, buckets: &[f64]| {
            HistogramOpts::new(name, help)
                .const_label("pipeline", pipeline)
                .buckets(buckets.to_vec())
        };
        let r = &registry;
        let metrics = Self {
            messages_received: counter(
                r,
                opts(
                    "edge_agent_messages_received_total",
                    "MQTT messages received.",
                ),
            )?,
            received_bytes: counter(
                r,
                opts(
                    "edge_agent_received_bytes_total",
                    "Raw MQTT payload bytes received.",
                ),
            )?,
            messages_invalid: counter_vec(
                r,
                opts(
                    "edge_agent_messages_invalid_total",
                    "Malformed MQTT messages skipped, by reason.",
                ),
                "reason",
            )?,
            records_filtered: counter_vec(
                r,
                opts(
                    "edge_agent_records_filtered_total",
                    "Readings not passed by a processor, by processor.",
                ),
                "processor",
            )?,
            records_enqueued: counter_vec(
                r,
                opts(
                    "edge_agent_records_enqueued_total",
                    "Records committed to the durable queue, by kind.",
                ),
                "kind",
            )?,
            records_dropped: counter_vec(
                r,
                opts(
                    "edge_agent_records_dropped_total",
                    "Records dropped without being sent, by reason.",
                ),
                "reason",
            )?,
            records_synced: counter(
                r,
                opts(
                    "edge_agent_records_synced_total",
                    "Records acknowledged by the sink.",
                ),
            )?,
            sent_bytes: counter(
                r,
                opts(
                    "edge_agent_sent_bytes_total",
                    "Request bytes sent upstream, as on the wire.",
                ),
            )?,
            sync_requests: counter_vec(
                r,
                opts(
                    "edge_agent_sync_requests_total",
                    "Upstream requests, by outcome.",
                ),
                "outcome",
            )?,
            upstream_down_seconds: register(
                r,
                Counter::with_opts(opts(
                    "edge_agent_upstream_down_seconds_total",
                    "Seconds the upstream was unreachable or failing.",
                ))?,
            )?,
            inferences: counter(r, opts("edge_agent_inferences_total", "Model runs."))?,
            anomalies: counter(
                r,
                opts(
                    "edge_agent_anomalies_total",
                    "Anomalies detected by inference.",
                ),
            )?,
            actions_published: counter(
                r,
                opts(
                    "edge_agent_actions_published_total",
                    "Local actions (alerts and resolved messages) written to the source broker's connection.",
                ),
            )?,
            upstream_auth_failures: counter(
                r,
                opts(
                    "edge_agent_upstream_auth_failures_total",
                    "Requests the upstream refused for their credentials (401, 403, 407); delivery pauses and retries.",
                ),
            )?,
            actions_failed: counter_vec(
                r,
                opts(
                    "edge_agent_actions_failed_total",
                    "Local actions not published: bad_topic (the rendered topic is not a valid topic name), backlog (too many publishes waiting for the broker), disconnected (lost with the actions connection before it was written).",
                ),
                "reason",
            )?,
            actions_suppressed: counter_vec(
                r,
                opts(
                    "edge_agent_actions_suppressed_total",
                    "Readings that met an action's trigger but published nothing: episode (the device's alert episode was already open), cooldown (the device's last episode started less than cooldown ago).",
                ),
                "reason",
            )?,
            queue_corruptions: counter(
                r,
                opts(
                    "edge_agent_queue_corruptions_total",
                    "Corrupt queue files moved aside at start.",
                ),
            )?,
            queues_set_aside: counter(
                r,
                opts(
                    "edge_agent_queues_set_aside_total",
                    "Queues left on the node by a deleted pipeline of the same name, set aside at start (kept as queue.db.pipeline-<uid>, never sent).",
                ),
            )?,
            fallback_active: gauge(
                r,
                opts(
                    "edge_agent_fallback_active",
                    "1 while this process is the node's fallback, running the stored pipeline.",
                ),
            )?,
            fallback_last_seconds: gauge(
                r,
                opts(
                    "edge_agent_fallback_last_duration_seconds",
                    "How long the node's fallback last ran this queue (0: never).",
                ),
            )?,
            fallback_last_end: gauge(
                r,
                opts(
                    "edge_agent_fallback_last_end_timestamp_seconds",
                    "When the node's fallback last stopped, unix seconds (0: never).",
                ),
            )?,
            fallback_last_outdated: gauge(
                r,
                opts(
                    "edge_agent_fallback_last_outdated",
                    "1 when the fallback's last run was of another pipeline revision than the one running now.",
                ),
            )?,
            http_connections_rejected: counter(
                r,
                opts(
                    "edge_agent_http_connections_rejected_total",
                    "Connections to /metrics, /livez and /readyz closed at once because the connection cap was reached.",
                ),
            )?,
            inference_errors: counter_vec(
                r,
                opts(
                    "edge_agent_inference_errors_total",
                    "Failed inferences, by reason.",
                ),
                "reason",
            )?,
            model_loads: counter_vec(
                r,
                opts("edge_agent_model_loads_total", "Model loads, by outcome."),
                "outcome",
            )?,
            credential_reloads: register(
                r,
                IntCounterVec::new(
                    opts(
                        "edge_agent_credential_reloads_total",
                        "Credential files that changed and were reloaded (ok) or found unusable, the credentials in use staying (failed), by client.",
                    ),
                    &["use", "result"],
                )?,
            )?,
            certificate_expiry: register(
                r,
                IntGaugeVec::new(
                    opts(
                        "edge_agent_certificate_expiry_timestamp_seconds",
                        "notAfter of the certificates in use (unix seconds): a client certificate's leaf, a CA bundle's earliest.",
                    ),
                    &["use"],
                )?,
            )?,
            queue_records: gauge(
                r,
                opts("edge_agent_queue_records", "Records in the durable queue."),
            )?,
            queue_bytes: gauge(
                r,
                opts(
                    "edge_agent_queue_bytes",
                    "Payload bytes in the durable queue.",
                ),
            )?,
            queue_oldest_age_seconds: register(
                r,
                prometheus::Gauge::with_opts(opts(
                    "edge_agent_queue_oldest_age_seconds",
                    "Age of the oldest record in the queue (0 when empty).",
                ))?,
            )?,
            queue_drain_seconds: register(
                r,
                prometheus::Gauge::with_opts(opts(
                    "edge_agent_queue_drain_seconds",
                    "Expected seconds to send what the queue holds, at the rate records were acknowledged upstream over the last 30 s (rate caps included): 0 when empty, +Inf when too little was delivered to tell.",
                ))?,
            )?,
            inference_windows_evicted: counter(
                r,
                opts(
                    "edge_agent_inference_windows_evicted_total",
                    "Devices' inference windows thrown away for a new device: more devices than source.maxDevices.",
                ),
            )?,
            messages_redelivered: counter(
                r,
                opts(
                    "edge_agent_messages_redelivered_total",
                    "Messages the broker delivered again (DUP) whose unit was already committed: acknowledged, not processed twice.",
                ),
            )?,
            queue_file_bytes: gauge(
                r,
                opts(
                    "edge_agent_queue_file_bytes",
                    "Bytes the queue's files (database and WAL) take on disk.",
                ),
            )?,
            queue_integrity_checks: counter(
                r,
                opts(
                    "edge_agent_queue_integrity_checks_total",
                    "Integrity checks of the queue file at start; one runs only after an unclean shutdown.",
                ),
            )?,
            dead_letter_records: gauge(
                r,
                opts(
                    "edge_agent_dead_letter_records",
                    "Records in the dead letters (batches the upstream rejected, kept for replay).",
                ),
            )?,
            dead_letter_bytes: gauge(
                r,
                opts(
                    "edge_agent_dead_letter_bytes",
                    "Bytes the dead letters hold; they count against buffer.maxBytes.",
                ),
            )?,
            dead_letter_overflow: counter(
                r,
                opts(
                    "edge_agent_dead_letter_overflow_records_total",
                    "Records of the oldest dead letters deleted to keep within buffer.maxDeadLetterBytes.",
                ),
            )?,
            queue_capacity_bytes: gauge(
                r,
                opts(
                    "edge_agent_queue_capacity_bytes",
                    "Configured queue capacity (buffer.maxBytes).",
                ),
            )?,
            upstream_up: gauge(
                r,
                opts(
                    "edge_agent_upstream_up",
                    "1 when the last upstream request succeeded.",
                ),
            )?,
            sink_rate_limit: gauge(
                r,
                opts(
                    "edge_agent_sink_rate_limit_bytes_per_second",
                    "The sink's cap on bytes sent per second in force (sink.rateLimit and its schedule; 0: no cap, or a window of 0).",
                ),
            )?,
            sink_throttled_seconds: register(
                r,
                Counter::with_opts(opts(
                    "edge_agent_sink_throttled_seconds_total",
                    "Seconds the sink waited for sink.rateLimit before sending.",
                ))?,
            )?,
            upstream_last_error: register(
                r,
                IntGaugeVec::new(
                    opts(
                        "edge_agent_upstream_last_error_info",
                        "The last failure while the upstream is down (1; no series while it is up).",
                    ),
                    &["error"],
                )?,
            )?,
            model_info: register(
                r,
                IntGaugeVec::new(
                    opts(
                        "edge_agent_model_info",
                        "The model running, by the SHA-256 of its file (1; no series before a model runs).",
                    ),
                    &["sha256"],
                )?,
            )?,
            mqtt_connected: gauge(
                r,
                opts(
                    "edge_agent_mqtt_connected",
                    "1 while connected to the source broker.",
                ),
            )?,
            mqtt_connections: counter(
                r,
                opts(
                    "edge_agent_mqtt_connections_total",
                    "Connections to the source broker established (the first and every reconnect).",
                ),
            )?,
            heartbeats: counter_vec(
                r,
                opts(
                    "edge_agent_heartbeats_total",
                    "Writes of the node's fleet record (a Lease) to the Kubernetes API server, by outcome: ok, failed (unreachable, timed out or refused; retried with backoff).",
                ),
                "outcome",
            )?,
            heartbeat_last_success: gauge(
                r,
                opts(
                    "edge_agent_heartbeat_last_success_timestamp_seconds",
                    "When the node's fleet record was last written, unix seconds (0: never).",
                ),
            )?,
            build_info: register(
                r,
                IntGaugeVec::new(
                    opts(
                        "edge_agent_build_info",
                        "Always 1, labelled with the agent version.",
                    ),
                    &["version"],
                )?,
            )?,
            sync_duration: histogram(
                r,
                hopts(
                    "edge_agent_sync_duration_seconds",
                    "Duration of upstream requests.",
                    &SYNC_BUCKETS,
                ),
            )?,
            ingest_to_durable: histogram(
                r,
                hopts(
                    "edge_agent_ingest_to_durable_seconds",
                    "From receiving an MQTT message to its records being committed.",
                    &LATENCY_BUCKETS,
                ),
            )?,
            inference_duration: histogram(
                r,
                hopts(
                    "edge_agent_inference_duration_seconds",
                    "Duration of model runs.",
                    &LATENCY_BUCKETS,
                ),
            )?,
            action_latency: histogram(
                r,
                hopts(
                    "edge_agent_action_latency_seconds",
                    "From receiving a reading to its local action being written to the broker connection.",
                    &LATENCY_BUCKETS,
                ),
            )?,
            registry,
        };
        metrics
            .build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);
        init_labels(&metrics.records_dropped, &DROP_REASONS);
        init_labels(&metrics.actions_failed, &ACTION_FAILURES);
        init_labels(&metrics.actions_suppressed, &ACTION_SUPPRESSIONS);
        init_labels(&metrics.sync_requests, &SYNC_OUTCOMES);
        init_labels(&metrics.records_enqueued, &RECORD_KINDS);
        init_labels(&metrics.heartbeats, &HEARTBEAT_OUTCOMES);
        for use_ in CREDENTIAL_USES {
            for result in RELOAD_RESULTS {
                metrics
                    .credential_reloads
                    .with_label_values(&[use_, result]);
            }
        }
        Ok(metrics)
    }

    /// The registry, e.g. for a test that gathers it directly.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// The metrics in the Prometheus text exposition format.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        // Encoding into a Vec only fails on metric families that cannot exist here.
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut buf) {
            tracing::error!(error = %e, "encoding metrics");
        }
        String::from_utf8_lossy(&buf).into_owned()
    }

    /// Counts `n` dropped records with `reason` (one of [`DROP_REASONS`]).
    pub fn dropped(&self, reason: &'static str, n: u64) {
        self.records_dropped.with_label_values(&[reason]).inc_by(n);
    }
}

/// Creates the series of every label value in `values` at zero.
pub fn init_labels(vec: &IntCounterVec, values: &[&str]) {
    for v in values {
        vec.with_label_values(&[*v]);
    }
}

fn register<M: prometheus::core::Collector + Clone + 'static>(
    r: &Registry,
    m: M,
) -> Result<M, MetricsError> {
    r.register(Box::new(m.clone()))?;
    Ok(m)
}

fn counter(r: &Registry, opts: Opts) -> Result<IntCounter, MetricsError> {
    register(r, IntCounter::with_opts(opts)?)
}

fn counter_vec(r: &Registry, opts: Opts, label: &str) -> Result<IntCounterVec, MetricsError> {
    register(r, IntCounterVec::new(opts, &[label])?)
}

fn gauge(r: &Registry, opts: Opts) -> Result<IntGauge, MetricsError> {
    register(r, IntGauge::with_opts(opts)?)
}

fn histogram(r: &Registry, opts: HistogramOpts) -> Result<Histogram, MetricsError> {
    register(r, Histogram::with_opts(opts)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_series_exists_from_the_start_with_the_pipeline_label() {
        let m = Metrics::new("factory/line1").unwrap();
        let text = m.render();
        for name in [
            "edge_agent_messages_received_total",
            "edge_agent_received_bytes_total",
            "edge_agent_records_synced_total",
            "edge_agent_sent_bytes_total",
            "edge_agent_upstream_down_seconds_total",
            "edge_agent_inferences_total",
            "edge_agent_anomalies_total",
            "edge_agent_actions_published_total",
            "edge_agent_actions_failed_total",
            "edge_agent_actions_suppressed_total",
            "edge_agent_upstream_auth_failures_total",
            "edge_agent_credential_reloads_total",
            "edge_agent_queue_corruptions_total",
            "edge_agent_queues_set_aside_total",
            "edge_agent_http_connections_rejected_total",
            "edge_agent_queue_records",
            "edge_agent_queue_bytes",
            "edge_agent_queue_oldest_age_seconds",
            "edge_agent_queue_drain_seconds",
            "edge_agent_queue_capacity_bytes",
            "edge_agent_upstream_up",
            "edge_agent_mqtt_connected",
            "edge_agent_heartbeats_total",
            "edge_agent_heartbeat_last_success_timestamp_seconds",
            "edge_agent_sync_duration_seconds_bucket",
            "edge_agent_ingest_to_durable_seconds_count",
            "edge_agent_inference_duration_seconds_sum",
            "edge_agent_action_latency_seconds_bucket",
        ] {
            assert!(
                text.contains(&format!("{name}{{")),
                "{name} missing:\n{text}"
            );
        }
        for reason in DROP_REASONS {
            let series = format!(
                "edge_agent_records_dropped_total{{pipeline=\"factory/line1\",reason=\"{reason}\"}} 0"
            );
            assert!(text.contains(&series), "{series} missing");
        }
        for outcome in SYNC_OUTCOMES {
            assert!(text.contains(&format!("outcome=\"{outcome}\"")));
        }
        for outcome in HEARTBEAT_OUTCOMES {
            let series = format!(
                "edge_agent_heartbeats_total{{outcome=\"{outcome}\",pipeline=\"factory/line1\"}} 0"
            );
            assert!(text.contains(&series), "{series} missing");
        }
        assert!(text.contains(&format!(
            "edge_agent_build_info{{pipeline=\"factory/line1\",version=\"{}\"}} 1",
            env!("CARGO_PKG_VERSION")
        )));
    }

    #[test]
    fn drops_are_counted_by_reason() {
        let m = Metrics::new("a/b").unwrap();
        m.dropped("queue_full", 3);
        m.dropped("queue_full", 2);
        assert_eq!(
            m.records_dropped.with_label_values(&["queue_full"]).get(),
            5
        );
        assert_eq!(m.records_dropped.with_label_values(&["max_age"]).get(), 0);
    }
}

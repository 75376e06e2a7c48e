//! The agent's `/metrics` as Prometheus sees it: every name the dashboard and the alert
//! rules rely on is exported from the first scrape (with every label value known up
//! front), and `promtool check metrics` finds nothing to complain about.

mod common;

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;

/// The names of the Observability issue, fixed so dashboards and alerts can rely on them.
const NAMES: [&str; 29] = [
    "edge_agent_messages_received_total",
    "edge_agent_received_bytes_total",
    "edge_agent_messages_invalid_total",
    "edge_agent_records_filtered_total",
    "edge_agent_records_enqueued_total",
    "edge_agent_records_dropped_total",
    "edge_agent_records_synced_total",
    "edge_agent_sent_bytes_total",
    "edge_agent_sync_requests_total",
    "edge_agent_sync_duration_seconds_bucket",
    "edge_agent_queue_records",
    "edge_agent_queue_bytes",
    "edge_agent_queue_oldest_age_seconds",
    "edge_agent_queue_capacity_bytes",
    "edge_agent_upstream_up",
    "edge_agent_upstream_down_seconds_total",
    "edge_agent_mqtt_connected",
    "edge_agent_ingest_to_durable_seconds_bucket",
    "edge_agent_inferences_total",
    "edge_agent_anomalies_total",
    "edge_agent_inference_duration_seconds_bucket",
    "edge_agent_inference_errors_total",
    "edge_agent_model_loads_total",
    "edge_agent_actions_published_total",
    "edge_agent_action_latency_seconds_bucket",
    "edge_agent_queue_corruptions_total",
    "edge_agent_http_connections_rejected_total",
    "edge_agent_credential_reloads_total",
    "edge_agent_build_info",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_metric_is_exported_from_the_start_and_passes_promtool() {
    let broker = Mosquitto::start();
    let receiver = Receiver::start().await;
    let dir = tempfile::tempdir().unwrap();
    let yaml = Pipeline {
        broker_port: broker.port,
        client_id: "agent-metrics",
        receiver_port: receiver.port,
        processors: "[{range: {min: -40, max: 125}}, {deadband: {absolute: 0.5}}]",
        ..Pipeline::default()
    }
    .yaml();
    let mut agent = Agent::start(dir.path(), &yaml);
    agent.wait_ready().await;
    let (status, text) = eventually(Duration::from_secs(5), "/metrics", async || {
        agent.get("/metrics")
    })
    .await;
    assert_eq!(status, 200);
    let exported = parse_metrics(&text);
    for name in NAMES {
        assert!(
            exported
                .keys()
                .any(|series| series.starts_with(&format!("{name}{{"))),
            "{name} is not exported:\n{text}"
        );
    }
    for series in exported.keys() {
        assert!(
            series.contains("pipeline=\"factory/test\""),
            "{series} lacks the pipeline label"
        );
    }
    let zero = |s: String| assert_eq!(exported.get(&s), Some(&0.0), "{s} not pre-initialised");
    for reason in [
        "queue_full",
        "max_age",
        "dead_letter",
        "device_evicted",
        "disk_full",
    ] {
        zero(series(
            "edge_agent_records_dropped_total",
            &[("reason", reason)],
        ));
    }
    for outcome in ["success", "retry", "rejected"] {
        zero(series(
            "edge_agent_sync_requests_total",
            &[("outcome", outcome)],
        ));
    }
    for kind in ["reading", "aggregate", "anomaly"] {
        zero(series(
            "edge_agent_records_enqueued_total",
            &[("kind", kind)],
        ));
    }
    for processor in ["range", "deadband"] {
        zero(series(
            "edge_agent_records_filtered_total",
            &[("processor", processor)],
        ));
    }
    zero(series(
        "edge_agent_messages_invalid_total",
        &[("reason", "not_json")],
    ));
    assert_eq!(
        exported.get(&series("edge_agent_mqtt_connected", &[])),
        Some(&1.0)
    );

    let mut promtool = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool on PATH (apt install prometheus)");
    promtool
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = promtool.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

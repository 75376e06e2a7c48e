//! Ingest and the edges of the agent through the real binary: malformed payloads counted
//! by reason, `block` holding data at the broker, a local action on a threshold, the MQTT
//! sink, a broker that is down at start, and `edge-agent check`.

use crate::common;

use std::collections::BTreeSet;
use std::process::Command;
use std::time::Duration;

use common::*;
use serde_json::Value;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_payloads_are_counted_by_reason_and_the_valid_ones_processed() {
    let broker = Mosquitto::start();
    let receiver = Receiver::start().await;
    let (_dir, mut agent) = Pipeline {
        client_id: "agent-malformed",
        extra_source: "    maxPayloadSize: 1Ki",
        ..Pipeline::default()
    }
    .start_agent(&broker, receiver.port)
    .await;
    let padding = "x".repeat(2000);
    let invalid: Vec<(&str, String)> = vec![
        ("not_json", "hello".into()),
        ("not_json", "{broken".into()),
        ("missing_value", r#"{"device_id":"a","timestamp":1}"#.into()),
        ("not_numeric", r#"{"device_id":"a","value":"abc"}"#.into()),
        ("not_numeric", r#"{"device_id":"a","value":true}"#.into()),
        ("not_finite", r#"{"device_id":"a","value":"NaN"}"#.into()),
        (
            "too_large",
            format!(r#"{{"device_id":"a","value":1,"pad":"{padding}"}}"#),
        ),
        (
            "bad_timestamp",
            r#"{"device_id":"a","value":1,"timestamp":"yesterday"}"#.into(),
        ),
        ("missing_device", r#"{"value":1}"#.into()),
    ];
    let mut publisher = Publisher::connect(broker.port, "agent-malformed-pub");
    let mut bytes = 0;
    let mut bad = invalid.iter();
    for i in 0..20 {
        let payload = reading("a", i as f64, T0 + i);
        bytes += payload.len();
        publisher.send("sensors/a/temperature", payload).await;
        if i % 2 == 0
            && let Some((_, payload)) = bad.next()
        {
            bytes += payload.len();
            publisher
                .send("sensors/a/temperature", payload.clone())
                .await;
        }
    }
    publisher.flush().await;
    let total = 20 + invalid.len();
    agent
        .wait_metric(
            &series("edge_agent_messages_received_total", &[]),
            total as f64,
            Duration::from_secs(10),
        )
        .await;
    eventually(
        Duration::from_secs(10),
        "the 20 valid readings at the receiver",
        async || (values(&receiver.accepted()) == (0..20).collect()).then_some(()),
    )
    .await;
    for reason in [
        "not_json",
        "missing_value",
        "not_numeric",
        "not_finite",
        "too_large",
        "bad_timestamp",
        "missing_device",
    ] {
        let want = invalid.iter().filter(|(r, _)| *r == reason).count() as f64;
        let got = agent.metric(&series(
            "edge_agent_messages_invalid_total",
            &[("reason", reason)],
        ));
        assert_eq!(got, want, "invalid messages with reason {reason}");
    }
    assert_eq!(
        agent.metric(&series("edge_agent_received_bytes_total", &[])),
        bytes as f64
    );
    assert_eq!(
        agent.metric(&series(
            "edge_agent_records_enqueued_total",
            &[("kind", "reading")]
        )),
        20.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_block_a_full_queue_stops_acknowledging_and_nothing_is_dropped() {
    let broker = Mosquitto::start();
    let mut receiver = Receiver::down();
    let (_dir, mut agent) = Pipeline {
        client_id: "agent-block",
        buffer: "{maxBytes: 64Ki, whenFull: block, durability: os}",
        batch_size: 20,
        ..Pipeline::default()
    }
    .start_agent(&broker, receiver.port)
    .await;
    let device = format!("d{}", "x".repeat(120));
    let mut publisher = Publisher::connect(broker.port, "agent-block-pub");
    publish_readings(&mut publisher, &device, 0..400).await;
    agent
        .wait_metric(
            &series("edge_agent_messages_received_total", &[]),
            400.0,
            Duration::from_secs(10),
        )
        .await;
    // Received is counted before the commit: wait for the commits to fill the queue
    // (on a loaded machine they trail the last message by a moment).
    let enqueued = series("edge_agent_records_enqueued_total", &[("kind", "reading")]);
    let stored = eventually(
        Duration::from_secs(10),
        "more than 100 records committed",
        async || {
            let n = agent.metric(&enqueued);
            (n > 100.0).then_some(n)
        },
    )
    .await;
    assert!(
        stored > 100.0 && stored < 400.0,
        "{stored} records stored in 64 KiB"
    );
    assert!(agent.metric(&series("edge_agent_queue_bytes", &[])) <= 65_536.0);
    assert_eq!(
        agent.metric(&series(
            "edge_agent_records_dropped_total",
            &[("reason", "queue_full")]
        )),
        0.0
    );
    // Killed while blocked: what was not committed was not acknowledged either, so the
    // broker's session still holds it.
    agent.kill();
    receiver.resume().await;
    agent.restart();
    eventually(Duration::from_secs(20), "all 400 readings", async || {
        (values(&receiver.accepted()) == (0..400).collect()).then_some(())
    })
    .await;
    assert_eq!(
        agent.metric(&series(
            "edge_agent_records_dropped_total",
            &[("reason", "queue_full")]
        )),
        0.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_threshold_crossing_publishes_a_local_action_on_the_source_broker() {
    let broker = Mosquitto::start();
    let receiver = Receiver::start().await;
    let dir = tempfile::tempdir().unwrap();
    prepare_session(broker.port, "agent-action", &[TOPIC]).await;
    let alerts = Subscriber::connect(broker.port, "alerts-watcher", "alerts/#").await;
    let yaml = Pipeline {
        broker_port: broker.port,
        client_id: "agent-action",
        receiver_port: receiver.port,
        processors: "[{threshold: {above: 100}}]\n  actions: [{trigger: threshold, mqtt: {topic: 'alerts/{pipeline}/{device}', qos: 1}}]",
        ..Pipeline::default()
    }
    .yaml();
    let mut agent = Agent::start(dir.path(), &yaml);
    let mut publisher = Publisher::connect(broker.port, "agent-action-pub");
    publisher
        .send("sensors/t1/temperature", reading("t1", 50.0, T0))
        .await;
    publisher
        .send("sensors/t1/temperature", reading("t1", 150.5, T0 + 1))
        .await;
    publisher.flush().await;
    let messages = eventually(Duration::from_secs(10), "the alert", async || {
        let m = alerts.messages();
        (!m.is_empty()).then_some(m)
    })
    .await;
    let (topic, payload) = &messages[0];
    assert_eq!(topic, "alerts/factory/test/t1");
    let alert: Value = serde_json::from_slice(payload).unwrap();
    assert_eq!(alert["trigger"], "threshold");
    assert_eq!(alert["value"], 150.5);
    assert_eq!(alert["device"], "t1");
    assert_eq!(alert["node"], "edge-test");
    assert_eq!(alert["pipeline"], "factory/test");
    assert_eq!(alert["timestamp"], "2026-11-25T12:00:00.001Z");
    eventually(
        Duration::from_secs(10),
        "the crossing reading upstream",
        async || (values(&receiver.accepted()) == BTreeSet::from([150])).then_some(()),
    )
    .await;
    assert_eq!(messages.len(), 1, "one crossing, one action");
    assert_eq!(
        agent.metric(&series("edge_agent_actions_published_total", &[])),
        1.0
    );
    assert_eq!(
        agent.metric(&series("edge_agent_action_latency_seconds_count", &[])),
        1.0
    );
    assert_eq!(
        agent.metric(&series(
            "edge_agent_records_filtered_total",
            &[("processor", "threshold")]
        )),
        1.0
    );
}

/// A pipeline from the broker on `edge` to an MQTT sink on `cloud` publishing to `topic`
/// in batches of 7, with `sink_lines` added under `spec.sink`.
fn mqtt_sink_pipeline(
    edge: u16,
    client: &str,
    cloud: u16,
    topic: &str,
    sink_lines: &str,
) -> String {
    pipeline_yaml(
        "factory",
        "test",
        &format!(
            r#"  source:
    mqtt: {{url: "mqtt://127.0.0.1:{edge}", topics: ["{TOPIC}"], clientId: {client}}}
  sink:
{sink_lines}    mqtt: {{url: "mqtt://127.0.0.1:{cloud}", topic: "{topic}", batchSize: 7, flushInterval: 100ms}}
"#
        ),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_mqtt_sink_publishes_json_batches_upstream() {
    let edge = Mosquitto::start();
    let cloud = Mosquitto::start();
    let dir = tempfile::tempdir().unwrap();
    prepare_session(edge.port, "agent-mqtt-sink", &[TOPIC]).await;
    let upstream = Subscriber::connect(cloud.port, "cloud-ingest", "cloud/#").await;
    let yaml = mqtt_sink_pipeline(
        edge.port,
        "agent-mqtt-sink",
        cloud.port,
        "cloud/{pipeline}/{node}",
        "",
    );
    let mut agent = Agent::start(dir.path(), &yaml);
    let mut publisher = Publisher::connect(edge.port, "agent-mqtt-sink-pub");
    publish_readings(&mut publisher, "a", 0..30).await;
    let batches = eventually(Duration::from_secs(15), "30 records upstream", async || {
        let batches: Vec<(String, Vec<Value>)> = upstream
            .messages()
            .into_iter()
            .map(|(t, p)| (t, serde_json::from_slice(&p).expect("a JSON array")))
            .collect();
        let records: Vec<Value> = batches.iter().flat_map(|(_, b)| b.clone()).collect();
        (values(&records).len() == 30).then_some(batches)
    })
    .await;
    assert!(
        batches
            .iter()
            .all(|(t, b)| t == "cloud/factory/test/edge-test" && b.len() <= 7)
    );
    eventually(
        Duration::from_secs(5),
        "the queue drained after the PUBACKs",
        async || (agent.metric(&series("edge_agent_queue_records", &[])) == 0.0).then_some(()),
    )
    .await;
    assert!(agent.metric(&series("edge_agent_records_synced_total", &[])) >= 30.0);
}

/// Over MQTT there is no header: a v2 or v3 batch says what it is by its first bytes
/// (`{` and `EPv3`), and reads back into the records of v1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_mqtt_sink_publishes_compact_batches_that_name_their_format() {
    let edge = Mosquitto::start();
    let cloud = Mosquitto::start();
    let upstream = Subscriber::connect(cloud.port, "cloud-ingest-compact", "cloud/#").await;
    let mut agents = Vec::new();
    let mut dirs = Vec::new();
    for format in ["v2", "v3"] {
        let client = format!("agent-mqtt-sink-{format}");
        prepare_session(edge.port, &client, &[TOPIC]).await;
        let dir = tempfile::tempdir().unwrap();
        let yaml = mqtt_sink_pipeline(
            edge.port,
            &client,
            cloud.port,
            &format!("cloud/{format}"),
            &format!("    format: {format}\n"),
        );
        let mut agent = Agent::start(dir.path(), &yaml);
        agent.wait_ready().await;
        agents.push(agent);
        dirs.push(dir);
    }
    let mut publisher = Publisher::connect(edge.port, "agent-mqtt-compact-pub");
    for i in 0..30 {
        publisher
            .send(
                "sensors/a/temperature",
                reading("a", i as f64 / 4.0, T0 + i),
            )
            .await;
    }
    publisher.flush().await;
    let records = |format: &str| {
        let mut out: Vec<Value> = Vec::new();
        for (topic, payload) in upstream.messages() {
            if topic != format!("cloud/{format}") {
                continue;
            }
            let batch = match format {
                "v2" => {
                    assert_eq!(payload.first(), Some(&b'{'));
                    receiver::v2_to_v1(&payload)
                }
                _ => {
                    assert!(payload.starts_with(b"EPv3"));
                    receiver::v3_to_v1(&payload)
                }
            };
            out.extend(batch.expect("a batch of its format"));
        }
        out.sort_by_key(|r| r["seq"].as_u64());
        out.dedup_by_key(|r| r["seq"].as_u64());
        out
    };
    let v2 = eventually(Duration::from_secs(15), "30 records in v2", async || {
        Some(records("v2")).filter(|r| r.len() == 30)
    })
    .await;
    let v3 = eventually(Duration::from_secs(15), "30 records in v3", async || {
        Some(records("v3")).filter(|r| r.len() == 30)
    })
    .await;
    assert_eq!(v3, v2);
    let values: Vec<f64> = v3.iter().filter_map(|r| r["value"].as_f64()).collect();
    assert_eq!(values, (0..30).map(|i| i as f64 / 4.0).collect::<Vec<_>>());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_down_at_start_keeps_the_agent_live_but_not_ready_until_it_connects() {
    let broker_port = free_port();
    let receiver = Receiver::start().await;
    let dir = tempfile::tempdir().unwrap();
    let yaml = Pipeline {
        broker_port,
        client_id: "agent-late-broker",
        receiver_port: receiver.port,
        ..Pipeline::default()
    }
    .yaml();
    let mut agent = Agent::start(dir.path(), &yaml);
    let (status, body) = eventually(Duration::from_secs(10), "the health endpoint", async || {
        agent.get("/readyz")
    })
    .await;
    assert_eq!(status, 503);
    assert!(body.contains("source broker not connected"), "{body}");
    assert_eq!(agent.get("/livez").map(|r| r.0), Some(200));
    assert_eq!(agent.metric(&series("edge_agent_mqtt_connected", &[])), 0.0);

    // The broker comes up without any session for the agent: it must subscribe itself.
    let broker = Mosquitto::start_on(broker_port);
    agent.wait_ready().await;
    assert_eq!(agent.metric(&series("edge_agent_mqtt_connected", &[])), 1.0);
    eventually(Duration::from_secs(10), "the subscription", async || {
        agent.log_text().contains("subscribed").then_some(())
    })
    .await;
    let mut publisher = Publisher::connect(broker.port, "agent-late-broker-pub");
    publisher
        .send("sensors/a/temperature", reading("a", 1.0, T0))
        .await;
    publisher.flush().await;
    eventually(
        Duration::from_secs(10),
        "the reading upstream",
        async || (values(&receiver.accepted()) == BTreeSet::from([1])).then_some(()),
    )
    .await;
}

#[test]
fn check_prints_ok_or_every_problem() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.yaml");
    std::fs::write(
        &good,
        "source: {mqtt: {url: 'mqtt://127.0.0.1:1883', topics: [a/b]}}\nsink: {http: {url: 'http://127.0.0.1:1/x'}}\n",
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_edge-agent"))
        .args(["check", "--node-name", "n1", "--config"])
        .arg(&good)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "ok");

    let bad = dir.path().join("bad.yaml");
    std::fs::write(
        &bad,
        "source: {mqtt: {url: 'mqtt://127.0.0.1:1883', topics: [a/b], qos: 2}}\n\
         processors: [{significantChange: {window: 0, threshold: 1}}]\n\
         sink: {http: {url: 'http://127.0.0.1:1/x'}}\n",
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_edge-agent"))
        .args(["check", "--node-name", "n1", "--config"])
        .arg(&bad)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("qos"), "{text}");
    assert!(text.contains("window"), "{text}");
    assert!(
        text.lines().count() >= 2,
        "every problem on its own line:\n{text}"
    );
}

/// One manifest, checked in both worlds: every shipped example (cluster manifests with
/// `${HOST_IP}` and `secretKeyRef`) passes `check` with notes of what a standalone run
/// would still need; every broken manifest fails.
#[test]
fn check_passes_every_example_with_notes_and_fails_every_broken_manifest() {
    let root = workspace_root();
    let check = |path: &std::path::Path| {
        let out = Command::new(env!("CARGO_BIN_EXE_edge-agent"))
            .args(["check", "--node-name", "n1", "--config"])
            .arg(path)
            .env_remove("HOST_IP")
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    };
    let yaml_files = |dir: &str| {
        let mut files: Vec<_> = std::fs::read_dir(root.join(dir))
            .unwrap()
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
            .collect();
        files.sort();
        files
    };
    let examples = yaml_files("deploy/examples");
    assert!(examples.len() >= 3);
    let mut noted = 0;
    for example in &examples {
        let (code, text) = check(example);
        assert_eq!(code, Some(0), "{}:\n{text}", example.display());
        assert!(text.starts_with("ok"), "{}:\n{text}", example.display());
        noted += usize::from(text.contains("note: "));
    }
    assert!(
        noted > 0,
        "the cluster examples need HOST_IP or Secrets standalone"
    );
    let broken = yaml_files("tests/manifests/broken");
    assert!(!broken.is_empty());
    for manifest in &broken {
        let (code, text) = check(manifest);
        assert_eq!(
            code,
            Some(1),
            "{} passed check:\n{text}",
            manifest.display()
        );
        assert!(!text.starts_with("ok"), "{text}");
    }
}

/// Log lines people can ship: JSON objects with stable fields when asked, and text without
/// escape sequences when stderr is not a terminal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_are_json_lines_when_asked_and_never_colored_in_a_file() {
    let broker = Mosquitto::start();
    let receiver = Receiver::start().await;
    let yaml = |client_id| {
        Pipeline {
            broker_port: broker.port,
            client_id,
            receiver_port: receiver.port,
            ..Pipeline::default()
        }
        .yaml()
    };
    let json_dir = tempfile::tempdir().unwrap();
    let mut json_agent = Agent::start_with_env(
        json_dir.path(),
        &yaml("agent-json-logs"),
        &[("EDGEPIPE_LOG_FORMAT", "json")],
    );
    json_agent.wait_ready().await;
    let text_dir = tempfile::tempdir().unwrap();
    let mut text_agent = Agent::start(text_dir.path(), &yaml("agent-text-logs"));
    text_agent.wait_ready().await;

    // Readiness can come before the last line of the start-up.
    let log = json_agent
        .wait_log(r#""message":"agent running""#, Duration::from_secs(20))
        .await;
    let lines: Vec<&str> = log.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(lines.len() >= 3, "{log}");
    for line in &lines {
        let event: Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not a JSON line ({e}): {line}"));
        for field in ["timestamp", "level", "target", "message"] {
            assert!(event[field].is_string(), "{field} missing: {line}");
        }
    }
    assert!(
        lines
            .iter()
            .any(|l| l.contains(r#""message":"agent running""#)),
        "{log}"
    );
    let text = text_agent
        .wait_log("agent running", Duration::from_secs(20))
        .await;
    assert!(
        !text.contains('\u{1b}'),
        "escape sequences in a log file:\n{text}"
    );
}

/// The node's fleet record is a report, never a dependency: with the API server
/// unreachable the agent is ready, ingests and delivers every reading, and only counts
/// the failed writes (retried with backoff).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_api_server_touches_neither_ingest_nor_readiness() {
    let broker = Mosquitto::start();
    let receiver = Receiver::start().await;
    let dir = tempfile::tempdir().unwrap();
    let pki = pki::Pki::new(&dir.path().join("pki"));
    let token = dir.path().join("token");
    std::fs::write(&token, "a-token").unwrap();
    let api = format!("https://127.0.0.1:{}", free_port());
    let yaml = Pipeline {
        broker_port: broker.port,
        client_id: "agent-fleet-record",
        receiver_port: receiver.port,
        batch_size: 5,
        ..Pipeline::default()
    }
    .yaml();
    let mut agent = Agent::start_with_env(
        dir.path(),
        &yaml,
        &[
            ("NODE_NAME", "edge-1"),
            ("POD_NAMESPACE", "factory"),
            ("EDGEPIPE_FLEET_LEASE", "edgepipe-agent.test.edge-1"),
            ("EDGEPIPE_HEARTBEAT_SECONDS", "1"),
            ("EDGEPIPE_KUBE_API", &api),
            ("EDGEPIPE_KUBE_TOKEN_FILE", token.to_str().unwrap()),
            ("EDGEPIPE_KUBE_CA_FILE", &pki.path("ca.crt")),
        ],
    );
    agent.wait_ready().await;
    let failed = series("edge_agent_heartbeats_total", &[("outcome", "failed")]);
    agent
        .wait_metric(&failed, 2.0, Duration::from_secs(30))
        .await;

    let mut publisher = Publisher::connect(broker.port, "agent-fleet-record-pub");
    for i in 0..20 {
        publisher
            .send(
                "sensors/a/temperature",
                reading("a", f64::from(i), T0 + i64::from(i)),
            )
            .await;
    }
    publisher.flush().await;
    let synced = series("edge_agent_records_synced_total", &[]);
    agent
        .wait_metric(&synced, 20.0, Duration::from_secs(30))
        .await;
    assert_eq!(values(&receiver.accepted()).len(), 20);
    assert_eq!(agent.get("/readyz").map(|(code, _)| code), Some(200));
    assert_eq!(agent.get("/livez").map(|(code, _)| code), Some(200));
    let ok = series("edge_agent_heartbeats_total", &[("outcome", "ok")]);
    assert_eq!(agent.metric(&ok), 0.0);
    agent.assert_running();
}

//! The agent binary end to end with a real Mosquitto broker, a real HTTP receiver and a
//! real MQTT subscriber (issue 4, tests 2, 4, 5 and 6 at the agent level).

use crate::inference_common;

use std::collections::BTreeSet;
use std::time::Duration;

use edge_agent::pipeline::inference::Model;
use edge_agent::record::format_timestamp_ms;
use inference_common::e2e::{Agent, Mosquitto, MqttPeer, Receiver, pipeline, yaml_path};
use inference_common::*;
use serde_json::{Value, json};

const BASE_MS: i64 = 1_795_608_000_000;
const WINDOW: usize = 16;

fn anomaly_inference(model: &str, golden: Option<&str>) -> String {
    let mut s = format!(
        "    model: {{path: {}}}\n    window: 16\n    threshold: 0.8\n    normalize: {{mean: 20.0, std: 3.5}}\n    timeout: 5s\n",
        yaml_path(&fixture(model))
    );
    if let Some(g) = golden {
        s.push_str(&format!("    golden: {{file: {g}}}\n"));
    }
    s
}

fn payload(value: f64, t: usize) -> Vec<u8> {
    json!({"value": value, "timestamp": BASE_MS + t as i64 * 1000})
        .to_string()
        .into_bytes()
}

/// The device probe readings come from.
const PROBE_DEVICE: &str = "probe";

/// Publishes probe readings (each with its own timestamp, one every 500 ms) until the
/// agent has received one, so its subscription is known to be live. A probe published
/// before the agent subscribed is lost, so how many arrive is not known: tests count the
/// other devices' readings ([`not_probes`]).
async fn probe(agent: &Agent, publisher: &MqttPeer) {
    for attempt in 0..60 {
        publisher
            .publish(
                &format!("sensors/{PROBE_DEVICE}/vibration"),
                payload(20.0, attempt),
            )
            .await;
        let deadline = tokio::time::Instant::now() + Duration::from_millis(500);
        while tokio::time::Instant::now() < deadline {
            if agent
                .metric("edge_agent_messages_received_total", &[])
                .await
                >= 1.0
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    panic!("the agent never received a probe");
}

/// `records` without the probe readings.
fn not_probes(records: Vec<Value>) -> Vec<Value> {
    records
        .into_iter()
        .filter(|r| r["device"] != PROBE_DEVICE)
        .collect()
}

fn of_kind(records: &[Value], kind: &str) -> Vec<Value> {
    records
        .iter()
        .filter(|r| r["kind"] == kind)
        .cloned()
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anomalies_travel_for_every_spiked_window_and_alert_once_per_episode() {
    const DEVICES: usize = 6;
    const T: usize = 64;
    let spikes: &[(usize, usize)] = &[(1, 25), (4, 30), (4, 52)];
    let broker = Mosquitto::start();
    let receiver = Receiver::start().await;
    // The range processor drops every routine reading: only anomalies travel.
    let agent = Agent::start(&pipeline(
        broker.port,
        &receiver.url,
        &anomaly_inference(
            "anomaly_autoencoder.tflite",
            Some("anomaly_autoencoder.golden.json"),
        ),
        "[{range: {min: 1000, max: 2000}}]",
        "json",
    ))
    .await;
    let loaded = agent
        .wait_metric(
            "edge_agent_model_loads_total",
            &["outcome=\"success\""],
            |v| v >= 1.0,
        )
        .await;
    assert_eq!(loaded, 1.0);
    // The running model's digest is exported once it runs.
    let sha = sha256_hex(&fixture_bytes("anomaly_autoencoder.tflite"));
    let running = agent
        .wait_metric(
            "edge_agent_model_info",
            &[&format!("sha256=\"{sha}\"")],
            |v| v >= 1.0,
        )
        .await;
    assert_eq!(running, 1.0);
    let alerts = MqttPeer::connect("alerts-subscriber", broker.port);
    alerts.subscribe("alerts/#").await;
    let publisher = MqttPeer::connect("sensors", broker.port);
    probe(&agent, &publisher).await;

    let values: Vec<Vec<f64>> = (0..DEVICES)
        .map(|d| {
            (0..T)
                .map(|t| {
                    let spike = if spikes.contains(&(d, t)) { 21.0 } else { 0.0 };
                    normal_value(t, 0.6 + 0.2 * d as f64, d as f64 * 0.9) + spike
                })
                .collect()
        })
        .collect();
    for t in 0..T {
        for (d, series) in values.iter().enumerate() {
            publisher
                .publish(&format!("sensors/d{d}/vibration"), payload(series[t], t))
                .await;
        }
    }

    // What the reference says: every window the model scores above the threshold, which
    // are exactly the windows holding a spike.
    let model = Model::load(&fixture_bytes("anomaly_autoencoder.tflite")).unwrap();
    let mut expected = BTreeSet::new();
    for (d, series) in values.iter().enumerate() {
        for t in WINDOW - 1..T {
            let window: Vec<f32> = series[t + 1 - WINDOW..=t]
                .iter()
                .map(|v| ((v - 20.0) / 3.5) as f32)
                .collect();
            let score = model.run_single(&window).unwrap()[0];
            let spiked = spikes
                .iter()
                .any(|&(sd, st)| sd == d && st + WINDOW > t && st <= t);
            assert_eq!(score > 0.8, spiked, "device {d} t {t}: score {score}");
            if score > 0.8 {
                expected.insert((
                    format!("d{d}"),
                    format_timestamp_ms(BASE_MS + t as i64 * 1000),
                ));
            }
        }
    }
    // 16 windows hold each spike, except the last one's, which only reaches 12.
    assert_eq!(expected.len(), 16 + 16 + 12);

    let windows = (DEVICES * (T + 1 - WINDOW)) as f64;
    assert_eq!(
        agent
            .wait_metric("edge_agent_inferences_total", &[], |v| v >= windows)
            .await,
        windows
    );
    let anomalies = expected.len() as f64;
    assert_eq!(
        agent
            .wait_metric("edge_agent_anomalies_total", &[], |v| v >= anomalies)
            .await,
        anomalies
    );
    let synced = agent
        .wait_metric("edge_agent_records_synced_total", &[], |v| v >= anomalies)
        .await;
    assert_eq!(synced, anomalies);

    let records = receiver.records();
    let upstream = of_kind(&records, "anomaly");
    assert_eq!(
        upstream.len(),
        records.len(),
        "routine readings were all filtered: {records:?}"
    );
    let got: BTreeSet<(String, String)> = upstream
        .iter()
        .map(|r| {
            (
                r["device"].as_str().unwrap().to_string(),
                r["timestamp"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(got.len(), upstream.len(), "no anomaly twice");
    assert_eq!(got, expected);
    for r in &upstream {
        assert!(r["score"].as_f64().unwrap() > 0.8);
        assert_eq!(r["pipeline"], "e2e/vibration");
        let stats = r["stats"].as_object().unwrap();
        for key in ["mean", "min", "max", "last"] {
            assert!(stats.contains_key(key), "{r}");
        }
        assert_eq!(r["value"], stats["last"]);
        assert!(
            stats["max"].as_f64().unwrap() > 35.0,
            "the spike is in the window: {r}"
        );
    }

    // The local alerts: one per episode, not one per anomalous window. Each spike's run of
    // anomalous windows is one episode: `firing` at its first window, `resolved` at the
    // first clean window after it (d4's second spike is still open when the stream ends).
    // Nothing for clean devices.
    let at = |t: usize| format_timestamp_ms(BASE_MS + t as i64 * 1000);
    let expected_messages: BTreeSet<(String, String, String, Option<String>)> = [
        ("d1", "firing", at(25), None),
        ("d1", "resolved", at(25 + WINDOW), Some(at(25))),
        ("d4", "firing", at(30), None),
        ("d4", "resolved", at(30 + WINDOW), Some(at(30))),
        ("d4", "firing", at(52), None),
    ]
    .into_iter()
    .map(|(d, state, ts, since)| (d.to_string(), state.to_string(), ts, since))
    .collect();
    let n = expected_messages.len();
    assert!(eventually(Duration::from_secs(20), || alerts.messages().len() >= n).await);
    // Nothing more trickles in.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let messages = alerts.messages();
    assert_eq!(messages.len(), n, "{messages:?}");
    let mut got_messages = BTreeSet::new();
    for (topic, body) in messages {
        let body: Value = serde_json::from_slice(&body).unwrap();
        let device = body["device"].as_str().unwrap().to_string();
        assert_eq!(topic, format!("alerts/{device}"));
        assert_eq!(body["trigger"], "anomaly");
        let score = body["score"].as_f64().unwrap();
        let state = body["state"].as_str().unwrap().to_string();
        match state.as_str() {
            "firing" => assert!(score > 0.8, "{body}"),
            _ => assert!(score <= 0.8, "{body}"),
        }
        got_messages.insert((
            device,
            state,
            body["timestamp"].as_str().unwrap().to_string(),
            body["since"].as_str().map(str::to_string),
        ));
    }
    assert_eq!(got_messages, expected_messages);
    // Every anomalous window but the three that started an episode was held back.
    let held = anomalies - 3.0;
    assert_eq!(
        agent
            .metric(
                "edge_agent_actions_suppressed_total",
                &["reason=\"episode\""]
            )
            .await,
        held
    );
    assert_eq!(
        agent
            .metric("edge_agent_actions_published_total", &[])
            .await,
        n as f64
    );
    assert_eq!(
        agent
            .metric("edge_agent_action_latency_seconds_count", &[])
            .await,
        n as f64
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_models_are_counted_and_readings_keep_flowing() {
    let broker = Mosquitto::start();
    for (model, golden, outcome) in [
        ("unsupported_op.tflite", None, "unsupported_op"),
        ("panics_loader.tflite", None, "panic"),
        (
            "anomaly_autoencoder.tflite",
            Some("anomaly_autoencoder.broken_golden.json"),
            "golden_mismatch",
        ),
    ] {
        let receiver = Receiver::start().await;
        let agent = Agent::start(&pipeline(
            broker.port,
            &receiver.url,
            &anomaly_inference(model, golden),
            "[]",
            "json",
        ))
        .await;
        let label = format!("outcome=\"{outcome}\"");
        assert_eq!(
            agent
                .wait_metric("edge_agent_model_loads_total", &[&label], |v| v >= 1.0)
                .await,
            1.0,
            "{model}"
        );
        let publisher = MqttPeer::connect(&format!("sensors-{outcome}"), broker.port);
        probe(&agent, &publisher).await;
        for t in 0..20 {
            publisher
                .publish(
                    "sensors/d0/vibration",
                    payload(normal_value(t, 1.0, 0.0), t),
                )
                .await;
        }
        // Every reading still travels (no processors); the 5 full windows are skipped.
        assert!(
            eventually(Duration::from_secs(20), || not_probes(of_kind(
                &receiver.records(),
                "reading"
            ))
            .len()
                >= 20)
            .await
        );
        assert_eq!(
            not_probes(of_kind(&receiver.records(), "reading")).len(),
            20,
            "{model}"
        );
        let skipped = agent
            .wait_metric(
                "edge_agent_inference_errors_total",
                &["reason=\"no_model\""],
                |v| v >= 5.0,
            )
            .await;
        assert_eq!(skipped, 5.0, "{model}");
        assert_eq!(
            agent
                .metric("edge_agent_model_loads_total", &["outcome=\"success\""])
                .await,
            0.0
        );
        assert_eq!(agent.metric("edge_agent_inferences_total", &[]).await, 0.0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn camera_frames_are_classified_and_labelled_upstream_and_locally() {
    frames_are_classified("image_classifier", "", "images/golden.json").await;
}

/// The stock MobileNetV2 (its pooling a MEAN, its input in [-1, 1]) behind the same path:
/// every frame's record carries LiteRT's top-3, in LiteRT's order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn camera_frames_are_classified_by_the_stock_mobilenet() {
    frames_are_classified(
        "mobilenet_v2_035_96",
        "    input: {mean: [0.5], std: [0.5]}\n",
        "images_mobilenet/golden.json",
    )
    .await;
}

/// Publishes every image of `images_golden` (and one payload that is not an image) as a
/// camera frame to an agent classifying with the fixture `model`: each becomes a
/// classification record upstream and a local label action with the reference top-1 (the
/// whole top-3 order where the golden file has scores for the agent's own resize).
async fn frames_are_classified(model: &str, input: &str, images_golden: &str) {
    let broker = Mosquitto::start();
    let receiver = Receiver::start().await;
    let inference = format!(
        "    model: {{path: {}}}\n    task: classification\n    labelsFile: {model}.labels.txt\n    topK: 3\n    golden: {{file: {model}.golden.json}}\n    timeout: 10s\n{input}",
        yaml_path(&fixture(&format!("{model}.tflite")))
    );
    let agent = Agent::start(&pipeline(
        broker.port,
        &receiver.url,
        &inference,
        "[]",
        "image",
    ))
    .await;
    assert_eq!(
        agent
            .wait_metric(
                "edge_agent_model_loads_total",
                &["outcome=\"success\""],
                |v| v >= 1.0
            )
            .await,
        1.0
    );
    let labels = MqttPeer::connect("labels-subscriber", broker.port);
    labels.subscribe("labels/#").await;
    let camera = MqttPeer::connect("camera", broker.port);
    let golden: Value = serde_json::from_slice(&fixture_bytes(images_golden)).unwrap();
    let images = golden["images"].as_array().unwrap();
    for (i, image) in images.iter().enumerate() {
        let file = image["file"].as_str().unwrap();
        camera
            .publish(&format!("cameras/cam{i}/frame"), fixture_bytes(file))
            .await;
    }
    camera
        .publish("cameras/cam9/frame", b"not an image".to_vec())
        .await;
    let n = images.len();
    assert!(eventually(Duration::from_secs(30), || receiver.records().len() >= n).await);
    let records = receiver.records();
    assert_eq!(records.len(), n, "{records:?}");
    for (i, image) in images.iter().enumerate() {
        let r = records
            .iter()
            .find(|r| r["device"] == format!("cam{i}"))
            .unwrap_or_else(|| panic!("no record for cam{i}"));
        assert_eq!(r["kind"], "classification");
        let top = r["labels"].as_array().unwrap();
        assert_eq!(top.len(), 3);
        assert_eq!(top[0]["label"], image["top1"], "{}", image["file"]);
        if let Some(scores) = image["softmax_image_triangle"].as_array() {
            let names: Vec<&str> = golden["labels"]
                .as_array()
                .unwrap()
                .iter()
                .map(|l| l.as_str().unwrap())
                .collect();
            let mut order: Vec<usize> = (0..scores.len()).collect();
            order.sort_by(|a, b| {
                scores[*b]
                    .as_f64()
                    .unwrap()
                    .total_cmp(&scores[*a].as_f64().unwrap())
            });
            let want: Vec<&str> = order.iter().map(|i| names[*i]).collect();
            let got: Vec<&str> = top.iter().map(|t| t["label"].as_str().unwrap()).collect();
            assert_eq!(got, want, "{}", image["file"]);
        }
    }
    assert!(eventually(Duration::from_secs(20), || labels.messages().len() >= n).await);
    for (topic, body) in labels.messages() {
        let body: Value = serde_json::from_slice(&body).unwrap();
        let i: usize = topic.trim_start_matches("labels/cam").parse().unwrap();
        assert_eq!(body["trigger"], "classification");
        assert_eq!(body["label"], images[i]["top1"]);
    }
    assert_eq!(
        agent
            .wait_metric(
                "edge_agent_inference_errors_total",
                &["reason=\"invalid_image\""],
                |v| v >= 1.0
            )
            .await,
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_swaps_its_model_while_readings_flow_without_losing_one() {
    let broker = Mosquitto::start();
    let receiver = Receiver::start().await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("anomaly.tflite");
    std::fs::write(&path, fixture_bytes("anomaly_autoencoder.tflite")).unwrap();
    let inference = format!(
        "    model: {{path: {}}}\n    window: 16\n    normalize: {{mean: 20.0, std: 3.5}}\n    timeout: 5s\n",
        yaml_path(&path)
    );
    let agent = Agent::start(&pipeline(
        broker.port,
        &receiver.url,
        &inference,
        "[]",
        "json",
    ))
    .await;
    let success = "outcome=\"success\"";
    assert_eq!(
        agent
            .wait_metric("edge_agent_model_loads_total", &[success], |v| v >= 1.0)
            .await,
        1.0
    );
    let publisher = MqttPeer::connect("sensors-swap", broker.port);
    probe(&agent, &publisher).await;

    // Readings flow at a sensor's pace (2 devices, one reading each every 10 ms) while the
    // model file is replaced, then replaced again by a model that cannot load.
    let mut t = 0;
    let mut pace = tokio::time::interval(Duration::from_millis(10));
    let mut send_round = async |t: usize| {
        pace.tick().await;
        for d in 0..2 {
            publisher
                .publish(
                    &format!("sensors/d{d}/vibration"),
                    payload(normal_value(t, 1.0, d as f64), t),
                )
                .await;
        }
    };
    while t < 30 {
        send_round(t).await;
        t += 1;
    }
    let tmp = dir.path().join("anomaly.tflite.new");
    std::fs::write(&tmp, fixture_bytes("anomaly_conv1d.tflite")).unwrap();
    std::fs::rename(&tmp, &path).unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while agent
        .metric("edge_agent_model_loads_total", &[success])
        .await
        < 2.0
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the model was not swapped"
        );
        send_round(t).await;
        t += 1;
    }
    std::fs::write(&tmp, fixture_bytes("unsupported_op.tflite")).unwrap();
    std::fs::rename(&tmp, &path).unwrap();
    while agent
        .metric(
            "edge_agent_model_loads_total",
            &["outcome=\"unsupported_op\""],
        )
        .await
        < 1.0
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the broken model was not noticed"
        );
        send_round(t).await;
        t += 1;
    }
    for _ in 0..20 {
        send_round(t).await;
        t += 1;
    }

    // Every reading reached the receiver exactly once, and every full window was scored
    // exactly once (by the old model, then the new one, which kept running).
    let readings = 2 * t;
    assert!(
        eventually(Duration::from_secs(30), || not_probes(of_kind(
            &receiver.records(),
            "reading"
        ))
        .len()
            >= readings)
        .await
    );
    let records = not_probes(of_kind(&receiver.records(), "reading"));
    let keys: BTreeSet<(String, String)> = records
        .iter()
        .map(|r| {
            (
                r["device"].as_str().unwrap().to_string(),
                r["timestamp"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(records.len(), readings);
    assert_eq!(keys.len(), readings, "no reading twice");
    let windows = (2 * (t + 1 - WINDOW)) as f64;
    assert_eq!(
        agent
            .wait_metric("edge_agent_inferences_total", &[], |v| v >= windows)
            .await,
        windows
    );
    assert_eq!(
        agent.metric("edge_agent_inference_errors_total", &[]).await,
        0.0
    );
    assert_eq!(
        agent
            .metric("edge_agent_model_loads_total", &[success])
            .await,
        2.0
    );
    assert_eq!(
        agent.metric("edge_agent_anomalies_total", &[]).await,
        0.0,
        "normal signals"
    );
}

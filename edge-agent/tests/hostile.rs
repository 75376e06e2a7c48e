//! Hostile input against the real binary: what a single sensor, or anyone on the plant
//! network, can send must not break the source session, reach a topic of its choosing,
//! wedge ingest or take the agent over its pod's memory limit (256Mi in the chart).
//!
//! Each test reproduces a finding of the security review and proves it fixed: device ids
//! with control characters and 65 KB ids, a 17 MiB message followed by good readings,
//! 1,500 long device ids plus more devices than `maxDevices`, a PNG decompression bomb
//! sent to an image pipeline, and a flood of 1 MiB messages faster than ingest.

use crate::common;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use common::*;

/// The agent pod's memory limit in the chart.
const POD_LIMIT_BYTES: u64 = 256 * 1024 * 1024;

fn json_reading(device: &str, value: f64, timestamp_ms: i64) -> String {
    serde_json::json!({"device_id": device, "value": value, "timestamp": timestamp_ms}).to_string()
}

/// Counts how often the agent's `/readyz` answered anything but 200 until stopped.
struct ReadinessWatch {
    stop: Arc<AtomicBool>,
    not_ready: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<u64>,
}

impl ReadinessWatch {
    fn start(port: u16) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let not_ready = Arc::new(AtomicU64::new(0));
        let (s, n) = (stop.clone(), not_ready.clone());
        let task = tokio::task::spawn_blocking(move || {
            let mut samples = 0;
            while !s.load(Ordering::Relaxed) {
                if !matches!(http_get(port, "/readyz"), Some((200, _))) {
                    n.fetch_add(1, Ordering::Relaxed);
                }
                samples += 1;
                std::thread::sleep(Duration::from_millis(10));
            }
            samples
        });
        Self {
            stop,
            not_ready,
            task,
        }
    }

    /// (samples taken, samples not ready).
    async fn finish(self) -> (u64, u64) {
        self.stop.store(true, Ordering::Relaxed);
        let samples = self.task.await.expect("readiness watch");
        (samples, self.not_ready.load(Ordering::Relaxed))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_device_ids_are_counted_and_never_reach_a_topic_or_the_source_session() {
    let broker = Mosquitto::start();
    let receiver = Receiver::start().await;
    let dir = tempfile::tempdir().unwrap();
    prepare_session(broker.port, "agent-ids", &[TOPIC]).await;
    let everything = Subscriber::connect(broker.port, "watch-all", "#").await;
    let yaml = Pipeline {
        broker_port: broker.port,
        client_id: "agent-ids",
        receiver_port: receiver.port,
        processors: "[{threshold: {above: 100}}]\n  actions: [{trigger: threshold, mqtt: {topic: 'alerts/{device}', qos: 1}}]",
        extra_source: "    maxPayloadSize: 256Ki",
        ..Pipeline::default()
    }
    .yaml();
    let mut agent = Agent::start(dir.path(), &yaml);
    agent.wait_ready().await;

    let padded_path = format!("{}plc/valve1/cmd", "A".repeat(65_536 - "alerts/".len()));
    let hostile: Vec<String> = vec![
        "t\u{7}x".into(),
        "\u{0}".into(),
        "a\u{1b}[2J".into(),
        "x".repeat(65_536),
        padded_path,
        "plc/valve1/cmd".into(),
        "wild#".into(),
        "wild+".into(),
        "two words".into(),
        "\u{202e}evil".into(),
        "d".repeat(129),
    ];
    let mut publisher = Publisher::connect(broker.port, "agent-ids-pub");
    for (i, id) in hostile.iter().enumerate() {
        publisher
            .send(
                "sensors/t1/temperature",
                json_reading("t1", 150.0 + i as f64, T0 + i as i64),
            )
            .await;
        publisher
            .send("sensors/t1/temperature", json_reading(id, 150.0, T0))
            .await;
    }
    publisher.flush().await;
    let total = 2 * hostile.len();
    agent
        .wait_metric(
            &series("edge_agent_messages_received_total", &[]),
            total as f64,
            Duration::from_secs(20),
        )
        .await;
    let good: BTreeSet<i64> = (0..hostile.len() as i64).map(|i| 150 + i).collect();
    eventually(
        Duration::from_secs(20),
        "the good readings upstream",
        async || (values(&receiver.accepted()) == good).then_some(()),
    )
    .await;
    // t1 stays above the limit: one alert episode, the other good readings held back in it.
    eventually(
        Duration::from_secs(20),
        "t1's alert, and the rest of its episode held back",
        async || {
            let alerts = everything
                .messages()
                .iter()
                .filter(|(t, _)| t.starts_with("alerts/"))
                .count();
            let held = agent.metric(&series(
                "edge_agent_actions_suppressed_total",
                &[("reason", "episode")],
            ));
            (alerts == 1 && held == (hostile.len() - 1) as f64).then_some(())
        },
    )
    .await;

    assert_eq!(
        agent.metric(&series("edge_agent_messages_received_total", &[])),
        total as f64,
        "no message redelivered: the source session never broke"
    );
    assert_eq!(
        agent.metric(&series(
            "edge_agent_messages_invalid_total",
            &[("reason", "bad_device")]
        )),
        hostile.len() as f64
    );
    assert_eq!(receiver.accepted().len(), hostile.len(), "nothing twice");
    let topics: BTreeSet<String> = everything.messages().into_iter().map(|(t, _)| t).collect();
    assert_eq!(
        topics,
        BTreeSet::from([
            "alerts/t1".to_string(),
            "sensors/t1/temperature".to_string()
        ]),
        "no topic of a sender's choosing"
    );
    assert_eq!(
        agent
            .log_text()
            .matches("connected to the source broker")
            .count(),
        1,
        "one source connection for the whole test:\n{}",
        agent.log_text()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_17_mib_message_is_skipped_and_everything_behind_it_delivered() {
    let broker = Mosquitto::start();
    let receiver = Receiver::start().await;
    let (_dir, mut agent) = Pipeline {
        client_id: "agent-huge",
        ..Pipeline::default()
    }
    .start_agent(&broker, receiver.port)
    .await;
    agent.wait_ready().await;
    let readiness = ReadinessWatch::start(agent.metrics_port);

    let mut publisher = Publisher::connect(broker.port, "agent-huge-pub");
    for i in 0..10 {
        publisher
            .send(
                "sensors/t1/temperature",
                json_reading("t1", i as f64, T0 + i),
            )
            .await;
    }
    let huge = format!(
        r#"{{"device_id":"t1","value":1,"pad":"{}"}}"#,
        "x".repeat(17 << 20)
    );
    publisher.send("sensors/t1/temperature", huge).await;
    for i in 10..20 {
        publisher
            .send(
                "sensors/t1/temperature",
                json_reading("t1", i as f64, T0 + i),
            )
            .await;
    }
    publisher.flush().await;
    let all: BTreeSet<i64> = (0..20).collect();
    eventually(
        Duration::from_secs(30),
        "every good reading upstream",
        async || (values(&receiver.accepted()) == all).then_some(()),
    )
    .await;
    let (samples, not_ready) = readiness.finish().await;
    assert!(samples > 0);
    assert_eq!(
        not_ready, 0,
        "not ready in {not_ready} of {samples} samples"
    );
    assert_eq!(
        agent.metric(&series(
            "edge_agent_messages_invalid_total",
            &[("reason", "too_large")]
        )),
        1.0
    );

    // The session no longer holds it: a restarted agent reads only what is new.
    agent.terminate();
    agent.restart();
    agent.wait_ready().await;
    publisher
        .send("sensors/t1/temperature", json_reading("t1", 20.0, T0 + 20))
        .await;
    publisher.flush().await;
    eventually(
        Duration::from_secs(20),
        "the reading after restart",
        async || values(&receiver.accepted()).contains(&20).then_some(()),
    )
    .await;
    assert_eq!(
        agent.metric(&series("edge_agent_messages_received_total", &[])),
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_device_ids_and_too_many_devices_keep_the_agent_under_its_pod_limit() {
    let broker = Mosquitto::start();
    let receiver = Receiver::start().await;
    let (_dir, mut agent) = Pipeline {
        client_id: "agent-memory",
        processors: "[{deadband: {absolute: 0.5}}, {aggregate: {window: 1h, functions: [mean, count, last]}}]",
        extra_source: "    maxPayloadSize: 256Ki\n    maxDevices: 10000",
        batch_size: 1000,
        ..Pipeline::default()
    }
    .start_agent(&broker, receiver.port)
    .await;
    agent.wait_ready().await;
    let mut publisher = Publisher::connect(broker.port, "agent-memory-pub");
    let long = 1_500;
    for i in 0..long {
        let id = format!("{i:05}{}", "x".repeat(65_000));
        publisher
            .send("sensors/d/temperature", json_reading(&id, 1.0, T0))
            .await;
        if i % 100 == 99 {
            publisher.flush().await;
        }
    }
    // More devices than maxDevices, each with the longest id allowed.
    let many = 12_000;
    for i in 0..many {
        let id = format!("{i:06}{}", "d".repeat(122));
        publisher
            .send("sensors/d/temperature", json_reading(&id, 1.0, T0))
            .await;
        if i % 500 == 499 {
            publisher.flush().await;
        }
    }
    publisher.flush().await;
    agent
        .wait_metric(
            &series("edge_agent_messages_received_total", &[]),
            f64::from(long + many),
            Duration::from_secs(120),
        )
        .await;
    assert_eq!(
        agent.metric(&series(
            "edge_agent_messages_invalid_total",
            &[("reason", "bad_device")]
        )),
        f64::from(long)
    );
    let peak = agent.peak_rss_bytes();
    println!(
        "peak RSS {:.1} MiB after {long} 65 KB ids and {many} devices",
        peak as f64 / 1048576.0
    );
    assert!(
        peak < POD_LIMIT_BYTES,
        "peak RSS {peak} bytes is over the pod limit"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_png_bomb_is_refused_within_the_pod_limit_and_the_next_frame_classified() {
    let models = workspace_root().join("tests/models");
    let broker = Mosquitto::start();
    let receiver = Receiver::start().await;
    let dir = tempfile::tempdir().unwrap();
    prepare_session(broker.port, "agent-bomb", &["cameras/+/frame"]).await;
    let yaml = pipeline_yaml(
        "factory",
        "test",
        &format!(
            r#"  source:
    mqtt:
      url: mqtt://127.0.0.1:{broker}
      topics: ["cameras/+/frame"]
      clientId: agent-bomb
    format: {{device: "topic[1]", encoding: image}}
    maxPayloadSize: 1Mi
  inference:
    model: {{path: {model}}}
    task: classification
    labelsFile: image_classifier.labels.txt
    timeout: 10s
  sink:
    http: {{url: "http://127.0.0.1:{receiver}/ingest", batchSize: 10, flushInterval: 100ms}}
"#,
            broker = broker.port,
            model = models.join("image_classifier.tflite").display(),
            receiver = receiver.port,
        ),
    );
    let mut agent = Agent::start(dir.path(), &yaml);
    agent.wait_ready().await;
    agent
        .wait_metric(
            "edge_agent_model_loads_total{outcome=\"success\",pipeline=\"factory/test\"}",
            1.0,
            Duration::from_secs(30),
        )
        .await;
    let bomb = std::fs::read(models.join("hostile/png-bomb.png")).expect("png-bomb.png");
    let frame = std::fs::read(models.join("images/circle_0.png")).expect("circle_0.png");
    let mut publisher = Publisher::connect(broker.port, "agent-bomb-pub");
    for _ in 0..3 {
        publisher.send("cameras/cam1/frame", bomb.clone()).await;
    }
    publisher.send("cameras/cam1/frame", frame).await;
    publisher.flush().await;
    eventually(
        Duration::from_secs(30),
        "the good frame classified",
        async || (!receiver.accepted().is_empty()).then_some(()),
    )
    .await;
    assert_eq!(receiver.accepted().len(), 1);
    assert_eq!(
        agent.metric(
            "edge_agent_inference_errors_total{pipeline=\"factory/test\",reason=\"invalid_image\"}"
        ),
        3.0
    );
    let peak = agent.peak_rss_bytes();
    println!(
        "peak RSS {:.1} MiB after 3 PNG bombs",
        peak as f64 / 1048576.0
    );
    assert!(
        peak < POD_LIMIT_BYTES / 2,
        "peak RSS {peak} bytes: the bomb was decoded"
    );
}

/// 400 messages of 1 MiB each, published at once, arrive far faster than the agent parses
/// them, and the broker does not hold them back (Mosquitto sent more than its in-flight
/// window). What the source has read and ingest has not taken in stays within its budget
/// (16 MiB): the agent reads no more until ingest catches up, instead of holding the
/// whole burst (400 MiB, over the pod's limit). Every reading arrives, on one connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_large_messages_is_read_no_faster_than_ingest_takes_it_in() {
    let broker = Mosquitto::start();
    let receiver = Receiver::start().await;
    let (_dir, mut agent) = Pipeline {
        client_id: "agent-flood",
        extra_source: "    maxPayloadSize: 2Mi",
        batch_size: 100,
        ..Pipeline::default()
    }
    .start_agent(&broker, receiver.port)
    .await;
    agent.wait_ready().await;
    let at_ready = agent.memory();
    let n = 400;
    let pad = "x".repeat(1 << 20);
    let mut publisher = Publisher::connect(broker.port, "agent-flood-pub");
    for i in 0..n {
        let payload = serde_json::json!({
            "device_id": "flood",
            "value": f64::from(i),
            "timestamp": T0 + i64::from(i),
            "pad": pad,
        });
        publisher
            .send("sensors/flood/temperature", payload.to_string())
            .await;
        if i % 20 == 19 {
            publisher.flush().await;
        }
    }
    publisher.flush().await;
    eventually(
        Duration::from_secs(300),
        "every reading of the flood",
        async || (values(&receiver.accepted()).len() >= n as usize).then_some(()),
    )
    .await;
    let after = agent.memory();
    println!("a flood of {n} messages of 1 MiB: at ready {at_ready}; after {after}");
    assert_eq!(
        values(&receiver.accepted()),
        (0..n).map(i64::from).collect::<BTreeSet<_>>(),
        "every reading"
    );
    assert_eq!(
        agent.metric(&series("edge_agent_mqtt_connections_total", &[])),
        1.0,
        "the source reconnected under the flood"
    );
    assert!(
        after.peak < POD_LIMIT_BYTES / 2,
        "peak RSS {} bytes under a flood of {n} MiB",
        after.peak
    );
}

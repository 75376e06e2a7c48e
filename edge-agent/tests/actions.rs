//! Alert episodes through the real binary and a real Mosquitto: a `threshold` action
//! publishes once per episode (hysteresis holds an episode open while the value wavers
//! just inside the limit), says when the episode is resolved, and keeps quiet during its
//! cooldown.

use crate::common;

use std::time::{Duration, Instant};

use common::*;
use edge_agent::record::format_timestamp_ms;
use serde_json::Value;

const TOPIC: &str = "sensors/+/temperature";
const T0: i64 = 1_795_608_000_000;

/// The alerts (topic, JSON body) once `n` have arrived.
async fn alerts(subscriber: &Subscriber, n: usize) -> Vec<(String, Value)> {
    let messages = eventually(Duration::from_secs(15), "the alerts", async || {
        let m = subscriber.messages();
        (m.len() >= n).then_some(m)
    })
    .await;
    messages
        .into_iter()
        .map(|(topic, body)| (topic, serde_json::from_slice(&body).expect("JSON alert")))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_threshold_episode_alerts_once_holds_through_the_hysteresis_and_resolves() {
    let broker = Mosquitto::start();
    let receiver = Receiver::start().await;
    let dir = tempfile::tempdir().unwrap();
    prepare_session(broker.port, "agent-episodes", &[TOPIC]).await;
    let watcher = Subscriber::connect(broker.port, "episodes-watcher", "alerts/#").await;
    let yaml = Pipeline {
        broker_port: broker.port,
        client_id: "agent-episodes",
        receiver_port: receiver.port,
        processors: "[{threshold: {above: 100}}]\n  actions:\n    - trigger: threshold\n      mqtt: {topic: 'alerts/{device}', qos: 1}\n      hysteresis: 5\n      resolved: {topic: 'alerts/{device}/resolved'}",
        ..Pipeline::default()
    }
    .yaml();
    let mut agent = Agent::start(dir.path(), &yaml);
    let mut publisher = Publisher::connect(broker.port, "episodes-pub");
    // t1 crosses, wavers inside the 5-wide band (99, 96: the episode holds; 102 is part
    // of it), clears at 95, then crosses again. t2 crosses last and stays up.
    let t1 = [50.0, 101.0, 99.0, 102.0, 96.0, 95.0, 94.0, 103.0];
    for (i, v) in t1.iter().enumerate() {
        publisher
            .send("sensors/t1/temperature", reading("t1", *v, T0 + i as i64))
            .await;
    }
    publisher
        .send("sensors/t2/temperature", reading("t2", 120.0, T0 + 100))
        .await;
    publisher.flush().await;

    // One connection publishes them all, in order: once t2's alert is in, so is the rest.
    let got = alerts(&watcher, 4).await;
    let summary: Vec<(String, String, f64, Option<String>)> = got
        .iter()
        .map(|(topic, body)| {
            (
                topic.clone(),
                body["state"].as_str().unwrap_or_default().to_string(),
                body["value"].as_f64().unwrap_or(f64::NAN),
                body["since"].as_str().map(str::to_string),
            )
        })
        .collect();
    let since = Some(format_timestamp_ms(T0 + 1));
    assert_eq!(
        summary,
        [
            ("alerts/t1".into(), "firing".into(), 101.0, None),
            ("alerts/t1/resolved".into(), "resolved".into(), 95.0, since),
            ("alerts/t1".into(), "firing".into(), 103.0, None),
            ("alerts/t2".into(), "firing".into(), 120.0, None),
        ]
    );
    for (_, body) in &got {
        assert_eq!(body["trigger"], "threshold");
        assert_eq!(body["pipeline"], "factory/test");
    }
    assert_eq!(
        agent.metric(&series(
            "edge_agent_actions_suppressed_total",
            &[("reason", "episode")]
        )),
        1.0,
        "102 fired inside t1's open episode"
    );
    assert_eq!(
        agent.metric(&series("edge_agent_actions_published_total", &[])),
        4.0
    );
    assert_eq!(
        agent.metric(&series("edge_agent_action_latency_seconds_count", &[])),
        4.0
    );
    // Every reading above the limit still goes upstream; only the local alerts debounce.
    eventually(
        Duration::from_secs(10),
        "the crossing readings upstream",
        async || {
            (values(&receiver.accepted()) == [101, 102, 103, 120].into_iter().collect())
                .then_some(())
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cooldown_holds_back_a_new_episode_of_the_same_device_until_it_is_over() {
    const COOLDOWN: Duration = Duration::from_secs(2);
    let broker = Mosquitto::start();
    let receiver = Receiver::start().await;
    let dir = tempfile::tempdir().unwrap();
    prepare_session(broker.port, "agent-cooldown", &[TOPIC]).await;
    let watcher = Subscriber::connect(broker.port, "cooldown-watcher", "alerts/#").await;
    let yaml = Pipeline {
        broker_port: broker.port,
        client_id: "agent-cooldown",
        receiver_port: receiver.port,
        processors: "[{threshold: {above: 100}}]\n  actions:\n    - trigger: threshold\n      mqtt: {topic: 'alerts/{device}', qos: 1}\n      cooldown: 2s",
        ..Pipeline::default()
    }
    .yaml();
    let mut agent = Agent::start(dir.path(), &yaml);
    let mut publisher = Publisher::connect(broker.port, "cooldown-pub");
    let started = Instant::now();
    // An episode, its end, and a new crossing within the cooldown.
    for (i, v) in [101.0, 50.0, 102.0].iter().enumerate() {
        publisher
            .send("sensors/t1/temperature", reading("t1", *v, T0 + i as i64))
            .await;
    }
    publisher.flush().await;
    let first = alerts(&watcher, 1).await;
    assert_eq!(first[0].1["value"], 101.0);
    let suppressed = series(
        "edge_agent_actions_suppressed_total",
        &[("reason", "cooldown")],
    );
    eventually(
        Duration::from_secs(10),
        "the suppressed crossing",
        async || (agent.metric(&suppressed) == 1.0).then_some(()),
    )
    .await;
    assert_eq!(watcher.messages().len(), 1, "102 came within the cooldown");

    // Still above the limit once the cooldown is over: the next reading alerts.
    let over = started + COOLDOWN + Duration::from_millis(200);
    tokio::time::sleep(over.saturating_duration_since(Instant::now())).await;
    publisher
        .send("sensors/t1/temperature", reading("t1", 104.0, T0 + 3))
        .await;
    publisher.flush().await;
    let all = alerts(&watcher, 2).await;
    assert_eq!(all.len(), 2);
    assert_eq!(all[1].1["value"], 104.0);
    assert_eq!(all[1].1["state"], "firing");
    assert_eq!(agent.metric(&suppressed), 1.0);
}

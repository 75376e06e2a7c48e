//! B7 local action latency: a reading crossing a `threshold` processor -> the agent's
//! alert on the local broker, timed by one subscriber from the sensor's publish to the
//! alert's receipt; baseline: the same subscriber receiving the sensor message itself
//! (the broker round trip). Also reports `edge_agent_action_latency_seconds`.
//!
//! An action alerts once per episode of a device, so every measured reading comes from a
//! device of its own: each one starts an episode and alerts.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use edge_testkit::metrics::quantile;
use rumqttc::QoS;

use crate::util::{self, BenchResult, percentile};

/// Messages measured.
const MESSAGES: usize = 2_000;
/// Publish rate, msg/s.
const RATE: f64 = 500.0;
/// Values at or above this carry a message index (`value - BASE`).
const BASE: f64 = 1_000.0;

#[derive(Default)]
struct Times {
    sent: Vec<Option<Instant>>,
    sensor: Vec<Option<Instant>>,
    alert: Vec<Option<Instant>>,
    warm_sensor: bool,
    warm_alert: bool,
}

fn record(times: &Mutex<Times>, topic: &str, payload: &[u8], at: Instant) {
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(payload) else {
        return;
    };
    let Some(value) = v["value"].as_f64() else {
        return;
    };
    let Ok(mut t) = times.lock() else { return };
    let alert = topic.starts_with("alerts/");
    if value < BASE {
        if alert {
            t.warm_alert = true;
        } else {
            t.warm_sensor = true;
        }
        return;
    }
    let i = (value - BASE) as usize;
    let slot = if alert { &mut t.alert } else { &mut t.sensor };
    if let Some(s) = slot.get_mut(i) {
        s.get_or_insert(at);
    }
}

fn latencies(sent: &[Option<Instant>], got: &[Option<Instant>]) -> Vec<f64> {
    let mut v: Vec<f64> = sent
        .iter()
        .zip(got)
        .filter_map(|(s, g)| Some(g.as_ref()?.duration_since(*s.as_ref()?).as_secs_f64()))
        .collect();
    v.sort_by(f64::total_cmp);
    v
}

pub async fn b7(dir: &Path) -> BenchResult<Vec<String>> {
    // Without TCP_NODELAY on the broker's sockets, Nagle's algorithm holds each reading
    // to the agent until the agent's TCP ACK for the previous one, which rides on its
    // PUBACK, sent only after the group commit: the commit's time lands on the alert path.
    let broker = util::broker("set_tcp_nodelay true\n");
    let port = broker.port;
    let extra = "  processors:\n    - threshold: {above: 100}\n  actions:\n    - trigger: threshold\n      mqtt: {topic: \"alerts/{device}\"}\n";
    let sink = format!("http://127.0.0.1:{}/ingest", edge_testkit::free_port());
    let mut agent = util::agent(dir, &util::pipeline(port, extra, "fsync", &sink, false)).await;

    let times = Arc::new(Mutex::new(Times {
        sent: vec![None; MESSAGES],
        sensor: vec![None; MESSAGES],
        alert: vec![None; MESSAGES],
        ..Times::default()
    }));
    let t = times.clone();
    let sub = util::client(port, "bench-b7-sub", move |topic, payload, at| {
        record(&t, topic, payload, at);
    })
    .await;
    for filter in ["alerts/#", "sensors/+/temperature"] {
        sub.client
            .subscribe(filter, QoS::AtMostOnce)
            .await
            .map_err(|e| e.to_string())?;
    }
    let publisher = util::client(port, "bench-b7-pub", |_, _, _| {}).await;

    // Warm up until both paths deliver: the subscriptions are in place. A new device
    // each time, so each warm-up reading starts an episode.
    let end = Instant::now() + Duration::from_secs(15);
    for attempt in MESSAGES.. {
        let warm = times
            .lock()
            .map(|t| t.warm_alert && t.warm_sensor)
            .unwrap_or(false);
        if warm {
            break;
        }
        if Instant::now() > end {
            return Err("no alert for the warm-up readings".into());
        }
        publisher
            .client
            .publish(
                format!("sensors/d{attempt}/temperature"),
                QoS::AtLeastOnce,
                false,
                util::payload(attempt, 500.0),
            )
            .await
            .map_err(|e| e.to_string())?;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let start = Instant::now();
    for i in 0..MESSAGES {
        let due = start + Duration::from_secs_f64(i as f64 / RATE);
        tokio::time::sleep_until(due.into()).await;
        let payload = util::payload(i, BASE + i as f64);
        if let Ok(mut t) = times.lock()
            && let Some(s) = t.sent.get_mut(i)
        {
            *s = Some(Instant::now());
        }
        publisher
            .client
            .publish(
                format!("sensors/d{i}/temperature"),
                QoS::AtLeastOnce,
                false,
                payload,
            )
            .await
            .map_err(|e| e.to_string())?;
    }
    let end = Instant::now() + Duration::from_secs(15);
    loop {
        let missing = times
            .lock()
            .map(|t| t.alert.iter().filter(|a| a.is_none()).count())
            .unwrap_or(MESSAGES);
        if missing == 0 || Instant::now() > end {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let (alert, sensor) = {
        let t = times.lock().map_err(|e| e.to_string())?;
        (latencies(&t.sent, &t.alert), latencies(&t.sent, &t.sensor))
    };
    let text = agent.metrics();
    let h = "edge_agent_action_latency_seconds";
    let (m50, m99) = (
        quantile(&text, h, 0.5).unwrap_or(f64::NAN),
        quantile(&text, h, 0.99).unwrap_or(f64::NAN),
    );
    let (a50, a99) = (percentile(&alert, 0.5), percentile(&alert, 0.99));
    let (s50, s99) = (percentile(&sensor, 0.5), percentile(&sensor, 0.99));
    Ok(vec![format!(
        "| B7 local action (threshold -> alerts/{{device}}), {MESSAGES} readings at {RATE:.0}/s | publish->alert p50 {:.2} ms, p99 {:.2} ms ({} of {MESSAGES} alerts); agent's edge_agent_action_latency_seconds p50 {:.3} ms, p99 {:.3} ms | broker round trip publish->subscriber p50 {:.2} ms, p99 {:.2} ms | p99 {:.2}x (p50 {:.2}x) | p99 < 10 ms {} |",
        a50 * 1e3,
        a99 * 1e3,
        alert.len(),
        m50 * 1e3,
        m99 * 1e3,
        s50 * 1e3,
        s99 * 1e3,
        a99 / s99,
        a50 / s50,
        if a99 < 0.010 && alert.len() == MESSAGES {
            "met"
        } else {
            "**missed**"
        },
    )])
}

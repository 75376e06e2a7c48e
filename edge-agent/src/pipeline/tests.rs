//! A batch of readings yields the records the same readings yield one at a time (scores
//! equal to float rounding), with one model call for the whole batch.

use std::time::Duration;

use super::*;
use crate::record::{Record, RecordKind};

const DEVICES: usize = 3;
/// 3 x (36 - 15) = 63 full windows: within one model call (the engine's `max_batch` is 64,
/// the ingest loop's batches are at most 64 messages).
const STEPS: usize = 36;
/// The readings that carry a spike the fixture autoencoder scores as an anomaly.
const SPIKES: &[(usize, usize)] = &[(0, 20), (2, 33)];

fn config() -> AgentConfig {
    let model =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/models/anomaly_autoencoder.tflite");
    let text = format!(
        r#"
source:
  mqtt: {{url: "mqtt://127.0.0.1:1883", topics: ["sensors/+/vibration"]}}
  format: {{value: value, device: device_id}}
inference:
  model: {{path: {model:?}}}
  window: 16
  threshold: 0.8
  normalize: {{mean: 20.0, std: 3.5}}
  timeout: 10s
processors:
  - deadband: {{absolute: 2.0}}
  - threshold: {{above: 24}}
sink:
  http: {{url: "http://127.0.0.1:9/ingest"}}
"#,
        model = model.display().to_string()
    );
    AgentConfig::from_text(&text, "edge-1", &|_| None).expect("config")
}

async fn pipeline() -> (Pipeline, Arc<Metrics>) {
    let config = config();
    let metrics = Arc::new(super::metrics_for(&config).expect("metrics"));
    let processors =
        Processors::new(&config.spec.processors, config.source.max_devices).expect("processors");
    let dir = std::env::temp_dir();
    let pipeline = Pipeline::new(&config, processors, &dir, metrics.clone()).expect("pipeline");
    let loaded = pipeline
        .inference()
        .expect("inference")
        .inference()
        .wait_for_generation(1, Duration::from_secs(30))
        .await;
    assert!(loaded, "the fixture model did not load");
    (pipeline, metrics)
}

/// Interleaved devices, a sine like the training data, with spikes.
fn readings() -> Vec<Reading> {
    (0..STEPS)
        .flat_map(|t| (0..DEVICES).map(move |d| (d, t)))
        .map(|(d, t)| {
            let phase = 2.0 * std::f64::consts::PI * (0.6 + 0.2 * d as f64) * t as f64 / 16.0;
            let spike = if SPIKES.contains(&(d, t)) { 21.0 } else { 0.0 };
            Reading {
                device: format!("d{d}"),
                topic: format!("sensors/d{d}/vibration"),
                value: 20.0 + 5.0 * (phase + d as f64 * 0.9).sin() + spike,
                timestamp_ms: 1_000 * t as i64,
                received_ms: 1_000 * t as i64,
            }
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_gives_the_records_of_one_at_a_time_in_one_model_call() {
    let readings = readings();
    let received = vec![Instant::now(); readings.len()];

    let (mut single, single_metrics) = pipeline().await;
    let mut one_by_one = Vec::new();
    for (r, at) in readings.iter().zip(&received) {
        let mut unit = single
            .on_readings(std::slice::from_ref(r), std::slice::from_ref(at))
            .await
            .0;
        assert_eq!(unit.len(), 1);
        one_by_one.push(unit.remove(0));
    }

    let (mut batched, batched_metrics) = pipeline().await;
    let batch = batched.on_readings(&readings, &received).await.0;
    // Each reading's unit carries the same state changes either way.
    let states = |units: &[UnitContent]| -> Vec<Vec<StateChange>> {
        units.iter().map(|u| u.state.clone()).collect()
    };
    assert_eq!(states(&batch), states(&one_by_one));
    let records = |units: Vec<UnitContent>| -> Vec<Vec<Record>> {
        units.into_iter().map(|u| u.records).collect()
    };
    let (batch, one_by_one) = (records(batch), records(one_by_one));

    // The same records; scores agree to float rounding (a batched matrix product sums in
    // another order than a single row's).
    let without_score = |units: &[Vec<Record>]| -> Vec<Vec<Record>> {
        units
            .iter()
            .map(|u| {
                u.iter()
                    .map(|r| Record {
                        score: None,
                        ..r.clone()
                    })
                    .collect()
            })
            .collect()
    };
    assert_eq!(without_score(&batch), without_score(&one_by_one));
    let scores = |units: &[Vec<Record>]| -> Vec<f64> {
        units.iter().flatten().filter_map(|r| r.score).collect()
    };
    for (b, s) in scores(&batch).into_iter().zip(scores(&one_by_one)) {
        assert!((b - s).abs() < 1e-5, "batched score {b} vs single {s}");
    }
    let anomalies: Vec<(&str, i64)> = batch
        .iter()
        .flatten()
        .filter(|r| r.kind == RecordKind::Anomaly)
        .map(|r| (r.device.as_str(), r.timestamp_ms))
        .collect();
    assert!(!anomalies.is_empty(), "the spikes must score as anomalies");
    assert!(
        batch
            .iter()
            .flatten()
            .any(|r| r.kind == RecordKind::Reading)
    );

    // Every full window scored either way; one model call for the batch.
    let windows = (DEVICES * (STEPS - 15)) as u64;
    assert_eq!(single_metrics.inferences.get(), windows);
    assert_eq!(batched_metrics.inferences.get(), windows);
    assert_eq!(
        single_metrics.inference_duration.get_sample_count(),
        windows
    );
    assert_eq!(batched_metrics.inference_duration.get_sample_count(), 1);
}

/// What the queue keeps of the units' state changes: the last value per key.
fn committed(units: &[UnitContent], into: &mut std::collections::BTreeMap<String, (u64, Vec<u8>)>) {
    for change in units.iter().flat_map(|u| &u.state) {
        match &change.value {
            Some(v) => {
                let clock =
                    into.len() as u64 + into.values().map(|(c, _)| *c).max().unwrap_or(0) + 1;
                into.insert(change.key.clone(), (clock, v.clone()));
            }
            None => {
                into.remove(&change.key);
            }
        }
    }
}

/// A restart in the middle of the stream, with the state committed so far restored,
/// forwards exactly what an uninterrupted run forwards: processor state (deadband) and
/// inference windows survive.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_with_the_committed_state_forwards_what_an_uninterrupted_run_does() {
    let readings = readings();
    let received = vec![Instant::now(); readings.len()];
    let (mut straight, _) = pipeline().await;
    let all: Vec<Vec<Record>> = straight
        .on_readings(&readings, &received)
        .await
        .0
        .into_iter()
        .map(|u| u.records)
        .collect();

    for cut in [1, DEVICES * 10 + 1, DEVICES * 20] {
        let (mut first, _) = pipeline().await;
        let before = first
            .on_readings(&readings[..cut], &received[..cut])
            .await
            .0;
        let mut saved = std::collections::BTreeMap::new();
        committed(&before, &mut saved);
        drop(first);
        let mut rows: Vec<(u64, String, Vec<u8>)> =
            saved.into_iter().map(|(k, (c, v))| (c, k, v)).collect();
        rows.sort();
        let rows: Vec<(String, Vec<u8>)> = rows.into_iter().map(|(_, k, v)| (k, v)).collect();
        assert!(
            rows.iter().any(|(k, _)| k.starts_with("p/")),
            "processor state saved"
        );
        assert!(
            rows.iter().any(|(k, _)| k.starts_with("i/")),
            "inference windows saved"
        );

        let (mut second, _) = pipeline().await;
        second.restore(&rows);
        let after: Vec<Vec<Record>> = second
            .on_readings(&readings[cut..], &received[cut..])
            .await
            .0
            .into_iter()
            .map(|u| u.records)
            .collect();
        let strip = |units: &[Vec<Record>]| -> Vec<Vec<(RecordKind, String, i64)>> {
            units
                .iter()
                .map(|u| {
                    u.iter()
                        .map(|r| (r.kind, r.device.clone(), r.timestamp_ms))
                        .collect()
                })
                .collect()
        };
        assert_eq!(strip(&after), strip(&all[cut..]), "cut at {cut}");

        // Without the state, the restart changes what is forwarded.
        let (mut fresh, _) = pipeline().await;
        let forgetful: Vec<Vec<Record>> = fresh
            .on_readings(&readings[cut..], &received[cut..])
            .await
            .0
            .into_iter()
            .map(|u| u.records)
            .collect();
        assert_ne!(
            strip(&forgetful),
            strip(&all[cut..]),
            "cut at {cut}: the test can fail"
        );
    }
}

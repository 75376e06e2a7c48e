//! Hot swap of a model while readings flow (issue 4, test 4), with the model in a
//! directory laid out the way the kubelet projects a ConfigMap: the keys are symlinks
//! into `..data`, itself a symlink to a timestamped directory that an update replaces
//! atomically. Every window is scored exactly once, by exactly one model; a broken
//! update (unsupported op, golden mismatch) leaves the running model in place.

use crate::inference_common;

use std::fs;
use std::time::Duration;

use edge_agent::pipeline::inference::{
    Inference, InferenceMetrics, InferenceSettings, Model, Scored, SourceSettings,
};
use edge_agent::record::Reading;
use inference_common::*;

const DEVICES: usize = 6;
const WINDOW: usize = 16;

fn round(t: usize) -> Vec<Reading> {
    (0..DEVICES)
        .map(|d| {
            // Device 0 gets a +6 std spike every 40 readings, so both outcomes occur.
            let spike = if d == 0 && t % 40 == 20 { 21.0 } else { 0.0 };
            reading(
                &format!("d{d}"),
                normal_value(t, 0.5 + d as f64 * 0.25, d as f64) + spike,
                t as i64,
            )
        })
        .collect()
}

/// The normalised window of device `d` ending at time `t`.
fn window_of(history: &[Vec<Reading>], d: usize, t: usize) -> Vec<f32> {
    (t + 1 - WINDOW..=t)
        .map(|i| ((history[i][d].value - 20.0) / 3.5) as f32)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn models_swap_while_readings_flow_and_broken_updates_keep_the_old_model() {
    let cm = tempfile::tempdir().unwrap();
    let data = tempfile::tempdir().unwrap();
    let golden_key = "model.golden.json";
    project(
        cm.path(),
        1,
        &[
            ("model.tflite", "anomaly_autoencoder.tflite"),
            (golden_key, "anomaly_autoencoder.golden.json"),
        ],
    );
    let spec = spec(serde_json::json!({
        "model": {"configMap": {"name": "anomaly-model", "key": "model.tflite"}},
        "window": WINDOW,
        "threshold": 0.8,
        "normalize": {"mean": 20.0, "std": 3.5},
        "golden": {"file": golden_key},
        "timeout": "10s",
    }));
    let metrics = InferenceMetrics::standalone().unwrap();
    let mut source = SourceSettings::new(data.path());
    source.config_map_dir = cm.path().to_path_buf();
    let mut settings = InferenceSettings::new(spec, source, 100);
    settings.poll_interval = Duration::from_millis(20);
    let mut inference = Inference::start(settings, metrics.clone()).unwrap();
    wait_first_model(&inference).await;

    let autoencoder = Model::load(&fixture_bytes("anomaly_autoencoder.tflite")).unwrap();
    let conv1d = Model::load(&fixture_bytes("anomaly_conv1d.tflite")).unwrap();
    let mut history: Vec<Vec<Reading>> = Vec::new();
    let mut scored: Vec<(usize, Scored)> = Vec::new();
    let mut t = 0;
    // Feeds one round of readings and keeps what came back.
    macro_rules! feed {
        () => {{
            let readings = round(t);
            let out = inference
                .score(&readings)
                .await
                .expect("every round is scored");
            history.push(readings);
            scored.extend(out.into_iter().map(|s| (t, s)));
            t += 1;
        }};
    }
    for _ in 0..30 {
        feed!();
    }
    // Swap to the conv1d model (and its golden vectors) while readings keep flowing.
    project(
        cm.path(),
        2,
        &[
            ("model.tflite", "anomaly_conv1d.tflite"),
            (golden_key, "anomaly_conv1d.golden.json"),
        ],
    );
    // Readings arrive at a sensor's pace (one round every 5 ms) until the swap is seen.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let mut pace = tokio::time::interval(Duration::from_millis(5));
    while inference.status().generation < 2 {
        assert!(
            std::time::Instant::now() < deadline,
            "no swap: {:?}",
            inference.status()
        );
        feed!();
        pace.tick().await;
    }
    for _ in 0..30 {
        feed!();
    }
    // An update with an op tract cannot run, then one whose golden vectors do not match:
    // both refused, counted, and the conv1d model keeps scoring.
    project(
        cm.path(),
        3,
        &[
            ("model.tflite", "unsupported_op.tflite"),
            (golden_key, "anomaly_conv1d.golden.json"),
        ],
    );
    assert!(
        eventually(Duration::from_secs(20), || metrics.loads("unsupported_op")
            == 1)
        .await
    );
    feed!();
    project(
        cm.path(),
        4,
        &[
            ("model.tflite", "anomaly_autoencoder.tflite"),
            (golden_key, "anomaly_autoencoder.broken_golden.json"),
        ],
    );
    assert!(
        eventually(Duration::from_secs(20), || metrics.loads("golden_mismatch")
            == 1)
        .await
    );
    for _ in 0..45 {
        feed!();
    }
    let status = inference.status();
    assert_eq!(status.generation, 2, "{status:?}");
    assert!(status.last_error.unwrap().contains("golden"));
    assert_eq!(metrics.loads("success"), 2);

    // Exactly one score per full window: none lost, none twice.
    let expected: Vec<(usize, usize)> = (WINDOW - 1..t)
        .flat_map(|t| (0..DEVICES).map(move |d| (t, d)))
        .collect();
    let got: Vec<(usize, usize)> = scored.iter().map(|(t, s)| (*t, s.index)).collect();
    assert_eq!(got, expected);
    // Each score is the one its model computes: no window was scored by a mix of models.
    let mut generations = Vec::new();
    for (t, s) in &scored {
        let model = match s.generation {
            1 => &autoencoder,
            2 => &conv1d,
            g => panic!("unexpected generation {g}"),
        };
        let want = model.run_single(&window_of(&history, s.index, *t)).unwrap()[0];
        assert!(
            (want - s.score).abs() <= 1e-5,
            "t={t} device={} gen={}: {} vs {want}",
            s.index,
            s.generation,
            s.score
        );
        generations.push(s.generation);
    }
    assert!(
        generations.windows(2).all(|w| w[0] <= w[1]),
        "generations never go back"
    );
    assert!(generations.contains(&1) && generations.contains(&2));
    // Both models flag the spiked windows of device 0 and nothing else.
    for (t, s) in &scored {
        let spiked = s.index == 0 && (t + 1 - WINDOW..=*t).any(|i| i % 40 == 20);
        assert_eq!(
            s.score > 0.8,
            spiked,
            "t={t} device={} score={}",
            s.index,
            s.score
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_model_file_replaced_at_its_path_is_swapped_in() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("anomaly.tflite");
    fs::write(&path, fixture_bytes("anomaly_logistic.tflite")).unwrap();
    let (mut inference, metrics) = start(anomaly_spec(&path, None), dir.path());
    assert!(
        inference
            .wait_for_generation(1, Duration::from_secs(20))
            .await
    );
    let first = inference.status().sha256.unwrap();
    // Replace the file the way an image update or `kubectl cp` + mv would: write aside, rename.
    let tmp = dir.path().join("anomaly.tflite.new");
    fs::write(&tmp, fixture_bytes("anomaly_autoencoder.tflite")).unwrap();
    fs::rename(&tmp, &path).unwrap();
    assert!(
        inference
            .wait_for_generation(2, Duration::from_secs(20))
            .await
    );
    let status = inference.status();
    assert_ne!(status.sha256.unwrap(), first);
    assert_eq!(metrics.loads("success"), 2);
    // Rewriting the same bytes (new mtime and inode) is not a new model.
    let tmp = dir.path().join("anomaly.tflite.same");
    fs::write(&tmp, fixture_bytes("anomaly_autoencoder.tflite")).unwrap();
    fs::rename(&tmp, &path).unwrap();
    let readings: Vec<_> = (0..16)
        .map(|t| reading("d", normal_value(t, 1.0, 0.0), t as i64))
        .collect();
    assert_eq!(inference.score(&readings).await.unwrap().len(), 1);
    // A removed file is a counted source error; the loaded model keeps running.
    fs::remove_file(&path).unwrap();
    assert!(
        eventually(Duration::from_secs(20), || metrics.loads("source_error")
            == 1)
        .await
    );
    assert_eq!(inference.status().generation, 2);
    assert_eq!(metrics.loads("success"), 2);
    let more: Vec<_> = (16..17)
        .map(|t| reading("d", normal_value(t, 1.0, 0.0), t as i64))
        .collect();
    assert_eq!(inference.score(&more).await.unwrap()[0].generation, 2);
}

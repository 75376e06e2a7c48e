//! Models from a URL (issue 4, test 3), served by a real HTTP server on loopback:
//! downloaded, checked against `sha256`, cached under `<data-dir>/models/<sha256>.tflite`
//! and used; a wrong checksum is refused and counted and nothing is cached; with the
//! server gone, a restart runs the cached copy.

mod inference_common;

use std::time::Duration;

use edge_agent::inference::Skip;
use inference_common::*;

fn url_spec(base: &str, sha256: &str) -> edge_crds::Inference {
    spec(serde_json::json!({
        "model": {"url": format!("{base}/models/anomaly.tflite"), "sha256": sha256},
        "window": 16,
        "threshold": 0.8,
        "normalize": {"mean": 20.0, "std": 3.5},
        "golden": {"file": "anomaly.golden.json"},
        "timeout": "5s",
    }))
}

/// One normal window then one with a +6 std spike on the last reading.
fn windows(device: &str) -> Vec<edge_agent::record::Reading> {
    let mut readings: Vec<_> = (0..16)
        .map(|t| reading(device, normal_value(t, 1.0, 0.3), t as i64))
        .collect();
    readings.push(reading(device, normal_value(16, 1.0, 0.3) + 21.0, 16));
    readings
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn url_models_are_verified_cached_and_used_offline() {
    let model = fixture_bytes("anomaly_autoencoder.tflite");
    let sha = sha256_hex(&model);
    let server = FileServer::start(vec![
        ("/models/anomaly.tflite".to_string(), model.clone()),
        (
            "/models/anomaly.golden.json".to_string(),
            fixture_bytes("anomaly_autoencoder.golden.json"),
        ),
    ])
    .await;
    let data = tempfile::tempdir().unwrap();

    // Downloaded, verified, cached, used.
    let (mut inference, metrics) = start(url_spec(&server.base, &sha), data.path());
    assert!(
        inference
            .wait_for_generation(1, Duration::from_secs(20))
            .await,
        "{:?}",
        inference.status()
    );
    let status = inference.status();
    assert_eq!(status.sha256.as_deref(), Some(sha.as_str()));
    assert!(status.origin.unwrap().starts_with(&server.base));
    let cached = data.path().join("models").join(format!("{sha}.tflite"));
    assert_eq!(std::fs::read(&cached).unwrap(), model);
    assert!(
        data.path()
            .join("models")
            .join(format!("{sha}--anomaly.golden.json"))
            .exists()
    );
    let scored = inference.score(&windows("d1")).await.unwrap();
    assert_eq!(scored.len(), 2);
    assert!(scored[0].score < 0.8 && scored[1].score > 0.8, "{scored:?}");
    assert_eq!(metrics.loads("success"), 1);
    drop(inference);

    // A wrong sha256 is refused, counted and never cached or run.
    let wrong = sha256_hex(&fixture_bytes("anomaly_logistic.tflite"));
    let other = tempfile::tempdir().unwrap();
    let (mut refused, refused_metrics) = start(url_spec(&server.base, &wrong), other.path());
    assert!(
        eventually(Duration::from_secs(20), || refused_metrics
            .loads("checksum_mismatch")
            >= 1)
        .await
    );
    let status = refused.status();
    assert_eq!(status.generation, 0);
    let message = status.last_error.unwrap();
    assert!(
        message.contains(&wrong) && message.contains(&sha),
        "{message}"
    );
    let cache: Vec<_> = std::fs::read_dir(other.path().join("models"))
        .unwrap()
        .collect();
    assert!(cache.is_empty(), "nothing unverified is written: {cache:?}");
    assert_eq!(refused.score(&windows("d1")).await, Err(Skip::NoModel));
    assert_eq!(refused_metrics.loads("success"), 0);
    drop(refused);

    // The server goes away; a restart with the same data dir runs the cached copy.
    let served = server.requests();
    let base = server.base.clone();
    server.stop().await;
    let (mut offline, offline_metrics) = start(url_spec(&base, &sha), data.path());
    assert!(
        offline
            .wait_for_generation(1, Duration::from_secs(20))
            .await,
        "{:?}",
        offline.status()
    );
    assert_eq!(offline_metrics.loads("download_error"), 0);
    let scored = offline.score(&windows("d2")).await.unwrap();
    assert!(scored[1].score > 0.8);
    assert!(served >= 2, "model and golden file were downloaded");

    // Offline with no cached copy: counted, no model, the readings are still taken.
    let empty = tempfile::tempdir().unwrap();
    let (mut none, none_metrics) = start(url_spec(&base, &sha), empty.path());
    assert!(
        eventually(Duration::from_secs(20), || none_metrics
            .loads("download_error")
            >= 1)
        .await
    );
    assert_eq!(none.score(&windows("d3")).await, Err(Skip::NoModel));
}

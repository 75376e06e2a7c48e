//! Models from a URL (issue 4, test 3), served by a real HTTP server on loopback:
//! downloaded, checked against `sha256`, cached under `<data-dir>/models/<sha256>.tflite`
//! and used; a wrong checksum is refused and counted and nothing is cached; with the
//! server gone, a restart runs the cached copy.

use crate::inference_common;

use std::time::Duration;

use edge_agent::pipeline::inference::Skip;
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
    wait_first_model(&inference).await;
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
    wait_first_model(&offline).await;
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

/// The running agent's pipeline file gets a new `url` + `sha256` (what `kubectl apply`
/// of a new model version does to the mounted ConfigMap): the new model is downloaded,
/// verified and swapped in without a restart; a wrong checksum is refused and counted
/// and the running model stays; a change beyond the model reference is left for a
/// restart and said so in the log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_url_and_sha256_swap_the_model_of_a_running_agent() {
    use inference_common::e2e::{Agent, free_port, pipeline};

    let (a, b) = (
        fixture_bytes("anomaly_autoencoder.tflite"),
        fixture_bytes("anomaly_logistic.tflite"),
    );
    let (sha_a, sha_b) = (sha256_hex(&a), sha256_hex(&b));
    let server = FileServer::start(vec![
        ("/models/a.tflite".to_string(), a),
        (
            "/models/a.golden.json".to_string(),
            fixture_bytes("anomaly_autoencoder.golden.json"),
        ),
        ("/models/b.tflite".to_string(), b),
        (
            "/models/b.golden.json".to_string(),
            fixture_bytes("anomaly_logistic.golden.json"),
        ),
    ])
    .await;
    // Nothing listens on the broker or the sink: the model path does not need them.
    let (broker, sink) = (
        free_port(),
        format!("http://127.0.0.1:{}/ingest", free_port()),
    );
    let manifest = |name: &str, sha: &str, threshold: f64| {
        let inference = format!(
            "    model: {{url: \"{}/models/{name}.tflite\", sha256: \"{sha}\"}}\n    window: 16\n    threshold: {threshold}\n    normalize: {{mean: 20.0, std: 3.5}}\n    golden: {{file: {name}.golden.json}}\n    timeout: 5s\n",
            server.base
        );
        pipeline(broker, &sink, &inference, "[]", "json")
    };
    let loads = "edge_agent_model_loads_total";
    let agent = Agent::start(&manifest("a", &sha_a, 0.8)).await;
    let ok = agent
        .wait_metric(loads, &["outcome=\"success\""], |v| v >= 1.0)
        .await;
    assert_eq!(ok, 1.0, "{}", agent.log());

    agent.rewrite_config(&manifest("b", &sha_b, 0.8));
    let ok = agent
        .wait_metric(loads, &["outcome=\"success\""], |v| v >= 2.0)
        .await;
    assert_eq!(ok, 2.0, "{}", agent.log());
    let cached = agent
        .data_dir
        .path()
        .join("models")
        .join(format!("{sha_b}.tflite"));
    assert!(
        cached.exists(),
        "the new model is cached under its checksum"
    );
    assert!(
        agent.log().contains("model source changed"),
        "{}",
        agent.log()
    );

    let wrong = "0".repeat(64);
    agent.rewrite_config(&manifest("a", &wrong, 0.8));
    let refused = agent
        .wait_metric(loads, &["outcome=\"checksum_mismatch\""], |v| v >= 1.0)
        .await;
    assert!(refused >= 1.0, "{}", agent.log());
    assert_eq!(agent.metric(loads, &["outcome=\"success\""]).await, 2.0);

    agent.rewrite_config(&manifest("b", &sha_b, 0.5));
    assert!(
        agent.wait_log("restart the agent to apply it").await,
        "{}",
        agent.log()
    );
    assert_eq!(agent.metric(loads, &["outcome=\"success\""]).await, 2.0);
}

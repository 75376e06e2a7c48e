//! A hostile network, against the real agent binary, a real Mosquitto and real HTTP
//! servers on loopback: an ingest API that redirects the batch to another host, a model
//! server that redirects the download elsewhere or answers with something other than a
//! 200, credentials that would travel in clear text, and a flood of connections to the
//! metrics port. In every case the other host receives nothing, nothing is delivered or
//! cached that should not be, no secret reaches the log, and the sink keeps delivering.

use crate::common;
use crate::inference_common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::*;
use inference_common::{FileServer, Route, fixture_bytes, sha256_hex};

const TOPIC: &str = "sensors/+/temperature";
const T0: i64 = 1_795_608_000_000;
const API_KEY: &str = "k-1234567890";

/// Secrets that must never appear in a log.
fn assert_no_secret(log: &str, secrets: &[&str]) {
    for secret in secrets {
        assert!(!log.contains(secret), "the log shows {secret:?}:\n{log}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redirect_from_the_ingest_api_is_a_failed_attempt_and_the_other_host_gets_nothing() {
    let broker = Mosquitto::start();
    let ingest = Receiver::start().await;
    let other = Receiver::start().await;
    let target = format!(
        "http://thief:hunter2@127.0.0.1:{}/collect?token=s3cret",
        other.port
    );
    ingest.script((0..3).map(|_| Reply::Redirect(307, target.clone())));
    prepare_session(broker.port, "agent-redirect", &[TOPIC]).await;
    let yaml = Pipeline {
        broker_port: broker.port,
        client_id: "agent-redirect",
        receiver_port: ingest.port,
        batch_size: 5,
        extra_sink: "      headers: [{name: X-Api-Key, valueFrom: {env: INGEST_KEY}}]",
        ..Pipeline::default()
    }
    .yaml();
    let dir = tempfile::tempdir().unwrap();
    let mut agent = Agent::start_with_env(dir.path(), &yaml, &[("INGEST_KEY", API_KEY)]);
    agent.wait_ready().await;
    let mut publisher = Publisher::connect(broker.port, "publisher-redirect");
    for i in 0..5 {
        publisher
            .send(
                "sensors/t1/temperature",
                reading("t1", 20.0 + i as f64, T0 + i),
            )
            .await;
    }
    publisher.flush().await;

    // Three redirects, each a failed attempt; then the batch reaches the configured host.
    let accepted = eventually(Duration::from_secs(30), "5 records accepted", async || {
        let accepted = ingest.accepted();
        (accepted.len() >= 5).then_some(accepted)
    })
    .await;
    let seqs: BTreeSet<u64> = accepted.iter().filter_map(|r| r["seq"].as_u64()).collect();
    assert_eq!(seqs.len(), 5, "each record accepted once: {accepted:?}");
    assert!(
        other.requests().is_empty(),
        "the redirect target received {:?}",
        other.requests()
    );

    let requests = ingest.requests();
    let redirected: Vec<_> = requests.iter().filter(|r| r.status == 307).collect();
    assert_eq!(redirected.len(), 3, "{requests:?}");
    for r in &redirected {
        assert!(
            requests
                .iter()
                .any(|later| later.status == 200 && later.key == r.key && later.seqs() == r.seqs()),
            "the redirected batch {} was not kept and sent again under its key",
            r.key
        );
    }
    let retries = agent.metric(&series(
        "edge_agent_sync_requests_total",
        &[("outcome", "retry")],
    ));
    assert!(retries >= 3.0, "redirects count as retries: {retries}");
    assert_eq!(
        agent.metric(&series(
            "edge_agent_sync_requests_total",
            &[("outcome", "rejected")]
        )),
        0.0
    );
    assert_eq!(
        agent.metric(&series(
            "edge_agent_records_dropped_total",
            &[("reason", "dead_letter")]
        )),
        0.0,
        "a redirect is never a rejection"
    );
    // Counted once the queue has deleted the batch, which follows the response.
    let synced = series("edge_agent_records_synced_total", &[]);
    eventually(Duration::from_secs(10), "5 records synced", async || {
        (agent.metric(&synced) >= 5.0).then_some(())
    })
    .await;
    assert_eq!(
        agent.metric(&synced),
        5.0,
        "only the delivery to the configured host counts"
    );

    let log = agent.log_text();
    assert!(
        log.contains(&format!(
            "307 Temporary Redirect to http://127.0.0.1:{}/collect: redirects are never followed",
            other.port
        )),
        "the redirect and its target are logged:\n{log}"
    );
    assert_no_secret(&log, &["hunter2", "s3cret", API_KEY]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_over_plaintext_are_warned_about_at_start() {
    let broker = Mosquitto::start();
    // TEST-NET-1: not this machine, and nothing answers there.
    let yaml = format!(
        "source:\n  mqtt: {{url: \"mqtt://127.0.0.1:{}\", topics: [\"{TOPIC}\"]}}\n\
         sink:\n  http:\n    url: \"http://192.0.2.1:9/ingest?tenant=t1\"\n    timeout: 1s\n    \
         headers: [{{name: X-Api-Key, valueFrom: {{env: INGEST_KEY}}}}]\n",
        broker.port
    );
    let dir = tempfile::tempdir().unwrap();
    let mut agent = Agent::start_with_env(dir.path(), &yaml, &[("INGEST_KEY", API_KEY)]);
    agent.wait_ready().await;
    let warning = "spec.sink.http.headers: X-Api-Key sent in clear text to http://192.0.2.1:9/ingest; use https://";
    eventually(
        Duration::from_secs(10),
        "the clear-text warning",
        async || agent.log_text().contains(warning).then_some(()),
    )
    .await;
    assert_no_secret(&agent.log_text(), &[API_KEY, "tenant=t1"]);
}

const TOKEN: &str = "Bearer t0ken-abcdef";

/// The pipeline `factory/test` with its model from `url` (with `sha256`, the golden file
/// next to it and an `Authorization` header from `MODEL_TOKEN`); broker and sink are never
/// reached.
fn model_pipeline(url: &str, sha256: &str) -> String {
    let spec = format!(
        "source:\n  mqtt: {{url: \"mqtt://127.0.0.1:{}\", topics: [\"sensors/+/vibration\"]}}\n\
         inference:\n  model:\n    url: \"{url}\"\n    sha256: \"{sha256}\"\n    \
         headers: [{{name: Authorization, valueFrom: {{env: MODEL_TOKEN}}}}]\n  \
         window: 16\n  threshold: 0.8\n  normalize: {{mean: 20.0, std: 3.5}}\n  \
         golden: {{file: anomaly.golden.json}}\n\
         sink:\n  http: {{url: \"http://127.0.0.1:{}/ingest\"}}\n",
        free_port(),
        free_port()
    );
    let indented: String = spec.lines().map(|l| format!("  {l}\n")).collect();
    format!(
        "apiVersion: edgepipe.dev/v1alpha1\nkind: EdgePipeline\nmetadata: {{name: test, namespace: factory}}\nspec:\n{indented}"
    )
}

fn loads(agent: &mut Agent, outcome: &str) -> f64 {
    agent.metric(&series(
        "edge_agent_model_loads_total",
        &[("outcome", outcome)],
    ))
}

async fn wait_loads(agent: &mut Agent, outcome: &str) {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while loads(agent, outcome) < 1.0 {
        assert!(
            std::time::Instant::now() < deadline,
            "no model load with outcome {outcome} within 30 s:\n{}",
            agent.log_text()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn model_downloads_authenticate_and_never_leave_the_models_origin() {
    let model = fixture_bytes("anomaly_autoencoder.tflite");
    let golden = fixture_bytes("anomaly_autoencoder.golden.json");
    let sha = sha256_hex(&model);
    let elsewhere = FileServer::routes(vec![
        ("/anomaly.tflite".into(), Route::File(model.clone())),
        ("/anomaly.golden.json".into(), Route::File(golden.clone())),
    ])
    .await;
    let guarded = |body: &[u8]| Route::Guarded {
        header: "authorization".into(),
        value: TOKEN.into(),
        body: body.to_vec(),
    };
    let origin = FileServer::routes(vec![
        ("/models/anomaly.tflite".into(), guarded(&model)),
        ("/models/anomaly.golden.json".into(), guarded(&golden)),
        // Moved within the origin: followed.
        (
            "/moved/anomaly.tflite".into(),
            Route::Redirect(302, "/models/anomaly.tflite".into()),
        ),
        (
            "/moved/anomaly.golden.json".into(),
            Route::Redirect(301, "/models/anomaly.golden.json".into()),
        ),
        // Sent to another origin: refused.
        (
            "/away/anomaly.tflite".into(),
            Route::Redirect(
                307,
                format!("{}/anomaly.tflite?sig=other-s3cret", elsewhere.base),
            ),
        ),
        // The model is fine, the golden file is not a 200.
        ("/odd/anomaly.tflite".into(), guarded(&model)),
        (
            "/odd/anomaly.golden.json".into(),
            Route::Status(203, br#"{"vectors": []}"#.to_vec()),
        ),
    ])
    .await;
    let env = [("MODEL_TOKEN", TOKEN)];

    // Redirected to another origin: refused, counted, the other host gets nothing, and
    // neither the URL's credentials nor its query reach the log.
    let url = format!(
        "http://dl-user:dl-pass@127.0.0.1:{}/away/anomaly.tflite?sig=s3cret",
        origin.port
    );
    let dir = tempfile::tempdir().unwrap();
    let mut away = Agent::start_with_env(dir.path(), &model_pipeline(&url, &sha), &env);
    wait_loads(&mut away, "download_error").await;
    assert_eq!(loads(&mut away, "success"), 0.0);
    assert!(
        elsewhere.heads().is_empty(),
        "the other origin was asked: {:?}",
        elsewhere.heads()
    );
    let log = away.log_text();
    assert!(
        log.contains(&format!(
            "redirect to {}/anomaly.tflite refused: not the origin of http://127.0.0.1:{}/away/anomaly.tflite",
            elsewhere.base, origin.port
        )),
        "{log}"
    );
    assert_no_secret(&log, &["dl-pass", "s3cret", "t0ken"]);
    drop(away);

    // Moved within the origin, authenticated by the header: downloaded, verified, run.
    let url = format!(
        "http://127.0.0.1:{}/moved/anomaly.tflite?sig=s3cret",
        origin.port
    );
    let dir = tempfile::tempdir().unwrap();
    let mut moved = Agent::start_with_env(dir.path(), &model_pipeline(&url, &sha), &env);
    wait_loads(&mut moved, "success").await;
    let authorized = origin
        .heads()
        .iter()
        .filter(|h| {
            h.starts_with("GET /models/")
                && h.to_ascii_lowercase().contains(&TOKEN.to_ascii_lowercase())
        })
        .count();
    assert_eq!(
        authorized,
        2,
        "model and golden file, with the header: {:?}",
        origin.heads()
    );
    let log = moved.log_text();
    let shown = format!("http://127.0.0.1:{}/moved/anomaly.tflite", origin.port);
    assert!(
        log.lines()
            .any(|l| l.contains("model downloaded and verified") && l.contains(&shown)),
        "{log}"
    );
    assert_no_secret(&log, &["s3cret", "t0ken"]);
    drop(moved);

    // A golden file answered with a 203: an error, never cached as the file.
    let url = format!("http://127.0.0.1:{}/odd/anomaly.tflite", origin.port);
    let dir = tempfile::tempdir().unwrap();
    let mut odd = Agent::start_with_env(dir.path(), &model_pipeline(&url, &sha), &env);
    wait_loads(&mut odd, "download_error").await;
    assert_eq!(loads(&mut odd, "invalid_golden"), 0.0, "{}", odd.log_text());
    assert_eq!(loads(&mut odd, "success"), 0.0);
    let cached_golden = odd
        .data_dir
        .join("models")
        .join(format!("{sha}--anomaly.golden.json"));
    assert!(
        !cached_golden.exists(),
        "a 203 was cached as the golden file"
    );
    let log = odd.log_text();
    assert!(
        log.lines()
            .any(|l| l.contains("anomaly.golden.json: 203 ") && l.contains("only a 200 is a file")),
        "{log}"
    );
    assert!(elsewhere.heads().is_empty());
}

/// The agent's default connection cap on its metrics endpoint.
const MAX_CONNECTIONS: usize = 64;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_connections_to_the_metrics_port_is_capped_and_the_sink_keeps_delivering() {
    use std::io::Read;
    use std::net::TcpStream;

    let broker = Mosquitto::start();
    let receiver = Receiver::start().await;
    prepare_session(broker.port, "agent-flood", &[TOPIC]).await;
    let yaml = Pipeline {
        broker_port: broker.port,
        client_id: "agent-flood",
        receiver_port: receiver.port,
        batch_size: 1,
        ..Pipeline::default()
    }
    .yaml();
    let dir = tempfile::tempdir().unwrap();
    let mut agent = Agent::start(dir.path(), &yaml);
    agent.wait_ready().await;
    let port = agent.metrics_port;

    // Connections that never send a byte hold every slot...
    let held: Vec<TcpStream> = (0..MAX_CONNECTIONS)
        .map(|_| TcpStream::connect(("127.0.0.1", port)).expect("connect"))
        .collect();
    // ...so each one beyond them is closed at once (accepted in order, after them).
    let mut refused = 0;
    for _ in 0..200 {
        let mut extra = TcpStream::connect(("127.0.0.1", port)).expect("connect");
        extra
            .set_read_timeout(Some(Duration::from_secs(2)))
            .unwrap();
        match extra.read(&mut [0u8; 1]) {
            Ok(0) => refused += 1,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => refused += 1,
            other => panic!("a connection beyond the cap was kept open: {other:?}"),
        }
    }
    assert_eq!(refused, 200);

    // The sink is not starved of descriptors: readings still reach the upstream.
    let mut publisher = Publisher::connect(broker.port, "publisher-flood");
    for i in 0..3 {
        publisher
            .send(
                "sensors/t1/temperature",
                reading("t1", 20.0 + i as f64, T0 + i),
            )
            .await;
    }
    publisher.flush().await;
    eventually(
        Duration::from_secs(20),
        "3 records upstream during the flood",
        async || (receiver.accepted().len() >= 3).then_some(()),
    )
    .await;

    // Slots come back when the connections go, and the refusals were counted.
    drop(held);
    let rejected = eventually(
        Duration::from_secs(10),
        "the endpoint after the flood",
        async || {
            let m = agent.metrics();
            m.get(&series("edge_agent_http_connections_rejected_total", &[]))
                .copied()
        },
    )
    .await;
    assert!(rejected >= 200.0, "rejections counted: {rejected}");
}

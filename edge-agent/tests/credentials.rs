//! Credentials that fail safe, with the real agent binary, Mosquitto and an HTTP(S)
//! receiver: a token revoked mid-backlog and fixed by rewriting its file (no restart, no
//! dead letter, each record once); HTTPS with a private CA and mutual TLS, refused with
//! the wrong CA or without a client certificate; a client certificate rotated on disk
//! while the agent runs, a broken file in between keeping the one in use.

use crate::common;

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::*;
use edge_testkit::pki::Pki;

const T0: i64 = 1_795_608_000_000;
const DAY: f64 = 86_400.0;

/// Replaces `path` at once (write aside, rename), as a Secret volume update does.
fn replace(path: &Path, content: &[u8]) {
    let aside = path.with_extension("new");
    std::fs::write(&aside, content).unwrap();
    std::fs::rename(&aside, path).unwrap();
}

fn reloads(result: &str) -> String {
    series(
        "edge_agent_credential_reloads_total",
        &[("result", result), ("use", "sink")],
    )
}

fn expiry(use_: &str) -> String {
    series(
        "edge_agent_certificate_expiry_timestamp_seconds",
        &[("use", use_)],
    )
}

fn now_secs() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

async fn publish(broker: u16, client: &str, values: std::ops::Range<i64>) {
    let mut publisher = Publisher::connect(broker, client);
    for i in values {
        publisher
            .send("sensors/a/temperature", reading("a", i as f64, T0 + i))
            .await;
    }
    publisher.flush().await;
}

/// Waits until the receiver accepted exactly the values `0..n`, each once; panics with
/// the agent's log otherwise.
async fn delivered_once(receiver: &Receiver, agent: &Agent, n: i64) {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while values(&receiver.accepted()) != (0..n).collect() {
        assert!(
            std::time::Instant::now() < deadline,
            "{} of {n} records delivered:\n{}",
            receiver.accepted().len(),
            agent.log_text()
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert_eq!(receiver.accepted().len() as i64, n, "each record once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_token_is_replaced_by_rewriting_its_file_without_a_restart() {
    let broker = Mosquitto::start();
    let receiver = Receiver::start().await;
    // The upstream takes three batches with the old token, then only the new one.
    let accepted_token = Arc::new(Mutex::new("Bearer old".to_string()));
    let batches = Arc::new(AtomicUsize::new(0));
    let (token, n) = (accepted_token.clone(), batches.clone());
    receiver.rule_with_headers(move |headers, _| {
        let mut token = token.lock().unwrap();
        if headers.get("authorization") != Some(&*token) {
            return Some(Reply::Status(401));
        }
        if n.fetch_add(1, Ordering::SeqCst) == 2 {
            *token = "Bearer new".into();
        }
        None
    });
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, "Bearer old\n").unwrap();
    prepare_session(
        broker.port,
        "agent-rotate-token",
        &["sensors/+/temperature"],
    )
    .await;
    let extra_sink = format!(
        "      headers:\n        - name: Authorization\n          valueFrom: {{file: {}}}",
        token_file.display()
    );
    let yaml = Pipeline {
        broker_port: broker.port,
        client_id: "agent-rotate-token",
        receiver_port: receiver.port,
        batch_size: 10,
        extra_sink: &extra_sink,
        ..Pipeline::default()
    }
    .yaml();
    let mut agent = Agent::start(dir.path(), &yaml);
    agent.wait_ready().await;
    publish(broker.port, "rotate-token-pub", 0..200).await;

    let failures = series("edge_agent_upstream_auth_failures_total", &[]);
    agent
        .wait_metric(&failures, 3.0, Duration::from_secs(20))
        .await;
    assert!(agent.metric(&series("edge_agent_queue_records", &[])) > 0.0);
    let dead_letters = series(
        "edge_agent_records_dropped_total",
        &[("reason", "dead_letter")],
    );
    assert_eq!(agent.metric(&dead_letters), 0.0);

    replace(&token_file, b"Bearer new\n");
    delivered_once(&receiver, &agent, 200).await;
    assert_eq!(agent.metric(&dead_letters), 0.0);
    assert_eq!(agent.metric(&reloads("ok")), 1.0);
    assert_eq!(agent.metric(&reloads("failed")), 0.0);
    let log = agent.log_text();
    assert_eq!(
        log.matches("agent running").count(),
        1,
        "no restart:\n{log}"
    );
    assert!(
        !log.contains("Bearer new"),
        "the token is never logged:\n{log}"
    );
}

/// A CA in `dir` with a server certificate for localhost and a client certificate.
fn pki(dir: &Path) -> Pki {
    let pki = Pki::new(dir);
    pki.cert(
        "server",
        "/CN=localhost",
        &["subjectAltName=DNS:localhost,IP:127.0.0.1"],
    );
    pki.cert("client", "/CN=edge-agent", &["extendedKeyUsage=clientAuth"]);
    pki
}

/// The test pipeline with an HTTPS sink to `receiver` and `tls` (lines under `tls:`).
fn https_pipeline(broker: u16, client_id: &str, receiver: &Receiver, tls: &str) -> String {
    let extra_sink = format!("      tls:\n{tls}");
    Pipeline {
        broker_port: broker,
        client_id,
        receiver_port: receiver.port,
        batch_size: 10,
        extra_sink: &extra_sink,
        ..Pipeline::default()
    }
    .yaml()
    .replace(
        &format!("http://127.0.0.1:{}/", receiver.port),
        &format!("https://localhost:{}/", receiver.port),
    )
}

fn tls_lines(ca: &str, identity: Option<(&str, &str)>) -> String {
    let mut lines = format!("        ca: {{file: {ca}}}\n");
    if let Some((cert, key)) = identity {
        lines += &format!("        cert: {{file: {cert}}}\n        key: {{file: {key}}}\n");
    }
    lines
}

/// Waits until `agent` logged a sync failure containing `cause`, with the records still
/// queued and nothing received.
async fn refused(agent: &mut Agent, receiver: &Receiver, cause: &str) {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !agent
        .log_text()
        .lines()
        .any(|l| l.contains("upstream unavailable") && l.contains(cause))
    {
        assert!(
            std::time::Instant::now() < deadline,
            "no sync failure naming {cause}:\n{}",
            agent.log_text()
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert_eq!(agent.metric(&series("edge_agent_queue_records", &[])), 5.0);
    assert!(receiver.requests().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_with_a_private_ca_and_mutual_tls_delivers_only_to_and_from_the_right_peers() {
    let dir = tempfile::tempdir().unwrap();
    let right = pki(&dir.path().join("right"));
    let wrong = pki(&dir.path().join("wrong"));
    let broker = Mosquitto::start();
    let receiver = Receiver::start_tls(ServerTls::new(
        Path::new(&right.path("server.crt")),
        Path::new(&right.path("server.key")),
        Some(Path::new(&right.path("ca.crt"))),
    ))
    .await;

    // The right CA and a client certificate it signed: delivered.
    let identity = Some((right.path("client.crt"), right.path("client.key")));
    let identity = identity.as_ref().map(|(c, k)| (c.as_str(), k.as_str()));
    let tls = tls_lines(&right.path("ca.crt"), identity);
    let agent_dir = tempfile::tempdir().unwrap();
    let yaml = https_pipeline(broker.port, "agent-mtls", &receiver, &tls);
    // The session exists before the agent does: nothing published before its
    // subscription is live can be lost.
    prepare_session(broker.port, "agent-mtls", &["sensors/+/temperature"]).await;
    let mut agent = Agent::start(agent_dir.path(), &yaml);
    agent.wait_ready().await;
    publish(broker.port, "mtls-pub", 0..5).await;
    delivered_once(&receiver, &agent, 5).await;
    let in_7_days = now_secs() + 7.0 * DAY;
    let client_expiry = agent.metric(&expiry("sink_client"));
    assert!((client_expiry - in_7_days).abs() < DAY, "{client_expiry}");
    assert!((agent.metric(&expiry("sink_ca")) - in_7_days).abs() < DAY);
    agent.terminate();

    // Trusting another CA (of the same name): the agent refuses the server's certificate,
    // the records stay queued.
    let receiver = Receiver::start_tls(ServerTls::new(
        Path::new(&right.path("server.crt")),
        Path::new(&right.path("server.key")),
        Some(Path::new(&right.path("ca.crt"))),
    ))
    .await;
    let tls = tls_lines(&wrong.path("ca.crt"), identity);
    let agent_dir = tempfile::tempdir().unwrap();
    let yaml = https_pipeline(broker.port, "agent-wrong-ca", &receiver, &tls);
    // The session exists before the agent does: nothing published before its
    // subscription is live can be lost.
    prepare_session(broker.port, "agent-wrong-ca", &["sensors/+/temperature"]).await;
    let mut agent = Agent::start(agent_dir.path(), &yaml);
    agent.wait_ready().await;
    publish(broker.port, "wrong-ca-pub", 0..5).await;
    refused(
        &mut agent,
        &receiver,
        "invalid peer certificate: BadSignature",
    )
    .await;
    agent.terminate();

    // Without a client certificate: the server refuses the agent.
    let tls = tls_lines(&right.path("ca.crt"), None);
    let agent_dir = tempfile::tempdir().unwrap();
    let yaml = https_pipeline(broker.port, "agent-no-cert", &receiver, &tls);
    // The session exists before the agent does: nothing published before its
    // subscription is live can be lost.
    prepare_session(broker.port, "agent-no-cert", &["sensors/+/temperature"]).await;
    let mut agent = Agent::start(agent_dir.path(), &yaml);
    agent.wait_ready().await;
    publish(broker.port, "no-cert-pub", 0..5).await;
    refused(&mut agent, &receiver, "CertificateRequired").await;
    let handshakes = receiver.refused_handshakes();
    assert!(
        handshakes.iter().any(|h| h.contains("no certificate")),
        "{handshakes:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_certificate_rotated_on_disk_is_used_without_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let first = pki(&dir.path().join("first"));
    // The renewal comes from a new CA and outlives the first certificate.
    let renewed = Pki::new(&dir.path().join("renewed"));
    renewed.cert_for_days(
        "client",
        "/CN=edge-agent",
        &["extendedKeyUsage=clientAuth"],
        30,
    );
    let server = |client_ca: &Pki| {
        ServerTls::new(
            Path::new(&first.path("server.crt")),
            Path::new(&first.path("server.key")),
            Some(Path::new(&client_ca.path("ca.crt"))),
        )
    };
    let broker = Mosquitto::start();
    let mut receiver = Receiver::start_tls(server(&first)).await;

    let agent_dir = tempfile::tempdir().unwrap();
    let (cert, key) = (
        agent_dir.path().join("tls.crt"),
        agent_dir.path().join("tls.key"),
    );
    std::fs::copy(first.path("client.crt"), &cert).unwrap();
    std::fs::copy(first.path("client.key"), &key).unwrap();
    let (cert_path, key_path) = (cert.display().to_string(), key.display().to_string());
    let tls = tls_lines(&first.path("ca.crt"), Some((&cert_path, &key_path)));
    let yaml = https_pipeline(broker.port, "agent-rotate-cert", &receiver, &tls);
    let mut agent = Agent::start(agent_dir.path(), &yaml);
    agent.wait_ready().await;
    publish(broker.port, "rotate-cert-pub", 0..5).await;
    delivered_once(&receiver, &agent, 5).await;
    let first_expiry = agent.metric(&expiry("sink_client"));
    assert!((first_expiry - (now_secs() + 7.0 * DAY)).abs() < DAY);

    // A broken certificate file: counted once, the certificate in use stays.
    replace(
        &cert,
        b"-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydA==\n-----END CERTIFICATE-----\n",
    );
    agent
        .wait_metric(&reloads("failed"), 1.0, Duration::from_secs(15))
        .await;
    publish(broker.port, "rotate-cert-pub", 5..10).await;
    delivered_once(&receiver, &agent, 10).await;
    assert_eq!(agent.metric(&expiry("sink_client")), first_expiry);
    assert_eq!(agent.metric(&reloads("ok")), 0.0);

    // The server now trusts only the new CA: the old certificate is refused.
    receiver.stop().await;
    receiver.set_tls(Some(server(&renewed)));
    receiver.resume().await;
    publish(broker.port, "rotate-cert-pub", 10..15).await;
    eventually(
        Duration::from_secs(20),
        "the old certificate refused",
        async || (!receiver.refused_handshakes().is_empty()).then_some(()),
    )
    .await;
    assert_eq!(receiver.accepted().len(), 10);

    // The renewed key and certificate land on disk: picked up, the backlog delivered.
    replace(&key, &std::fs::read(renewed.path("client.key")).unwrap());
    replace(&cert, &std::fs::read(renewed.path("client.crt")).unwrap());
    delivered_once(&receiver, &agent, 15).await;
    assert_eq!(agent.metric(&reloads("ok")), 1.0);
    assert_eq!(agent.metric(&reloads("failed")), 1.0);
    let renewed_expiry = agent.metric(&expiry("sink_client"));
    assert!(
        (renewed_expiry - (now_secs() + 30.0 * DAY)).abs() < DAY,
        "{renewed_expiry}"
    );
    assert_eq!(agent.log_text().matches("agent running").count(), 1);
}

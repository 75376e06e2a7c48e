//! `edge-agent doctor` against real components: a healthy setup reports every check ok,
//! and each check fails for a real reason with the right fix: the broker down, a wrong
//! password, an upstream whose certificate comes from an unknown CA, an expired client
//! certificate, a full tmpfs as the data directory, a model whose sha256 does not match.
//! Also: no arguments are needed when the pod's environment names the files, and the
//! queue check reads an encrypted queue beside the keys that sealed it.

use crate::common;
use crate::faults;
use crate::inference_common;

use std::path::Path;
use std::process::Command;

use common::*;
use edge_testkit::pki::Pki;
use serde_json::Value;

/// What one `doctor --output json` run said: (exit code, checks by name).
struct Diagnosis {
    code: i32,
    checks: Vec<Value>,
    text: String,
}

impl Diagnosis {
    fn check(&self, name: &str) -> &Value {
        self.checks
            .iter()
            .find(|c| c["name"] == name)
            .unwrap_or_else(|| panic!("no {name} check in:\n{}", self.text))
    }

    fn status(&self, name: &str) -> String {
        self.check(name)["status"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    fn fix(&self, name: &str) -> String {
        self.check(name)["fix"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    /// Every check but `name` is ok.
    fn only_failing(&self, name: &str) {
        for c in &self.checks {
            let expected = if c["name"] == name { "failed" } else { "ok" };
            assert_eq!(c["status"], expected, "{}", self.text);
        }
        assert_eq!(self.code, 2, "{}", self.text);
    }
}

fn doctor(config: &Path, data_dir: &Path) -> Diagnosis {
    doctor_with(
        Command::new(workspace_bin("edge-agent"))
            .arg("doctor")
            .arg("--config")
            .arg(config)
            .arg("--data-dir")
            .arg(data_dir),
    )
}

fn doctor_with(command: &mut Command) -> Diagnosis {
    let out = command
        .args([
            "--output",
            "json",
            "--timeout",
            "3s",
            "--node-name",
            "edge-test",
        ])
        .output()
        .expect("edge-agent doctor");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let json: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("doctor's JSON ({e}):\n{text}"));
    Diagnosis {
        code: out.status.code().expect("exit code"),
        checks: json["checks"].as_array().expect("checks").clone(),
        text,
    }
}

/// A pipeline for the test broker and receiver; `extra_source` / `extra_sink` add lines.
fn pipeline(broker: u16, receiver: &str, extra_source: &str, extra_sink: &str) -> String {
    pipeline_yaml(
        "site",
        "doctor",
        &format!(
            r#"  source:
    mqtt:
      url: mqtt://127.0.0.1:{broker}
      topics: ["sensors/+/temperature"]
      qos: 1
      clientId: agent-doctor
{extra_source}
  buffer: {{maxBytes: 1Mi}}
  sink:
    http:
      url: {receiver}/ingest
{extra_sink}
"#
        ),
    )
}

fn write(dir: &Path, name: &str, text: &str) -> std::path::PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_healthy_setup_is_all_ok_and_a_dead_broker_is_named_with_its_fix() {
    let mut broker = Mosquitto::start();
    let receiver = Receiver::start().await;
    let dir = tempfile::tempdir().unwrap();
    let url = format!("http://127.0.0.1:{}", receiver.port);
    let config = write(dir.path(), "p.yaml", &pipeline(broker.port, &url, "", ""));
    let data = dir.path().join("data");

    let healthy = doctor(&config, &data);
    for c in &healthy.checks {
        assert_eq!(c["status"], "ok", "{}", healthy.text);
    }
    assert_eq!(healthy.code, 0);
    let names: Vec<&str> = healthy
        .checks
        .iter()
        .filter_map(|c| c["name"].as_str())
        .collect();
    assert_eq!(
        names,
        [
            "manifest",
            "data-dir",
            "queue",
            "clock",
            "source",
            "upstream",
            "fleet-record",
            "certificates"
        ]
    );
    assert!(
        healthy.check("upstream")["detail"]
            .as_str()
            .unwrap()
            .contains("no data sent"),
        "{}",
        healthy.text
    );
    assert!(
        receiver.accepted().is_empty(),
        "doctor must not send records upstream"
    );
    assert!(
        healthy.check("source")["detail"]
            .as_str()
            .unwrap()
            .contains("no session for the agent yet"),
        "{}",
        healthy.text
    );

    // The text report, as a technician reads it.
    let text = Command::new(workspace_bin("edge-agent"))
        .args(["doctor", "--node-name", "edge-test", "--config"])
        .arg(&config)
        .arg("--data-dir")
        .arg(&data)
        .output()
        .unwrap();
    let shown = String::from_utf8_lossy(&text.stdout);
    assert!(
        shown.starts_with("edge-agent doctor: pipeline site/doctor on node edge-test\n"),
        "{shown}"
    );
    assert!(shown.ends_with("8 ok, 0 warning, 0 failed\n"), "{shown}");

    broker.stop();
    let down = doctor(&config, &data);
    down.only_failing("source");
    assert!(
        down.check("source")["detail"]
            .as_str()
            .unwrap()
            .contains("connection refused"),
        "{}",
        down.text
    );
    assert!(
        down.fix("source").contains("start the broker"),
        "{}",
        down.text
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_password_fails_the_source_check() {
    let broker = Mosquitto::with_users(&[("line-1", "right-password")]);
    let receiver = Receiver::start().await;
    let dir = tempfile::tempdir().unwrap();
    let url = format!("http://127.0.0.1:{}", receiver.port);
    let password = write(dir.path(), "password", "wrong-password\n");
    let login = |file: &Path| {
        format!(
            "      username: line-1\n      passwordFrom: {{file: \"{}\"}}",
            file.display()
        )
    };
    let config = write(
        dir.path(),
        "p.yaml",
        &pipeline(broker.port, &url, &login(&password), ""),
    );
    let data = dir.path().join("data");
    let wrong = doctor(&config, &data);
    wrong.only_failing("source");
    assert!(wrong.fix("source").contains("password"), "{}", wrong.text);

    std::fs::write(&password, "right-password\n").unwrap();
    let right = doctor(&config, &data);
    assert_eq!(right.status("source"), "ok", "{}", right.text);
    assert_eq!(right.code, 0, "{}", right.text);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_ca_fails_the_upstream_and_an_expired_certificate_is_found() {
    let broker = Mosquitto::start();
    let dir = tempfile::tempdir().unwrap();
    // The upstream's certificate comes from one CA; the pipeline trusts another.
    let theirs = Pki::new(&dir.path().join("theirs"));
    theirs.cert("ca", "/CN=upstream CA", &[]);
    theirs.cert("server", "/CN=127.0.0.1", &["subjectAltName=IP:127.0.0.1"]);
    let ours = Pki::new(&dir.path().join("ours"));
    ours.cert("ca", "/CN=some other CA", &[]);
    // A client certificate that expired in 2020.
    ours.expired_cert("client", "/CN=agent");
    let receiver = Receiver::start_tls(receiver::ServerTls::new(
        Path::new(&theirs.path("server.crt")),
        Path::new(&theirs.path("server.key")),
        None,
    ))
    .await;
    let url = format!("https://127.0.0.1:{}", receiver.port);
    let tls = |ca: &str| {
        format!(
            "      tls:\n        ca: {{file: \"{ca}\"}}\n        cert: {{file: \"{}\"}}\n        key: {{file: \"{}\"}}",
            ours.path("client.crt"),
            ours.path("client.key")
        )
    };
    let config = write(
        dir.path(),
        "p.yaml",
        &pipeline(broker.port, &url, "", &tls(&ours.path("ca.crt"))),
    );
    let data = dir.path().join("data");
    let got = doctor(&config, &data);
    assert_eq!(got.status("upstream"), "failed", "{}", got.text);
    assert!(got.fix("upstream").contains("CA"), "{}", got.text);
    assert_eq!(got.status("certificates"), "failed", "{}", got.text);
    let detail = got.check("certificates")["detail"].as_str().unwrap();
    assert!(
        detail.contains("sink client certificate expired"),
        "{}",
        got.text
    );
    assert!(got.fix("certificates").contains("renew"), "{}", got.text);

    // Trusting the upstream's CA fixes the upstream; the expired certificate is still
    // reported.
    let config = write(
        dir.path(),
        "p.yaml",
        &pipeline(broker.port, &url, "", &tls(&theirs.path("ca.crt"))),
    );
    let got = doctor(&config, &data);
    assert_eq!(got.status("certificates"), "failed", "{}", got.text);
    // This upstream asks for no client certificate, so the handshake passes.
    assert_eq!(got.status("upstream"), "ok", "{}", got.text);
    assert!(
        got.check("upstream")["detail"]
            .as_str()
            .unwrap()
            .contains("TLS verified"),
        "{}",
        got.text
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_filesystem_fails_the_data_directory() {
    faults::require_root("a_full_filesystem_fails_the_data_directory");
    let broker = Mosquitto::start();
    let receiver = Receiver::start().await;
    let dir = tempfile::tempdir().unwrap();
    let url = format!("http://127.0.0.1:{}", receiver.port);
    let config = write(dir.path(), "p.yaml", &pipeline(broker.port, &url, "", ""));
    let tmpfs = faults::Tmpfs::mount("1m");
    // Fill it: the next write gets ENOSPC.
    let filler = tmpfs.path.join("filler");
    let _ = std::fs::write(&filler, vec![0u8; 2 * 1024 * 1024]);
    let got = doctor(&config, &tmpfs.path);
    got.only_failing("data-dir");
    let detail = got.check("data-dir")["detail"].as_str().unwrap();
    assert!(detail.contains("No space left"), "{}", got.text);
    assert!(got.fix("data-dir").contains("free space"), "{}", got.text);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_model_with_a_wrong_checksum_fails_and_the_right_one_passes_its_golden_check() {
    let broker = Mosquitto::start();
    let receiver = Receiver::start().await;
    let model = inference_common::fixture_bytes("anomaly_autoencoder.tflite");
    let server = inference_common::FileServer::start(vec![
        ("/m/anomaly.tflite".to_string(), model.clone()),
        (
            "/m/anomaly.golden.json".to_string(),
            inference_common::fixture_bytes("anomaly_autoencoder.golden.json"),
        ),
    ])
    .await;
    let dir = tempfile::tempdir().unwrap();
    let url = format!("http://127.0.0.1:{}", receiver.port);
    let with_model = |sha: &str| {
        let spec = pipeline(broker.port, &url, "", "");
        spec.replace(
            "  buffer:",
            &format!(
                "  inference:\n    model: {{url: \"{}/m/anomaly.tflite\", sha256: \"{sha}\"}}\n    window: 16\n    golden: {{file: anomaly.golden.json}}\n  buffer:",
                server.base
            ),
        )
    };
    let data = dir.path().join("data");
    let wrong = "0".repeat(64);
    let config = write(dir.path(), "p.yaml", &with_model(&wrong));
    let got = doctor(&config, &data);
    got.only_failing("model");
    let detail = got.check("model")["detail"].as_str().unwrap();
    assert!(
        detail.contains("sha256") || detail.contains("checksum"),
        "{}",
        got.text
    );

    let right = inference_common::sha256_hex(&model);
    let config = write(dir.path(), "p.yaml", &with_model(&right));
    let got = doctor(&config, &data);
    assert_eq!(got.status("model"), "ok", "{}", got.text);
    let detail = got.check("model")["detail"].as_str().unwrap();
    assert!(detail.contains("golden vectors pass"), "{}", got.text);
}

/// In an agent pod the operator sets `EDGEPIPE_CONFIG`, `EDGEPIPE_DATA_DIR` and
/// `NODE_NAME`: `kubectl exec ... edge-agent doctor` needs no arguments. The queue check
/// opens an encrypted queue with the configured keys, and names a wrong one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_arguments_in_a_pod_and_the_queue_check_reads_an_encrypted_queue() {
    let broker = Mosquitto::start();
    let receiver = Receiver::down();
    let dir = tempfile::tempdir().unwrap();
    let key = write(dir.path(), "key", &"7e".repeat(32));
    let spec = Pipeline {
        broker_port: broker.port,
        client_id: "agent-pod",
        receiver_port: receiver.port,
        buffer: &format!(
            "{{encryption: {{keys: [{{id: k1, keyFrom: {{file: \"{}\"}}}}]}}}}",
            key.display()
        ),
        ..Pipeline::default()
    }
    .yaml();
    prepare_session(broker.port, "agent-pod", &["sensors/+/temperature"]).await;
    let mut agent = Agent::start(dir.path(), &spec);
    agent.wait_ready().await;
    let mut publisher = Publisher::connect(broker.port, "publisher-pod");
    for i in 0..20 {
        publisher
            .send(
                "sensors/a/temperature",
                reading("a", i as f64, 1_795_608_000_000 + i),
            )
            .await;
    }
    publisher.flush().await;
    agent
        .wait_metric(
            &series("edge_agent_queue_records", &[]),
            20.0,
            std::time::Duration::from_secs(20),
        )
        .await;

    let data_dir = agent.data_dir.clone();
    let config = agent.config.clone();
    let pod = |config: &Path| {
        let mut command = Command::new(workspace_bin("edge-agent"));
        command
            .arg("doctor")
            .env("EDGEPIPE_CONFIG", config)
            .env("EDGEPIPE_DATA_DIR", &data_dir)
            .env("NODE_NAME", "edge-test");
        command
    };
    // Beside the running agent: its queue (20 records, sealed with k1) and an upstream
    // that is down.
    let got = doctor_with(&mut pod(&config));
    assert!(
        got.check("source")["detail"]
            .as_str()
            .unwrap()
            .contains("the agent runs"),
        "{}",
        got.text
    );
    let queue = got.check("queue")["detail"].as_str().unwrap().to_string();
    assert!(queue.starts_with("20 records"), "{}", got.text);
    assert!(queue.contains("sealed with k1"), "{}", got.text);
    assert_eq!(got.status("upstream"), "failed", "{}", got.text);
    agent.assert_running();

    std::fs::write(&key, "81".repeat(32)).unwrap();
    let got = doctor_with(&mut pod(&config));
    assert_eq!(got.status("queue"), "failed", "{}", got.text);
    assert!(
        got.check("queue")["detail"]
            .as_str()
            .unwrap()
            .contains("key `k1`"),
        "{}",
        got.text
    );
}

/// The agent's persistent session: found while the agent is stopped; a broker restarted
/// without persistence lost it (a warning with its fix); and the empty session the check
/// creates to find out is removed, so the agent still subscribes when it comes back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agents_session_is_checked_only_while_it_is_stopped_and_left_as_found() {
    let mut broker = Mosquitto::start();
    let receiver = Receiver::start().await;
    let dir = tempfile::tempdir().unwrap();
    let spec = Pipeline {
        broker_port: broker.port,
        client_id: "agent-session",
        receiver_port: receiver.port,
        ..Pipeline::default()
    }
    .yaml();
    let mut agent = Agent::start(dir.path(), &spec);
    agent.wait_ready().await;
    let running = doctor(&agent.config, &agent.data_dir);
    assert!(
        running.check("source")["detail"]
            .as_str()
            .unwrap()
            .contains("the agent runs"),
        "{}",
        running.text
    );
    assert_eq!(agent.terminate().code(), Some(0));

    let kept = doctor(&agent.config, &agent.data_dir);
    assert_eq!(kept.status("source"), "ok", "{}", kept.text);
    assert!(
        kept.check("source")["detail"]
            .as_str()
            .unwrap()
            .contains("keeps the agent's persistent session"),
        "{}",
        kept.text
    );

    // A broker without persistence, restarted: the session and what it held are gone.
    broker.restart();
    let lost = doctor(&agent.config, &agent.data_dir);
    assert_eq!(lost.status("source"), "warning", "{}", lost.text);
    assert!(lost.fix("source").contains("persistence"), "{}", lost.text);
    assert_eq!(lost.code, 1, "{}", lost.text);

    // The check left no empty session behind: the agent subscribes again and delivers.
    agent.restart();
    agent.wait_ready().await;
    let mut publisher = Publisher::connect(broker.port, "publisher-session");
    eventually(
        std::time::Duration::from_secs(20),
        "a reading through the agent after the check",
        async || {
            publisher
                .send(
                    "sensors/s1/temperature",
                    reading("s1", 21.5, 1_795_608_000_000),
                )
                .await;
            publisher.flush().await;
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            (!receiver.accepted().is_empty()).then_some(())
        },
    )
    .await;
}

//! Observability proven against a real Prometheus: the agent runs on real MQTT traffic
//! (with invalid payloads and an upstream outage) to an HTTPS upstream with a client
//! certificate three days from expiry, the operator's metrics endpoint is served from its
//! real code, a real Prometheus scrapes both with the shipped alert rules loaded, the
//! certificate raises `CertificateExpiringSoon`, and every panel query of the shipped
//! dashboard must parse and return series.
//! Separately, every metric name the dashboard and the rules use must be exported by the
//! code: the dashboard's `or vector(0)` fallbacks would otherwise hide a renamed metric.

use std::collections::BTreeSet;
use std::io::Write;
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use edge_tests::{tool, workspace_root};

use edge_testkit::pki::Pki;
use edge_testkit::{Mosquitto, Receiver, ServerTls, free_port, parse_metrics, pipeline_yaml};

/// A child process killed on drop.
struct Proc(Child);
impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn wait_port(port: u16, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "{what} did not listen on {port}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn http_get(port: u16, path: &str) -> Option<String> {
    use std::io::Read;
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    let (head, body) = out.split_once("\r\n\r\n")?;
    head.starts_with("HTTP/1.1 200").then(|| body.to_string())
}

/// The value of one exact series line in a /metrics text (0 when absent).
fn metric(text: &str, series: &str) -> f64 {
    parse_metrics(text).get(series).copied().unwrap_or(0.0)
}

fn poll(what: &str, timeout: Duration, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !ok() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Publishes one message per line with QoS 1.
fn publish(port: u16, topic: &str, lines: &[String]) {
    let mut child = Command::new(tool("mosquitto_pub"))
        .args(edge_testkit::mqtt::cli_args(port, 1))
        .args(["-t", topic, "-l"])
        .stdin(Stdio::piped())
        .spawn()
        .expect("mosquitto_pub");
    {
        let stdin = child.stdin.as_mut().unwrap();
        for l in lines {
            writeln!(stdin, "{l}").unwrap();
        }
    }
    assert!(child.wait().unwrap().success(), "mosquitto_pub failed");
}

/// Metric names (`edge_agent_*`, `edge_operator_*`) used by the dashboard and the rules.
fn names_used_by_dashboard_and_rules() -> BTreeSet<String> {
    let root = workspace_root();
    let mut text = std::fs::read_to_string(root.join("deploy/grafana/edgepipe.json")).unwrap();
    text += &std::fs::read_to_string(root.join("deploy/prometheus/edgepipe-rules.yaml")).unwrap();
    let mut names = BTreeSet::new();
    for prefix in ["edge_agent_", "edge_operator_"] {
        for (i, _) in text.match_indices(prefix) {
            let name: String = text[i..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            names.insert(name);
        }
    }
    names
}

/// A name in an exposition: plain, or a histogram's `_bucket`/`_sum`/`_count` series.
fn exported(exposition: &str, name: &str) -> bool {
    parse_metrics(exposition)
        .keys()
        .any(|series| series.split('{').next() == Some(name))
}

struct Operator {
    port: u16,
    shutdown: tokio_util::sync::CancellationToken,
    _rt: tokio::runtime::Runtime,
}

/// Serves the operator's real metrics endpoint after a few reconciles.
fn start_operator_metrics() -> Operator {
    use edge_operator::telemetry::{Metrics, ReconcileResult};
    let rt = tokio::runtime::Runtime::new().unwrap();
    let metrics = Arc::new(Metrics::new().expect("operator metrics"));
    metrics.reconciled(ReconcileResult::Success, Duration::from_millis(12));
    metrics.reconciled(ReconcileResult::Success, Duration::from_millis(30));
    metrics.reconciled(ReconcileResult::Error, Duration::from_millis(5));
    // One pipeline's fleet as its agents report it (what a leader computes from their
    // records: `fleet_records.rs` checks that against a real control plane).
    let fleet = edge_crds::status::FleetStatus {
        reporting: 3,
        upstream_down: 1,
        backlogged: 1,
        backlog_bytes: 4096,
        oldest_backlog_seconds: 120,
        ..edge_crds::status::FleetStatus::default()
    };
    metrics.observe_fleets([("factory", "line1", &fleet)]);
    let port = free_port();
    let shutdown = tokio_util::sync::CancellationToken::new();
    let listener = rt
        .block_on(tokio::net::TcpListener::bind(("127.0.0.1", port)))
        .unwrap();
    let readiness = edge_operator::server::Readiness::default();
    readiness.set(true);
    rt.spawn(edge_operator::server::serve(
        listener,
        metrics,
        readiness,
        shutdown.clone(),
    ));
    wait_port(port, "operator metrics");
    Operator {
        port,
        shutdown,
        _rt: rt,
    }
}

#[test]
fn every_dashboard_query_returns_series_from_a_real_prometheus() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Mosquitto::start();
    let broker_port = broker.port;

    // The upstream (HTTPS, private CA) starts down: the agent must retry, stay ready, and
    // drain later. Its client certificate expires in three days.
    let pki = Pki::new(&dir.path().join("pki"));
    pki.cert(
        "server",
        "/CN=localhost",
        &["subjectAltName=DNS:localhost,IP:127.0.0.1"],
    );
    pki.cert_for_days(
        "client",
        "/CN=edge-agent",
        &["extendedKeyUsage=clientAuth"],
        3,
    );
    let rt = tokio::runtime::Runtime::new().unwrap();
    let mut receiver = Receiver::down_tls(ServerTls::new(
        &dir.path().join("pki/server.crt"),
        &dir.path().join("pki/server.key"),
        Some(&dir.path().join("pki/ca.crt")),
    ));
    let agent_port = free_port();
    let config = dir.path().join("pipeline.yaml");
    std::fs::write(
        &config,
        pipeline_yaml("factory", "monitored", &format!(
            r#"  source:
    mqtt: {{url: "mqtt://127.0.0.1:{broker_port}", topics: ["sensors/+/temperature"], clientId: prom-test}}
    format: {{value: value, device: device_id}}
  processors:
    - range: {{min: -40, max: 125}}
    - significantChange: {{window: 5, threshold: 1.0}}
  sink:
    http:
      url: https://localhost:{receiver}/ingest
      batchSize: 20
      flushInterval: 100ms
      retry: {{initialBackoff: 50ms, maxBackoff: 200ms}}
      tls:
        ca: {{file: {ca}}}
        cert: {{file: {cert}}}
        key: {{file: {key}}}
"#,
            receiver = receiver.port,
            ca = pki.path("ca.crt"),
            cert = pki.path("client.crt"),
            key = pki.path("client.key"),
        )),
    )
    .unwrap();
    let log = std::fs::File::create(dir.path().join("agent.log")).unwrap();
    let _agent = Proc(
        Command::new(edge_testkit::workspace_bin("edge-agent"))
            .args(["run", "--config"])
            .arg(&config)
            .arg("--data-dir")
            .arg(dir.path().join("data"))
            .args([
                "--listen",
                &format!("127.0.0.1:{agent_port}"),
                "--node-name",
                "edge-1",
            ])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start edge-agent"),
    );
    poll("agent ready", Duration::from_secs(30), || {
        http_get(agent_port, "/readyz").is_some()
    });

    // Real traffic: valid readings with a few real changes, and invalid payloads.
    let mut lines: Vec<String> = (0..300)
        .map(|i| {
            let value = if i % 50 == 49 {
                40.0
            } else {
                20.0 + (i % 3) as f64 * 0.1
            };
            format!(r#"{{"device_id":"t{}","value":{value}}}"#, i % 5)
        })
        .collect();
    lines.extend([
        "not json".into(),
        r#"{"device_id":"t1"}"#.into(),
        r#"{"device_id":"t1","value":"hot"}"#.into(),
    ]);
    publish(broker_port, "sensors/line1/temperature", &lines);
    let series = |s: &str| metric(&http_get(agent_port, "/metrics").unwrap_or_default(), s);
    poll(
        "ingest and failed sync attempts",
        Duration::from_secs(30),
        || {
            series(r#"edge_agent_messages_received_total{pipeline="factory/monitored"}"#) >= 303.0
                && series(
                    r#"edge_agent_sync_requests_total{outcome="retry",pipeline="factory/monitored"}"#,
                ) > 0.0
        },
    );
    assert_eq!(
        series(r#"edge_agent_upstream_up{pipeline="factory/monitored"}"#),
        0.0
    );
    rt.block_on(receiver.resume());
    poll("backlog drained", Duration::from_secs(30), || {
        series(r#"edge_agent_queue_records{pipeline="factory/monitored"}"#) == 0.0
            && series(r#"edge_agent_upstream_up{pipeline="factory/monitored"}"#) == 1.0
    });

    let operator = start_operator_metrics();

    // Names used by the dashboard and the rules are exported by the code.
    let agent_text = http_get(agent_port, "/metrics").unwrap();
    let operator_text = http_get(operator.port, "/metrics").unwrap();
    let missing: Vec<String> = names_used_by_dashboard_and_rules()
        .into_iter()
        .filter(|n| !exported(&agent_text, n) && !exported(&operator_text, n))
        .collect();
    assert!(
        missing.is_empty(),
        "used by the dashboard or rules but not exported: {missing:?}"
    );

    // A real Prometheus scrapes both, with the shipped rules loaded.
    let prom_port = free_port();
    let rules = workspace_root().join("deploy/prometheus/edgepipe-rules.yaml");
    let prom_conf = dir.path().join("prometheus.yml");
    std::fs::write(
        &prom_conf,
        format!(
            "global: {{scrape_interval: 1s, evaluation_interval: 1s}}\nrule_files: [\"{}\"]\nscrape_configs:\n  - job_name: edge-agent\n    static_configs: [{{targets: [\"127.0.0.1:{agent_port}\"]}}]\n  - job_name: edge-operator\n    static_configs: [{{targets: [\"127.0.0.1:{}\"]}}]\n",
            rules.display(),
            operator.port
        ),
    )
    .unwrap();
    let _prometheus = Proc(
        Command::new(tool("prometheus"))
            .arg(format!("--config.file={}", prom_conf.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("tsdb").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{prom_port}"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("prometheus.log")).unwrap())
            .spawn()
            .expect("start prometheus"),
    );
    wait_port(prom_port, "prometheus");
    // Enough samples for rate() and deriv() over both targets.
    let query = |q: &str| {
        let encoded: String = q
            .bytes()
            .map(|b| {
                if b.is_ascii_alphanumeric() {
                    (b as char).to_string()
                } else {
                    format!("%{b:02X}")
                }
            })
            .collect();
        http_get(prom_port, &format!("/api/v1/query?query={encoded}")).unwrap_or_default()
    };
    poll(
        "Prometheus has scraped both targets several times",
        Duration::from_secs(60),
        || {
            let r = query("count(count_over_time(up[1m]) >= 4) == 2");
            r.contains("\"result\":[{")
        },
    );

    // The shipped rule fires for the certificate with three days left.
    poll(
        "CertificateExpiringSoon firing for the sink's client certificate",
        Duration::from_secs(30),
        || {
            query(r#"ALERTS{alertname="CertificateExpiringSoon",alertstate="firing",use="sink_client",pipeline="factory/monitored"}"#)
                .contains("\"result\":[{")
        },
    );

    let out = Command::new("python3")
        .arg(workspace_root().join("deploy/grafana/check_dashboard.py"))
        .arg(format!("http://127.0.0.1:{prom_port}"))
        .arg(workspace_root().join("deploy/grafana/edgepipe.json"))
        .arg("--require-series")
        .output()
        .expect("python3 runs the dashboard check");
    operator.shutdown.cancel();
    assert!(
        out.status.success(),
        "dashboard queries failed against the real Prometheus:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

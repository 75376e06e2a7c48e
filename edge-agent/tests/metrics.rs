//! The agent's `/metrics` as Prometheus sees it: every name the dashboard and the alert
//! rules rely on is exported from the first scrape (with every label value known up
//! front), and `promtool check metrics` finds nothing to complain about.

use crate::common;

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;

/// The names of the Observability issue, fixed so dashboards and alerts can rely on them.
const NAMES: [&str; 29] = [
    "edge_agent_messages_received_total",
    "edge_agent_received_bytes_total",
    "edge_agent_messages_invalid_total",
    "edge_agent_records_filtered_total",
    "edge_agent_records_enqueued_total",
    "edge_agent_records_dropped_total",
    "edge_agent_records_synced_total",
    "edge_agent_sent_bytes_total",
    "edge_agent_sync_requests_total",
    "edge_agent_sync_duration_seconds_bucket",
    "edge_agent_queue_records",
    "edge_agent_queue_bytes",
    "edge_agent_queue_oldest_age_seconds",
    "edge_agent_queue_capacity_bytes",
    "edge_agent_upstream_up",
    "edge_agent_upstream_down_seconds_total",
    "edge_agent_mqtt_connected",
    "edge_agent_ingest_to_durable_seconds_bucket",
    "edge_agent_inferences_total",
    "edge_agent_anomalies_total",
    "edge_agent_inference_duration_seconds_bucket",
    "edge_agent_inference_errors_total",
    "edge_agent_model_loads_total",
    "edge_agent_actions_published_total",
    "edge_agent_action_latency_seconds_bucket",
    "edge_agent_queue_corruptions_total",
    "edge_agent_http_connections_rejected_total",
    "edge_agent_credential_reloads_total",
    "edge_agent_build_info",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_metric_is_exported_from_the_start_and_passes_promtool() {
    let broker = Mosquitto::start();
    let receiver = Receiver::start().await;
    let dir = tempfile::tempdir().unwrap();
    let yaml = Pipeline {
        broker_port: broker.port,
        client_id: "agent-metrics",
        receiver_port: receiver.port,
        processors: "[{range: {min: -40, max: 125}}, {deadband: {absolute: 0.5}}]",
        ..Pipeline::default()
    }
    .yaml();
    let mut agent = Agent::start(dir.path(), &yaml);
    agent.wait_ready().await;
    let (status, text) = eventually(Duration::from_secs(5), "/metrics", async || {
        agent.get("/metrics")
    })
    .await;
    assert_eq!(status, 200);
    let exported = parse_metrics(&text);
    for name in NAMES {
        assert!(
            exported
                .keys()
                .any(|series| series.starts_with(&format!("{name}{{"))),
            "{name} is not exported:\n{text}"
        );
    }
    for series in exported.keys() {
        assert!(
            series.contains("pipeline=\"factory/test\""),
            "{series} lacks the pipeline label"
        );
    }
    let zero = |s: String| assert_eq!(exported.get(&s), Some(&0.0), "{s} not pre-initialised");
    for reason in [
        "queue_full",
        "max_age",
        "dead_letter",
        "device_evicted",
        "disk_full",
    ] {
        zero(series(
            "edge_agent_records_dropped_total",
            &[("reason", reason)],
        ));
    }
    for outcome in ["success", "retry", "rejected"] {
        zero(series(
            "edge_agent_sync_requests_total",
            &[("outcome", outcome)],
        ));
    }
    for kind in ["reading", "aggregate", "anomaly"] {
        zero(series(
            "edge_agent_records_enqueued_total",
            &[("kind", kind)],
        ));
    }
    for processor in ["range", "deadband"] {
        zero(series(
            "edge_agent_records_filtered_total",
            &[("processor", processor)],
        ));
    }
    zero(series(
        "edge_agent_messages_invalid_total",
        &[("reason", "not_json")],
    ));
    assert_eq!(
        exported.get(&series("edge_agent_mqtt_connected", &[])),
        Some(&1.0)
    );

    let mut promtool = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool on PATH (apt install prometheus)");
    promtool
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = promtool.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The line of `edge-agent top`'s panel labelled `label` (the label and a space, then its
/// figures), or a panic showing the panel.
fn top_line<'a>(panel: &'a str, label: &str) -> &'a str {
    panel
        .lines()
        .find(|l| l.starts_with(&format!("{label} ")))
        .unwrap_or_else(|| panic!("no {label:?} line in the panel:\n{panel}"))
}

/// The rate and total of a counter line of the panel (`label  12.0/s  340 ...`).
fn top_counter(panel: &str, label: &str) -> (String, f64) {
    let line = top_line(panel, label);
    let mut figures = line[label.len()..].split_whitespace();
    let rate = figures.next().unwrap_or_default().to_string();
    let total = figures
        .next()
        .and_then(|t| t.parse().ok())
        .unwrap_or_else(|| panic!("no total in {line:?}"));
    (rate, total)
}

/// The text after the label of a `label  value` line of the panel.
fn top_value<'a>(panel: &'a str, label: &str) -> &'a str {
    top_line(panel, label)[label.len()..].trim()
}

/// A tmux server of this test alone (its own socket), killed with everything in it when
/// the test ends, even by a panic (then the pane is printed first, to see what it showed).
struct Tmux {
    bin: std::path::PathBuf,
    socket: String,
    session: String,
}

impl Tmux {
    fn command(&self) -> Command {
        let mut command = Command::new(&self.bin);
        command.args(["-L", &self.socket]);
        command
    }

    /// What the pane shows now.
    fn capture(&self) -> String {
        let out = self
            .command()
            .args(["capture-pane", "-p", "-t", &self.session])
            .output()
            .expect("tmux capture-pane");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("tmux pane at the failure:\n{}", self.capture());
        }
        let _ = self
            .command()
            .arg("kill-server")
            .stderr(Stdio::null())
            .status();
    }
}

/// `edge-agent top` against a real agent (real Mosquitto, real receiver): `--once` prints
/// the totals and backlog the agent's own `/metrics` holds, with rates from two scrapes;
/// the live view, in a real terminal (tmux), shows the pipeline, follows the synced total
/// as it grows, says when the agent is unreachable and picks it up again when it is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn top_shows_what_the_agent_exports_once_and_live_in_a_terminal() {
    // Fails (never skips) without tmux, naming tests/scripts/install-deps.sh.
    let tmux_bin = tool("tmux");
    let broker = Mosquitto::start();
    let receiver = Receiver::start().await;
    let dir = tempfile::tempdir().unwrap();
    let yaml = Pipeline {
        broker_port: broker.port,
        client_id: "agent-top",
        receiver_port: receiver.port,
        processors: "[{range: {min: -40, max: 125}}]",
        ..Pipeline::default()
    }
    .yaml();
    prepare_session(broker.port, "agent-top", &["sensors/+/temperature"]).await;
    let mut agent = Agent::start(dir.path(), &yaml);
    agent.wait_ready().await;
    let url = format!("http://127.0.0.1:{}/metrics", agent.metrics_port);

    // 20 readings in range, 5 out of range (filtered by `range`), 2 malformed.
    let mut publisher = Publisher::connect(broker.port, "top-publisher");
    let topic = "sensors/t1/temperature";
    for i in 0..20 {
        publisher
            .send(
                topic,
                reading("t1", f64::from(i), 1_700_000_000_000 + i64::from(i)),
            )
            .await;
    }
    for i in 0..5 {
        publisher
            .send(topic, reading("t1", 500.0, 1_700_000_100_000 + i))
            .await;
    }
    publisher.send(topic, "{\"device_id\":\"t1\"}").await;
    publisher.send(topic, "{\"device_id\":\"t1\"}").await;
    publisher.flush().await;
    let received = series("edge_agent_messages_received_total", &[]);
    let synced = series("edge_agent_records_synced_total", &[]);
    let queued = series("edge_agent_queue_records", &[]);
    eventually(
        Duration::from_secs(20),
        "27 in, 20 synced, 0 queued",
        async || {
            let m = agent.metrics();
            let get = |s: &str| m.get(s).copied().unwrap_or(-1.0);
            (get(&received) == 27.0 && get(&synced) == 20.0 && get(&queued) == 0.0).then_some(())
        },
    )
    .await;

    // (a) --once: two scrapes 300 ms apart, one frame, no clearing codes.
    let out = Command::new(workspace_bin("edge-agent"))
        .args(["top", "--once", "--interval", "300ms", "--url", &url])
        .output()
        .expect("run edge-agent top --once");
    let panel = String::from_utf8(out.stdout).unwrap();
    assert!(
        out.status.success(),
        "top --once: {}\n{panel}{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    println!("edge-agent top --once --url {url}\n{panel}");
    assert!(!panel.contains('\x1b'), "--once clears nothing:\n{panel:?}");
    for line in panel.lines() {
        assert!(
            line.chars().count() <= 80,
            "wider than 80 columns: {line:?}"
        );
    }
    let m = agent.metrics();
    let get = |s: &str| {
        *m.get(s)
            .unwrap_or_else(|| panic!("{s} not exported by the agent"))
    };
    let sum = |name: &str| edge_testkit::metrics::sum(&m, name);
    let header = panel.lines().next().unwrap_or_default();
    assert!(
        header.starts_with("edge-agent top  pipeline factory/test  agent "),
        "{header}"
    );
    assert_eq!(top_counter(&panel, "messages in").1, get(&received));
    assert_eq!(top_counter(&panel, "messages in").1, 27.0);
    assert_eq!(
        top_counter(&panel, "records synced"),
        ("0.0/s".to_string(), get(&synced)),
        "stable by now: rate 0 (from two scrapes, not —), total as exported"
    );
    assert_eq!(top_counter(&panel, "records synced").1, 20.0);
    assert_eq!(
        top_counter(&panel, "records queued").1,
        sum("edge_agent_records_enqueued_total")
    );
    assert_eq!(
        top_counter(&panel, "  filtered").1,
        sum("edge_agent_records_filtered_total")
    );
    assert_eq!(top_counter(&panel, "  filtered").1, 5.0);
    assert_eq!(
        top_counter(&panel, "    range").1,
        get(&series(
            "edge_agent_records_filtered_total",
            &[("processor", "range")]
        ))
    );
    assert_eq!(
        top_counter(&panel, "  invalid").1,
        sum("edge_agent_messages_invalid_total")
    );
    assert_eq!(top_counter(&panel, "  invalid").1, 2.0);
    for (s, v) in m
        .iter()
        .filter(|(s, v)| s.starts_with("edge_agent_messages_invalid_total{") && **v > 0.0)
    {
        let reason = s
            .split("reason=\"")
            .nth(1)
            .unwrap()
            .split('"')
            .next()
            .unwrap();
        assert_eq!(top_counter(&panel, &format!("    {reason}")).1, *v);
    }
    assert_eq!(
        top_counter(&panel, "records dropped").1,
        sum("edge_agent_records_dropped_total")
    );
    assert_eq!(
        top_value(&panel, "backlog"),
        format!(
            "{} records, {} B",
            get(&queued),
            get(&series("edge_agent_queue_bytes", &[]))
        )
    );
    assert_eq!(top_value(&panel, "outlook"), "empty");
    let requests = |outcome: &str| {
        get(&series(
            "edge_agent_sync_requests_total",
            &[("outcome", outcome)],
        ))
    };
    assert_eq!(
        top_value(&panel, "upstream"),
        format!(
            "up; requests success {}, retry {}, rejected {}",
            requests("success"),
            requests("retry"),
            requests("rejected")
        )
    );
    assert_eq!(
        top_value(&panel, "source broker"),
        format!(
            "connected; connections made: {}",
            get(&series("edge_agent_mqtt_connections_total", &[]))
        )
    );

    // (b) The live view in a real terminal, following the synced total.
    let bin = workspace_bin("edge-agent");
    let bin = bin.to_str().unwrap();
    assert!(!bin.contains('\''), "{bin}");
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    let tmux = Tmux {
        bin: tmux_bin,
        socket: format!("edge-top-{}-{nanos}", std::process::id()),
        session: "top".to_string(),
    };
    // Keep the pane when top exits, so a failure shows its last words.
    let conf = dir.path().join("tmux.conf");
    std::fs::write(&conf, "set -g remain-on-exit on\n").unwrap();
    let started = tmux
        .command()
        .arg("-f")
        .arg(&conf)
        .args([
            "new-session",
            "-d",
            "-s",
            &tmux.session,
            "-x",
            "100",
            "-y",
            "40",
        ])
        .arg(format!("'{bin}' top --interval 200ms --url {url}"))
        .status()
        .expect("tmux new-session");
    assert!(started.success(), "tmux new-session: {started}");
    let shows_synced = async |agent: &mut Agent, tmux: &Tmux, what: &str| {
        eventually(Duration::from_secs(15), what, async || {
            let want = agent.metric(&synced);
            let pane = tmux.capture();
            let shown = pane
                .lines()
                .find(|l| l.starts_with("records synced "))
                .and_then(|l| l.split_whitespace().nth(3))
                .and_then(|t| t.parse::<f64>().ok());
            (pane.contains("pipeline factory/test") && shown == Some(want)).then_some((want, pane))
        })
        .await
    };
    let (shown, pane) = shows_synced(&mut agent, &tmux, "the pane to show 20 synced").await;
    assert_eq!(shown, 20.0, "{pane}");
    assert!(!pane.contains("unreachable"), "{pane}");

    for i in 0..10 {
        publisher
            .send(
                topic,
                reading("t2", f64::from(i), 1_700_000_200_000 + i64::from(i)),
            )
            .await;
    }
    publisher.flush().await;
    agent
        .wait_metric(&synced, 30.0, Duration::from_secs(20))
        .await;
    let (shown, pane) = shows_synced(&mut agent, &tmux, "the pane to follow to 30 synced").await;
    assert_eq!(shown, 30.0, "{pane}");
    println!("the live view in tmux:\n{pane}");

    // The agent goes away: the view says so and keeps trying; back on the same port (its
    // counters start again at 0), the view shows its figures again.
    agent.kill();
    let pane = eventually(
        Duration::from_secs(15),
        "the pane to say the agent is unreachable",
        async || {
            let pane = tmux.capture();
            pane.contains(&format!("agent unreachable at {url}: "))
                .then_some(pane)
        },
    )
    .await;
    assert!(!pane.contains("records synced"), "{pane}");
    agent.restart();
    agent.wait_ready().await;
    let (_, pane) = shows_synced(&mut agent, &tmux, "the pane to show the agent again").await;
    assert!(!pane.contains("unreachable"), "{pane}");
    assert!(!pane.contains("Pane is dead"), "top exited:\n{pane}");

    let killed = tmux
        .command()
        .args(["kill-session", "-t", &tmux.session])
        .status()
        .expect("tmux kill-session");
    assert!(killed.success(), "tmux kill-session: {killed}");
}

/// `--once` against an endpoint nobody serves: exit 1 with one line naming the URL; a
/// URL that is not `http://` is refused the same way.
#[test]
fn top_once_names_an_unreachable_url_in_one_line_and_exits_1() {
    let url = format!("http://127.0.0.1:{}/metrics", free_port());
    for (url, why) in [
        (url.as_str(), format!("agent unreachable at {url}: ")),
        (
            "https://127.0.0.1:9464/metrics",
            "only http:// URLs are supported".to_string(),
        ),
    ] {
        let out = Command::new(workspace_bin("edge-agent"))
            .args(["top", "--once", "--interval", "100ms", "--url", url])
            .output()
            .expect("run edge-agent top --once");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{url}: {stderr}");
        assert!(out.stdout.is_empty(), "{url}: nothing on stdout");
        assert_eq!(stderr.lines().count(), 1, "{url}: one line:\n{stderr}");
        assert!(stderr.contains(&why), "{url}: {stderr}");
        assert!(stderr.contains(url), "{url}: {stderr}");
    }
}

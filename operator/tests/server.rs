//! The operator's HTTP endpoint on a real socket: health answers, `/metrics` holds the
//! operator metrics and passes `promtool check metrics`, and the server stops on shutdown.

use crate::common;

use std::io::Write;
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use common::pipeline;
use edge_crds::EdgePipelineStatus;
use edge_operator::controller::StoredPipeline;
use edge_operator::server::{Readiness, serve};
use edge_operator::telemetry::{Metrics, ReconcileResult};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;
use kube::runtime::{reflector, watcher};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

async fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    let request = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    stream
        .write_all(request.as_bytes())
        .await
        .expect("send request");
    let mut response = String::new();
    stream
        .read_to_string(&mut response)
        .await
        .expect("read response");
    let (head, body) = response.split_once("\r\n\r\n").expect("HTTP response");
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("status code");
    (status, body.to_string())
}

fn condition(type_: &str, status: &str) -> Condition {
    Condition {
        type_: type_.to_string(),
        status: status.to_string(),
        reason: "Test".to_string(),
        message: String::new(),
        observed_generation: Some(1),
        last_transition_time: Time(Timestamp::UNIX_EPOCH),
    }
}

fn promtool_check(text: &str) -> std::process::Output {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool on PATH (tests/scripts/install-deps.sh installs it)");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(text.as_bytes())
        .expect("write metrics");
    child.wait_with_output().expect("promtool finishes")
}

#[tokio::test]
async fn health_and_metrics_endpoints() {
    let metrics = Arc::new(Metrics::new().expect("metrics"));
    metrics.reconciled(ReconcileResult::Success, Duration::from_millis(12));
    metrics.reconciled(ReconcileResult::Success, Duration::from_millis(30));
    metrics.reconciled(ReconcileResult::Error, Duration::from_millis(700));

    let (store, mut writer) = reflector::store();
    let statuses = [
        vec![
            condition("Ready", "True"),
            condition("Progressing", "False"),
            condition("Invalid", "False"),
        ],
        vec![
            condition("Ready", "False"),
            condition("Progressing", "True"),
            condition("Degraded", "True"),
        ],
    ];
    for (i, conditions) in statuses.into_iter().enumerate() {
        let mut p = pipeline("");
        p.metadata.name = Some(format!("p{i}"));
        p.status = Some(EdgePipelineStatus {
            conditions,
            ..EdgePipelineStatus::default()
        });
        writer.apply_watcher_event(&watcher::Event::Apply(StoredPipeline::from_pipeline(&p)));
    }
    metrics.count_pipelines_from(Some(store));

    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("address");
    let readiness = Readiness::default();
    let shutdown = CancellationToken::new();
    let server = tokio::spawn(serve(
        listener,
        metrics.clone(),
        readiness.clone(),
        shutdown.clone(),
    ));

    assert_eq!(get(addr, "/livez").await.0, 200);
    assert_eq!(
        get(addr, "/readyz").await.0,
        503,
        "not ready before the cache is synced"
    );
    readiness.set(true);
    assert_eq!(get(addr, "/readyz").await.0, 200);
    assert_eq!(get(addr, "/nothing").await.0, 404);

    let (status, text) = get(addr, "/metrics").await;
    assert_eq!(status, 200);
    for line in [
        "edge_operator_reconciliations_total{result=\"success\"} 2",
        "edge_operator_reconciliations_total{result=\"error\"} 1",
        "edge_operator_reconcile_duration_seconds_count 3",
        "edge_operator_pipelines{condition=\"Ready\"} 1",
        "edge_operator_pipelines{condition=\"Progressing\"} 1",
        "edge_operator_pipelines{condition=\"Degraded\"} 1",
        "edge_operator_pipelines{condition=\"Invalid\"} 0",
        &format!(
            "edge_operator_build_info{{version=\"{}\"}} 1",
            env!("CARGO_PKG_VERSION")
        ),
    ] {
        assert!(
            text.lines().any(|l| l == line),
            "missing {line:?} in\n{text}"
        );
    }
    let checked = promtool_check(&text);
    assert!(
        checked.status.success(),
        "promtool check metrics:\n{}{}",
        String::from_utf8_lossy(&checked.stdout),
        String::from_utf8_lossy(&checked.stderr)
    );
    // The check can fail: a counter without `_total` is reported.
    let broken = text.replace(
        "edge_operator_reconciliations_total",
        "edge_operator_reconciliations",
    );
    assert!(!promtool_check(&broken).status.success());

    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(5), server)
        .await
        .expect("the server stops on shutdown")
        .expect("server task");
    assert!(
        TcpStream::connect(addr).await.is_err(),
        "the listener is closed"
    );
}

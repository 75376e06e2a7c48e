//! `edge-operator run` as a process against a fake API server over HTTP that lists one
//! EdgePipeline, holds watches open and echoes writes: the operator syncs its caches,
//! turns ready, reconciles the pipeline (apply its configuration revision and DaemonSet, patch status,
//! publish an Event), serves metrics, and exits 0 on SIGTERM. Also: it fails fast, with a
//! hint, when EdgePipelines cannot be listed (after building its TLS client, which needs
//! the rustls provider installed first).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const DEADLINE: Duration = Duration::from_secs(15);

type Body = BoxBody<Bytes, Infallible>;

/// The one EdgePipeline the fake API server lists.
fn stored_pipeline() -> serde_json::Value {
    serde_json::json!({
        "apiVersion": "edgepipe.dev/v1alpha1", "kind": "EdgePipeline",
        "metadata": {"name": "line1", "namespace": "factory", "uid": "6b0a3d2e-0000-4000-8000-000000000001",
                     "generation": 1, "resourceVersion": "7"},
        "spec": {"source": {"mqtt": {"url": "mqtt://${HOST_IP}:1883", "topics": ["sensors/+/temperature"]}},
                 "sink": {"http": {"url": "https://ingest.example.com/batch"}}}
    })
}

fn json_response(status: u16, value: &serde_json::Value) -> Response<Body> {
    let mut response = Response::new(Full::new(Bytes::from(value.to_string())).boxed());
    *response.status_mut() = hyper::StatusCode::from_u16(status).expect("status code");
    response
}

async fn answer(req: Request<Incoming>) -> Response<Body> {
    let query = req.uri().query().unwrap_or("").to_string();
    let path = req.uri().path().to_string();
    let method = req.method().clone();
    let body: serde_json::Value = match req.into_body().collect().await {
        Ok(collected) => serde_json::from_slice(&collected.to_bytes()).unwrap_or_default(),
        Err(_) => serde_json::Value::Null,
    };
    if query
        .split('&')
        .any(|p| p == "watch=true" || p == "watch=1")
    {
        // A watch that stays open with no events.
        let events = futures::stream::pending::<Result<Frame<Bytes>, Infallible>>();
        return Response::new(StreamBody::new(events).boxed());
    }
    match method {
        hyper::Method::GET if path.contains("/configmaps/") || path.contains("/daemonsets/") => {
            let missing = serde_json::json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "reason": "NotFound", "code": 404, "message": "not found"});
            json_response(404, &missing)
        }
        hyper::Method::GET => {
            let items = if path == "/apis/edgepipe.dev/v1alpha1/edgepipelines"
                && !query.contains("limit=1&")
                && !query.ends_with("limit=1")
            {
                vec![stored_pipeline()]
            } else {
                vec![]
            };
            let list = serde_json::json!({"apiVersion": "v1", "kind": "List", "metadata": {"resourceVersion": "1"}, "items": items});
            json_response(200, &list)
        }
        hyper::Method::PATCH if path.ends_with("/status") => {
            let mut pipeline = stored_pipeline();
            pipeline["status"] = body["status"].clone();
            json_response(200, &pipeline)
        }
        hyper::Method::PATCH => json_response(200, &body),
        hyper::Method::POST => json_response(201, &body),
        _ => json_response(405, &serde_json::json!({})),
    }
}

/// Serves the fake API and records `METHOD path?query` of every request.
async fn fake_api(listener: TcpListener, log: Arc<Mutex<Vec<String>>>) {
    while let Ok((stream, _)) = listener.accept().await {
        let log = log.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req: Request<Incoming>| {
                if let Ok(mut log) = log.lock() {
                    log.push(format!("{} {}", req.method(), req.uri()));
                }
                async move { Ok::<_, Infallible>(answer(req).await) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

fn kubeconfig(dir: &std::path::Path, server: &str) -> std::path::PathBuf {
    let path = dir.join("kubeconfig");
    let text = format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster: {{server: '{server}', insecure-skip-tls-verify: true}}\n\
         users:\n- name: fake\n  user: {{token: fake}}\ncontexts:\n- name: fake\n  context: {{cluster: fake, user: fake, namespace: default}}\n\
         current-context: fake\n"
    );
    std::fs::write(&path, text).expect("write kubeconfig");
    path
}

fn free_port() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], edge_testkit::free_port()))
}

async fn status_of(addr: SocketAddr, path: &str) -> Option<u16> {
    let mut stream = TcpStream::connect(addr).await.ok()?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).await.ok()?;
    response.split_whitespace().nth(1)?.parse().ok()
}

fn spawn_operator(kubeconfig: &std::path::Path, listen: SocketAddr) -> Child {
    Command::new(env!("CARGO_BIN_EXE_edge-operator"))
        .args(["run", "--listen", &listen.to_string()])
        .env("KUBECONFIG", kubeconfig)
        .env("RUST_LOG", "info")
        .env_remove("KUBERNETES_SERVICE_HOST")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("edge-operator starts")
}

/// Waits for the process to exit, up to the deadline.
fn wait_exit(child: &mut Child) -> std::process::ExitStatus {
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().expect("wait") {
            return status;
        }
        if start.elapsed() > DEADLINE {
            let _ = child.kill();
            panic!("edge-operator did not exit within {DEADLINE:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn stderr_of(child: &mut Child) -> String {
    let mut text = String::new();
    if let Some(mut err) = child.stderr.take() {
        let _ = std::io::Read::read_to_string(&mut err, &mut text);
    }
    text
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_operator_turns_ready_reconciles_and_stops_on_sigterm() {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let api_addr = listener.local_addr().expect("address");
    let log = Arc::new(Mutex::new(vec![]));
    tokio::spawn(fake_api(listener, log.clone()));
    let dir = tempfile::tempdir().expect("tempdir");
    let config = kubeconfig(dir.path(), &format!("http://{api_addr}"));
    let listen = free_port();
    let mut child = spawn_operator(&config, listen);

    let start = Instant::now();
    while status_of(listen, "/readyz").await != Some(200) {
        if let Some(status) = child.try_wait().expect("wait") {
            panic!("edge-operator exited ({status}): {}", stderr_of(&mut child));
        }
        if start.elapsed() > DEADLINE {
            let _ = child.kill();
            let requests = log.lock().map(|l| l.clone()).unwrap_or_default();
            panic!(
                "not ready within {DEADLINE:?}: {}\nrequests: {requests:#?}",
                stderr_of(&mut child)
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(status_of(listen, "/livez").await, Some(200));
    assert_eq!(status_of(listen, "/metrics").await, Some(200));

    // The listed pipeline is reconciled: its objects applied, its status patched, an Event.
    let expected = [
        "PATCH /api/v1/namespaces/factory/configmaps/line1-agent-",
        "PATCH /apis/apps/v1/namespaces/factory/daemonsets/line1-agent?",
        "PATCH /apis/edgepipe.dev/v1alpha1/namespaces/factory/edgepipelines/line1/status?",
        "POST /apis/events.k8s.io/v1/namespaces/factory/events?",
    ];
    let start = Instant::now();
    loop {
        let requests = log.lock().expect("log").clone();
        let missing: Vec<&str> = expected
            .iter()
            .filter(|e| !requests.iter().any(|r| r.starts_with(*e)))
            .copied()
            .collect();
        if missing.is_empty() {
            break;
        }
        if start.elapsed() > DEADLINE {
            let _ = child.kill();
            panic!(
                "never saw {missing:#?} in {requests:#?}\n{}",
                stderr_of(&mut child)
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let requests = log.lock().expect("log").clone();
    assert!(
        requests
            .iter()
            .filter(
                |r| r.starts_with("PATCH /api/v1/namespaces/factory/configmaps/")
                    || r.starts_with("PATCH /apis/apps/")
            )
            .all(|r| r.contains("fieldManager=edge-operator") && r.contains("force=true")),
        "every write is a server-side apply by edge-operator: {requests:#?}"
    );
    for expected in [
        "GET /apis/edgepipe.dev/v1alpha1/edgepipelines?",
        "GET /apis/apps/v1/daemonsets?&labelSelector=app.kubernetes.io%2Fmanaged-by%3Dedge-operator",
        "GET /api/v1/configmaps?&labelSelector=app.kubernetes.io%2Fmanaged-by%3Dedge-operator",
        "GET /api/v1/configmaps?&labelSelector=edgepipe.dev%2Fmodel%3Dtrue",
    ] {
        assert!(
            requests.iter().any(|r| r.starts_with(expected)),
            "no request for {expected} in {requests:#?}"
        );
    }
    assert!(
        requests
            .iter()
            .filter(|r| r.starts_with("GET /api/v1/configmaps?"))
            .all(|r| r.contains("labelSelector=")),
        "ConfigMaps are only ever listed by label: {requests:#?}"
    );

    let killed = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill runs");
    assert!(killed.success());
    let status = tokio::task::spawn_blocking(move || {
        let status = wait_exit(&mut child);
        (status, stderr_of(&mut child))
    })
    .await
    .expect("waiter");
    assert!(status.0.success(), "exit {}: {}", status.0, status.1);
    assert!(status.1.contains("controller stopped"), "{}", status.1);
}

#[tokio::test]
async fn the_operator_fails_fast_when_edge_pipelines_cannot_be_listed() {
    let dir = tempfile::tempdir().expect("tempdir");
    // Nothing listens there: the CRD check fails at once (after the TLS client is built).
    let unused = free_port();
    let config = kubeconfig(dir.path(), &format!("https://{unused}"));
    let mut child = spawn_operator(&config, free_port());
    let status = tokio::task::spawn_blocking(move || {
        let status = wait_exit(&mut child);
        (status, stderr_of(&mut child))
    })
    .await
    .expect("waiter");
    assert!(!status.0.success());
    assert!(status.1.contains("is the CRD installed?"), "{}", status.1);
    assert!(!status.1.contains("panicked"), "{}", status.1);
}

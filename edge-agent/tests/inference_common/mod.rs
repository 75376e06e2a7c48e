//! Helpers shared by the inference tests: fixture paths, specs, readings and polling.

#![allow(dead_code)]

pub mod e2e;

use std::path::PathBuf;
use std::time::Duration;

use edge_agent::pipeline::inference::{
    Inference, InferenceMetrics, InferenceSettings, SourceSettings,
};
use edge_agent::record::Reading;

/// `tests/models` of the workspace.
pub fn models_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/models")
}

/// A fixture file's path.
pub fn fixture(name: &str) -> PathBuf {
    models_dir().join(name)
}

/// A fixture file's bytes.
pub fn fixture_bytes(name: &str) -> Vec<u8> {
    std::fs::read(fixture(name)).unwrap_or_else(|e| panic!("reading fixture {name}: {e}"))
}

/// `spec.inference` from JSON.
pub fn spec(json: serde_json::Value) -> edge_crds::Inference {
    serde_json::from_value(json).expect("inference spec")
}

/// The anomaly spec the fixtures were trained for, with a model at `path`.
pub fn anomaly_spec(path: &std::path::Path, golden_file: Option<&str>) -> edge_crds::Inference {
    let mut s = serde_json::json!({
        "model": {"path": path},
        "window": 16,
        "threshold": 0.8,
        "normalize": {"mean": 20.0, "std": 3.5},
        "timeout": "5s",
    });
    if let Some(g) = golden_file {
        s["golden"] = serde_json::json!({"file": g, "tolerance": 1e-5});
    }
    spec(s)
}

/// Starts inference with fast polling and fresh metrics.
pub fn start(
    spec: edge_crds::Inference,
    data_dir: &std::path::Path,
) -> (Inference, InferenceMetrics) {
    let metrics = InferenceMetrics::standalone().expect("metrics");
    let mut settings = InferenceSettings::new(spec, SourceSettings::new(data_dir), 1000);
    settings.poll_interval = Duration::from_millis(50);
    let inference = Inference::start(settings, metrics.clone()).expect("start inference");
    (inference, metrics)
}

/// Waits (up to 20 s) until `inference` has loaded its first model; panics with its
/// status otherwise.
pub async fn wait_first_model(inference: &Inference) {
    assert!(
        inference
            .wait_for_generation(1, Duration::from_secs(20))
            .await,
        "{:?}",
        inference.status()
    );
}

/// A raw reading.
pub fn reading(device: &str, value: f64, t: i64) -> Reading {
    Reading {
        device: device.to_string(),
        topic: format!("sensors/{device}/vibration"),
        value,
        timestamp_ms: t,
        received_ms: t,
    }
}

/// A normal raw signal like the training data: 20 + 5 sin(2 pi f t / 16 + phase).
pub fn normal_value(t: usize, freq: f64, phase: f64) -> f64 {
    20.0 + 5.0 * (2.0 * std::f64::consts::PI * freq * t as f64 / 16.0 + phase).sin()
}

/// Polls `cond` every 10 ms until it holds or `timeout` passes.
pub async fn eventually(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + timeout;
    while tokio::time::Instant::now() < deadline {
        if cond() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    cond()
}

/// How a [`FileServer`] answers a path.
#[derive(Clone, Debug)]
pub enum Route {
    /// 200 with this body.
    File(Vec<u8>),
    /// 200 with this body when the request carries `header: value` (the name in any
    /// case), else 401.
    Guarded {
        header: String,
        value: String,
        body: Vec<u8>,
    },
    /// This status (a 3xx) with `Location: <url>`.
    Redirect(u16, String),
    /// This status with this body.
    Status(u16, Vec<u8>),
}

/// A real HTTP/1.1 file server on a free loopback port that a test can stop.
pub struct FileServer {
    /// `http://127.0.0.1:<port>`.
    pub base: String,
    /// The port on 127.0.0.1.
    pub port: u16,
    heads: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl FileServer {
    /// Serves `files` (URL path -> body); anything else is a 404.
    pub async fn start(files: Vec<(String, Vec<u8>)>) -> Self {
        Self::routes(
            files
                .into_iter()
                .map(|(p, b)| (p, Route::File(b)))
                .collect(),
        )
        .await
    }

    /// Answers each path as its route says (the query string is not part of the path);
    /// anything else is a 404.
    pub async fn routes(routes: Vec<(String, Route)>) -> Self {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let base = format!("http://127.0.0.1:{port}");
        let heads = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let routes = std::sync::Arc::new(routes);
        let log = heads.clone();
        let task = tokio::spawn(async move {
            while let Ok((mut conn, _)) = listener.accept().await {
                let routes = routes.clone();
                let log = log.clone();
                tokio::spawn(async move {
                    let mut head = Vec::new();
                    let mut buf = [0u8; 1024];
                    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 16 * 1024 {
                        match conn.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => head.extend_from_slice(&buf[..n]),
                        }
                    }
                    let text = String::from_utf8_lossy(&head).into_owned();
                    log.lock().unwrap().push(text.clone());
                    let target = text.split_whitespace().nth(1).unwrap_or("/");
                    let path = target.split('?').next().unwrap_or("/");
                    let has = |name: &str, value: &str| {
                        text.lines().any(|l| {
                            l.split_once(':').is_some_and(|(n, v)| {
                                n.trim().eq_ignore_ascii_case(name) && v.trim() == value
                            })
                        })
                    };
                    let (status, extra, body) = match routes.iter().find(|(p, _)| p == path) {
                        Some((_, Route::File(body))) => (200, String::new(), body.clone()),
                        Some((
                            _,
                            Route::Guarded {
                                header,
                                value,
                                body,
                            },
                        )) if has(header, value) => (200, String::new(), body.clone()),
                        Some((_, Route::Guarded { .. })) => (401, String::new(), Vec::new()),
                        Some((_, Route::Redirect(status, to))) => {
                            (*status, format!("location: {to}\r\n"), Vec::new())
                        }
                        Some((_, Route::Status(status, body))) => {
                            (*status, String::new(), body.clone())
                        }
                        None => (404, String::new(), Vec::new()),
                    };
                    let mut response = format!(
                        "HTTP/1.1 {status} X\r\ncontent-length: {}\r\ncontent-type: application/octet-stream\r\n{extra}connection: close\r\n\r\n",
                        body.len()
                    )
                    .into_bytes();
                    response.extend_from_slice(&body);
                    let _ = conn.write_all(&response).await;
                    let _ = conn.shutdown().await;
                });
            }
        });
        Self {
            base,
            port,
            heads,
            task,
        }
    }

    /// Requests served so far.
    pub fn requests(&self) -> usize {
        self.heads.lock().unwrap().len()
    }

    /// The request line and headers of every request so far.
    pub fn heads(&self) -> Vec<String> {
        self.heads.lock().unwrap().clone()
    }

    /// Stops accepting connections and closes the port.
    pub async fn stop(self) {
        self.task.abort();
        let _ = self.task.await;
    }
}

/// Lowercase hex SHA-256.
pub fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(bytes))
}

/// Projects `files` (key -> fixture) as version `version` of the ConfigMap directory `dir`,
/// the way the kubelet does: the files in `..v<version>`, `..data` switched to it at
/// once, and each key a symlink through `..data`.
pub fn project(dir: &std::path::Path, version: u32, files: &[(&str, &str)]) {
    use std::fs;
    use std::os::unix::fs::symlink;
    use std::path::Path;
    let data = dir.join(format!("..v{version}"));
    fs::create_dir(&data).unwrap();
    for (key, fixture_name) in files {
        fs::write(data.join(key), fixture_bytes(fixture_name)).unwrap();
        let link = dir.join(key);
        if fs::symlink_metadata(&link).is_err() {
            symlink(Path::new("..data").join(key), &link).unwrap();
        }
    }
    let tmp = dir.join("..data_tmp");
    symlink(format!("..v{version}"), &tmp).unwrap();
    fs::rename(&tmp, dir.join("..data")).unwrap();
}

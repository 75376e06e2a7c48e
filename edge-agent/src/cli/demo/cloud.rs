//! The demo's local "cloud": an HTTP ingest endpoint on loopback that stores each record
//! once by its `seq` (retries of a batch are recognised, as a real ingest API would with
//! the `Idempotency-Key`), and that can go offline (its port refuses connections and open
//! connections are dropped) and come back on the same port.

use std::collections::HashSet;
use std::convert::Infallible;
use std::io::Read;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::task::{JoinHandle, JoinSet};

/// Largest request body accepted (compressed or not).
const MAX_BODY: usize = 32 * 1024 * 1024;

/// What the cloud has stored.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Stored {
    /// Distinct records (by `seq`).
    pub records: u64,
    /// Records received again (retries of a batch whose answer was lost).
    pub duplicates: u64,
    /// Distinct anomaly records.
    pub anomalies: u64,
    /// Requests answered 200.
    pub requests: u64,
    /// Bytes received, as on the wire.
    pub bytes: u64,
}

#[derive(Default)]
struct State {
    seqs: HashSet<u64>,
    stored: Stored,
}

/// The receiver; offline until [`Cloud::go_online`].
pub struct Cloud {
    addr: SocketAddr,
    state: Arc<Mutex<State>>,
    server: Option<JoinHandle<()>>,
    offline_since: Option<Instant>,
    offline_total: Duration,
}

impl Cloud {
    /// Picks a free loopback port and starts listening on it.
    pub async fn start() -> std::io::Result<Self> {
        let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
        let addr = listener.local_addr()?;
        let state = Arc::new(Mutex::new(State::default()));
        let server = tokio::spawn(serve(listener, state.clone()));
        Ok(Self {
            addr,
            state,
            server: Some(server),
            offline_since: None,
            offline_total: Duration::ZERO,
        })
    }

    /// The ingest URL.
    pub fn url(&self) -> String {
        format!("http://{}/sensor-data/batch", self.addr)
    }

    /// Whether it is accepting requests.
    pub fn online(&self) -> bool {
        self.server.is_some()
    }

    /// Stops listening and drops every open connection.
    pub async fn go_offline(&mut self) {
        if let Some(server) = self.server.take() {
            server.abort();
            let _ = server.await;
            self.offline_since = Some(Instant::now());
        }
    }

    /// Listens again on the same port.
    pub async fn go_online(&mut self) -> std::io::Result<()> {
        if self.server.is_none() {
            let listener = TcpListener::bind(self.addr).await?;
            self.server = Some(tokio::spawn(serve(listener, self.state.clone())));
            if let Some(since) = self.offline_since.take() {
                self.offline_total += since.elapsed();
            }
        }
        Ok(())
    }

    /// How long it has been offline in total.
    pub fn offline_for(&self) -> Duration {
        self.offline_total + self.offline_since.map_or(Duration::ZERO, |s| s.elapsed())
    }

    /// What it has stored so far.
    pub fn stored(&self) -> Stored {
        lock(&self.state).stored.clone()
    }
}

impl Drop for Cloud {
    fn drop(&mut self) {
        if let Some(server) = self.server.take() {
            server.abort();
        }
    }
}

fn lock(state: &Mutex<State>) -> std::sync::MutexGuard<'_, State> {
    state.lock().unwrap_or_else(PoisonError::into_inner)
}

async fn serve(listener: TcpListener, state: Arc<Mutex<State>>) {
    // Connection tasks live in the set: aborting this task closes them all.
    let mut connections = JoinSet::new();
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let state = state.clone();
        connections.spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let state = state.clone();
                async move { Ok::<_, Infallible>(handle(req, &state).await) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
        while connections.try_join_next().is_some() {}
    }
}

async fn handle(req: Request<Incoming>, state: &Mutex<State>) -> Response<Full<Bytes>> {
    let gzip = req
        .headers()
        .get(hyper::header::CONTENT_ENCODING)
        .is_some_and(|v| v.as_bytes() == b"gzip");
    let body = match Limited::new(req.into_body(), MAX_BODY).collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => return reply(StatusCode::PAYLOAD_TOO_LARGE),
    };
    let wire = body.len() as u64;
    let json = if gzip {
        let mut out = Vec::new();
        let decoder = flate2::read::GzDecoder::new(&body[..]);
        if decoder
            .take(MAX_BODY as u64 * 8)
            .read_to_end(&mut out)
            .is_err()
        {
            return reply(StatusCode::BAD_REQUEST);
        }
        out
    } else {
        body.to_vec()
    };
    let Ok(records) = serde_json::from_slice::<Vec<serde_json::Value>>(&json) else {
        return reply(StatusCode::BAD_REQUEST);
    };
    let mut state = lock(state);
    let state = &mut *state;
    state.stored.requests += 1;
    state.stored.bytes += wire;
    for record in &records {
        let Some(seq) = record.get("seq").and_then(serde_json::Value::as_u64) else {
            continue;
        };
        if state.seqs.insert(seq) {
            state.stored.records += 1;
            if record.get("kind").and_then(serde_json::Value::as_str) == Some("anomaly") {
                state.stored.anomalies += 1;
            }
        } else {
            state.stored.duplicates += 1;
        }
    }
    reply(StatusCode::OK)
}

fn reply(status: StatusCode) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::new()));
    *response.status_mut() = status;
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn post(url: &str, body: &str) -> Option<u16> {
        crate::runtime::tls::install_crypto_provider();
        let client = reqwest::Client::new();
        client
            .post(url)
            .body(body.to_string())
            .send()
            .await
            .ok()
            .map(|r| r.status().as_u16())
    }

    #[tokio::test]
    async fn stores_each_seq_once_and_refuses_connections_while_offline() {
        let mut cloud = Cloud::start().await.expect("start");
        let url = cloud.url();
        let batch = r#"[{"seq":1,"kind":"reading"},{"seq":2,"kind":"anomaly"}]"#;
        assert_eq!(post(&url, batch).await, Some(200));
        assert_eq!(post(&url, batch).await, Some(200));
        let stored = cloud.stored();
        assert_eq!(
            (stored.records, stored.duplicates, stored.anomalies),
            (2, 2, 1)
        );
        assert_eq!(post(&url, "not json").await, Some(400));

        cloud.go_offline().await;
        assert!(!cloud.online());
        assert_eq!(post(&url, batch).await, None);
        cloud.go_online().await.expect("online again");
        assert!(cloud.offline_for() > Duration::ZERO);
        assert_eq!(post(&url, r#"[{"seq":3}]"#).await, Some(200));
        assert_eq!(cloud.stored().records, 3);
    }
}

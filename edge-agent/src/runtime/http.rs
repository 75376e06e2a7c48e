//! The agent's own HTTP endpoint: `/metrics` (Prometheus text), `/livez` and `/readyz`.
//!
//! Liveness means the agent's loops (ingest, queue writer, sync) are still turning: each
//! beats [`Health`] at least once a second, idle or not. Readiness means the config is
//! loaded, the queue is open and the source broker is connected. Neither ever depends on
//! the upstream: being offline is a normal state at the edge, not a reason for a restart.
//!
//! The endpoint is bounded so that no client can take the agent's file descriptors (and
//! with them the sink's connections): at most [`Limits::max_connections`] connections are
//! served at once, more are closed as soon as they are accepted and counted in
//! `edge_agent_http_connections_rejected_total`; a connection that does not send a
//! request's headers within [`Limits::header_timeout`] (new or idle between requests) is
//! closed, and none lives longer than [`Limits::max_connection_age`].

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::CONTENT_TYPE;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::runtime::health::Health;
use crate::runtime::telemetry::Metrics;

/// How much of the agent the endpoint may hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Connections served at once; more are closed at once and counted.
    pub max_connections: usize,
    /// Longest wait for a request's headers, on a new connection or an idle kept-alive
    /// one; then the connection is closed.
    pub header_timeout: Duration,
    /// A connection older than this is closed once its current response is written.
    pub max_connection_age: Duration,
}

impl Default for Limits {
    /// 64 connections (Prometheus, the kubelet's probes and a few people with curl need a
    /// handful), 10 s for headers, 5 minutes per connection.
    fn default() -> Self {
        Self {
            max_connections: 64,
            header_timeout: Duration::from_secs(10),
            max_connection_age: Duration::from_secs(300),
        }
    }
}

/// How long a connection that is asked to close may take to finish its response.
const CLOSE_GRACE: Duration = Duration::from_secs(5);

/// Serves `/metrics`, `/livez` and `/readyz` on `listener` until `stop` is cancelled,
/// within the default [`Limits`].
pub async fn serve(
    listener: TcpListener,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
    stop: CancellationToken,
) {
    serve_within(listener, metrics, health, stop, Limits::default()).await;
}

/// [`serve`] within `limits`.
pub async fn serve_within(
    listener: TcpListener,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
    stop: CancellationToken,
    limits: Limits,
) {
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    loop {
        let (stream, _peer): (tokio::net::TcpStream, SocketAddr) = tokio::select! {
            _ = stop.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "accepting a metrics connection");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            // Closed at once: holding it open, even unread, would hold a descriptor.
            drop(stream);
            metrics.http_connections_rejected.inc();
            let rejected = metrics.http_connections_rejected.get();
            if rejected.is_power_of_two() {
                tracing::warn!(
                    rejected,
                    max = limits.max_connections,
                    "metrics endpoint: too many connections, closing new ones"
                );
            }
            continue;
        };
        let metrics = metrics.clone();
        let health = health.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let service = service_fn(move |req| {
                let response = respond(&req, &metrics, &health);
                async move { Ok::<_, Infallible>(response) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(limits.header_timeout)
                .serve_connection(TokioIo::new(stream), service);
            tokio::pin!(conn);
            tokio::select! {
                result = conn.as_mut() => {
                    if let Err(e) = result {
                        tracing::debug!(error = %e, "metrics connection");
                    }
                    return;
                }
                _ = stop.cancelled() => {}
                _ = tokio::time::sleep(limits.max_connection_age) => {}
            }
            // Finish the response in flight (if any), then close; a client that does not
            // read it loses the connection after the grace period.
            conn.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(CLOSE_GRACE, conn).await;
        });
    }
}

fn respond(req: &Request<Incoming>, metrics: &Metrics, health: &Health) -> Response<Full<Bytes>> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return text(StatusCode::METHOD_NOT_ALLOWED, "only GET\n".into());
    }
    match req.uri().path() {
        "/metrics" => {
            let mut r = text(StatusCode::OK, metrics.render());
            r.headers_mut().insert(
                CONTENT_TYPE,
                hyper::header::HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
            );
            r
        }
        "/livez" => match health.live() {
            Ok(()) => text(StatusCode::OK, "ok\n".into()),
            Err(stuck) => text(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("stuck: {}\n", stuck.join(", ")),
            ),
        },
        "/readyz" => match health.ready() {
            Ok(()) => text(StatusCode::OK, "ok\n".into()),
            Err(missing) => text(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("{}\n", missing.join(", ")),
            ),
        },
        _ => text(StatusCode::NOT_FOUND, "not found\n".into()),
    }
}

fn text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn server(limits: Limits) -> (SocketAddr, Arc<Metrics>, CancellationToken) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let metrics = Arc::new(Metrics::new("a/b").unwrap());
        let health = Arc::new(Health::new(Duration::from_secs(60)));
        let stop = CancellationToken::new();
        tokio::spawn(serve_within(
            listener,
            metrics.clone(),
            health,
            stop.clone(),
            limits,
        ));
        (addr, metrics, stop)
    }

    /// Reads until the peer closes: `Some(bytes read)`, or `None` if it is still open
    /// after `within`.
    async fn closed_within(conn: &mut tokio::net::TcpStream, within: Duration) -> Option<Vec<u8>> {
        use tokio::io::AsyncReadExt;
        let mut got = Vec::new();
        let read = tokio::time::timeout(within, async {
            let mut buf = [0u8; 4096];
            loop {
                match conn.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => got.extend_from_slice(&buf[..n]),
                }
            }
        })
        .await;
        read.ok().map(|()| got)
    }

    async fn get(addr: SocketAddr, path: &str) -> Option<String> {
        use tokio::io::AsyncWriteExt;
        let mut conn = tokio::net::TcpStream::connect(addr).await.ok()?;
        let request = format!("GET {path} HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n");
        conn.write_all(request.as_bytes()).await.ok()?;
        let body = closed_within(&mut conn, Duration::from_secs(5)).await?;
        Some(String::from_utf8_lossy(&body).into_owned())
    }

    #[tokio::test]
    async fn connections_beyond_the_cap_are_closed_at_once_and_counted() {
        let limits = Limits {
            max_connections: 2,
            header_timeout: Duration::from_secs(30),
            ..Limits::default()
        };
        let (addr, metrics, stop) = server(limits).await;
        let idle1 = tokio::net::TcpStream::connect(addr).await.unwrap();
        let _idle2 = tokio::net::TcpStream::connect(addr).await.unwrap();
        let mut excess = tokio::net::TcpStream::connect(addr).await.unwrap();
        assert!(
            closed_within(&mut excess, Duration::from_secs(2))
                .await
                .is_some(),
            "a connection beyond the cap stayed open"
        );
        assert_eq!(metrics.http_connections_rejected.get(), 1);

        // A slot that is given back serves the next client.
        drop(idle1);
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        loop {
            if let Some(text) = get(addr, "/metrics").await
                && text.starts_with("HTTP/1.1 200")
            {
                assert!(text.contains("edge_agent_http_connections_rejected_total"));
                break;
            }
            assert!(std::time::Instant::now() < deadline, "no slot came back");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        stop.cancel();
    }

    #[tokio::test]
    async fn silent_and_idle_connections_lose_their_slot() {
        use tokio::io::AsyncWriteExt;
        let limits = Limits {
            max_connections: 4,
            header_timeout: Duration::from_millis(300),
            ..Limits::default()
        };
        let (addr, _metrics, stop) = server(limits).await;
        // Never sends a byte.
        let mut silent = tokio::net::TcpStream::connect(addr).await.unwrap();
        assert!(
            closed_within(&mut silent, Duration::from_secs(5))
                .await
                .is_some(),
            "a silent connection was kept"
        );
        // One request, then idle on a kept-alive connection.
        let mut idle = tokio::net::TcpStream::connect(addr).await.unwrap();
        idle.write_all(b"GET /livez HTTP/1.1\r\nHost: a\r\n\r\n")
            .await
            .unwrap();
        let answered = closed_within(&mut idle, Duration::from_secs(5))
            .await
            .expect("an idle kept-alive connection was kept");
        assert!(answered.starts_with(b"HTTP/1.1 "), "{answered:?}");
        // Half a request line, then nothing.
        let mut slow = tokio::net::TcpStream::connect(addr).await.unwrap();
        slow.write_all(b"GET /metr").await.unwrap();
        assert!(
            closed_within(&mut slow, Duration::from_secs(5))
                .await
                .is_some(),
            "a slow request was kept"
        );
        stop.cancel();
    }

    #[tokio::test]
    async fn a_connection_is_closed_at_its_age_limit_after_its_response() {
        use tokio::io::AsyncWriteExt;
        let limits = Limits {
            max_connections: 4,
            header_timeout: Duration::from_secs(30),
            max_connection_age: Duration::from_millis(300),
        };
        let (addr, _metrics, stop) = server(limits).await;
        let mut conn = tokio::net::TcpStream::connect(addr).await.unwrap();
        conn.write_all(b"GET /metrics HTTP/1.1\r\nHost: a\r\n\r\n")
            .await
            .unwrap();
        let got = closed_within(&mut conn, Duration::from_secs(5))
            .await
            .expect("an old connection was kept");
        assert!(got.starts_with(b"HTTP/1.1 200"), "the response was cut");
        stop.cancel();
    }
}

//! The agent's own HTTP endpoint: `/metrics` (Prometheus text), `/livez` and `/readyz`.
//!
//! Liveness means the agent's loops (ingest, queue writer, sync) are still turning: each
//! beats [`Health`] at least once a second, idle or not. Readiness means the config is
//! loaded, the queue is open and the source broker is connected. Neither ever depends on
//! the upstream: being offline is a normal state at the edge, not a reason for a restart.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::CONTENT_TYPE;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::telemetry::Metrics;

/// A loop whose heartbeat liveness watches.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Loop {
    /// The MQTT source loop.
    Ingest,
    /// The queue writer thread.
    Writer,
    /// The sink loop.
    Sync,
}

impl Loop {
    const ALL: [Loop; 3] = [Loop::Ingest, Loop::Writer, Loop::Sync];

    fn as_str(self) -> &'static str {
        match self {
            Self::Ingest => "ingest",
            Self::Writer => "queue writer",
            Self::Sync => "sync",
        }
    }
}

/// Liveness and readiness state shared by the agent's parts.
pub struct Health {
    start: Instant,
    window: Duration,
    beats: [AtomicU64; 3],
    queue_open: AtomicBool,
    mqtt_connected: AtomicBool,
}

impl Health {
    /// A loop that has not beaten for `window` makes the agent not live.
    pub fn new(window: Duration) -> Self {
        Self {
            start: Instant::now(),
            window,
            beats: Default::default(),
            queue_open: AtomicBool::new(false),
            mqtt_connected: AtomicBool::new(false),
        }
    }

    /// Records that `l` is alive now.
    pub fn beat(&self, l: Loop) {
        let ms = self.start.elapsed().as_millis() as u64;
        self.beats[l as usize].store(ms, Ordering::Relaxed);
    }

    /// Sets whether the queue is open.
    pub fn set_queue_open(&self, open: bool) {
        self.queue_open.store(open, Ordering::Relaxed);
    }

    /// Sets whether the source broker is connected.
    pub fn set_mqtt_connected(&self, connected: bool) {
        self.mqtt_connected.store(connected, Ordering::Relaxed);
    }

    /// `Ok` when every loop beat within the window, else the names of the stuck ones.
    pub fn live(&self) -> Result<(), Vec<&'static str>> {
        let now = self.start.elapsed().as_millis() as u64;
        let window = self.window.as_millis() as u64;
        let stuck: Vec<_> = Loop::ALL
            .into_iter()
            .filter(|l| {
                now.saturating_sub(self.beats[*l as usize].load(Ordering::Relaxed)) > window
            })
            .map(Loop::as_str)
            .collect();
        if stuck.is_empty() { Ok(()) } else { Err(stuck) }
    }

    /// `Ok` when the queue is open and the source broker connected, else what is missing.
    pub fn ready(&self) -> Result<(), Vec<&'static str>> {
        let mut missing = Vec::new();
        if !self.queue_open.load(Ordering::Relaxed) {
            missing.push("queue not open");
        }
        if !self.mqtt_connected.load(Ordering::Relaxed) {
            missing.push("source broker not connected");
        }
        if missing.is_empty() {
            Ok(())
        } else {
            Err(missing)
        }
    }
}

/// Serves `/metrics`, `/livez` and `/readyz` on `listener` until `stop` is cancelled.
pub async fn serve(
    listener: TcpListener,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
    stop: CancellationToken,
) {
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
        let metrics = metrics.clone();
        let health = health.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| {
                let response = respond(&req, &metrics, &health);
                async move { Ok::<_, Infallible>(response) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(Duration::from_secs(10))
                .serve_connection(TokioIo::new(stream), service);
            tokio::pin!(conn);
            tokio::select! {
                result = conn.as_mut() => {
                    if let Err(e) = result {
                        tracing::debug!(error = %e, "metrics connection");
                    }
                }
                _ = stop.cancelled() => conn.as_mut().graceful_shutdown(),
            }
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

    #[test]
    fn readiness_needs_the_queue_and_the_broker_but_not_the_upstream() {
        let h = Health::new(Duration::from_secs(30));
        assert_eq!(
            h.ready(),
            Err(vec!["queue not open", "source broker not connected"])
        );
        h.set_queue_open(true);
        h.set_mqtt_connected(true);
        assert_eq!(h.ready(), Ok(()));
        h.set_mqtt_connected(false);
        assert_eq!(h.ready(), Err(vec!["source broker not connected"]));
    }

    #[test]
    fn a_loop_that_stops_beating_fails_liveness() {
        let h = Health::new(Duration::ZERO);
        // Every loop starts within the window of the agent's start.
        let deadline = Instant::now() + Duration::from_secs(5);
        while h.live().is_ok() {
            assert!(Instant::now() < deadline, "liveness never expired");
            std::thread::yield_now();
        }
        assert_eq!(h.live(), Err(vec!["ingest", "queue writer", "sync"]));
        let h = Health::new(Duration::from_secs(3600));
        h.beat(Loop::Sync);
        assert_eq!(h.live(), Ok(()));
    }
}

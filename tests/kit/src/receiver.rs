//! A real HTTP ingest endpoint for the tests: records every request (its
//! `Idempotency-Key`, its records, the status it got), answers as scripted (2xx, 5xx,
//! 429 with `Retry-After`, 400 for some bodies, a redirect elsewhere), and can stop
//! listening and come back on the same port.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::io::Read;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request as HttpRequest, Response};
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio::net::TcpListener;
use tokio::task::JoinSet;

/// How the receiver answers one request.
#[derive(Clone, Debug, PartialEq)]
pub enum Reply {
    /// 200.
    Ok,
    /// This status.
    Status(u16),
    /// This status with `Retry-After: <seconds>`.
    RetryAfter(u16, u64),
    /// This status (a 3xx) with `Location: <url>`.
    Redirect(u16, String),
}

/// One request as received.
#[derive(Clone, Debug)]
pub struct Request {
    /// The `Idempotency-Key` header.
    pub key: String,
    /// Whether the body was gzip-encoded.
    pub gzip: bool,
    /// Bytes of the body as received (compressed, when gzip).
    pub bytes: usize,
    /// The records of the JSON array.
    pub records: Vec<Value>,
    /// The status answered.
    pub status: u16,
    /// When it arrived.
    pub at: Instant,
}

impl Request {
    /// The `seq` of every record.
    pub fn seqs(&self) -> Vec<u64> {
        self.records
            .iter()
            .filter_map(|r| r["seq"].as_u64())
            .collect()
    }
}

type Rule = Box<dyn Fn(&[Value]) -> Option<Reply> + Send>;

#[derive(Default)]
struct State {
    requests: Vec<Request>,
    script: VecDeque<Reply>,
    rule: Option<Rule>,
    /// Keep no records (see [`Receiver::forget_records`]).
    forget: bool,
}

/// The test receiver.
pub struct Receiver {
    pub port: u16,
    state: Arc<Mutex<State>>,
    server: Option<tokio::task::JoinHandle<()>>,
}

impl Receiver {
    /// A receiver listening on a free port.
    pub async fn start() -> Self {
        let mut r = Self::down();
        r.resume().await;
        r
    }

    /// A receiver that is not listening yet (connections are refused) on a free port.
    pub fn down() -> Self {
        Self {
            port: crate::free_port(),
            state: Arc::default(),
            server: None,
        }
    }

    /// Starts listening (again) on the same port.
    pub async fn resume(&mut self) {
        assert!(self.server.is_none(), "already listening");
        let listener = TcpListener::bind(("127.0.0.1", self.port))
            .await
            .expect("bind the receiver port");
        let state = self.state.clone();
        self.server = Some(tokio::spawn(serve(listener, state)));
    }

    /// Stops listening and drops every open connection.
    pub async fn stop(&mut self) {
        if let Some(server) = self.server.take() {
            server.abort();
            let _ = server.await;
        }
    }

    /// From now on requests are recorded without their records, which are not even parsed
    /// (the rule sees none): for backlogs of gigabytes.
    pub fn forget_records(&self) {
        self.state.lock().unwrap().forget = true;
    }

    /// The next requests get these replies, in order; then the rule, then 200.
    pub fn script(&self, replies: impl IntoIterator<Item = Reply>) {
        self.state.lock().unwrap().script.extend(replies);
    }

    /// A reply chosen from the request's records (`None`: carry on as usual).
    pub fn rule(&self, rule: impl Fn(&[Value]) -> Option<Reply> + Send + 'static) {
        self.state.lock().unwrap().rule = Some(Box::new(rule));
    }

    /// Every request so far.
    pub fn requests(&self) -> Vec<Request> {
        self.state.lock().unwrap().requests.clone()
    }

    /// The records of every accepted (2xx) request, in arrival order.
    pub fn accepted(&self) -> Vec<Value> {
        self.requests()
            .into_iter()
            .filter(|r| (200..300).contains(&r.status))
            .flat_map(|r| r.records)
            .collect()
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        if let Some(server) = self.server.take() {
            server.abort();
        }
    }
}

async fn serve(listener: TcpListener, state: Arc<Mutex<State>>) {
    // Connection tasks live in the set, so aborting this task closes them all.
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

async fn handle(req: HttpRequest<Incoming>, state: &Mutex<State>) -> Response<Full<Bytes>> {
    let key = req
        .headers()
        .get("idempotency-key")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let gzip = req
        .headers()
        .get("content-encoding")
        .is_some_and(|v| v.as_bytes() == b"gzip");
    let body = match req.into_body().collect().await {
        Ok(b) => b.to_bytes().to_vec(),
        Err(_) => return response(400, None),
    };
    let bytes = body.len();
    let json = if gzip {
        let mut out = Vec::new();
        if flate2::read::GzDecoder::new(&body[..])
            .read_to_end(&mut out)
            .is_err()
        {
            return response(400, None);
        }
        out
    } else {
        body
    };
    let forget = state.lock().unwrap().forget;
    let records: Vec<Value> = if forget {
        Vec::new()
    } else {
        serde_json::from_slice(&json).unwrap_or_default()
    };
    let mut state = state.lock().unwrap();
    let reply = state
        .script
        .pop_front()
        .or_else(|| state.rule.as_ref().and_then(|rule| rule(&records)))
        .unwrap_or(Reply::Ok);
    let (status, retry_after, location) = match reply {
        Reply::Ok => (200, None, None),
        Reply::Status(s) => (s, None, None),
        Reply::RetryAfter(s, secs) => (s, Some(secs), None),
        Reply::Redirect(s, to) => (s, None, Some(to)),
    };
    state.requests.push(Request {
        key,
        gzip,
        bytes,
        records,
        status,
        at: Instant::now(),
    });
    let mut r = response(status, retry_after);
    if let Some(to) = location.and_then(|to| hyper::header::HeaderValue::try_from(to).ok()) {
        r.headers_mut().insert(hyper::header::LOCATION, to);
    }
    r
}

fn response(status: u16, retry_after: Option<u64>) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from_static(b"{}")));
    *r.status_mut() = hyper::StatusCode::from_u16(status).unwrap_or(hyper::StatusCode::OK);
    if let Some(secs) = retry_after {
        r.headers_mut().insert("retry-after", secs.into());
    }
    r
}

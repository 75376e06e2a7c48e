//! A real HTTP ingest endpoint for the tests: records every request (its
//! `Idempotency-Key`, its headers, its records, the status it got), answers as scripted
//! (2xx, 5xx, 429 with `Retry-After`, 400 for some bodies, 401 for a header value, a
//! redirect elsewhere), and can stop listening and come back on the same port.
//!
//! A body in a compact format (`Edgepipe-Format: v2` or `v3`) is read back into the
//! records of v1 ([`v2_to_v1`], [`v3_to_v1`], written from `deploy/wire-format.md`, not
//! from the agent's code), so every test sees records the same way.
//!
//! With [`ServerTls`] it serves HTTPS (rustls, ring) with a certificate of the test PKI
//! and, given a client CA, requires every client to present a certificate signed by it;
//! handshakes it refuses are recorded with rustls' reason.

use std::collections::{BTreeMap, VecDeque};
use std::convert::Infallible;
use std::io::Read;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request as HttpRequest, Response};
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde_json::Value;
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;

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
    /// The request headers (names in lower case; values that are not text left out).
    pub headers: BTreeMap<String, String>,
    /// The records of the JSON array.
    pub records: Vec<Value>,
    /// Each record's `seq` and `value`, instead of `records`, after
    /// [`Receiver::forget_records`].
    pub identities: Vec<(u64, Option<f64>)>,
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

type Rule = Box<dyn Fn(&BTreeMap<String, String>, &[Value]) -> Option<Reply> + Send>;

#[derive(Default)]
struct State {
    requests: Vec<Request>,
    script: VecDeque<Reply>,
    rule: Option<Rule>,
    /// Keep no records (see [`Receiver::forget_records`]).
    forget: bool,
    /// Only count requests (see [`Receiver::count_only`]).
    count_only: bool,
    counts: Counts,
    refused_handshakes: Vec<String>,
}

/// What a counting receiver took in (see [`Receiver::count_only`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    /// Requests answered.
    pub requests: u64,
    /// Body bytes as they came over the wire (compressed, if they were).
    pub bytes: u64,
}

/// The TLS identity of an HTTPS receiver, from PEM files of the test PKI.
#[derive(Clone)]
pub struct ServerTls(Arc<rustls::ServerConfig>);

impl ServerTls {
    /// Serves `cert` (a chain, leaf first) with `key`; with `client_ca`, every client must
    /// present a certificate it signed.
    pub fn new(cert: &Path, key: &Path, client_ca: Option<&Path>) -> Self {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
            .expect("server certificate file")
            .collect::<Result<_, _>>()
            .expect("server certificate PEM");
        let key = PrivateKeyDer::from_pem_file(key).expect("server key PEM");
        let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .expect("TLS versions");
        let builder = match client_ca {
            Some(ca) => {
                let mut roots = rustls::RootCertStore::empty();
                for c in CertificateDer::pem_file_iter(ca).expect("client CA file") {
                    roots.add(c.expect("client CA PEM")).expect("client CA");
                }
                let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                    Arc::new(roots),
                    provider,
                )
                .build()
                .expect("client verifier");
                builder.with_client_cert_verifier(verifier)
            }
            None => builder.with_no_client_auth(),
        };
        let mut config = builder
            .with_single_cert(chain, key)
            .expect("server certificate and key");
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Self(Arc::new(config))
    }
}

/// The test receiver.
pub struct Receiver {
    pub port: u16,
    /// The address it listens on: loopback, or every interface for containers.
    host: &'static str,
    state: Arc<Mutex<State>>,
    server: Option<tokio::task::JoinHandle<()>>,
    tls: Option<ServerTls>,
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
            host: "127.0.0.1",
            state: Arc::default(),
            server: None,
            tls: None,
        }
    }

    /// A receiver listening on every interface, so that containers reach it through
    /// their network's gateway (`host.docker.internal`).
    pub async fn start_for_containers() -> Self {
        let mut r = Self::down();
        r.host = "0.0.0.0";
        r.resume().await;
        r
    }

    /// An HTTPS receiver listening on a free port.
    pub async fn start_tls(tls: ServerTls) -> Self {
        let mut r = Self::down_tls(tls);
        r.resume().await;
        r
    }

    /// An HTTPS receiver that is not listening yet.
    pub fn down_tls(tls: ServerTls) -> Self {
        let mut r = Self::down();
        r.tls = Some(tls);
        r
    }

    /// Serves with `tls` from the next [`Receiver::resume`] on (stop first to switch).
    pub fn set_tls(&mut self, tls: Option<ServerTls>) {
        self.tls = tls;
    }

    /// Why each refused TLS handshake failed (rustls' error), in order.
    pub fn refused_handshakes(&self) -> Vec<String> {
        self.state.lock().unwrap().refused_handshakes.clone()
    }

    /// Starts listening (again) on the same port.
    pub async fn resume(&mut self) {
        assert!(self.server.is_none(), "already listening");
        let listener = TcpListener::bind((self.host, self.port))
            .await
            .expect("bind the receiver port");
        let state = self.state.clone();
        let tls = self.tls.clone().map(|t| TlsAcceptor::from(t.0));
        self.server = Some(tokio::spawn(serve(listener, state, tls)));
    }

    /// Stops listening and drops every open connection.
    pub async fn stop(&mut self) {
        if let Some(server) = self.server.take() {
            server.abort();
            let _ = server.await;
        }
    }

    /// From now on requests keep only each record's `seq` and `value` (`identities`), not
    /// the records (the rule sees none): for backlogs of gigabytes.
    pub fn forget_records(&self) {
        self.state.lock().unwrap().forget = true;
    }

    /// From now on every request is answered 200 at once and only counted ([`Receiver::counts`]):
    /// nothing is decoded or kept, so the receiver costs a sender as little as it can.
    pub fn count_only(&self) {
        self.state.lock().unwrap().count_only = true;
    }

    /// The requests and body bytes counted since [`Receiver::count_only`].
    pub fn counts(&self) -> Counts {
        self.state.lock().unwrap().counts
    }

    /// The next requests get these replies, in order; then the rule, then 200.
    pub fn script(&self, replies: impl IntoIterator<Item = Reply>) {
        self.state.lock().unwrap().script.extend(replies);
    }

    /// A reply chosen from the request's records (`None`: carry on as usual).
    pub fn rule(&self, rule: impl Fn(&[Value]) -> Option<Reply> + Send + 'static) {
        self.state.lock().unwrap().rule = Some(Box::new(move |_, records| rule(records)));
    }

    /// A reply chosen from the request's headers (lower-case names) and records.
    pub fn rule_with_headers(
        &self,
        rule: impl Fn(&BTreeMap<String, String>, &[Value]) -> Option<Reply> + Send + 'static,
    ) {
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

async fn serve(listener: TcpListener, state: Arc<Mutex<State>>, tls: Option<TlsAcceptor>) {
    // Connection tasks live in the set, so aborting this task closes them all.
    let mut connections = JoinSet::new();
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let state = state.clone();
        let tls = tls.clone();
        connections.spawn(async move {
            let service = {
                let state = state.clone();
                hyper::service::service_fn(move |req| {
                    let state = state.clone();
                    async move { Ok::<_, Infallible>(handle(req, &state).await) }
                })
            };
            let http = hyper::server::conn::http1::Builder::new();
            match tls {
                None => {
                    let _ = http.serve_connection(TokioIo::new(stream), service).await;
                }
                Some(acceptor) => {
                    let handshake =
                        tokio::time::timeout(Duration::from_secs(10), acceptor.accept(stream));
                    match handshake.await {
                        Ok(Ok(stream)) => {
                            let _ = http.serve_connection(TokioIo::new(stream), service).await;
                        }
                        Ok(Err(e)) => state.lock().unwrap().refused_handshakes.push(e.to_string()),
                        Err(_) => state
                            .lock()
                            .unwrap()
                            .refused_handshakes
                            .push("handshake timed out".into()),
                    }
                }
            }
        });
        while connections.try_join_next().is_some() {}
    }
}

async fn handle(req: HttpRequest<Incoming>, state: &Mutex<State>) -> Response<Full<Bytes>> {
    if state.lock().unwrap().count_only {
        let Ok(body) = req.into_body().collect().await else {
            return response(400, None);
        };
        let bytes = body.to_bytes().len() as u64;
        let mut state = state.lock().unwrap();
        state.counts.requests += 1;
        state.counts.bytes += bytes;
        return response(200, None);
    }
    let headers: BTreeMap<String, String> = req
        .headers()
        .iter()
        .filter_map(|(n, v)| Some((n.as_str().to_string(), v.to_str().ok()?.to_string())))
        .collect();
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
    let zstd = req_encoding_is(&headers, "zstd");
    let json = if gzip {
        let mut out = Vec::new();
        if flate2::read::GzDecoder::new(&body[..])
            .read_to_end(&mut out)
            .is_err()
        {
            return response(400, None);
        }
        out
    } else if zstd {
        match zstd::stream::decode_all(&body[..]) {
            Ok(out) => out,
            Err(_) => return response(400, None),
        }
    } else {
        body
    };
    let decoded = match headers.get("edgepipe-format").map(String::as_str) {
        Some("v2") => v2_to_v1(&json),
        Some("v3") => v3_to_v1(&json),
        _ => None,
    };
    let json = match decoded {
        Some(records) => serde_json::to_vec(&records).unwrap_or_default(),
        None if headers.contains_key("edgepipe-format") => return response(400, None),
        None => json,
    };
    #[derive(serde::Deserialize)]
    struct Identity {
        seq: u64,
        value: Option<f64>,
    }
    let forget = state.lock().unwrap().forget;
    let (records, identities): (Vec<Value>, Vec<(u64, Option<f64>)>) = if forget {
        let ids: Vec<Identity> = serde_json::from_slice(&json).unwrap_or_default();
        (
            Vec::new(),
            ids.into_iter().map(|i| (i.seq, i.value)).collect(),
        )
    } else {
        (
            serde_json::from_slice(&json).unwrap_or_default(),
            Vec::new(),
        )
    };
    let mut state = state.lock().unwrap();
    let reply = state
        .script
        .pop_front()
        .or_else(|| {
            state
                .rule
                .as_ref()
                .and_then(|rule| rule(&headers, &records))
        })
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
        headers,
        records,
        identities,
        status,
        at: Instant::now(),
    });
    let mut r = response(status, retry_after);
    if let Some(to) = location.and_then(|to| hyper::header::HeaderValue::try_from(to).ok()) {
        r.headers_mut().insert(hyper::header::LOCATION, to);
    }
    r
}

fn req_encoding_is(headers: &BTreeMap<String, String>, encoding: &str) -> bool {
    headers
        .get("content-encoding")
        .is_some_and(|e| e == encoding)
}

fn response(status: u16, retry_after: Option<u64>) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from_static(b"{}")));
    *r.status_mut() = hyper::StatusCode::from_u16(status).unwrap_or(hyper::StatusCode::OK);
    if let Some(secs) = retry_after {
        r.headers_mut().insert("retry-after", secs.into());
    }
    r
}

/// The v1 records of a v2 batch (`deploy/wire-format.md`), or `None` if it is not one.
pub fn v2_to_v1(body: &[u8]) -> Option<Vec<Value>> {
    let batch: Value = serde_json::from_slice(body).ok()?;
    if batch["format"] != "edgepipe.v2" {
        return None;
    }
    let mut out = Vec::new();
    for group in batch["groups"].as_array()? {
        let seqs = group["seq"].as_array()?;
        let times = group["t"].as_array()?;
        if times.len() != seqs.len() {
            return None;
        }
        for (i, (seq, t)) in seqs.iter().zip(times).enumerate() {
            let mut r = serde_json::Map::new();
            r.insert("pipeline".into(), batch["pipeline"].clone());
            r.insert("node".into(), batch["node"].clone());
            for field in ["device", "topic", "kind"] {
                r.insert(field.into(), group[field].clone());
            }
            r.insert("seq".into(), seq.clone());
            r.insert("timestamp".into(), Value::String(rfc3339_ms(t.as_i64()?)));
            for column in ["value", "score", "labels"] {
                let cell = &group[column][i];
                if !cell.is_null() {
                    r.insert(column.into(), cell.clone());
                }
            }
            if let Some(stats) = group["stats"].as_object() {
                let row: serde_json::Map<String, Value> = stats
                    .iter()
                    .filter(|(_, values)| !values[i].is_null())
                    .map(|(name, values)| (name.clone(), values[i].clone()))
                    .collect();
                if !row.is_empty() {
                    r.insert("stats".into(), Value::Object(row));
                }
            }
            out.push(Value::Object(r));
        }
    }
    out.sort_by_key(|r| r["seq"].as_u64());
    Some(out)
}

/// The v1 records of a v3 batch (`deploy/wire-format.md`), or `None` if it is not one.
pub fn v3_to_v1(body: &[u8]) -> Option<Vec<Value>> {
    struct Cursor<'a> {
        b: &'a [u8],
        strings: Vec<String>,
    }
    impl Cursor<'_> {
        fn bytes(&mut self, n: usize) -> Option<&[u8]> {
            if n > self.b.len() {
                return None;
            }
            let (head, rest) = self.b.split_at(n);
            self.b = rest;
            Some(head)
        }
        fn u8(&mut self) -> Option<u8> {
            Some(self.bytes(1)?[0])
        }
        fn varint(&mut self) -> Option<u64> {
            let mut v = 0u64;
            for shift in (0..70).step_by(7) {
                let b = self.u8()?;
                v |= u64::from(b & 0x7f).checked_shl(shift)?;
                if b < 0x80 {
                    return Some(v);
                }
            }
            None
        }
        fn zigzag(&mut self) -> Option<i64> {
            let v = self.varint()?;
            Some((v >> 1) as i64 ^ -((v & 1) as i64))
        }
        fn text(&mut self) -> Option<String> {
            let n = usize::try_from(self.varint()?).ok()?;
            String::from_utf8(self.bytes(n)?.to_vec()).ok()
        }
        fn string(&mut self) -> Option<String> {
            match self.varint()? {
                0 => {
                    let s = self.text()?;
                    self.strings.push(s.clone());
                    Some(s)
                }
                k => self.strings.get(usize::try_from(k - 1).ok()?).cloned(),
            }
        }
        /// (tag without the bitmap bit, which records have the field).
        fn tag(&mut self, n: usize) -> Option<(u8, Vec<bool>)> {
            let tag = self.u8()?;
            if tag == 0 {
                return Some((0, vec![false; n]));
            }
            if tag & 0x10 == 0 {
                return Some((tag, vec![true; n]));
            }
            let bits = self.bytes(n.div_ceil(8))?.to_vec();
            Some((
                tag & 0x0f,
                (0..n).map(|i| bits[i / 8] >> (i % 8) & 1 == 1).collect(),
            ))
        }
        fn numbers(&mut self, n: usize) -> Option<Vec<Option<f64>>> {
            let (tag, present) = self.tag(n)?;
            let scale = match tag {
                0 => return Some(vec![None; n]),
                1 => Some(10f64.powi(i32::from(self.u8()?))),
                2 => None,
                _ => return None,
            };
            let mut m = 0i64;
            let mut out = Vec::with_capacity(n);
            for has in present {
                out.push(if !has {
                    None
                } else if let Some(p) = scale {
                    m = m.wrapping_add(self.zigzag()?);
                    Some(m as f64 / p)
                } else {
                    Some(f64::from_le_bytes(self.bytes(8)?.try_into().ok()?))
                });
            }
            Some(out)
        }
    }

    let rest = body.strip_prefix(b"EPv3")?;
    let mut c = Cursor {
        b: rest,
        strings: Vec::new(),
    };
    let pipeline = c.string()?;
    let node = c.string()?;
    let mut out = Vec::new();
    for _ in 0..c.varint()? {
        let (device, topic, kind) = (c.string()?, c.string()?, c.string()?);
        let n = usize::try_from(c.varint()?)
            .ok()
            .filter(|&n| n <= body.len())?;
        let mut seq = 0u64;
        let seqs: Vec<u64> = (0..n)
            .map(|_| {
                seq = seq.wrapping_add(c.varint()?);
                Some(seq)
            })
            .collect::<Option<_>>()?;
        let mut t = 0i64;
        let times: Vec<i64> = (0..n)
            .map(|_| {
                t = t.wrapping_add(c.zigzag()?);
                Some(t)
            })
            .collect::<Option<_>>()?;
        let value = c.numbers(n)?;
        let score = c.numbers(n)?;
        let mut stats = Vec::new();
        for _ in 0..c.varint()? {
            let name = c.string()?;
            stats.push((name, c.numbers(n)?));
        }
        let (tag, present) = c.tag(n)?;
        let labels: Vec<Option<Value>> = match tag {
            0 => vec![None; n],
            3 => present
                .into_iter()
                .map(|has| {
                    if has {
                        serde_json::from_str(&c.text()?).ok().map(Some)
                    } else {
                        Some(None)
                    }
                })
                .collect::<Option<_>>()?,
            _ => return None,
        };
        for i in 0..n {
            let mut r = serde_json::Map::new();
            r.insert("pipeline".into(), pipeline.clone().into());
            r.insert("node".into(), node.clone().into());
            r.insert("device".into(), device.clone().into());
            r.insert("topic".into(), topic.clone().into());
            r.insert("kind".into(), kind.clone().into());
            r.insert("seq".into(), seqs[i].into());
            r.insert("timestamp".into(), rfc3339_ms(times[i]).into());
            if let Some(v) = value[i] {
                r.insert("value".into(), v.into());
            }
            if let Some(v) = score[i] {
                r.insert("score".into(), v.into());
            }
            let row: serde_json::Map<String, Value> = stats
                .iter()
                .filter_map(|(name, col)| Some((name.clone(), col[i]?.into())))
                .collect();
            if !row.is_empty() {
                r.insert("stats".into(), Value::Object(row));
            }
            if let Some(l) = &labels[i] {
                r.insert("labels".into(), l.clone());
            }
            out.push(Value::Object(r));
        }
    }
    if !c.b.is_empty() {
        return None;
    }
    out.sort_by_key(|r| r["seq"].as_u64());
    Some(out)
}

/// Unix milliseconds as RFC 3339 UTC with milliseconds, as v1 writes `timestamp`.
fn rfc3339_ms(ms: i64) -> String {
    let (secs, millis) = (ms.div_euclid(1000), ms.rem_euclid(1000));
    let (days, sod) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Days since the epoch to a civil date (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{millis:03}Z",
        sod / 3600,
        (sod % 3600) / 60,
        sod % 60
    )
}

//! The HTTP sink: POSTs each batch in its wire format (gzip or zstd when configured) with an
//! `Idempotency-Key` that is the same on every retry of the batch.
//!
//! Each response becomes an [`Outcome`] ([`outcome`], a pure function), which the sync
//! loop applies. 2xx: accepted, the batch is deleted. A status of `deadLetterOn` (default
//! 400, 413, 415, 422: the content is refused): rejected, the batch moves to the
//! dead-letter table and sync continues with the next one. 401, 403 and 407: unauthorized,
//! retried and counted as authentication failures
//! (`edge_agent_upstream_auth_failures_total`): an expired token pauses delivery until it is
//! fixed instead of emptying the queue into dead letters. Everything else retries the same
//! batch with capped exponential backoff and jitter: 5xx, 408, 429 (honouring
//! `Retry-After`), a missing endpoint (404), and timeouts and connection errors
//! (unreachable).
//!
//! Redirects are never followed: the batch and its headers (an API key, a token) go to the
//! configured URL and nowhere else. A 3xx is a failed attempt like a 5xx (the batch stays
//! queued and is retried with backoff), logged with where it pointed.
//!
//! New credentials (a rotated token or certificate file, see [`crate::runtime::credentials`]) come
//! as a new [`HttpClient`], taken before the next request; they also end a retry's wait.

use std::io::Write;
use std::time::Duration;

use edge_crds::Compression;
use flate2::write::GzEncoder;
use reqwest::StatusCode;
use reqwest::header::{
    CONTENT_ENCODING, CONTENT_TYPE, HeaderMap, HeaderName, HeaderValue, LOCATION, RETRY_AFTER,
};

use super::wire::{FORMAT_HEADER, WireFormat, Writer};
use super::{Outcome, Payload, Sent};
use crate::config::HttpSettings;
use crate::delivery::queue::Batch;
use crate::record::Lane;
use crate::runtime::credentials::Updates;
use crate::runtime::diagnostics;

/// Longest `Retry-After` honoured.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(3600);
/// Characters of a rejection's response body kept as the dead letter's reason.
const REASON_CHARS: usize = 300;

/// Why the HTTP sink cannot be set up.
#[derive(Debug, thiserror::Error)]
pub enum HttpSinkError {
    /// A configured header's name or value is not valid in HTTP.
    #[error("header {name:?}: {source}")]
    Header {
        name: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The CA bundle, or the client certificate and key, could not be read as PEM.
    #[error("TLS material: {0}")]
    TlsPem(#[source] reqwest::Error),
    /// The TLS material is incomplete.
    #[error("TLS material: {0}")]
    Tls(&'static str),
    /// The client could not be built (the certificate and key do not match, ...).
    #[error("HTTP client: {}", diagnostics::chain(.0))]
    Client(#[source] reqwest::Error),
}

/// An HTTP ingest API.
pub struct HttpSink {
    client: HttpClient,
    pub(super) settings: HttpSettings,
    key_prefix: String,
    writer: Writer,
    pub(super) updates: Updates<HttpClient>,
}

/// How a response's status classifies (see [`outcome`] for the whole answer).
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    /// 2xx.
    Accepted,
    /// Try the same batch again, after at least this long if the server said so.
    Retry(Option<Duration>),
    /// The credentials were refused (401, 403, 407): try again with backoff, counted.
    Unauthorized,
    /// The content was refused (a status of `deadLetterOn`): a retry would not change it.
    Rejected,
}

/// Classifies a response status (and its `Retry-After` header value, if any), with
/// `dead_letter_on` the statuses that reject a batch's content.
pub fn verdict(status: StatusCode, retry_after: Option<&str>, dead_letter_on: &[u16]) -> Verdict {
    if status.is_success() {
        return Verdict::Accepted;
    }
    if matches!(
        status,
        StatusCode::UNAUTHORIZED
            | StatusCode::FORBIDDEN
            | StatusCode::PROXY_AUTHENTICATION_REQUIRED
    ) {
        return Verdict::Unauthorized;
    }
    if status.is_client_error() && dead_letter_on.contains(&status.as_u16()) {
        return Verdict::Rejected;
    }
    // Redirects are never followed (see the module doc): the same batch goes to the same
    // URL again after the backoff, like any other failed attempt.
    let after = retry_after
        .filter(|_| !status.is_redirection())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(|s| Duration::from_secs(s).min(MAX_RETRY_AFTER));
    Verdict::Retry(after)
}

/// Whether [`outcome`] needs the start of the response body (for the reason a failure is
/// logged and a rejection dead-lettered with): for anything but a success or a redirect.
pub fn reads_body(status: StatusCode) -> bool {
    !status.is_success() && !status.is_redirection()
}

/// What a response came to, from its status, its headers (`Retry-After`, a redirect's
/// `Location`) and the start of its body (empty unless [`reads_body`]), with
/// `dead_letter_on` the statuses that reject a batch's content.
pub fn outcome(
    status: StatusCode,
    headers: &HeaderMap,
    body: &str,
    dead_letter_on: &[u16],
) -> Outcome {
    let header = |name| {
        headers
            .get(name)
            .and_then(|v: &HeaderValue| v.to_str().ok())
    };
    let reason = || {
        if status.is_redirection() {
            redirect_reason(status, header(LOCATION))
        } else {
            summary(status, body)
        }
    };
    let code = status.as_u16();
    match verdict(status, header(RETRY_AFTER), dead_letter_on) {
        Verdict::Accepted => Outcome::Accepted,
        Verdict::Rejected => Outcome::Rejected {
            status: code,
            reason: reason(),
        },
        Verdict::Unauthorized => Outcome::Unauthorized {
            status: code,
            reason: reason(),
        },
        Verdict::Retry(retry_after) => Outcome::Unavailable {
            status: code,
            retry_after,
            reason: reason(),
        },
    }
}

/// The first `limit` bytes of a response body, as text; the rest is never buffered, so
/// a huge error body cannot exhaust memory.
async fn body_prefix(mut resp: reqwest::Response, limit: usize) -> String {
    let mut prefix = Vec::new();
    while prefix.len() < limit {
        match resp.chunk().await {
            Ok(Some(chunk)) => {
                let take = chunk.len().min(limit - prefix.len());
                prefix.extend_from_slice(&chunk[..take]);
            }
            Ok(None) | Err(_) => break,
        }
    }
    String::from_utf8_lossy(&prefix).into_owned()
}

/// What the HTTP sink sends with: the client (with its TLS material) and the request
/// headers. Rebuilt when the credentials change (see [`crate::runtime::credentials`]).
#[derive(Clone, Debug)]
pub struct HttpClient {
    client: reqwest::Client,
    headers: HeaderMap,
}

impl HttpClient {
    /// The client and headers of `settings`.
    pub fn new(settings: &HttpSettings) -> Result<Self, HttpSinkError> {
        let mut builder = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(settings.timeout)
            .connect_timeout(settings.timeout.min(Duration::from_secs(10)))
            .pool_idle_timeout(Duration::from_secs(30));
        if let Some(ca) = &settings.tls_material.ca {
            let certs = reqwest::Certificate::from_pem_bundle(ca).map_err(HttpSinkError::TlsPem)?;
            if certs.is_empty() {
                return Err(HttpSinkError::Tls("no certificate in the CA bundle"));
            }
            builder = builder.tls_certs_only(certs);
        } else if settings.url.starts_with("http://") {
            // Plain HTTP needs no roots: a device without a system CA store (a minimal
            // image, a stripped-down OS) still runs (it follows no redirect to HTTPS).
            builder = builder.tls_certs_only(Vec::new());
        }
        match (&settings.tls_material.cert, &settings.tls_material.key) {
            (Some(cert), Some(key)) => {
                let mut pem = cert.clone();
                pem.push(b'\n');
                pem.extend_from_slice(key);
                let identity = reqwest::Identity::from_pem(&pem).map_err(HttpSinkError::TlsPem)?;
                builder = builder.identity(identity);
            }
            (None, None) => {}
            _ => {
                return Err(HttpSinkError::Tls(
                    "a client certificate needs both cert and key",
                ));
            }
        }
        let mut headers = HeaderMap::new();
        for (name, value) in &settings.headers {
            let err = |source: Box<dyn std::error::Error + Send + Sync>| HttpSinkError::Header {
                name: name.clone(),
                source,
            };
            let n = HeaderName::from_bytes(name.as_bytes()).map_err(|e| err(e.into()))?;
            let mut v = HeaderValue::from_str(value).map_err(|e| err(e.into()))?;
            v.set_sensitive(true);
            headers.insert(n, v);
        }
        Ok(Self {
            client: builder.build().map_err(HttpSinkError::Client)?,
            headers,
        })
    }
}

impl HttpClient {
    /// A HEAD request to `url` with the sink's headers and TLS: nothing but the request
    /// line and headers is sent (`edge-agent doctor` checks the upstream with it).
    pub async fn probe(&self, url: &str) -> Result<reqwest::Response, reqwest::Error> {
        self.client
            .head(url)
            .headers(self.headers.clone())
            .send()
            .await
    }
}

impl HttpSink {
    /// A sink for `settings`; records carry `pipeline` and `node`, which also prefix the
    /// idempotency keys.
    pub fn new(settings: &HttpSettings, pipeline: &str, node: &str) -> Result<Self, HttpSinkError> {
        Ok(Self {
            client: HttpClient::new(settings)?,
            settings: settings.clone(),
            key_prefix: format!("{pipeline}/{node}"),
            writer: Writer {
                format: WireFormat::V1,
                pipeline: pipeline.to_string(),
                node: node.to_string(),
            },
            updates: Updates::none(),
        })
    }

    /// Writes batches in `format` (`sink.format`).
    pub fn with_format(mut self, format: WireFormat) -> Self {
        self.writer.format = format;
        self
    }

    /// Takes new clients (new credentials) from `updates` from now on.
    pub fn with_updates(mut self, updates: Updates<HttpClient>) -> Self {
        self.updates = updates;
        self
    }

    /// The idempotency key of a batch: stable across retries and restarts. Ranges of
    /// the two lanes may overlap, so an urgent batch's key says its lane.
    pub fn idempotency_key(&self, batch: &Batch) -> String {
        let (prefix, first, last) = (&self.key_prefix, batch.first_seq, batch.last_seq);
        match batch.lane {
            Lane::Routine => format!("{prefix}/{first}-{last}"),
            Lane::Urgent => format!("{prefix}/urgent/{first}-{last}"),
        }
    }

    /// POSTs `payload` (`batch` on the wire) once, with new credentials if there are
    /// any, and says what came of it.
    pub(super) async fn send(&mut self, batch: &Batch, payload: &Payload) -> Sent {
        if let Some(client) = self.updates.take() {
            tracing::info!("the HTTP sink sends with the new credentials from now on");
            self.client = client;
        }
        let key = self.idempotency_key(batch);
        let mut request = self
            .client
            .client
            .post(&self.settings.url)
            .headers(self.client.headers.clone())
            .header(CONTENT_TYPE, content_type(payload.format))
            .header("Idempotency-Key", key.as_str())
            .body(payload.body.clone());
        if let Some(encoding) = payload.encoding {
            request = request.header(CONTENT_ENCODING, encoding);
        }
        if payload.format != WireFormat::V1 {
            request = request.header(FORMAT_HEADER, payload.format.as_str());
        }
        match request.send().await {
            Ok(resp) => {
                let status = resp.status();
                let headers = resp.headers().clone();
                let body = if reads_body(status) {
                    body_prefix(resp, REASON_CHARS * 4).await
                } else {
                    String::new()
                };
                Sent {
                    outcome: outcome(status, &headers, &body, &self.settings.dead_letter_on),
                    on_wire: true,
                }
            }
            // On the wire unless the connection was never made.
            Err(e) => Sent {
                on_wire: !e.is_connect(),
                outcome: Outcome::Unreachable(describe(e)),
            },
        }
    }

    /// The request body of `batch`, its format and its `Content-Encoding` (compressed
    /// as configured; sent as it is, without the header, if compressing failed).
    pub(super) fn encode(&self, batch: &Batch) -> Payload {
        let (format, body) = self.writer.body(batch);
        let (body, encoding) = match compress(self.settings.compression, &body) {
            Ok(Some((encoding, compressed))) => (compressed, Some(encoding)),
            Ok(None) => (body, None),
            Err(e) => {
                tracing::error!(error = %e, "compressing a batch: it goes uncompressed");
                (body, None)
            }
        };
        Payload {
            format,
            body,
            encoding,
        }
    }
}

/// zstd level: 3 is zstd's default, faster than gzip's default and smaller.
const ZSTD_LEVEL: i32 = 3;

/// `body` compressed as `compression` says, with its `Content-Encoding`; `None` for
/// [`Compression::None`].
pub fn compress(
    compression: Compression,
    body: &[u8],
) -> std::io::Result<Option<(&'static str, Vec<u8>)>> {
    match compression {
        Compression::None => Ok(None),
        Compression::Gzip => {
            let mut gz = GzEncoder::new(
                Vec::with_capacity(body.len() / 4),
                flate2::Compression::default(),
            );
            gz.write_all(body)?;
            Ok(Some(("gzip", gz.finish()?)))
        }
        // One call with the whole body: zstd sizes its tables to the input, so a small
        // batch does not pay for a large window.
        Compression::Zstd => Ok(Some(("zstd", zstd::bulk::compress(body, ZSTD_LEVEL)?))),
    }
}

/// `Content-Type` of a batch: JSON for v1 and v2, bytes for v3.
fn content_type(format: WireFormat) -> &'static str {
    match format {
        WireFormat::V1 | WireFormat::V2 => "application/json",
        WireFormat::V3 => "application/octet-stream",
    }
}

fn summary(status: StatusCode, body: &str) -> String {
    let body: String = body
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(REASON_CHARS)
        .collect();
    let body = body.trim();
    if body.is_empty() {
        status.to_string()
    } else {
        format!("{status}: {body}")
    }
}

/// Why a 3xx is not a delivery: the status and where it pointed (redacted).
fn redirect_reason(status: StatusCode, location: Option<&str>) -> String {
    match location {
        Some(to) => format!(
            "{status} to {}: redirects are never followed",
            diagnostics::url(to)
        ),
        None => format!("{status} without a location: redirects are never followed"),
    }
}

/// A failed request with every cause behind it (a TLS verification failure names the
/// certificate problem), its URL redacted.
fn describe(e: reqwest::Error) -> String {
    let kind = if e.is_timeout() {
        "timeout"
    } else if e.is_connect() {
        "connection failed"
    } else {
        "request failed"
    };
    format!("{kind}: {}", diagnostics::chain(&e.without_url()))
}

#[cfg(test)]
mod tests;

//! The HTTP sink: POSTs each batch in its wire format (gzip or zstd when configured) with an
//! `Idempotency-Key` that is the same on every retry of the batch.
//!
//! 2xx deletes the batch. A status of `deadLetterOn` (default 400, 413, 415, 422: the
//! content is refused) moves the batch to the dead-letter table and sync continues with the
//! next one. Everything else retries the same batch with capped exponential backoff and
//! jitter: 5xx, 408, 429 (honouring `Retry-After`), timeouts, connection errors, a missing
//! endpoint (404), and 401, 403 and 407, which are also counted as authentication failures
//! (`edge_agent_upstream_auth_failures_total`): an expired token pauses delivery until it is
//! fixed instead of emptying the queue into dead letters.
//!
//! Redirects are never followed: the batch and its headers (an API key, a token) go to the
//! configured URL and nowhere else. A 3xx is a failed attempt like a 5xx (the batch stays
//! queued and is retried with backoff), logged with where it pointed.
//!
//! New credentials (a rotated token or certificate file, see [`crate::credentials`]) come
//! as a new [`HttpClient`], taken before the next request; they also end a retry's wait.

use std::io::Write;
use std::time::Duration;

use edge_crds::Compression;
use flate2::write::GzEncoder;
use reqwest::StatusCode;
use reqwest::header::{
    CONTENT_ENCODING, CONTENT_TYPE, HeaderMap, HeaderName, HeaderValue, LOCATION, RETRY_AFTER,
};
use tokio::time::Instant;

use super::wire::{FORMAT_HEADER, WireFormat, Writer};
use super::{Delivery, Stopped, SyncContext, backoff};
use crate::config::HttpSettings;
use crate::credentials::Updates;
use crate::diagnostics;
use crate::queue::Batch;
use crate::record::Lane;

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
    settings: HttpSettings,
    key_prefix: String,
    writer: Writer,
    updates: Updates<HttpClient>,
}

/// What one request came to.
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
/// headers. Rebuilt when the credentials change (see [`crate::credentials`]).
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

    pub(super) fn batch_size(&self) -> usize {
        self.settings.batch_size
    }

    pub(super) fn flush_interval(&self) -> Duration {
        self.settings.flush_interval
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

    /// Sends `batch` once: on success or rejection the batch leaves the queue; on a
    /// retryable failure this waits out the backoff for `attempt` (or `Retry-After`).
    pub(super) async fn deliver(
        &mut self,
        batch: Batch,
        attempt: u32,
        ctx: &SyncContext,
    ) -> Result<Delivery, Stopped> {
        if let Some(client) = self.updates.take() {
            tracing::info!("the HTTP sink sends with the new credentials from now on");
            self.client = client;
        }
        let key = self.idempotency_key(&batch);
        let (format, body, encoding) = self.encode(&batch);
        ctx.throttle(body.len()).await?;
        let started = Instant::now();
        let mut request = self
            .client
            .client
            .post(&self.settings.url)
            .headers(self.client.headers.clone())
            .header(CONTENT_TYPE, content_type(format))
            .header("Idempotency-Key", key.as_str())
            .body(body.clone());
        if let Some(encoding) = encoding {
            request = request.header(CONTENT_ENCODING, encoding);
        }
        if format != WireFormat::V1 {
            request = request.header(FORMAT_HEADER, format.as_str());
        }
        let response = tokio::select! {
            _ = ctx.stop.cancelled() => return Err(Stopped),
            r = request.send() => r,
        };
        // On the wire unless the connection was never made (an outage must not look like
        // traffic in the bandwidth panels).
        if response.as_ref().map_or_else(|e| !e.is_connect(), |_| true) {
            ctx.metrics.sent_bytes.inc_by(body.len() as u64);
        } else {
            ctx.refund(body.len());
        }
        let outcome = match response {
            Ok(resp) => {
                let status = resp.status();
                let header = |name| {
                    resp.headers()
                        .get(name)
                        .and_then(|v: &HeaderValue| v.to_str().ok())
                        .map(str::to_owned)
                };
                let retry_after = header(RETRY_AFTER);
                let location = header(LOCATION);
                let v = verdict(
                    status,
                    retry_after.as_deref(),
                    &self.settings.dead_letter_on,
                );
                let reason = match v {
                    Verdict::Accepted => String::new(),
                    _ if status.is_redirection() => redirect_reason(status, location.as_deref()),
                    _ => {
                        let text = tokio::select! {
                            _ = ctx.stop.cancelled() => return Err(Stopped),
                            t = body_prefix(resp, REASON_CHARS * 4) => t,
                        };
                        summary(status, &text)
                    }
                };
                (v, status.as_u16(), reason)
            }
            Err(e) => (Verdict::Retry(None), 0, describe(e)),
        };
        ctx.metrics
            .sync_duration
            .observe(started.elapsed().as_secs_f64());
        match outcome {
            (Verdict::Accepted, ..) => {
                ctx.metrics
                    .sync_requests
                    .with_label_values(&["success"])
                    .inc();
                ctx.upstream(true);
                tracing::debug!(%key, records = batch.records.len(), "batch synced");
                ctx.accepted(batch).await.map(|()| Delivery::Done)
            }
            (Verdict::Rejected, status, reason) => {
                ctx.metrics
                    .sync_requests
                    .with_label_values(&["rejected"])
                    .inc();
                ctx.upstream(true);
                ctx.rejected(batch, status, reason)
                    .await
                    .map(|()| Delivery::Done)
            }
            (verdict @ (Verdict::Retry(_) | Verdict::Unauthorized), status, reason) => {
                ctx.metrics
                    .sync_requests
                    .with_label_values(&["retry"])
                    .inc();
                ctx.upstream(false);
                // The status only, not the upstream's text: a label value should not be
                // something the upstream can vary at will.
                ctx.upstream_failed(&if status == 0 {
                    reason.to_string()
                } else {
                    format!("HTTP {status}")
                });
                let after = match verdict {
                    Verdict::Retry(after) => after,
                    _ => {
                        ctx.metrics.upstream_auth_failures.inc();
                        if attempt == 0 || attempt.is_multiple_of(10) {
                            tracing::error!(status, %reason, "the upstream refused the credentials: delivery paused, nothing is dead-lettered; fix the token or certificate");
                        }
                        None
                    }
                };
                let delay = after.unwrap_or_else(|| {
                    backoff(
                        attempt,
                        self.settings.initial_backoff,
                        self.settings.max_backoff,
                    )
                });
                if attempt == 0 || attempt.is_multiple_of(10) {
                    let url = diagnostics::url(&self.settings.url);
                    tracing::warn!(%url, %key, attempt, %reason, retry_in = ?delay, "upstream unavailable, will retry");
                }
                // New credentials end the wait: they may be what the upstream waited for.
                tokio::select! {
                    r = ctx.pause(delay) => r.map(|()| Delivery::Retry),
                    () = self.updates.changed() => Ok(Delivery::Retry),
                }
            }
        }
    }

    /// The request body of `batch`, its format and its `Content-Encoding` (compressed
    /// as configured; sent as it is, without the header, if compressing failed).
    fn encode(&self, batch: &Batch) -> (WireFormat, Vec<u8>, Option<&'static str>) {
        let (format, body) = self.writer.body(batch);
        match compress(self.settings.compression, &body) {
            Ok(Some((encoding, compressed))) => (format, compressed, Some(encoding)),
            Ok(None) => (format, body, None),
            Err(e) => {
                tracing::error!(error = %e, "compressing a batch: it goes uncompressed");
                (format, body, None)
            }
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
mod tests {
    use super::*;

    /// The verdict with the default `deadLetterOn`.
    fn v(status: StatusCode, retry_after: Option<&str>) -> Verdict {
        verdict(status, retry_after, &[400, 413, 415, 422])
    }

    #[test]
    fn statuses_are_classified_as_the_delivery_contract_says() {
        assert_eq!(v(StatusCode::OK, None), Verdict::Accepted);
        assert_eq!(v(StatusCode::ACCEPTED, None), Verdict::Accepted);
        assert_eq!(
            v(StatusCode::INTERNAL_SERVER_ERROR, None),
            Verdict::Retry(None)
        );
        assert_eq!(
            v(StatusCode::SERVICE_UNAVAILABLE, Some("7")),
            Verdict::Retry(Some(Duration::from_secs(7)))
        );
        assert_eq!(
            v(StatusCode::TOO_MANY_REQUESTS, Some(" 2 ")),
            Verdict::Retry(Some(Duration::from_secs(2)))
        );
        assert_eq!(
            v(
                StatusCode::TOO_MANY_REQUESTS,
                Some("Wed, 21 Oct 2015 07:28:00 GMT")
            ),
            Verdict::Retry(None),
            "an HTTP date falls back to the backoff"
        );
        assert_eq!(
            v(StatusCode::TOO_MANY_REQUESTS, Some("999999")),
            Verdict::Retry(Some(MAX_RETRY_AFTER))
        );
        assert_eq!(v(StatusCode::REQUEST_TIMEOUT, None), Verdict::Retry(None));
        assert_eq!(v(StatusCode::BAD_REQUEST, None), Verdict::Rejected);
        assert_eq!(v(StatusCode::UNPROCESSABLE_ENTITY, None), Verdict::Rejected);
        assert_eq!(v(StatusCode::NOT_FOUND, None), Verdict::Retry(None));
        for status in [401, 403, 407] {
            let status = StatusCode::from_u16(status).unwrap();
            assert_eq!(v(status, None), Verdict::Unauthorized, "{status}");
        }
        assert_eq!(v(StatusCode::CONFLICT, None), Verdict::Retry(None));
        // The list is the user's; credentials stay out of it whatever it says.
        assert_eq!(
            verdict(StatusCode::CONFLICT, None, &[409]),
            Verdict::Rejected
        );
        assert_eq!(
            verdict(StatusCode::BAD_REQUEST, None, &[]),
            Verdict::Retry(None)
        );
        assert_eq!(
            verdict(StatusCode::UNAUTHORIZED, None, &[401]),
            Verdict::Unauthorized
        );
    }

    #[test]
    fn a_redirect_is_a_failed_attempt_never_a_delivery_or_a_rejection() {
        for status in [301, 302, 303, 307, 308, 300, 304] {
            let status = StatusCode::from_u16(status).unwrap();
            assert_eq!(v(status, None), Verdict::Retry(None), "{status}");
            assert_eq!(v(status, Some("5")), Verdict::Retry(None), "{status}");
        }
        let reason = redirect_reason(
            StatusCode::TEMPORARY_REDIRECT,
            Some("https://u:pw@elsewhere.example:8443/steal?token=abc"),
        );
        assert_eq!(
            reason,
            "307 Temporary Redirect to https://elsewhere.example:8443/steal: redirects are never followed"
        );
        assert!(redirect_reason(StatusCode::FOUND, None).contains("without a location"));
    }

    #[test]
    fn rejection_reasons_are_one_bounded_line() {
        let s = summary(
            StatusCode::BAD_REQUEST,
            &format!("bad\nrecord {}", "x".repeat(1000)),
        );
        assert!(s.starts_with("400 Bad Request: bad record"));
        assert!(!s.contains('\n'));
        assert!(s.len() < REASON_CHARS + 40);
        assert_eq!(summary(StatusCode::BAD_REQUEST, " "), "400 Bad Request");
    }
}

//! The write of the node's fleet record: one server-side apply with the token as it is
//! now, by a client that trusts the CA file's certificates and nothing else (rebuilt when
//! the file changes), sends nowhere but `https://`, and follows no redirect.

use std::path::PathBuf;
use std::time::Duration;

use reqwest::header::{AUTHORIZATION, CONTENT_TYPE, HeaderValue};
use serde_json::Value;

use super::Settings;
use crate::runtime::diagnostics;

/// Timeout of one write, connecting included.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Bytes of a response read (an error's `Status` is far smaller).
const RESPONSE_LIMIT: usize = 64 * 1024;
/// Characters of the API server's `message` kept for the log.
const MESSAGE_CHARS: usize = 500;

/// Why a write failed.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    #[error("reading the token {}: {source}", path.display())]
    Token {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the token {} is empty or not a header value", path.display())]
    BadToken { path: PathBuf },
    #[error("reading the CA bundle {}: {source}", path.display())]
    Ca {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the CA bundle {}: {source}", path.display())]
    BadCa {
        path: PathBuf,
        source: reqwest::Error,
    },
    #[error("the CA bundle {}: no certificate", path.display())]
    EmptyCa { path: PathBuf },
    #[error("HTTP client: {}", diagnostics::chain(.0))]
    Client(#[source] reqwest::Error),
    #[error("{}", diagnostics::chain(.0))]
    Request(#[source] reqwest::Error),
    #[error("the API server answered {status}{}", message.as_deref().map(|m| format!(": {m}")).unwrap_or_default())]
    Status {
        status: reqwest::StatusCode,
        message: Option<String>,
    },
}

/// What writes the record: the client of the CA bundle it was built with.
pub(super) struct Writer {
    pub(super) settings: Settings,
    client: Option<(Vec<u8>, reqwest::Client)>,
}

impl Writer {
    pub(super) fn new(settings: Settings) -> Self {
        Self {
            settings,
            client: None,
        }
    }

    /// Applies `record`: one request.
    pub(super) async fn write(&mut self, record: &Value) -> Result<(), WriteError> {
        let url = self.settings.url();
        self.send(url, record).await
    }

    /// Applies `record` as a server-side dry run (`dryRun=All`): the API server
    /// authenticates, authorizes and admits it, and stores nothing.
    pub(super) async fn dry_run(&mut self, record: &Value) -> Result<(), WriteError> {
        let url = format!("{}&dryRun=All", self.settings.url());
        self.send(url, record).await
    }

    async fn send(&mut self, url: String, record: &Value) -> Result<(), WriteError> {
        let client = self.client().await?;
        let path = &self.settings.token_file;
        let token = tokio::fs::read_to_string(path)
            .await
            .map_err(|source| WriteError::Token {
                path: path.clone(),
                source,
            })?;
        let token = token.trim();
        let mut bearer = HeaderValue::from_str(&format!("Bearer {token}"))
            .ok()
            .filter(|_| !token.is_empty())
            .ok_or_else(|| WriteError::BadToken { path: path.clone() })?;
        bearer.set_sensitive(true);
        let response = client
            .patch(url)
            .header(CONTENT_TYPE, "application/apply-patch+yaml")
            .header(AUTHORIZATION, bearer)
            .body(record.to_string())
            .send()
            .await
            .map_err(WriteError::Request)?;
        let status = response.status();
        let body = response_prefix(response, RESPONSE_LIMIT).await;
        if status.is_success() {
            return Ok(());
        }
        Err(WriteError::Status {
            status,
            message: status_message(&body),
        })
    }

    /// The client trusting the CA file's certificates as they are now.
    async fn client(&mut self) -> Result<reqwest::Client, WriteError> {
        let path = &self.settings.ca_file;
        let pem = tokio::fs::read(path)
            .await
            .map_err(|source| WriteError::Ca {
                path: path.clone(),
                source,
            })?;
        if let Some((built_with, client)) = &self.client
            && *built_with == pem
        {
            return Ok(client.clone());
        }
        let certs =
            reqwest::Certificate::from_pem_bundle(&pem).map_err(|source| WriteError::BadCa {
                path: path.clone(),
                source,
            })?;
        if certs.is_empty() {
            return Err(WriteError::EmptyCa { path: path.clone() });
        }
        // reqwest's rustls has no provider of its own (a no-op when main installed it).
        crate::runtime::tls::install_crypto_provider();
        let client = reqwest::Client::builder()
            .tls_certs_only(certs)
            .https_only(true)
            .redirect(reqwest::redirect::Policy::none())
            .timeout(REQUEST_TIMEOUT)
            .build()
            .map_err(WriteError::Client)?;
        if self.client.is_some() {
            tracing::info!(path = %path.display(), "the API server's CA bundle changed");
        }
        self.client = Some((pem, client.clone()));
        Ok(client)
    }
}

/// The first `limit` bytes of a response body, as text (the rest is never read).
async fn response_prefix(mut response: reqwest::Response, limit: usize) -> String {
    let mut prefix = Vec::new();
    while prefix.len() < limit {
        match response.chunk().await {
            Ok(Some(chunk)) => {
                let take = chunk.len().min(limit - prefix.len());
                prefix.extend_from_slice(&chunk[..take]);
            }
            Ok(None) | Err(_) => break,
        }
    }
    String::from_utf8_lossy(&prefix).into_owned()
}

/// The `message` of the API server's `Status` in `body`, if it is one.
pub(super) fn status_message(body: &str) -> Option<String> {
    let status: Value = serde_json::from_str(body).ok()?;
    let message = status.get("message")?.as_str()?.trim();
    (!message.is_empty()).then(|| message.chars().take(MESSAGE_CHARS).collect())
}

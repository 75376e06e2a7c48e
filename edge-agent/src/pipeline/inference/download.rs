//! Downloading model files (the model, and the golden and labels files beside it) over
//! HTTP(S), for model sources given as a `url`.
//!
//! A download never leaves the model's origin (scheme, host and port of the model URL):
//! redirects are followed within it, at most [`MAX_REDIRECTS`] of them, and refused
//! anywhere else, so the request headers (an `Authorization` token from a Secret) and the
//! trust placed in the model's server go nowhere else. Golden and labels files are paths
//! relative to the model URL on the same origin, never URLs of their own. Only a `200 OK`
//! is a file: any other answer is an error, never cached. URLs in errors and logs are
//! redacted (no user info, no query string), since presigned URLs carry their signature
//! in the query.

use std::time::Duration;

use edge_crds::redact;
use edge_crds::validate::file_next_to_model;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue, LOCATION};
use reqwest::{StatusCode, Url};

use super::source::{MAX_MODEL_BYTES, SourceError};

/// Most redirects followed for one download (all within the model's origin).
pub const MAX_REDIRECTS: usize = 5;

/// Why a redirect is not followed.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum RedirectRefused {
    /// The redirect points outside the origin of the URL asked for.
    #[error("redirect to {to} refused: not the origin of {from}")]
    OtherOrigin {
        /// Where it pointed (redacted).
        to: String,
        /// The URL asked for (redacted).
        from: String,
    },
    /// Too many redirects.
    #[error("more than {MAX_REDIRECTS} redirects")]
    TooMany,
}

/// Whether to follow a redirect to `next`, `chain` being the URLs visited so far (the
/// URL asked for first).
pub fn follow_redirect(chain: &[Url], next: &Url) -> Result<(), RedirectRefused> {
    let Some(first) = chain.first() else {
        return Ok(());
    };
    if chain.len() > MAX_REDIRECTS {
        return Err(RedirectRefused::TooMany);
    }
    if next.origin() != first.origin() {
        return Err(RedirectRefused::OtherOrigin {
            to: redact::url(next.as_str()),
            from: redact::url(first.as_str()),
        });
    }
    Ok(())
}

/// The URL of a golden or labels file named `name` next to the model at `model`: a
/// relative path resolved against the model URL, on the model's origin, or an error.
pub fn file_url(model: &Url, name: &str) -> Result<Url, SourceError> {
    let spec = |message: String| SourceError::Spec(format!("{name:?}: {message}"));
    file_next_to_model(name).map_err(spec)?;
    let url = model.join(name).map_err(|source| SourceError::Url {
        what: format!("{name:?}"),
        source,
    })?;
    if url.origin() != model.origin() {
        return Err(spec(format!(
            "resolves to {}, not next to the model at {}",
            redact::url(url.as_str()),
            redact::url(model.as_str())
        )));
    }
    Ok(url)
}

/// An HTTP client for model files: same-origin redirects only, the configured headers
/// on every request.
pub struct Downloader {
    client: reqwest::Client,
    headers: HeaderMap,
}

impl Downloader {
    /// A downloader with `timeout` per download and `headers` (name, value) sent with
    /// every request.
    pub fn new(timeout: Duration, headers: &[(String, String)]) -> Result<Self, SourceError> {
        let mut map = HeaderMap::new();
        for (name, value) in headers {
            let bad = |source: Box<dyn std::error::Error + Send + Sync>| SourceError::Header {
                name: name.clone(),
                source,
            };
            let n = HeaderName::from_bytes(name.as_bytes()).map_err(|e| bad(e.into()))?;
            let mut v = HeaderValue::from_str(value).map_err(|e| bad(e.into()))?;
            v.set_sensitive(true);
            map.append(n, v);
        }
        // The agent's TLS stack is rustls with ring; make sure a provider is in place
        // before reqwest builds its TLS config (a no-op when main did it).
        let _ = rustls::crypto::ring::default_provider().install_default();
        let policy = reqwest::redirect::Policy::custom(|attempt| {
            match follow_redirect(attempt.previous(), attempt.url()) {
                Ok(()) => attempt.follow(),
                Err(refused) => attempt.error(refused),
            }
        });
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .redirect(policy)
            .build()
            .map_err(SourceError::Client)?;
        Ok(Self {
            client,
            headers: map,
        })
    }

    /// GETs `url` on `rt`: the body of a `200 OK` of at most [`MAX_MODEL_BYTES`], or an
    /// error that says why, with every cause.
    pub fn get(&self, rt: &tokio::runtime::Runtime, url: &Url) -> Result<Vec<u8>, SourceError> {
        let shown = redact::url(url.as_str());
        let err = |message: String| SourceError::Download {
            url: shown.clone(),
            message,
        };
        let transfer = |source: reqwest::Error| SourceError::Transfer {
            url: shown.clone(),
            source,
        };
        rt.block_on(async {
            let mut response = self
                .client
                .get(url.clone())
                .headers(self.headers.clone())
                .send()
                .await
                .map_err(|e| transfer(e.without_url()))?;
            let status = response.status();
            if status != StatusCode::OK {
                let location = response
                    .headers()
                    .get(LOCATION)
                    .and_then(|v| v.to_str().ok());
                return Err(err(not_ok(status, location)));
            }
            if response
                .content_length()
                .is_some_and(|n| n > MAX_MODEL_BYTES)
            {
                return Err(SourceError::TooLarge(shown.clone()));
            }
            let mut body = Vec::new();
            while let Some(chunk) = response
                .chunk()
                .await
                .map_err(|e| transfer(e.without_url()))?
            {
                if (body.len() + chunk.len()) as u64 > MAX_MODEL_BYTES {
                    return Err(SourceError::TooLarge(shown.clone()));
                }
                body.extend_from_slice(&chunk);
            }
            Ok(body)
        })
    }
}

/// Why an answer other than `200 OK` is not the file.
fn not_ok(status: StatusCode, location: Option<&str>) -> String {
    match location {
        Some(to) if status.is_redirection() => {
            format!("{status} to {}: only a 200 is a file", redact::url(to))
        }
        _ => format!("{status}: only a 200 is a file"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url(s: &str) -> Url {
        Url::parse(s).unwrap()
    }

    #[test]
    fn redirects_are_followed_within_the_origin_only_and_not_forever() {
        let start = url("https://models.example/m.tflite?sig=abc");
        assert_eq!(
            follow_redirect(
                std::slice::from_ref(&start),
                &url("https://models.example/v2/m.tflite")
            ),
            Ok(())
        );
        for elsewhere in [
            "https://cdn.example/m.tflite",
            "http://models.example/m.tflite",
            "https://models.example:8443/m.tflite",
            "https://u:p@other.example/x?token=t",
        ] {
            let refused =
                follow_redirect(std::slice::from_ref(&start), &url(elsewhere)).unwrap_err();
            let text = refused.to_string();
            assert!(text.starts_with("redirect to "), "{text}");
            assert!(
                !text.contains("sig=") && !text.contains("token") && !text.contains("u:p"),
                "{text}"
            );
        }
        let chain = vec![start.clone(); MAX_REDIRECTS + 1];
        assert_eq!(
            follow_redirect(&chain, &start),
            Err(RedirectRefused::TooMany)
        );
        assert_eq!(follow_redirect(&chain[..MAX_REDIRECTS], &start), Ok(()));
    }

    #[test]
    fn files_beside_the_model_stay_on_its_origin() {
        let model = url("https://models.example/v1/m.tflite?sig=abc");
        assert_eq!(
            file_url(&model, "m.golden.json").unwrap().as_str(),
            "https://models.example/v1/m.golden.json"
        );
        assert_eq!(
            file_url(&model, "../labels.txt").unwrap().as_str(),
            "https://models.example/labels.txt"
        );
        for bad in [
            "https://evil.example/g.json",
            "//evil.example/g.json",
            "/\\evil.example/g.json",
            "file:/etc/passwd",
        ] {
            assert!(
                matches!(file_url(&model, bad), Err(SourceError::Spec(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn answers_other_than_200_say_what_they_were() {
        assert_eq!(
            not_ok(StatusCode::FOUND, Some("https://u:p@cdn.example/x?sig=1")),
            "302 Found to https://cdn.example/x: only a 200 is a file"
        );
        assert_eq!(
            not_ok(StatusCode::NO_CONTENT, None),
            "204 No Content: only a 200 is a file"
        );
    }
}

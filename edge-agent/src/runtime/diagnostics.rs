//! What the agent's logs say about URLs and errors.
//!
//! - [`url`]: a URL without user info, query string or fragment (where passwords, tokens
//!   and presigned signatures live). Every URL the agent logs goes through it: the source
//!   broker, the sinks, model downloads and redirect targets.
//! - [`chain`]: an error with every cause behind it, so "connection failed" comes with
//!   "invalid peer certificate: UnknownIssuer". URLs quoted anywhere in the chain are
//!   redacted too.

use std::error::Error;

pub use edge_crds::redact::url;

/// `error` and its `source()` chain, joined with `: `; a cause whose text is already
/// part of the message (a wrapper that prints its inner error) is not repeated.
pub fn chain(error: &(dyn Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let part = cause.to_string();
        if !part.is_empty() && !text.contains(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        source = cause.source();
    }
    edge_crds::redact::urls_in(&text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("connection failed")]
    struct Outer(#[source] Middle);

    #[derive(Debug, thiserror::Error)]
    #[error("TLS: {0}")]
    struct Middle(#[from] std::io::Error);

    #[test]
    fn every_cause_is_written_once() {
        let io = std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "invalid peer certificate: UnknownIssuer",
        );
        let e = Outer(Middle(io));
        assert_eq!(
            chain(&e),
            "connection failed: TLS: invalid peer certificate: UnknownIssuer"
        );
    }

    #[derive(Debug, thiserror::Error)]
    #[error("error sending request for url (https://user:pw@models.example/m.tflite?sig=abc)")]
    struct WithUrl;

    #[test]
    fn urls_in_the_chain_are_redacted() {
        assert_eq!(
            chain(&WithUrl),
            "error sending request for url (https://models.example/m.tflite)"
        );
    }
}

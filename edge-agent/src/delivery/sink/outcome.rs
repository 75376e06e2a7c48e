//! What a sink reports: a batch goes out as a [`Payload`], and one send of it comes to a
//! [`Sent`] whose [`Outcome`] says what the upstream made of it. The sync loop (see
//! [`super::run`]) decides everything else from these.

use std::time::Duration;

use super::wire::WireFormat;

/// A batch as it goes on the wire.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Payload {
    /// The format it is written in (`sink.format`, or v1 for a batch v2 cannot hold).
    pub format: WireFormat,
    /// The bytes, compressed as `encoding` says.
    pub body: Vec<u8>,
    /// Its `Content-Encoding` when compressed (HTTP only).
    pub encoding: Option<&'static str>,
}

/// What the upstream made of one send of a batch: all a sink reports, and all the sync
/// loop needs to decide what becomes of the batch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The upstream has the batch (a 2xx, a PUBACK): it leaves the queue.
    Accepted,
    /// The upstream refused the batch's content (an HTTP status of `deadLetterOn`): a
    /// retry would not change that, so it moves to the dead letters.
    Rejected { status: u16, reason: String },
    /// The upstream refused the credentials (401, 403, 407): sent again with backoff and
    /// counted, never dead-lettered, so an expired token does not empty the queue.
    Unauthorized { status: u16, reason: String },
    /// The upstream answered without taking the batch (5xx, 408, 429, 404, a redirect):
    /// sent again after its `Retry-After`, if it gave one, else the backoff.
    Unavailable {
        status: u16,
        retry_after: Option<Duration>,
        reason: String,
    },
    /// The upstream was not reached, or the exchange broke off (refused connection,
    /// timeout, TLS, a broker that disconnected): sent again after the backoff.
    Unreachable(String),
}

impl Outcome {
    /// Why the batch is not delivered (empty for [`Outcome::Accepted`]).
    pub fn reason(&self) -> &str {
        match self {
            Self::Accepted => "",
            Self::Rejected { reason, .. }
            | Self::Unauthorized { reason, .. }
            | Self::Unavailable { reason, .. }
            | Self::Unreachable(reason) => reason,
        }
    }

    /// The upstream's last error as `edge_agent_upstream_last_error_info` shows it: the
    /// status only when there is one, not the upstream's text (a label value should not be
    /// something the upstream can vary at will).
    pub fn last_error(&self) -> String {
        match self {
            Self::Rejected { status, .. }
            | Self::Unauthorized { status, .. }
            | Self::Unavailable { status, .. } => format!("HTTP {status}"),
            Self::Accepted | Self::Unreachable(_) => self.reason().to_string(),
        }
    }

    /// How long the upstream asked to wait before the next send.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::Unavailable { retry_after, .. } => *retry_after,
            _ => None,
        }
    }
}

/// One send: its outcome, and whether the payload went on the wire (an outage must not
/// look like traffic in the bandwidth panels).
#[derive(Debug)]
pub struct Sent {
    /// What the upstream made of it.
    pub outcome: Outcome,
    /// The bytes were written to the connection.
    pub on_wire: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcomes_say_why_and_how_long_to_wait() {
        let s = |t: &str| t.to_string();
        let secs = Duration::from_secs;
        // (outcome, reason, last error, retry after)
        let cases = [
            (Outcome::Accepted, "", s(""), None),
            (
                Outcome::Rejected {
                    status: 400,
                    reason: s("400 Bad Request: no"),
                },
                "400 Bad Request: no",
                s("HTTP 400"),
                None,
            ),
            (
                Outcome::Unauthorized {
                    status: 401,
                    reason: s("401 Unauthorized: expired"),
                },
                "401 Unauthorized: expired",
                s("HTTP 401"),
                None,
            ),
            (
                Outcome::Unavailable {
                    status: 503,
                    retry_after: Some(secs(7)),
                    reason: s("503 Service Unavailable: the upstream's own text"),
                },
                "503 Service Unavailable: the upstream's own text",
                s("HTTP 503"),
                Some(secs(7)),
            ),
            (
                Outcome::Unavailable {
                    status: 500,
                    retry_after: None,
                    reason: s("500 Internal Server Error"),
                },
                "500 Internal Server Error",
                s("HTTP 500"),
                None,
            ),
            (
                Outcome::Unreachable(s("connection failed: refused")),
                "connection failed: refused",
                s("connection failed: refused"),
                None,
            ),
        ];
        for (outcome, reason, last_error, retry_after) in cases {
            assert_eq!(outcome.reason(), reason, "{outcome:?}");
            assert_eq!(outcome.last_error(), last_error, "{outcome:?}");
            assert_eq!(outcome.retry_after(), retry_after, "{outcome:?}");
        }
    }
}

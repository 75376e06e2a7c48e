//! What every stage may use and no stage owns: the wall clock ([`clock`]), the retry
//! backoff ([`backoff`]), the MQTT clients' TLS and connection options ([`tls`]), the
//! metrics registry ([`telemetry`]), the health registry ([`health`]) and the `/metrics`
//! and probe server ([`http`]), error diagnostics, the data directory (its lock, the
//! fallback unit and snapshot) and the node's fleet record ([`heartbeat`]). None of these
//! imports a stage; [`credentials`] is the one part that knows the stages' clients, since
//! it rebuilds them when their credential files rotate.

pub mod backoff;
pub mod clock;
pub mod credentials;
pub mod datadir;
pub mod diagnostics;
pub mod health;
pub mod heartbeat;
pub mod http;
pub mod telemetry;
pub mod tls;

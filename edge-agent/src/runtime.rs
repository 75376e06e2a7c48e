//! What every stage may use and no stage owns: the wall clock ([`clock`]), the retry
//! backoff ([`backoff`]), the MQTT clients' TLS and connection options ([`tls`]), the
//! metrics registry ([`telemetry`]), the health registry ([`health`]) and the `/metrics`
//! and probe server ([`http`]), error diagnostics, the data directory (its lock, the
//! fallback unit and snapshot), the node's fleet record ([`heartbeat`]) and the watch on
//! rotating credential files ([`credentials`], which each stage gives the way to rebuild
//! its client). Nothing here imports a stage.

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

//! edge-operator: turns EdgePipelines into agent DaemonSets.
//!
//! Pure parts, tested without an API server: [`render`] (EdgePipeline -> ConfigMap +
//! DaemonSet), [`policy`] (the cluster admin's tenant policy and the check of a pipeline
//! against it) and [`status`] (pipeline + DaemonSet -> status and Event-worthy
//! transitions). Thin I/O around them: [`controller`] (watches, reconcile, error policy),
//! [`leader`] (Lease-based leader election), [`server`] (`/metrics`, `/livez`,
//! `/readyz`) and [`telemetry`] (the metrics). [`rbac`] lists the permissions all this
//! needs.

// Production code reports failures; it does not panic on them (tests may unwrap).
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

pub mod controller;
pub mod datadir;
pub mod leader;
pub mod policy;
pub mod rbac;
pub mod render;
pub mod rollout;
pub mod server;
pub mod status;
pub mod telemetry;

pub use policy::TenantPolicy;
pub use rbac::{Permission, fallback_permissions, required_permissions};
pub use render::{MODEL_MOUNT_DIR, RenderOptions, Rendered, render};

/// The default agent image: the agent released with this operator.
pub fn default_agent_image() -> String {
    format!("ghcr.io/edgepipe/edge-agent:{}", env!("CARGO_PKG_VERSION"))
}

//! Shared helpers for Edgepipe's cross-component tests: where the workspace and the
//! installed tools are, the two validation layers of the EdgePipeline API, and the
//! control-plane tests' fleet (a cluster with the operator, its manifests, a pod watch).

pub mod api;
pub mod docs;
pub mod fleet;
pub mod helm;
pub mod values_table;

pub use edge_testkit::{tool, workspace_root};

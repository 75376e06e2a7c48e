//! Shared helpers for Edgepipe's cross-component tests: where the workspace and the
//! installed tools are, and the two validation layers of the EdgePipeline API.

pub mod api;
pub mod docs;
pub mod helm;
pub mod values_table;

pub use edge_testkit::{tool, workspace_root};

//! edge-agent: the Edgepipe node data plane.
//!
//! MQTT in -> [`parse`] -> inference -> [`process`] -> [`queue`] (durable SQLite) -> sink,
//! with local actions published straight from inference and the processors. Never links
//! a Kubernetes client: the pipeline comes from a file (`edge-agent run --config`).

pub mod record;

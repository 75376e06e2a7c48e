//! edge-agent: the Edgepipe node data plane.
//!
//! One way through, one folder a step: [`ingest`] (MQTT in: the source, the embedded
//! broker) -> [`pipeline`] (parse, inference, the processors; out: each message's unit of
//! records and the local actions to fire as effects) -> [`delivery`] (the durable SQLite
//! queue, the sinks and their sync loop). [`config`] turns the manifest into resolved
//! settings; [`runtime`] holds what every step may use (metrics, health, credentials, the
//! data directory, the fleet record); [`run`] wires them together; [`cli`] is every other
//! subcommand. Never links a Kubernetes client: the pipeline comes from a file
//! (`edge-agent run --config`); what it tells the cluster, its node's fleet record, is one
//! HTTP request a write.

// Production code reports failures; it does not panic on them (tests may unwrap).
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

pub mod cli;
pub mod config;
pub mod delivery;
pub mod ingest;
pub mod pipeline;
pub mod record;
pub mod run;
pub mod runtime;

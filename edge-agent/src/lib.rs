//! edge-agent: the Edgepipe node data plane.
//!
//! MQTT in -> [`parse`] -> inference -> [`process`] -> [`queue`] (durable SQLite) -> sink,
//! with local actions published straight from inference and the processors. Never links
//! a Kubernetes client: the pipeline comes from a file (`edge-agent run --config`); what it
//! tells the cluster, its node's fleet record ([`heartbeat`]), is one HTTP request a write.

// Production code reports failures; it does not panic on them (tests may unwrap).
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

pub mod actions;
pub mod broker;
pub mod config;
pub mod credentials;
pub mod datadir;
pub mod demo;
pub mod diagnostics;
pub mod doctor;
pub mod heartbeat;
pub mod http;
pub mod inference;
pub mod parse;
pub mod pipeline;
pub mod process;
pub mod queue;
pub mod record;
pub mod reload;
pub mod run;
pub mod sink;
pub mod source;
pub mod telemetry;
pub mod top;

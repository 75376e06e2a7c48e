//! The agent's integration tests, linked as one binary (linking one test binary per
//! file cost more than running them). Each module is one area; the shared helpers are
//! `common` (the test kit and the test pipeline), `faults` (root-only fault injection:
//! network namespaces, tmpfs and FUSE mounts) and `inference_common` (model fixtures).
//! Run one area with a filter: `cargo test -p edge-agent --test agent fault_outage::`.

mod common;
mod faults;
mod inference_common;

mod actions;
mod credentials;
mod delivery;
mod demo;
mod doctor;
mod embedded_broker;
mod fault_disk;
mod fault_fuzz;
mod fault_outage;
mod fault_power;
mod fault_stream;
mod hostile;
mod hostile_network;
mod inference_cli;
mod inference_e2e;
mod inference_models;
mod inference_swap;
mod inference_url;
mod ingest;
mod limits;
mod metrics;
mod tls;

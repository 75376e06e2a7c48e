//! The operator's integration tests, linked as one binary (one binary per file spent
//! more time linking than running). `common` holds the fake API server and the test
//! pipelines; run one area with a filter, e.g.
//! `cargo test -p edge-operator --test operator render_golden::`.

mod common;

mod disarm;
mod leader;
mod reconcile;
mod reconcile_policy;
mod render_fields;
mod render_golden;
mod render_secrets;
mod render_tenancy;
mod run_command;
mod server;
mod status;
mod status_blocked;
mod status_fleet;

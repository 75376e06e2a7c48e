//! Cross-component tests that need no cluster: the API layers against the examples and
//! the broken manifests, the chart rendered and linted by the real Helm, the packaging,
//! the docs' manifests, commands and links, the shipped dashboard and alerts, and a real
//! Prometheus scraping a real agent. One binary (one per file spent more time linking
//! than running); run one area with a filter, e.g.
//! `cargo test -p edge-tests --test local chart::`.

mod api;
mod chart;
mod chart_objects;
mod chart_tenancy;
mod docs;
mod monitoring;
mod packaging;
mod prometheus;

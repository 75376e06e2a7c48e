//! Helpers shared by the operator's integration tests: paths in the workspace, the
//! examples, and pipelines built from YAML.

#![allow(dead_code)]

pub mod api;
pub mod cluster;

use std::path::{Path, PathBuf};

use edge_crds::{EdgePipeline, EdgePipelineStatus};
use edge_operator::RenderOptions;
use edge_operator::render::pipeline_from_manifest;
use k8s_openapi::api::apps::v1::{
    DaemonSet, DaemonSetSpec, DaemonSetStatus, DaemonSetUpdateStrategy, RollingUpdateDaemonSet,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

/// The workspace root.
pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the operator crate is inside the workspace")
        .to_path_buf()
}

/// The example manifests, sorted.
pub fn examples() -> Vec<PathBuf> {
    let dir = workspace().join("deploy/examples");
    let mut found: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
        .map(|entry| entry.expect("directory entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    found.sort();
    assert!(!found.is_empty(), "no examples in {}", dir.display());
    found
}

/// The golden file of an example.
pub fn golden_path(example: &Path) -> PathBuf {
    let name = example.file_name().expect("example file name");
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(name)
}

/// The render options the golden files use (the defaults of `edge-operator render`).
pub fn default_options() -> RenderOptions {
    RenderOptions::default()
}

/// The pipeline `factory/line1` with this spec (YAML at the indentation of `spec:`'s
/// children, i.e. two spaces).
pub fn with_spec(spec: &str) -> EdgePipeline {
    let text = edge_testkit::pipeline_yaml("factory", "line1", spec);
    pipeline_from_manifest(&text).unwrap_or_else(|e| panic!("test pipeline: {e}\n{text}"))
}

/// The source and sink of the small test pipeline.
pub const BASE_SPEC: &str = "  source:\n    mqtt: {url: 'mqtt://${HOST_IP}:1883', topics: ['sensors/+/temperature']}\n  sink:\n    http: {url: 'https://ingest.example.com/batch'}\n";

/// A small valid pipeline `factory/line1` with `extra` appended to its spec (YAML with
/// two-space indentation, e.g. `"  agent: {metricsPort: 9100}\n"`).
pub fn pipeline(extra: &str) -> EdgePipeline {
    with_spec(&format!("{BASE_SPEC}{extra}"))
}

/// `(type, status, reason)` of each condition of `status`, in its order.
pub fn condition_summary(status: &EdgePipelineStatus) -> Vec<(String, String, String)> {
    status
        .conditions
        .iter()
        .map(|c| (c.type_.clone(), c.status.clone(), c.reason.clone()))
        .collect()
}

/// The expected `(type, status, reason)` rows, as [`condition_summary`] returns them.
pub fn expected_conditions(rows: &[(&str, &str, &str)]) -> Vec<(String, String, String)> {
    rows.iter()
        .map(|(t, s, r)| (t.to_string(), s.to_string(), r.to_string()))
        .collect()
}

/// A DaemonSet at `generation` that replaces `max_unavailable` agents at a time (no surge),
/// whose controller observed generation `observed`: `desired` agents scheduled, `ready` of
/// them ready, `updated` of them on its pod template (which is empty).
pub fn rolling_daemon_set(
    generation: i64,
    observed: Option<i64>,
    (desired, ready, updated): (i32, i32, i32),
    max_unavailable: IntOrString,
) -> DaemonSet {
    DaemonSet {
        metadata: ObjectMeta {
            generation: Some(generation),
            ..ObjectMeta::default()
        },
        spec: Some(DaemonSetSpec {
            update_strategy: Some(DaemonSetUpdateStrategy {
                type_: Some("RollingUpdate".to_string()),
                rolling_update: Some(RollingUpdateDaemonSet {
                    max_surge: Some(IntOrString::Int(0)),
                    max_unavailable: Some(max_unavailable),
                }),
            }),
            ..DaemonSetSpec::default()
        }),
        status: Some(DaemonSetStatus {
            observed_generation: observed,
            desired_number_scheduled: desired,
            current_number_scheduled: desired,
            number_ready: ready,
            updated_number_scheduled: Some(updated),
            ..DaemonSetStatus::default()
        }),
    }
}

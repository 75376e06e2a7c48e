//! Every manifest a page shows passes both validation layers of the API, as kubectl would
//! send it: complete ones as they are, fragments merged into the smallest valid pipeline,
//! and the pipeline files a shell block writes.

use std::collections::BTreeMap;

use edge_tests::api::{rust_layer, schema_layer};
use edge_tests::docs;
use serde_json::{Value, json};

use super::{all_blocks, at, is_shell, report};

/// What a fragment is merged into: the smallest pipeline both layers accept.
fn base_pipeline() -> Value {
    json!({
        "apiVersion": "edgepipe.dev/v1alpha1",
        "kind": "EdgePipeline",
        "metadata": {"name": "docs", "namespace": "docs"},
        "spec": {
            "source": {"mqtt": {"url": "mqtt://127.0.0.1:1883", "topics": ["sensors/+/temperature"]}},
            "sink": {"http": {"url": "https://ingest.example.com/batch"}}
        }
    })
}

/// Both validation layers of the API on a manifest, as kubectl would send it.
fn pipeline_problems(manifest: &Value) -> Vec<String> {
    let text = manifest.to_string();
    let mut problems: Vec<String> = rust_layer(&text)
        .iter()
        .map(|p| format!("validate(): {p}"))
        .collect();
    problems.extend(
        schema_layer(&text)
            .iter()
            .map(|p| format!("CRD schema/CEL: {p}")),
    );
    problems
}

/// A pipeline file as the agent reads it: a full manifest, or a bare spec.
fn as_manifest(value: Value) -> Value {
    if value.get("kind").is_some() {
        return value;
    }
    let mut manifest = base_pipeline();
    manifest["spec"] = value;
    manifest
}

#[test]
fn every_manifest_shown_is_valid_as_kubectl_sends_it() {
    let mut problems = Vec::new();
    let mut checked = BTreeMap::<&str, usize>::new();
    for (page, block) in all_blocks() {
        let place = at(&page, block.line);
        if block.lang == "yaml" || block.lang == "yml" {
            let text = docs::dedent(&block.body);
            let value = match docs::as_kubectl_sends(&text) {
                Ok(v) => v,
                Err(e) => {
                    problems.push(format!("{place}: not YAML 1.1: {e}"));
                    continue;
                }
            };
            if block.has("sketch") {
                *checked.entry("sketches (parsed only)").or_default() += 1;
                continue;
            }
            let manifest = if let Some(path) = block.mark("fragment") {
                let placed = if path.is_empty() {
                    if value.get("spec").is_some() {
                        value
                    } else {
                        docs::nest("spec", value)
                    }
                } else {
                    docs::nest(path, value)
                };
                let mut manifest = base_pipeline();
                docs::merge(&mut manifest, placed);
                *checked.entry("EdgePipeline fragments").or_default() += 1;
                manifest
            } else {
                match value.get("kind").and_then(Value::as_str) {
                    Some("EdgePipeline") => {
                        *checked.entry("EdgePipelines").or_default() += 1;
                        value
                    }
                    Some(_) => {
                        for field in ["/apiVersion", "/kind", "/metadata/name"] {
                            if !value.pointer(field).is_some_and(Value::is_string) {
                                problems.push(format!("{place}: no {field}"));
                            }
                        }
                        *checked.entry("other manifests").or_default() += 1;
                        continue;
                    }
                    None => {
                        problems.push(format!(
                            "{place}: a YAML block without `kind`: mark its fence `yaml fragment`, \
                             `yaml fragment=PATH` or `yaml sketch`"
                        ));
                        continue;
                    }
                }
            };
            problems.extend(
                pipeline_problems(&manifest)
                    .into_iter()
                    .map(|p| format!("{place}: {p}")),
            );
        } else if is_shell(&block) {
            for heredoc in docs::command_lines(&block).1 {
                if !heredoc.file.ends_with(".yaml") {
                    continue;
                }
                *checked
                    .entry("pipeline files written by a shell block")
                    .or_default() += 1;
                match docs::as_kubectl_sends(&heredoc.body) {
                    Ok(v) => problems.extend(
                        pipeline_problems(&as_manifest(v))
                            .into_iter()
                            .map(|p| format!("{place} ({}): {p}", heredoc.file)),
                    ),
                    Err(e) => problems.push(format!("{place} ({}): not YAML: {e}", heredoc.file)),
                }
            }
        }
    }
    println!("checked: {checked:?}");
    assert!(
        checked.get("EdgePipeline fragments").copied().unwrap_or(0) >= 10,
        "the pages show fewer pipeline fragments than expected: {checked:?}"
    );
    report("manifests in the docs that the API would refuse", &problems);
}

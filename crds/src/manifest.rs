//! Loading a pipeline from a file: a full `EdgePipeline` manifest (as applied to the
//! cluster) or its bare `spec`, so the same file runs on k3s, on a laptop or on a
//! Raspberry Pi without Kubernetes.
//!
//! The file is read as kubectl and Helm read it (YAML 1.1 scalars, JSON numbers), so a
//! manifest means the same thing to the agent as to the API server: unquoted `y`, `n`,
//! `yes`, `no`, `on` and `off` are booleans, `010` is octal, and `1e3` or `1.0` is an
//! integer.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::spec::EdgePipelineSpec;
use crate::validate::{FieldError, describe};

/// The API group and version of EdgePipeline.
pub const API_VERSION: &str = "edgepipe.dev/v1alpha1";
/// The kind of EdgePipeline.
pub const KIND: &str = "EdgePipeline";
/// The environment variable carrying the uid of the pipeline an agent runs for (set by
/// the operator in the agent container; it names the owner of the node's queue).
pub const PIPELINE_UID_ENV: &str = "EDGEPIPE_PIPELINE_UID";
/// Environment variable naming the agent's pipeline file in agent pods (so
/// `edge-agent doctor` needs no arguments there).
pub const AGENT_CONFIG_ENV: &str = "EDGEPIPE_CONFIG";
/// Environment variable naming the agent's data directory in agent pods.
pub const AGENT_DATA_DIR_ENV: &str = "EDGEPIPE_DATA_DIR";

/// Name, namespace and uid of a pipeline, as far as the agent needs them.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PipelineMeta {
    /// `metadata.name`.
    #[serde(default)]
    pub name: Option<String>,
    /// `metadata.namespace`.
    #[serde(default)]
    pub namespace: Option<String>,
    /// `metadata.uid`: which pipeline of that name (the operator renders it; absent in a
    /// manifest written by hand). The queue on the node belongs to it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<String>,
}

impl PipelineMeta {
    /// `namespace/name` as used in records and metric labels (`default` namespace and
    /// `standalone` name when absent).
    pub fn id(&self) -> String {
        format!(
            "{}/{}",
            self.namespace.as_deref().unwrap_or("default"),
            self.name.as_deref().unwrap_or("standalone")
        )
    }
}

/// A pipeline read from a file.
#[derive(Clone, Debug, PartialEq)]
pub struct PipelineFile {
    /// Name and namespace (empty for a bare spec).
    pub meta: PipelineMeta,
    /// The spec.
    pub spec: EdgePipelineSpec,
}

/// Why a pipeline file could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("not valid YAML: {0}")]
    Yaml(#[source] serde_saphyr::Error),
    /// A field of the wrong type, a missing or an unknown one.
    #[error("{path}: {source}{hint}")]
    Shape {
        /// Where, e.g. `spec.sink.http.batchSize`.
        path: String,
        /// What the typed parse found there.
        #[source]
        source: serde_json::Error,
        /// Advice for a known pitfall (a YAML 1.1 boolean where text belongs), or empty.
        hint: &'static str,
    },
    #[error("apiVersion {found:?} is not {API_VERSION}")]
    ApiVersion { found: String },
    #[error("kind {found:?} is not {KIND}")]
    Kind { found: String },
    /// Keys v1alpha1 renamed (see [`crate::renamed`]), one error per key.
    #[error("{}", describe(.0))]
    Renamed(Vec<FieldError>),
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct FullManifest {
    #[serde(default)]
    metadata: PipelineMeta,
    spec: EdgePipelineSpec,
}

/// Parses a full EdgePipeline manifest or a bare spec from YAML (or JSON) text.
pub fn parse_pipeline(text: &str) -> Result<PipelineFile, ManifestError> {
    let value = read_as_kubectl_sends(text)?;
    let full = value.get("apiVersion").is_some() || value.get("kind").is_some();
    if full {
        let field = |k: &str| {
            value
                .get(k)
                .and_then(|v| v.as_str())
                .unwrap_or("")
                .to_string()
        };
        if field("apiVersion") != API_VERSION {
            return Err(ManifestError::ApiVersion {
                found: field("apiVersion"),
            });
        }
        if field("kind") != KIND {
            return Err(ManifestError::Kind {
                found: field("kind"),
            });
        }
    }
    let renamed = crate::renamed::check(if full {
        value.get("spec").unwrap_or(&Value::Null)
    } else {
        &value
    });
    if !renamed.is_empty() {
        return Err(ManifestError::Renamed(renamed));
    }
    if full {
        let full: FullManifest = serde_path_to_error::deserialize(value)
            .map_err(|e| shape_error(e.path().to_string(), e.into_inner()))?;
        Ok(PipelineFile {
            meta: full.metadata,
            spec: full.spec,
        })
    } else {
        let spec: EdgePipelineSpec = serde_path_to_error::deserialize(value)
            .map_err(|e| shape_error(format!("spec.{}", e.path()), e.into_inner()))?;
        Ok(PipelineFile {
            meta: PipelineMeta::default(),
            spec,
        })
    }
}

/// Parses YAML into the JSON kubectl would send for it: YAML 1.1 booleans (the YAML
/// parser's default) and octal integers, and integral numbers as integers (Go writes the
/// float 1000 as `1000`, which an integer field accepts).
fn read_as_kubectl_sends(text: &str) -> Result<Value, ManifestError> {
    let mut options = serde_saphyr::Options::default();
    options.legacy_octal_numbers = true;
    let mut value: Value =
        serde_saphyr::from_str_with_options(text, options).map_err(ManifestError::Yaml)?;
    integral_floats_to_integers(&mut value);
    Ok(value)
}

/// Replaces every number with a float value equal to an integer by that integer.
fn integral_floats_to_integers(value: &mut Value) {
    /// Integers a float represents exactly.
    const EXACT: f64 = 9_007_199_254_740_992.0;
    match value {
        Value::Number(n) if n.is_f64() => {
            if let Some(f) = n.as_f64()
                && f.fract() == 0.0
                && f.abs() <= EXACT
            {
                *value = Value::from(f as i64);
            }
        }
        Value::Array(items) => items.iter_mut().for_each(integral_floats_to_integers),
        Value::Object(map) => map.values_mut().for_each(integral_floats_to_integers),
        _ => {}
    }
}

/// A type error at `path`, with a hint when a YAML 1.1 boolean stands where text belongs.
fn shape_error(path: String, source: serde_json::Error) -> ManifestError {
    let hint = if source.to_string().contains("invalid type: boolean") {
        " (kubectl and Helm read YAML 1.1, where unquoted y, n, yes, no, on, off, true and false are booleans: quote the value)"
    } else {
        ""
    };
    ManifestError::Shape { path, source, hint }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SPEC: &str = r#"
source:
  mqtt: {url: "mqtt://127.0.0.1:1883", topics: ["sensors/#"]}
sink:
  http: {url: "http://127.0.0.1:8080/batch"}
"#;

    #[test]
    fn bare_spec_and_full_manifest_give_the_same_spec() {
        let bare = parse_pipeline(SPEC).unwrap();
        assert_eq!(bare.meta.id(), "default/standalone");
        let indented: String = SPEC.lines().map(|l| format!("  {l}\n")).collect();
        let full = format!(
            "apiVersion: edgepipe.dev/v1alpha1\nkind: EdgePipeline\nmetadata: {{name: p, namespace: f}}\nspec:\n{indented}"
        );
        let full = parse_pipeline(&full).unwrap();
        assert_eq!(full.meta.id(), "f/p");
        assert_eq!(full.spec, bare.spec);
        assert_eq!(full.spec.source.mqtt.qos, 1, "defaults applied");
    }

    #[test]
    fn wrong_kind_or_version_is_named() {
        let err = parse_pipeline("apiVersion: v1\nkind: EdgePipeline\nspec: {}\n").unwrap_err();
        assert!(err.to_string().contains("apiVersion"), "{err}");
        let err = parse_pipeline("apiVersion: edgepipe.dev/v1alpha1\nkind: Pod\nspec:\n  source: {mqtt: {topics: [a], url: 'mqtt://x'}}\n  sink: {http: {url: 'http://x'}}\n").unwrap_err();
        assert!(err.to_string().contains("kind"), "{err}");
    }

    /// The old action key, as written (`on`) and as kubectl sends it (`"true"`), in a full
    /// manifest and in a bare spec: rejected naming the field, before the typed parse.
    #[test]
    fn the_renamed_action_key_is_named() {
        let actions = [
            "  actions: [{on: anomaly, mqtt: {topic: alerts}}]\n",
            "  actions:\n    - \"true\": anomaly\n      mqtt: {topic: alerts}\n",
        ];
        for action in actions {
            let spec = format!("{SPEC}{}", action.trim_start());
            let bare = parse_pipeline(&spec).unwrap_err().to_string();
            assert_eq!(
                bare,
                format!("spec.actions[0].on: {}", crate::renamed::ON_RENAMED)
            );
            let indented: String = spec.lines().map(|l| format!("  {l}\n")).collect();
            let full = format!(
                "apiVersion: edgepipe.dev/v1alpha1\nkind: EdgePipeline\nmetadata: {{name: p}}\nspec:\n{indented}"
            );
            assert_eq!(parse_pipeline(&full).unwrap_err().to_string(), bare);
        }
        let renamed = format!("{SPEC}actions: [{{trigger: anomaly, mqtt: {{topic: alerts}}}}]\n");
        let file = parse_pipeline(&renamed).unwrap();
        assert_eq!(file.spec.actions[0].trigger, crate::ActionTrigger::Anomaly);
    }

    /// What sigs.k8s.io/yaml (kubectl, Helm) sends for these scalars, as JSON.
    #[test]
    fn scalars_are_read_as_kubectl_sends_them() {
        let yaml = "a: [yes, no, on, off, y, n, Yes, OFF, 010, 09, 1e3, 1.0, 0.5, 1:30, 2026-01-01, 1_000, 0x1F, \"on\"]";
        let kubectl = r#"{"a":[true,false,true,false,true,false,true,false,8,9,1000,1,0.5,"1:30","2026-01-01",1000,31,"on"]}"#;
        let ours = read_as_kubectl_sends(yaml).unwrap();
        assert_eq!(ours.to_string(), kubectl);
    }

    #[test]
    fn integral_numbers_fit_integer_fields_and_booleans_in_text_get_a_hint() {
        let spec = SPEC
            .replace("batch\"}", "batch\", batchSize: 1e3}")
            .replace("\"sensors/#\"]", "\"sensors/#\"], qos: 1.0");
        let file = parse_pipeline(&spec).unwrap();
        assert_eq!(file.spec.sink.http.as_ref().unwrap().batch_size, 1000);
        assert_eq!(file.spec.source.mqtt.qos, 1);

        let spec = SPEC.replace("\"sensors/#\"]", "on]");
        let err = parse_pipeline(&spec).unwrap_err().to_string();
        assert!(
            err.starts_with("spec.source.mqtt.topics[0]: invalid type: boolean `true`")
                && err.contains("YAML 1.1"),
            "{err}"
        );
    }

    #[test]
    fn unknown_shape_names_the_field() {
        let err = parse_pipeline("source: {mqtt: {topics: 5}}\nsink: {}\n").unwrap_err();
        assert!(
            err.to_string().starts_with("spec.source.mqtt.topics: "),
            "{err}"
        );
    }
}

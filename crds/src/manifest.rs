//! Loading a pipeline from a file: a full `EdgePipeline` manifest (as applied to the
//! cluster) or its bare `spec`, so the same file runs on k3s, on a laptop or on a
//! Raspberry Pi without Kubernetes.

use serde::{Deserialize, Serialize};

use crate::spec::EdgePipelineSpec;

/// The API group and version of EdgePipeline.
pub const API_VERSION: &str = "edgepipe.dev/v1alpha1";
/// The kind of EdgePipeline.
pub const KIND: &str = "EdgePipeline";

/// Name and namespace of a pipeline, as far as the agent needs them.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PipelineMeta {
    /// `metadata.name`.
    #[serde(default)]
    pub name: Option<String>,
    /// `metadata.namespace`.
    #[serde(default)]
    pub namespace: Option<String>,
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
    Yaml(String),
    #[error("{0}")]
    Shape(String),
    #[error("apiVersion {found:?} is not {API_VERSION}")]
    ApiVersion { found: String },
    #[error("kind {found:?} is not {KIND}")]
    Kind { found: String },
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
    let value: serde_json::Value =
        serde_saphyr::from_str(text).map_err(|e| ManifestError::Yaml(e.to_string()))?;
    if value.get("apiVersion").is_some() || value.get("kind").is_some() {
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
        let full: FullManifest = serde_path_to_error::deserialize(value)
            .map_err(|e| ManifestError::Shape(format!("{}: {}", e.path(), e.inner())))?;
        Ok(PipelineFile {
            meta: full.metadata,
            spec: full.spec,
        })
    } else {
        let spec: EdgePipelineSpec = serde_path_to_error::deserialize(value)
            .map_err(|e| ManifestError::Shape(format!("spec.{}: {}", e.path(), e.inner())))?;
        Ok(PipelineFile {
            meta: PipelineMeta::default(),
            spec,
        })
    }
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

    #[test]
    fn unknown_shape_names_the_field() {
        let err = parse_pipeline("source: {mqtt: {topics: 5}}\nsink: {}\n").unwrap_err();
        assert!(
            err.to_string().starts_with("spec.source.mqtt.topics: "),
            "{err}"
        );
    }
}

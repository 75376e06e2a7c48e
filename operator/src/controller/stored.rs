//! EdgePipelines as the API server stores them, decoded leniently for the watch, then
//! one by one with the strict types.
//!
//! The API types reject unknown fields (`deny_unknown_fields`), which is right for
//! `edge-agent check`, `edge-operator render` and validation. But a watch decodes a whole
//! list page into one vector: one pipeline stored with a field this operator does not
//! know (a newer CRD, during `helm upgrade`) would fail every list and stop the
//! reconcile of every pipeline. So the controller watches [`StoredPipeline`] (metadata,
//! and the spec and status as plain JSON), and [`StoredPipeline::decode`] converts each
//! with the strict types; one that does not decode gets the `Invalid` condition naming
//! the field, and the others go on.

use edge_crds::{EdgePipeline, EdgePipelineStatus, FieldError};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// An EdgePipeline as stored: its metadata, its spec and status left as JSON.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct StoredPipeline {
    /// The object's metadata.
    pub metadata: ObjectMeta,
    /// The spec, not decoded.
    #[serde(default)]
    pub spec: JsonText,
    /// The status, not decoded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<JsonText>,
}

/// A JSON value kept as its compact text. The controller caches every pipeline and
/// decodes one only when it reconciles it or looks into it; as a `serde_json::Value` a
/// spec costs several times its text in memory (every small object a B-tree node).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JsonText(Box<str>);

impl JsonText {
    /// The value (`null` if the text is not JSON, which [`JsonText`] never builds).
    pub fn value(&self) -> Value {
        serde_json::from_str(&self.0).unwrap_or(Value::Null)
    }

    /// The text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Default for JsonText {
    fn default() -> Self {
        Self::from(&Value::Null)
    }
}

impl From<&Value> for JsonText {
    fn from(value: &Value) -> Self {
        Self(value.to_string().into_boxed_str())
    }
}

impl From<Value> for JsonText {
    fn from(value: Value) -> Self {
        Self::from(&value)
    }
}

impl Serialize for JsonText {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.value().serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for JsonText {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Value::deserialize(deserializer).map(Self::from)
    }
}

impl StoredPipeline {
    /// The stored form of `pipeline` (tests, and caches filled by hand).
    pub fn from_pipeline(pipeline: &EdgePipeline) -> Self {
        Self {
            metadata: pipeline.metadata.clone(),
            spec: JsonText::from(serde_json::to_value(&pipeline.spec).unwrap_or_default()),
            status: pipeline
                .status
                .as_ref()
                .and_then(|status| serde_json::to_value(status).ok())
                .map(JsonText::from),
        }
    }

    /// The pipeline, decoded with the strict API types; or the first field they reject,
    /// with its path (`spec.source.mqtt.sessionExpiry: unknown field `sessionExpiry`, ...`).
    pub fn decode(&self) -> Result<EdgePipeline, FieldError> {
        let spec = serde_path_to_error::deserialize(self.spec.value()).map_err(|error| {
            let path = error.path().to_string();
            let path = if path == "." {
                "spec".to_string()
            } else {
                format!("spec.{path}")
            };
            FieldError {
                path,
                message: format!(
                    "{}; this operator does not know this spec (is the CRD newer than the operator? upgrade the operator, or remove the field)",
                    error.inner()
                ),
            }
        })?;
        Ok(EdgePipeline {
            metadata: self.metadata.clone(),
            spec,
            status: self.status(),
        })
    }

    /// The status, if it decodes (statuses accept unknown fields).
    pub fn status(&self) -> Option<EdgePipelineStatus> {
        self.status
            .as_ref()
            .and_then(|status| serde_json::from_str(status.as_str()).ok())
    }
}

resource_as!(StoredPipeline, EdgePipeline);

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn stored(spec: Value) -> StoredPipeline {
        StoredPipeline {
            metadata: ObjectMeta {
                name: Some("line1".to_string()),
                namespace: Some("factory".to_string()),
                ..ObjectMeta::default()
            },
            spec: JsonText::from(spec),
            status: Some(JsonText::from(
                json!({"desiredNodes": 2, "futureField": true}),
            )),
        }
    }

    fn base() -> Value {
        json!({
            "source": {"mqtt": {"url": "mqtt://127.0.0.1:1883", "topics": ["sensors/#"]}},
            "sink": {"http": {"url": "https://ingest.example.com/batch"}}
        })
    }

    #[test]
    fn each_pipeline_decodes_on_its_own_and_names_the_field_it_does_not_know() {
        let mut top = base();
        top["priority"] = json!(3);
        let mut nested = base();
        nested["source"]["mqtt"]["sessionExpiry"] = json!("30s");
        let mut wrong_type = base();
        wrong_type["sink"]["http"]["batchSize"] = json!("many");
        let cases = [
            ("known", base(), None),
            (
                "top level",
                top,
                Some(("spec.priority", "unknown field `priority`")),
            ),
            (
                "nested",
                nested,
                Some((
                    "spec.source.mqtt.sessionExpiry",
                    "unknown field `sessionExpiry`",
                )),
            ),
            (
                "wrong type",
                wrong_type,
                Some(("spec.sink.http.batchSize", "invalid type")),
            ),
        ];
        for (name, spec, expected) in cases {
            let decoded = stored(spec).decode();
            match (decoded, expected) {
                (Ok(pipeline), None) => {
                    assert_eq!(pipeline.metadata.name.as_deref(), Some("line1"));
                    assert_eq!(pipeline.status.map(|s| s.desired_nodes), Some(2));
                }
                (Err(error), Some((path, message))) => {
                    assert_eq!(error.path, path, "{name}: {error}");
                    assert!(error.message.contains(message), "{name}: {error}");
                }
                (got, expected) => panic!("{name}: got {got:?}, expected {expected:?}"),
            }
        }
    }

    #[test]
    fn a_list_with_one_unknown_field_still_decodes() {
        let mut odd = base();
        odd["priority"] = json!(3);
        let list = json!([{"metadata": {"name": "a"}, "spec": base()}, {"metadata": {"name": "b"}, "spec": odd}]);
        let strict: Result<Vec<EdgePipeline>, _> = serde_json::from_value(list.clone());
        assert!(strict.is_err(), "the strict types reject the whole list");
        let lenient: Vec<StoredPipeline> = serde_json::from_value(list).expect("decodes");
        let decoded: Vec<bool> = lenient.iter().map(|p| p.decode().is_ok()).collect();
        assert_eq!(decoded, [true, false]);
    }
}

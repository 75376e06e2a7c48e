//! Model ConfigMaps reduced to what the controller needs: their metadata and a digest of
//! their content.
//!
//! A model's version in the pods' config hash is the digest of the ConfigMap's `data`
//! and `binaryData`, not its resourceVersion: a metadata-only edit (a label or an
//! annotation added by a GitOps tool) leaves the fleet alone, a new model rolls it. The
//! watch receives each ConfigMap whole, [`summarize`] keeps its metadata and puts the
//! digest in the [`MODEL_DIGEST`] annotation of the cached copy (never written back), so
//! the cache holds no model bytes.

use k8s_openapi::api::core::v1::ConfigMap;
use kube::core::PartialObjectMeta;
use kube::runtime::watcher;
use sha2::{Digest, Sha256};

/// Annotation of the cached (never written) copy of a model ConfigMap: its digest.
pub const MODEL_DIGEST: &str = "edgepipe.dev/model-digest";

/// SHA-256 (hex) of the ConfigMap's `data` and `binaryData`, keys in order, each key and
/// value length-prefixed so no two contents give the same input.
pub fn content_digest(cm: &ConfigMap) -> String {
    let mut hasher = Sha256::new();
    let mut field = |tag: &[u8], key: &str, value: &[u8]| {
        hasher.update(tag);
        hasher.update((key.len() as u64).to_be_bytes());
        hasher.update(key.as_bytes());
        hasher.update((value.len() as u64).to_be_bytes());
        hasher.update(value);
    };
    for (key, value) in cm.data.iter().flatten() {
        field(b"d", key, value.as_bytes());
    }
    for (key, value) in cm.binary_data.iter().flatten() {
        field(b"b", key, &value.0);
    }
    hex::encode(hasher.finalize())
}

/// The metadata of `cm`, with its content digest in the [`MODEL_DIGEST`] annotation.
pub fn summarize(cm: ConfigMap) -> PartialObjectMeta<ConfigMap> {
    let digest = content_digest(&cm);
    let mut metadata = cm.metadata;
    metadata
        .annotations
        .get_or_insert_with(Default::default)
        .insert(MODEL_DIGEST.to_string(), digest);
    PartialObjectMeta {
        types: None,
        metadata,
        _phantom: Default::default(),
    }
}

/// A watch event of a whole ConfigMap as one of its summary.
pub fn summarize_event(
    event: watcher::Event<ConfigMap>,
) -> watcher::Event<PartialObjectMeta<ConfigMap>> {
    use watcher::Event;
    match event {
        Event::Apply(cm) => Event::Apply(summarize(cm)),
        Event::Delete(cm) => Event::Delete(summarize(cm)),
        Event::InitApply(cm) => Event::InitApply(summarize(cm)),
        Event::Init => Event::Init,
        Event::InitDone => Event::InitDone,
    }
}

/// The digest of a cached model ConfigMap.
pub fn digest_of(cm: &PartialObjectMeta<ConfigMap>) -> Option<String> {
    cm.metadata.annotations.as_ref()?.get(MODEL_DIGEST).cloned()
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use k8s_openapi::ByteString;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    use super::*;

    fn cm(data: &[(&str, &str)], labels: &[(&str, &str)], version: &str) -> ConfigMap {
        let map = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        ConfigMap {
            metadata: ObjectMeta {
                name: Some("anomaly-model".to_string()),
                labels: Some(map(labels)),
                resource_version: Some(version.to_string()),
                ..ObjectMeta::default()
            },
            data: Some(map(data)),
            ..ConfigMap::default()
        }
    }

    #[test]
    fn the_digest_follows_the_content_not_the_metadata() {
        let base = content_digest(&cm(&[("model.tflite", "v1")], &[], "1"));
        let cases = [
            (
                "a label and a new resourceVersion",
                cm(&[("model.tflite", "v1")], &[("team", "a")], "2"),
                true,
            ),
            ("new data", cm(&[("model.tflite", "v2")], &[], "3"), false),
            (
                "another key",
                cm(&[("model.tflite", "v1"), ("labels.txt", "x")], &[], "4"),
                false,
            ),
            (
                "the value moved between keys",
                cm(&[("model.tflitev", "1")], &[], "5"),
                false,
            ),
        ];
        for (name, changed, same) in cases {
            assert_eq!(content_digest(&changed) == base, same, "{name}");
        }
        let mut binary = cm(&[], &[], "6");
        binary.binary_data = Some(BTreeMap::from([(
            "model.tflite".to_string(),
            ByteString(b"v1".to_vec()),
        )]));
        assert_ne!(content_digest(&binary), base, "data and binaryData differ");
    }

    #[test]
    fn the_summary_keeps_the_metadata_and_the_digest_only() {
        let model = cm(
            &[("model.tflite", "v1")],
            &[("edgepipe.dev/model", "true")],
            "7",
        );
        let digest = content_digest(&model);
        let summary = summarize(model);
        assert_eq!(digest_of(&summary), Some(digest));
        assert_eq!(summary.metadata.resource_version.as_deref(), Some("7"));
        assert_eq!(
            summary
                .metadata
                .labels
                .and_then(|l| l.get("edgepipe.dev/model").cloned()),
            Some("true".to_string())
        );
    }
}

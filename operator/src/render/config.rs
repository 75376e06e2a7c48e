//! The agent's configuration file, `pipeline.yaml`, as the operator renders it from an
//! EdgePipeline, and the hash that rolls the agents when it changes.
//!
//! The file is the pipeline itself (a full manifest the agent also accepts standalone),
//! rewritten so the agent needs no Kubernetes knowledge:
//! - every `secretKeyRef` (passwords, TLS material, sink and model download headers)
//!   becomes `file: <SECRETS_DIR>/<secret>/<key>`, a file of the Secret mounted into the
//!   pod (see [`super::secrets`]), so no Secret value is in this file;
//! - a `configMap` model becomes `path: <MODEL_MOUNT_DIR>/<key>`, the file of the model
//!   ConfigMap mounted as a directory, so golden and label files named "next to the
//!   model" are the other keys of that ConfigMap.

use edge_crds::manifest::{API_VERSION, KIND};
use edge_crds::names::check_config_map_key;
use edge_crds::{EdgePipelineSpec, FieldError};
use serde::Serialize;
use sha2::{Digest, Sha256};

use super::secrets::{SECRETS_DIR, SecretMount, rewrite_spec};
use super::{MODEL_MOUNT_DIR, RenderError};

/// The rendered configuration of one pipeline.
#[derive(Clone, Debug, PartialEq)]
pub struct AgentConfig {
    /// The content of `pipeline.yaml`.
    pub text: String,
    /// The Secrets the agent reads keys of, as files, sorted by name.
    pub secrets: Vec<SecretMount>,
    /// The ConfigMap holding the model, when the model comes from one.
    pub model_config_map: Option<String>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Manifest<'a> {
    api_version: &'static str,
    kind: &'static str,
    metadata: Metadata<'a>,
    spec: &'a EdgePipelineSpec,
}

#[derive(Serialize)]
struct Metadata<'a> {
    name: &'a str,
    namespace: &'a str,
}

/// Renders `pipeline.yaml` for the pipeline `namespace/name`.
pub fn agent_config(
    namespace: &str,
    name: &str,
    spec: &EdgePipelineSpec,
) -> Result<AgentConfig, RenderError> {
    let mut spec = spec.clone();
    // How the operator rolls a change out is no part of the agent's configuration:
    // changing it must not roll the fleet.
    spec.rollout = None;
    let secrets = rewrite_spec(&mut spec)?;

    let mut model_config_map = None;
    if let Some(model) = spec.inference.as_mut().map(|i| &mut i.model)
        && let Some(cm) = model.config_map.take()
    {
        // The key becomes a file name in the mounted directory: one segment, no `..`.
        check_config_map_key(&cm.key).map_err(|message| {
            RenderError::Invalid(vec![FieldError {
                path: "spec.inference.model.configMap.key".to_string(),
                message,
            }])
        })?;
        model.path = Some(format!("{MODEL_MOUNT_DIR}/{}", cm.key));
        model_config_map = Some(cm.name);
    }

    let manifest = Manifest {
        api_version: API_VERSION,
        kind: KIND,
        metadata: Metadata { name, namespace },
        spec: &spec,
    };
    let yaml =
        serde_saphyr::to_string(&manifest).map_err(|e| RenderError::Serialize(e.to_string()))?;
    let text = format!(
        "# EdgePipeline {namespace}/{name}, rendered by edge-operator. Secret values are read\n\
         # from the files of the Secrets mounted under {SECRETS_DIR}/<secret>/.\n{yaml}"
    );
    Ok(AgentConfig {
        text,
        secrets,
        model_config_map,
    })
}

/// The `edgepipe.dev/config-hash` of a configuration: SHA-256 (hex) of the rendered text
/// and of the model reference, e.g. `configmap:factory/anomaly-model@<digest>` where the
/// suffix is the digest of the model ConfigMap's content when known.
pub fn config_hash(text: &str, model_reference: &str) -> String {
    let mut hasher = Sha256::new();
    hasher.update(text.as_bytes());
    hasher.update(b"\n--- model ---\n");
    hasher.update(model_reference.as_bytes());
    hex::encode(hasher.finalize())
}

/// Hex digits of the content hash in a configuration revision's name.
pub const REVISION_HASH_LEN: usize = 10;

/// The name of the immutable ConfigMap holding the configuration `text` of the agent
/// `agent` (`<name>-agent`): `<agent>-<first 10 hex digits of SHA-256(text)>`. Equal
/// content, equal name; a new configuration is a new object, never an edit.
pub fn config_revision(agent: &str, text: &str) -> String {
    let digest = hex::encode(Sha256::digest(text.as_bytes()));
    format!("{agent}-{}", &digest[..REVISION_HASH_LEN])
}

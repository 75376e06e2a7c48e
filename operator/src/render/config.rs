//! The agent's configuration file, `pipeline.yaml`, as the operator renders it from an
//! EdgePipeline, and the hash that rolls the agents when it changes.
//!
//! The file is the pipeline itself (a full manifest the agent also accepts standalone),
//! rewritten so the agent needs no Kubernetes knowledge:
//! - every `secretKeyRef` (passwords, TLS material, sink and model download headers)
//!   becomes `env: EDGEPIPE_SECRET_<N>`, and the DaemonSet passes that variable from the
//!   Secret (the same Secret key always gets the same variable);
//! - a `configMap` model becomes `path: <MODEL_MOUNT_DIR>/<key>`, the file of the model
//!   ConfigMap mounted as a directory, so golden and label files named "next to the
//!   model" are the other keys of that ConfigMap.

use edge_crds::manifest::{API_VERSION, KIND};
use edge_crds::names::check_config_map_key;
use edge_crds::{EdgePipelineSpec, FieldError, SecretKeyRef, Tls, ValueFrom};
use serde::Serialize;
use sha2::{Digest, Sha256};

use super::{MODEL_MOUNT_DIR, RenderError};

/// Prefix of the environment variables that carry Secret values to the agent.
pub const SECRET_ENV_PREFIX: &str = "EDGEPIPE_SECRET_";

/// The rendered configuration of one pipeline.
#[derive(Clone, Debug, PartialEq)]
pub struct AgentConfig {
    /// The content of `pipeline.yaml`.
    pub text: String,
    /// Environment variables the agent container needs, each from a Secret key.
    pub secrets: Vec<SecretEnv>,
    /// The ConfigMap holding the model, when the model comes from one.
    pub model_config_map: Option<String>,
}

/// An environment variable of the agent filled from a Secret key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SecretEnv {
    /// Variable name, `EDGEPIPE_SECRET_<N>`.
    pub env: String,
    /// The Secret key it comes from.
    pub secret: SecretKeyRef,
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
    /// The pipeline's uid: the queue on the node belongs to it, so a pipeline created
    /// again under the same name does not send the deleted one's queue.
    #[serde(skip_serializing_if = "Option::is_none")]
    uid: Option<&'a str>,
}

/// Renders `pipeline.yaml` for the pipeline `namespace/name` (with its uid when it has
/// one: in the cluster, not in a file).
pub fn agent_config(
    namespace: &str,
    name: &str,
    uid: Option<&str>,
    spec: &EdgePipelineSpec,
) -> Result<AgentConfig, RenderError> {
    let mut spec = spec.clone();
    // How the operator rolls a change out is no part of the agent's configuration:
    // changing it must not roll the fleet.
    spec.rollout = None;
    let mut secrets = Secrets::default();
    secrets.rewrite_spec(&mut spec);

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
        metadata: Metadata {
            name,
            namespace,
            uid,
        },
        spec: &spec,
    };
    let yaml =
        serde_saphyr::to_string(&manifest).map_err(|e| RenderError::Serialize(e.to_string()))?;
    let text = format!(
        "# EdgePipeline {namespace}/{name}, rendered by edge-operator. Secret values come from\n\
         # the {SECRET_ENV_PREFIX}* environment variables of the agent container.\n{yaml}"
    );
    Ok(AgentConfig {
        text,
        secrets: secrets.vars,
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

/// Collects Secret references and hands out one variable per distinct Secret key.
#[derive(Default)]
struct Secrets {
    vars: Vec<SecretEnv>,
}

impl Secrets {
    fn rewrite_spec(&mut self, spec: &mut EdgePipelineSpec) {
        let mqtt = &mut spec.source.mqtt;
        self.rewrite_opt(&mut mqtt.password_from);
        self.rewrite_tls(&mut mqtt.tls);
        if let Some(embedded) = &mut mqtt.embedded {
            for user in &mut embedded.users {
                self.rewrite(&mut user.password_from);
            }
            if let Some(tls) = &mut embedded.tls {
                self.rewrite(&mut tls.cert);
                self.rewrite(&mut tls.key);
                self.rewrite_opt(&mut tls.client_ca);
            }
        }
        if let Some(http) = &mut spec.sink.http {
            for header in &mut http.headers {
                self.rewrite(&mut header.value_from);
            }
            self.rewrite_tls(&mut http.tls);
        }
        if let Some(mqtt) = &mut spec.sink.mqtt {
            self.rewrite_opt(&mut mqtt.password_from);
            self.rewrite_tls(&mut mqtt.tls);
        }
        if let Some(inference) = &mut spec.inference {
            for header in &mut inference.model.headers {
                self.rewrite(&mut header.value_from);
            }
        }
    }

    fn rewrite_tls(&mut self, tls: &mut Option<Tls>) {
        if let Some(tls) = tls {
            self.rewrite_opt(&mut tls.ca);
            self.rewrite_opt(&mut tls.cert);
            self.rewrite_opt(&mut tls.key);
        }
    }

    fn rewrite_opt(&mut self, value: &mut Option<ValueFrom>) {
        if let Some(value) = value {
            self.rewrite(value);
        }
    }

    fn rewrite(&mut self, value: &mut ValueFrom) {
        let Some(secret) = value.secret_key_ref.take() else {
            return;
        };
        let env = match self.vars.iter().find(|v| v.secret == secret) {
            Some(existing) => existing.env.clone(),
            None => {
                let env = format!("{SECRET_ENV_PREFIX}{}", self.vars.len());
                self.vars.push(SecretEnv {
                    env: env.clone(),
                    secret,
                });
                env
            }
        };
        value.env = Some(env);
    }
}

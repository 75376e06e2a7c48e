//! Desired state, computed without an API server: for EdgePipeline `<name>` the
//! ConfigMap `<name>-agent-<hash>` holding `pipeline.yaml` and the DaemonSet
//! `<name>-agent` that runs the agent on the selected nodes.
//!
//! Each configuration is a revision of its own: the ConfigMap is named after a hash of
//! its content and is immutable, and the pod template mounts it by name. A change is a
//! new ConfigMap and a new pod template, so it reaches the nodes only through the
//! DaemonSet's rolling update (`maxUnavailable` at a time), and a pod that restarts
//! mid-rollout still reads the revision it was created for. The controller deletes old
//! revisions once no pod uses them.
//!
//! Reconcile applies exactly what [`render`] returns, and `edge-operator render -f FILE`
//! prints it, so what GitOps users see is what the operator applies.

mod config;
mod pod;
mod secrets;

use std::collections::BTreeMap;

use edge_crds::manifest::ManifestError;
use edge_crds::validate::describe;
use edge_crds::{EdgePipeline, FieldError, parse_pipeline, validate};
use k8s_openapi::api::apps::v1::{DaemonSet, DaemonSetSpec, DaemonSetUpdateStrategy};
use k8s_openapi::api::core::v1::{ConfigMap, PodTemplateSpec, ServiceAccount};
use k8s_openapi::api::rbac::v1::{RoleBinding, RoleRef, Subject};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, OwnerReference};
use kube::{Resource, ResourceExt};

use crate::datadir::{DataDirError, host_data_dir};

pub use config::{AgentConfig, REVISION_HASH_LEN, agent_config, config_hash, config_revision};
pub use pod::{
    CONFIG_VOLUME, CONTROL_PLANE_LABELS, FALLBACK_INIT_CONTAINER, default_resources, is_loopback,
    listen_port, root_without_capabilities,
};
pub use secrets::{
    SECRET_FILE_MODE, SECRET_VOLUME_PREFIX, SECRETS_DIGEST_ANNOTATION, SECRETS_DIR, SecretMissing,
    SecretMount, referenced_secrets, secret_file, secret_volumes, secrets_digest,
};

/// The field manager of every write of the operator.
pub const FIELD_MANAGER: &str = "edge-operator";
/// Label selector matching every object the operator manages.
pub const MANAGED_BY_SELECTOR: &str = "app.kubernetes.io/managed-by=edge-operator";
/// Label a ConfigMap holding a model must carry so the operator watches it (it never
/// caches every ConfigMap of the cluster) and rolls the agents when it changes.
pub const MODEL_LABEL: &str = "edgepipe.dev/model";
/// Label selector of model ConfigMaps.
pub const MODEL_SELECTOR: &str = "edgepipe.dev/model=true";
/// Pod annotation holding the hash of the configuration and the model reference.
pub const CONFIG_HASH_ANNOTATION: &str = "edgepipe.dev/config-hash";
/// Annotation of the agent pod template (and so of each agent pod): a digest of the whole
/// template, which tells the rollout an agent on the current template from an outdated one.
pub const TEMPLATE_HASH_ANNOTATION: &str = "edgepipe.dev/template-hash";
/// Where the agent's ConfigMap (the revision of its pod) is mounted, as a directory.
pub const CONFIG_DIR: &str = "/etc/edgepipe";
/// The key of the agent's ConfigMap holding the configuration.
pub const CONFIG_KEY: &str = "pipeline.yaml";
/// Where the agent keeps its queue inside the pod (the node's hostPath directory).
pub const DATA_DIR: &str = "/var/lib/edgepipe";
pub use crate::datadir::HOST_DATA_ROOT;
/// Where a model ConfigMap is mounted (as a directory). The rendered configuration points
/// the agent at `<MODEL_MOUNT_DIR>/<key>`.
pub const MODEL_MOUNT_DIR: &str = edge_crds::fallback::MODEL_DIR;
/// User and group the agent runs as.
pub const AGENT_UID: i64 = 65532;
/// Label of the agent's configuration revisions (ConfigMaps), besides the pipeline's
/// labels, so they can be listed: `app.kubernetes.io/component=agent-config`.
pub const COMPONENT_LABEL: &str = "app.kubernetes.io/component";
/// The value of [`COMPONENT_LABEL`] on configuration revisions.
pub const CONFIG_COMPONENT: &str = "agent-config";
/// Longest pipeline name: the DaemonSet `<name>-agent` must stay a valid label value.
pub const MAX_NAME_LEN: usize = 57;

/// Inputs of [`render`] other than the pipeline.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RenderOptions {
    /// Image of the agent pods: the agent container and the init container that hands
    /// the queue directory to the agent user (`edge-agent prepare-data-dir`).
    pub agent_image: String,
    /// Version of the model ConfigMap (a digest of its content), when known; part of the
    /// config hash so a new model rolls the agents.
    pub model_version: Option<String>,
    /// The digest of the referenced Secret keys' values ([`secrets_digest`]), when known:
    /// the pod template's [`SECRETS_DIGEST_ANNOTATION`], so a rotated value rolls the
    /// agents. No annotation without it (a pipeline without Secrets, `render -f FILE`).
    pub secrets_digest: Option<String>,
    /// Keep the agents off control-plane nodes with a required node affinity (the
    /// tenant policy's default: control-plane nodes of k3s are not tainted, so a
    /// pipeline without a node selector would otherwise run there too).
    pub avoid_control_plane: bool,
    /// The agents' access to the API server for their fleet records ([`AgentAccess`]);
    /// without it the agents have no ServiceAccount token and report nothing.
    pub agent_access: Option<AgentAccess>,
    /// The node's fallback for a reboot without the control plane ([`FallbackInstall`]);
    /// without it the agents arm nothing.
    pub fallback: Option<FallbackInstall>,
}

/// How the agent pods arm their node's fallback ([`edge_crds::fallback`]): an init
/// container (`edge-agent install-fallback`, root with no capability) installs the agent
/// binary under [`edge_crds::fallback::HOST_BIN_DIR`] and the systemd unit in
/// `unit_dir`, enabled for the pipeline; the agent keeps what the fallback needs in its
/// data directory.
impl Default for RenderOptions {
    /// What `edge-operator render` uses without flags: the default agent image, no model
    /// or Secret digest, agents kept off control-plane nodes, no extra agent access, no
    /// node fallback.
    fn default() -> Self {
        Self {
            agent_image: crate::default_agent_image(),
            model_version: None,
            secrets_digest: None,
            avoid_control_plane: true,
            agent_access: None,
            fallback: None,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FallbackInstall {
    /// The nodes' systemd unit directory.
    pub unit_dir: String,
    /// How long the fallback leaves the agent pod to start after a boot, in seconds.
    pub grace_seconds: u64,
}

/// How the agents reach the API server to keep their fleet records
/// ([`edge_crds::fleet`]): each pipeline gets a ServiceAccount `edgepipe-agent.<name>` (its token
/// only projected into the agent pods, bound to the pod and its node) and a RoleBinding
/// of it to `cluster_role`, which grants `create` and `patch` on Leases; the API server
/// (the chart's ValidatingAdmissionPolicy) lets a token write only the record of its own
/// pipeline on its own node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AgentAccess {
    /// The ClusterRole bound to each pipeline's agent ServiceAccount in its namespace.
    pub cluster_role: String,
    /// How often each agent renews its record, in seconds.
    pub heartbeat_seconds: u64,
}

/// The objects reconcile applies for one pipeline.
#[derive(Clone, Debug, PartialEq)]
pub struct Rendered {
    /// `<name>-agent-<hash>`, holding `pipeline.yaml`: immutable, named after its content.
    pub config_map: ConfigMap,
    /// `<name>-agent`, running the agent.
    pub daemon_set: DaemonSet,
    /// `edgepipe-agent.<name>`: the agents' ServiceAccount and its RoleBinding, with
    /// [`RenderOptions::agent_access`].
    pub access: Option<(ServiceAccount, RoleBinding)>,
}

impl Rendered {
    /// The objects as multi-document YAML, in the order they are applied: the
    /// ServiceAccount and RoleBinding (if any), the ConfigMap, the DaemonSet.
    pub fn to_yaml(&self) -> Result<String, RenderError> {
        let cm = serde_saphyr::to_string(&self.config_map)
            .map_err(|e| RenderError::Serialize(e.to_string()))?;
        let ds = serde_saphyr::to_string(&self.daemon_set)
            .map_err(|e| RenderError::Serialize(e.to_string()))?;
        let mut yaml = String::new();
        if let Some((account, binding)) = &self.access {
            for object in [
                serde_saphyr::to_string(account),
                serde_saphyr::to_string(binding),
            ] {
                let object = object.map_err(|e| RenderError::Serialize(e.to_string()))?;
                yaml.push_str("---\n");
                yaml.push_str(&object);
            }
        }
        Ok(format!("{yaml}---\n{cm}---\n{ds}"))
    }

    /// A digest of both objects: equal digests, identical objects to apply.
    pub fn digest(&self) -> Result<String, RenderError> {
        use sha2::{Digest, Sha256};
        let mut hasher = Sha256::new();
        for object in [
            serde_json::to_vec(&self.config_map),
            serde_json::to_vec(&self.daemon_set),
            serde_json::to_vec(&self.access),
        ] {
            hasher.update(object.map_err(|e| RenderError::Serialize(e.to_string()))?);
        }
        Ok(hex::encode(hasher.finalize()))
    }
}

/// Why a pipeline cannot be rendered.
#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    /// The spec (or the name) is invalid: the operator leaves the running agents alone.
    #[error("invalid EdgePipeline:\n{}", describe(.0))]
    Invalid(Vec<FieldError>),
    /// The object has no `metadata.name`.
    #[error("EdgePipeline has no metadata.name")]
    MissingName,
    /// The object has no `metadata.namespace`.
    #[error("EdgePipeline has no metadata.namespace")]
    MissingNamespace,
    /// Serialising an object failed.
    #[error("cannot serialize: {0}")]
    Serialize(String),
}

/// The EdgePipeline of a manifest file, as `edge-operator render -f FILE` reads it: a
/// missing namespace is `default`, a bare spec is `default/standalone`.
pub fn pipeline_from_manifest(text: &str) -> Result<EdgePipeline, ManifestError> {
    let file = parse_pipeline(text)?;
    let mut pipeline =
        EdgePipeline::new(file.meta.name.as_deref().unwrap_or("standalone"), file.spec);
    pipeline.metadata.namespace =
        Some(file.meta.namespace.unwrap_or_else(|| "default".to_string()));
    Ok(pipeline)
}

/// Name of the DaemonSet of pipeline `name`, and the prefix of its ConfigMaps.
pub fn agent_name(name: &str) -> String {
    format!("{name}-agent")
}

/// The labels of the configuration revisions (ConfigMaps) of pipeline `name`.
pub fn revision_labels(name: &str) -> BTreeMap<String, String> {
    let mut labels = labels(name);
    labels.insert(COMPONENT_LABEL.to_string(), CONFIG_COMPONENT.to_string());
    labels
}

/// Label selector of the configuration revisions of pipeline `name`.
pub fn revision_selector(name: &str) -> String {
    format!(
        "app.kubernetes.io/instance={name},{COMPONENT_LABEL}={CONFIG_COMPONENT},{MANAGED_BY_SELECTOR}"
    )
}

/// The labels of every object of pipeline `name`.
pub fn labels(name: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (
            "app.kubernetes.io/name".to_string(),
            "edge-agent".to_string(),
        ),
        ("app.kubernetes.io/instance".to_string(), name.to_string()),
        (
            "app.kubernetes.io/managed-by".to_string(),
            "edge-operator".to_string(),
        ),
        (
            "app.kubernetes.io/part-of".to_string(),
            "edgepipe".to_string(),
        ),
    ])
}

/// The configuration revision (ConfigMap name) a pod spec mounts as its configuration.
pub fn mounted_revision(spec: &k8s_openapi::api::core::v1::PodSpec) -> Option<&str> {
    spec.volumes
        .iter()
        .flatten()
        .find(|v| v.name == pod::CONFIG_VOLUME)
        .and_then(|v| v.config_map.as_ref())
        .map(|cm| cm.name.as_str())
}

/// Validates the pipeline as the operator needs it: the spec, and a name and namespace
/// that are Kubernetes names (they become the node's queue directory) short enough for
/// the objects derived from them.
pub fn check(pipeline: &EdgePipeline) -> Result<(), Vec<FieldError>> {
    let mut errors = validate(&pipeline.spec).err().unwrap_or_default();
    let namespace = pipeline.namespace().unwrap_or_default();
    if let Err(error) = host_data_dir(&namespace, &pipeline.name_any()) {
        let (path, message) = match error {
            DataDirError::Namespace(message) => ("metadata.namespace", message),
            DataDirError::Name(message) => ("metadata.name", message),
        };
        errors.push(FieldError {
            path: path.to_string(),
            message,
        });
    }
    if pipeline.name_any().len() > MAX_NAME_LEN {
        errors.push(FieldError {
            path: "metadata.name".to_string(),
            message: format!(
                "must be at most {MAX_NAME_LEN} characters (the agent DaemonSet is <name>-agent)"
            ),
        });
    }
    if let Some(embedded) = &pipeline.spec.source.mqtt.embedded
        && pod::listen_port(&embedded.listen).is_none()
    {
        errors.push(FieldError {
            path: "spec.source.mqtt.embedded.listen".to_string(),
            message: format!("{:?} is not host:port", embedded.listen),
        });
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors)
    }
}

/// Renders the ConfigMap and DaemonSet of a pipeline. The owner reference is set when
/// the pipeline has a uid (it does in the cluster, not in a file).
pub fn render(pipeline: &EdgePipeline, options: &RenderOptions) -> Result<Rendered, RenderError> {
    let name = pipeline
        .meta()
        .name
        .clone()
        .ok_or(RenderError::MissingName)?;
    let namespace = pipeline.namespace().ok_or(RenderError::MissingNamespace)?;
    check(pipeline).map_err(RenderError::Invalid)?;
    let data_dir = host_data_dir(&namespace, &name).map_err(|error| {
        RenderError::Invalid(vec![FieldError {
            path: "metadata".to_string(),
            message: error.to_string(),
        }])
    })?;

    let config = agent_config(&namespace, &name, &pipeline.spec)?;
    let model_reference = match &config.model_config_map {
        Some(cm) => format!(
            "configmap:{namespace}/{cm}@{}",
            options.model_version.as_deref().unwrap_or("unknown")
        ),
        None => String::new(),
    };
    let hash = config_hash(&config.text, &model_reference);
    let revision = config_revision(&agent_name(&name), &config.text);

    let meta = ObjectMeta {
        name: Some(agent_name(&name)),
        namespace: Some(namespace.clone()),
        labels: Some(labels(&name)),
        owner_references: pipeline.controller_owner_ref(&()).map(|owner| {
            vec![OwnerReference {
                block_owner_deletion: Some(true),
                ..owner
            }]
        }),
        ..ObjectMeta::default()
    };

    let config_map = ConfigMap {
        metadata: ObjectMeta {
            name: Some(revision.clone()),
            labels: Some(revision_labels(&name)),
            ..meta.clone()
        },
        data: Some(BTreeMap::from([(
            CONFIG_KEY.to_string(),
            config.text.clone(),
        )])),
        immutable: Some(true),
        ..ConfigMap::default()
    };

    let selector = BTreeMap::from([
        (
            "app.kubernetes.io/name".to_string(),
            "edge-agent".to_string(),
        ),
        ("app.kubernetes.io/instance".to_string(), name.clone()),
    ]);
    let mut template = PodTemplateSpec {
        metadata: Some(ObjectMeta {
            labels: Some(labels(&name)),
            annotations: Some(
                [
                    Some((CONFIG_HASH_ANNOTATION.to_string(), hash)),
                    Some((
                        "kubectl.kubernetes.io/default-container".to_string(),
                        pod::AGENT_CONTAINER.to_string(),
                    )),
                    options
                        .secrets_digest
                        .clone()
                        .map(|digest| (SECRETS_DIGEST_ANNOTATION.to_string(), digest)),
                ]
                .into_iter()
                .flatten()
                .collect(),
            ),
            ..ObjectMeta::default()
        }),
        spec: Some(pod::pod_spec(
            pipeline, &data_dir, &revision, &config, options,
        )),
    };
    // The operator replaces the agents itself (canary, waves, pause: see
    // `crate::rollout`); the DaemonSet controller only recreates the pods it deletes. Each
    // pod carries a hash of its template, which tells a current agent from an outdated one.
    let template_hash = template_hash(&template)?;
    if let Some(annotations) = template
        .metadata
        .as_mut()
        .and_then(|m| m.annotations.as_mut())
    {
        annotations.insert(TEMPLATE_HASH_ANNOTATION.to_string(), template_hash);
    }
    let access = options
        .agent_access
        .as_ref()
        .map(|access| agent_access(&meta, access));
    let daemon_set = DaemonSet {
        metadata: meta,
        spec: Some(DaemonSetSpec {
            selector: LabelSelector {
                match_labels: Some(selector),
                ..LabelSelector::default()
            },
            template,
            update_strategy: Some(DaemonSetUpdateStrategy {
                type_: Some("OnDelete".to_string()),
                rolling_update: None,
            }),
            revision_history_limit: Some(5),
            ..DaemonSetSpec::default()
        }),
        status: None,
    };
    Ok(Rendered {
        config_map,
        daemon_set,
        access,
    })
}

/// A digest of a pod template (16 hex digits of its SHA-256): equal digests, the same
/// pod.
fn template_hash(template: &PodTemplateSpec) -> Result<String, RenderError> {
    use sha2::{Digest, Sha256};
    let bytes = serde_json::to_vec(template).map_err(|e| RenderError::Serialize(e.to_string()))?;
    Ok(hex::encode(&Sha256::digest(bytes)[..8]))
}

/// The ServiceAccount of a pipeline's agents and its RoleBinding to the ClusterRole that
/// grants their fleet records. The ServiceAccount mounts no token by itself: the pod
/// projects one (see [`pod`]).
fn agent_access(meta: &ObjectMeta, access: &AgentAccess) -> (ServiceAccount, RoleBinding) {
    let pipeline = meta
        .labels
        .as_ref()
        .and_then(|l| l.get("app.kubernetes.io/instance"));
    let meta = ObjectMeta {
        name: pipeline.map(|p| edge_crds::fleet::account_name(p)),
        ..meta.clone()
    };
    let account = ServiceAccount {
        metadata: meta.clone(),
        automount_service_account_token: Some(false),
        ..ServiceAccount::default()
    };
    let binding = RoleBinding {
        metadata: meta.clone(),
        role_ref: RoleRef {
            api_group: "rbac.authorization.k8s.io".to_string(),
            kind: "ClusterRole".to_string(),
            name: access.cluster_role.clone(),
        },
        subjects: Some(vec![Subject {
            kind: "ServiceAccount".to_string(),
            name: meta.name.clone().unwrap_or_default(),
            namespace: meta.namespace.clone(),
            api_group: None,
        }]),
    };
    (account, binding)
}

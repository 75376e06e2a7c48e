//! The agent's configuration: a pipeline file (full EdgePipeline manifest or bare spec)
//! loaded, validated and resolved into the settings each part of the agent runs with.
//!
//! Resolution expands `${VAR}` in URLs from the environment (inside a pod
//! `mqtt://${HOST_IP}:1883` reaches a broker on the node), reads secrets from
//! environment variables or files (never inline; the operator turns Secret references
//! into environment variables), and derives defaults such as the stable MQTT client id.
//! Every problem, from validation or from resolution, is reported at once, one per line,
//! each with the path of the field it concerns.

mod cleartext;
mod resolve;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use edge_crds::manifest::ManifestError;
use edge_crds::validate::describe;
use edge_crds::{Durability, EdgePipelineSpec, FieldError, WhenFull, parse_pipeline};

use self::resolve::Resolver;

/// Why the configuration cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file cannot be read.
    #[error("cannot read {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The file is not a pipeline manifest or spec.
    #[error("{0}")]
    Manifest(#[from] ManifestError),
    /// The pipeline has problems; all of them, one per line when displayed.
    #[error("{}", describe(.0))]
    Invalid(Vec<FieldError>),
}

/// PEM material for a TLS client, each part resolved from its `ValueFrom`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TlsMaterial {
    /// CA bundle to trust instead of the system roots.
    pub ca: Option<Vec<u8>>,
    /// Client certificate (mutual TLS).
    pub cert: Option<Vec<u8>>,
    /// Client private key (mutual TLS).
    pub key: Option<Vec<u8>>,
}

/// The MQTT broker readings come from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SourceSettings {
    /// Broker URL, `${VAR}` expanded (the embedded broker's address when not set).
    pub url: String,
    /// Broker host (without brackets for IPv6).
    pub host: String,
    /// Broker port (1883 for `mqtt://`, 8883 for `mqtts://` unless given).
    pub port: u16,
    /// `mqtts://`.
    pub tls: bool,
    /// Topic filters to subscribe to.
    pub topics: Vec<String>,
    /// Subscription QoS (0 or 1).
    pub qos: u8,
    /// MQTT client id: the configured one, else `<namespace>-<name>-<node>` made MQTT-safe.
    pub client_id: String,
    /// MQTT username.
    pub username: Option<String>,
    /// MQTT password, resolved.
    pub password: Option<String>,
    /// TLS material for `mqtts://`.
    pub tls_material: TlsMaterial,
    /// MQTT keep-alive (1 s to 65535 s).
    pub keep_alive: Duration,
    /// Larger payloads are invalid (`too_large`).
    pub max_payload_bytes: usize,
    /// Bound on per-device state.
    pub max_devices: usize,
    /// Address the embedded broker listens on, when the agent runs one.
    pub embedded_listen: Option<SocketAddr>,
    /// The embedded broker's users, passwords resolved.
    pub embedded_users: Vec<EmbeddedUser>,
    /// The embedded broker's TLS server identity (`cert`, `key`) and client CA (`ca`).
    pub embedded_tls: Option<TlsMaterial>,
}

impl SourceSettings {
    /// The client id of the local actions' own connection to this broker.
    pub fn actions_client_id(&self) -> String {
        format!("{}-actions", self.client_id)
    }
}

/// A client of the embedded broker.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EmbeddedUser {
    /// Username.
    pub username: String,
    /// Password, resolved.
    pub password: String,
    /// Topic filters it may publish to, `{username}` replaced.
    pub publish: Vec<String>,
    /// Topic filters it may subscribe within, `{username}` replaced.
    pub subscribe: Vec<String>,
}

/// The durable queue.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BufferSettings {
    /// Upper bound on the queue's payload (records and dead letters).
    pub max_bytes: u64,
    /// Upper bound on the dead letters, within `max_bytes`.
    pub max_dead_letter_bytes: u64,
    /// Records older than this are dropped (and counted).
    pub max_age: Duration,
    /// Policy when full.
    pub when_full: WhenFull,
    /// Commit durability.
    pub durability: Durability,
    /// `buffer.encryption`: the keys sealing what the queue stores (empty: none).
    pub keys: crate::delivery::queue::seal::Keyring,
}

/// Where records go.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SinkSettings {
    /// An HTTP ingest API.
    Http(HttpSettings),
    /// An upstream MQTT broker.
    Mqtt(MqttSinkSettings),
}

/// An HTTP ingest API.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpSettings {
    /// Endpoint URL, `${VAR}` expanded.
    pub url: String,
    /// Maximum records per request.
    pub batch_size: usize,
    /// Send a partial batch after this long.
    pub flush_interval: Duration,
    /// Request timeout.
    pub timeout: Duration,
    /// Request body compression.
    pub compression: edge_crds::Compression,
    /// Extra headers (name, resolved value).
    pub headers: Vec<(String, String)>,
    /// TLS material (custom CA, client certificate).
    pub tls_material: TlsMaterial,
    /// First retry delay.
    pub initial_backoff: Duration,
    /// Largest retry delay.
    pub max_backoff: Duration,
    /// Statuses that dead-letter a batch (`deadLetterOn`).
    pub dead_letter_on: Vec<u16>,
}

/// An upstream MQTT broker.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MqttSinkSettings {
    /// Broker URL, `${VAR}` expanded.
    pub url: String,
    /// Broker host.
    pub host: String,
    /// Broker port.
    pub port: u16,
    /// `mqtts://`.
    pub tls: bool,
    /// Topic, with `{pipeline}` and `{node}` replaced.
    pub topic: String,
    /// Publish QoS (0 or 1).
    pub qos: u8,
    /// Maximum records per message.
    pub batch_size: usize,
    /// Send a partial batch after this long.
    pub flush_interval: Duration,
    /// MQTT client id: the configured one, else `<namespace>-<name>-<node>-sink`.
    pub client_id: String,
    /// MQTT username.
    pub username: Option<String>,
    /// MQTT password, resolved.
    pub password: Option<String>,
    /// TLS material for `mqtts://`.
    pub tls_material: TlsMaterial,
}

/// Everything the agent runs with, resolved and valid.
#[derive(Clone, Debug, PartialEq)]
pub struct AgentConfig {
    /// `namespace/name` (as in records and metric labels).
    pub pipeline: String,
    /// The pipeline the node's queue belongs to: `metadata.uid` of the manifest, or the
    /// uid the operator passes in `EDGEPIPE_PIPELINE_UID` (see `edge-agent run`).
    pub uid: Option<String>,
    /// `metadata.name` (`standalone` for a bare spec).
    pub name: String,
    /// `metadata.namespace` (`default` for a bare spec).
    pub namespace: String,
    /// The node the agent runs on.
    pub node: String,
    /// The spec as loaded, with `${VAR}` expanded in its URLs.
    pub spec: EdgePipelineSpec,
    /// The MQTT source.
    pub source: SourceSettings,
    /// The durable queue.
    pub buffer: BufferSettings,
    /// The sink.
    pub sink: SinkSettings,
    /// Request headers of model downloads (name, resolved value).
    pub model_headers: Vec<(String, String)>,
}

impl AgentConfig {
    /// Loads the pipeline file at `path` for `node`, with the process environment.
    pub fn load(path: &Path, node: &str) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_text(&text, node, &|name| std::env::var(name).ok())
    }

    /// Parses, validates and resolves a pipeline for `node`; `env` looks up environment
    /// variables. Secret files are read from the filesystem.
    pub fn from_text(
        text: &str,
        node: &str,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Self, ConfigError> {
        let (config, mut errors, needs) = Self::resolve(text, node, env)?;
        errors.extend(needs);
        if !errors.is_empty() {
            return Err(ConfigError::Invalid(errors));
        }
        Ok(config)
    }

    /// What `edge-agent check` reports: the problems of the pipeline (an error), else the
    /// config when this environment can run it, and what a run here would still need (an
    /// unset variable, an unreadable file, a Secret the operator resolves in a cluster).
    pub fn check_text(
        text: &str,
        node: &str,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<(Option<Self>, Vec<FieldError>), ConfigError> {
        let (config, errors, needs) = Self::resolve(text, node, env)?;
        if !errors.is_empty() {
            return Err(ConfigError::Invalid(errors));
        }
        Ok((needs.is_empty().then_some(config), needs))
    }

    /// The config, the pipeline's problems and the environment's needs.
    fn resolve(
        text: &str,
        node: &str,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<(Self, Vec<FieldError>, Vec<FieldError>), ConfigError> {
        let file = parse_pipeline(text)?;
        let namespace = file
            .meta
            .namespace
            .clone()
            .unwrap_or_else(|| "default".to_string());
        let name = file
            .meta
            .name
            .clone()
            .unwrap_or_else(|| "standalone".to_string());
        let pipeline = file.meta.id();
        let uid = file.meta.uid.clone();
        let mut spec = file.spec;
        let mut r = Resolver::new(env);
        if let Some(uid) = &uid
            && let Err(message) = check_uid(uid)
        {
            r.err("metadata.uid", message);
        }
        if node.is_empty() {
            r.err(
                "node",
                "the node name is empty (set --node-name or NODE_NAME)",
            );
        }

        r.expand_urls(&mut spec);
        if let Err(errors) = edge_crds::validate(&spec) {
            r.add_validation(errors);
        }
        let source = r.source(&spec, &namespace, &name, node);
        let buffer = r.buffer(&spec.buffer);
        let sink = r.sink(&spec.sink, &namespace, &name, &pipeline, node);
        let model_headers = r.model_headers(&spec);
        let (errors, needs) = r.finish();
        let config = Self {
            pipeline,
            uid,
            name,
            namespace,
            node: node.to_string(),
            spec,
            source,
            buffer,
            sink,
            model_headers,
        };
        Ok((config, errors, needs))
    }
}

/// Longest `metadata.uid` accepted (Kubernetes uids are 36-character UUIDs).
const MAX_UID_LEN: usize = 64;

/// A uid names a file on the node (a queue set aside): letters, digits and `-` only.
pub fn check_uid(uid: &str) -> Result<(), String> {
    if uid.is_empty() || uid.len() > MAX_UID_LEN {
        return Err(format!("must be 1 to {MAX_UID_LEN} characters"));
    }
    if !uid.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') {
        return Err("must hold only letters, digits and '-' (a Kubernetes uid)".to_string());
    }
    Ok(())
}

#[cfg(test)]
mod tests;

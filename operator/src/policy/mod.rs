//! The tenant policy: what the cluster admin lets an EdgePipeline ask for.
//!
//! Whoever may create EdgePipelines in a namespace chooses what the operator puts into a
//! DaemonSet: the nodes it runs on, the taints it tolerates, host ports, resources, the
//! log level, and the Secrets it reads. The agent pods need a `privileged` namespace
//! (for the queue's hostPath), so Pod Security filters none of that. The policy is what
//! does: a plain data type ([`TenantPolicy`], read from the file the Helm chart mounts,
//! `--policy-file`; the built-in defaults are the chart's) and a pure check
//! ([`check::check`]) of each pipeline against it. A pipeline outside the policy gets
//! the `Invalid` condition naming the field, a Warning Event, and no agents.
//!
//! Referenced Secrets are opt-in: a Secret may feed a pipeline only when it carries the
//! label [`SECRET_OPT_IN_LABEL`]`: "true"`, set by someone who may edit that Secret.

pub mod check;
pub mod quantity;

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;

use serde::{Deserialize, Serialize};

pub use check::{SecretReference, check, check_secrets, check_spec, secret_references};
pub use quantity::{Amount, parse_quantity};

/// Label a Secret must carry (value `"true"`) before any pipeline may reference it.
pub const SECRET_OPT_IN_LABEL: &str = "edgepipe.dev/allow-pipelines";
/// Label selector of the Secrets pipelines may use.
pub const SECRET_OPT_IN_SELECTOR: &str = "edgepipe.dev/allow-pipelines=true";

/// Node label and taint keys that mark control-plane nodes (kubeadm, k3s, RKE2). A
/// pipeline may select or tolerate them only when the policy sets `controlPlane: true`;
/// no toleration or node selector rule grants them, not even `*`.
pub const CONTROL_PLANE_KEYS: [&str; 4] = [
    "node-role.kubernetes.io/control-plane",
    "node-role.kubernetes.io/master",
    "node-role.kubernetes.io/etcd",
    "CriticalAddonsOnly",
];

/// What pipelines may ask for. Every field has a secure default (the Helm chart's
/// `tenantPolicy` defaults are exactly these; a test holds them equal), and a field left
/// out of the file keeps its default.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct TenantPolicy {
    /// Whether pipelines may run agents on control-plane nodes: select or tolerate the
    /// [`CONTROL_PLANE_KEYS`]. When false (the default) the agent pods also get a
    /// required node affinity that keeps them off nodes labelled as control plane.
    pub control_plane: bool,
    /// Tolerations pipelines may carry (a toleration must match one rule).
    pub tolerations: Vec<TolerationRule>,
    /// Node labels pipelines may select nodes by (each label must match one rule).
    pub node_selector: Vec<LabelRule>,
    /// Whether pipelines may expose their embedded MQTT broker on the node (a hostPort; a
    /// broker listening on loopback serves its own pod only and is always allowed).
    pub embedded_broker: bool,
    /// Host ports pipelines may open on their nodes (the embedded broker's port).
    pub host_ports: Vec<PortRange>,
    /// The largest requests and limits an agent container may have.
    pub resources: ResourceCeilings,
    /// The most verbose log level a pipeline may set in `spec.agent.logLevel`.
    pub max_log_level: LogLevel,
}

impl Default for TenantPolicy {
    fn default() -> Self {
        Self {
            control_plane: false,
            tolerations: vec![TolerationRule {
                key: "edgepipe.dev/*".to_string(),
                values: vec![],
                effects: vec![],
            }],
            node_selector: vec![LabelRule {
                key: "*".to_string(),
                values: vec![],
            }],
            embedded_broker: false,
            host_ports: vec![],
            resources: ResourceCeilings::default(),
            max_log_level: LogLevel::Debug,
        }
    }
}

/// A toleration pipelines may carry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TolerationRule {
    /// Taint key: exact (`example.com/edge`), a prefix ending in `*` (`edgepipe.dev/*`),
    /// or `*` for any key. Never grants a [`CONTROL_PLANE_KEYS`] key.
    pub key: String,
    /// Allowed taint values; empty: any value (and `operator: Exists`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub values: Vec<String>,
    /// Allowed effects (`NoSchedule`, `PreferNoSchedule`, `NoExecute`); empty: any.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub effects: Vec<String>,
}

/// A node label pipelines may select nodes by.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LabelRule {
    /// Label key: exact, a prefix ending in `*`, or `*` for any key. Never grants a
    /// [`CONTROL_PLANE_KEYS`] key.
    pub key: String,
    /// Allowed values; empty: any value.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub values: Vec<String>,
}

/// Whether `key` matches a rule's key pattern (exact, `prefix*`, or `*`).
pub fn key_matches(pattern: &str, key: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => key.starts_with(prefix),
        None => pattern == key,
    }
}

/// An inclusive range of ports; one port is a range of one. Written `1883` or
/// `"8000-8099"`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PortRange {
    /// First port of the range.
    pub first: u16,
    /// Last port of the range.
    pub last: u16,
}

impl PortRange {
    /// Whether `port` is in the range.
    pub fn contains(&self, port: i32) -> bool {
        (i32::from(self.first)..=i32::from(self.last)).contains(&port)
    }

    fn parse(text: &str) -> Result<Self, String> {
        let port = |p: &str| {
            p.trim()
                .parse::<u16>()
                .ok()
                .filter(|p| *p > 0)
                .ok_or_else(|| {
                    format!("{text:?} is not a port (1-65535) or a range like 8000-8099")
                })
        };
        let (first, last) = match text.split_once('-') {
            Some((a, b)) => (port(a)?, port(b)?),
            None => {
                let p = port(text)?;
                (p, p)
            }
        };
        if first > last {
            return Err(format!("{text:?}: the range ends before it starts"));
        }
        Ok(Self { first, last })
    }
}

impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.first == self.last {
            write!(f, "{}", self.first)
        } else {
            write!(f, "{}-{}", self.first, self.last)
        }
    }
}

impl Serialize for PortRange {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        if self.first == self.last {
            serializer.serialize_u16(self.first)
        } else {
            serializer.serialize_str(&self.to_string())
        }
    }
}

impl<'de> Deserialize<'de> for PortRange {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Number(u64),
            Text(String),
        }
        let text = match Raw::deserialize(deserializer)? {
            Raw::Number(n) => n.to_string(),
            Raw::Text(t) => t,
        };
        PortRange::parse(&text).map_err(serde::de::Error::custom)
    }
}

/// Ceilings on the agent container's requests and limits, by resource name.
///
/// A resource named here may not exceed its ceiling; `cpu` and `memory` are always
/// allowed, any other resource (GPUs, hugepages...) only when named here. A request
/// left unset while its limit is set is the limit (as Kubernetes does), and a memory
/// limit is required whenever `limits.memory` has a ceiling: an unset limit is no limit.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct ResourceCeilings {
    /// Largest requests.
    pub requests: BTreeMap<String, QuantityText>,
    /// Largest limits.
    pub limits: BTreeMap<String, QuantityText>,
}

impl Default for ResourceCeilings {
    fn default() -> Self {
        let map = |pairs: [(&str, &str); 2]| {
            pairs
                .into_iter()
                .map(|(k, v)| (k.to_string(), QuantityText(v.to_string())))
                .collect()
        };
        Self {
            requests: map([("cpu", "500m"), ("memory", "256Mi")]),
            limits: map([("cpu", "1"), ("memory", "512Mi")]),
        }
    }
}

/// A quantity as written (`500m`, `"1"`, `512Mi`); numbers are accepted too.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct QuantityText(pub String);

impl QuantityText {
    /// The parsed amount.
    pub fn amount(&self) -> Result<Amount, String> {
        parse_quantity(&self.0)
    }
}

impl fmt::Display for QuantityText {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for QuantityText {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Integer(u64),
            Float(f64),
            Text(String),
        }
        Ok(QuantityText(match Raw::deserialize(deserializer)? {
            Raw::Integer(n) => n.to_string(),
            Raw::Float(x) => x.to_string(),
            Raw::Text(t) => t,
        }))
    }
}

/// A log level, least to most verbose.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogLevel {
    /// Nothing.
    Off,
    /// Errors only.
    Error,
    /// Warnings and errors.
    Warn,
    /// The agent's default.
    Info,
    /// Troubleshooting detail.
    Debug,
    /// Everything, including wire-level detail of the libraries.
    Trace,
}

impl LogLevel {
    /// The level of a name as `RUST_LOG` reads it (`info`, `WARN`, `3`...).
    pub fn parse(name: &str) -> Option<Self> {
        Some(match name.to_ascii_lowercase().as_str() {
            "off" | "0" => Self::Off,
            "error" | "1" => Self::Error,
            "warn" | "2" => Self::Warn,
            "info" | "3" => Self::Info,
            "debug" | "4" => Self::Debug,
            "trace" | "5" => Self::Trace,
            _ => return None,
        })
    }

    /// The level's name.
    pub fn name(self) -> &'static str {
        match self {
            Self::Off => "off",
            Self::Error => "error",
            Self::Warn => "warn",
            Self::Info => "info",
            Self::Debug => "debug",
            Self::Trace => "trace",
        }
    }
}

/// Why a policy file cannot be used (the operator refuses to start with it).
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    /// The file cannot be read.
    #[error("reading the tenant policy {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file is not a policy (YAML syntax, unknown key, wrong type).
    #[error("the tenant policy is not valid YAML for the policy: {0}")]
    Parse(#[source] serde_saphyr::Error),
    /// A value of the policy is wrong; the message names it.
    #[error("tenant policy {0}")]
    Invalid(String),
}

impl TenantPolicy {
    /// Reads and checks a policy file.
    pub fn load(path: &Path) -> Result<Self, PolicyError> {
        let text = std::fs::read_to_string(path).map_err(|source| PolicyError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::from_yaml(&text)
    }

    /// Parses and checks a policy (an empty document is the default policy).
    pub fn from_yaml(text: &str) -> Result<Self, PolicyError> {
        let policy: Self = if text.trim().is_empty() {
            Self::default()
        } else {
            serde_saphyr::from_str(text).map_err(PolicyError::Parse)?
        };
        policy.validate()?;
        Ok(policy)
    }

    /// Checks the values serde cannot: quantities, rule keys, effects.
    pub fn validate(&self) -> Result<(), PolicyError> {
        let invalid = |m: String| Err(PolicyError::Invalid(m));
        for (kind, ceilings) in [
            ("requests", &self.resources.requests),
            ("limits", &self.resources.limits),
        ] {
            for (name, quantity) in ceilings {
                if let Err(message) = quantity.amount() {
                    return invalid(format!("resources.{kind}.{name}: {message}"));
                }
            }
        }
        for (i, rule) in self.tolerations.iter().enumerate() {
            if rule.key.is_empty() {
                return invalid(format!("tolerations[{i}].key: must not be empty"));
            }
            for effect in &rule.effects {
                if !matches!(
                    effect.as_str(),
                    "NoSchedule" | "PreferNoSchedule" | "NoExecute"
                ) {
                    return invalid(format!(
                        "tolerations[{i}].effects: {effect:?} is not NoSchedule, PreferNoSchedule or NoExecute"
                    ));
                }
            }
        }
        for (i, rule) in self.node_selector.iter().enumerate() {
            if rule.key.is_empty() {
                return invalid(format!("nodeSelector[{i}].key: must not be empty"));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;

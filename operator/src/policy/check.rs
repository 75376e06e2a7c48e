//! Checks one pipeline against the [`TenantPolicy`]: pure functions, every violation
//! reported at once with the path of the field it concerns, e.g.
//! `spec.tolerations[0]: toleration of node-role.kubernetes.io/control-plane is not
//! allowed by the cluster policy`.
//!
//! [`check_spec`] needs only the spec (so `edge-operator render` runs it offline);
//! [`check_secrets`] also needs to know which Secrets of the namespace opted in, which
//! the controller knows from its cache of labelled Secrets' metadata.

use edge_crds::{EdgePipelineSpec, FieldError};
use k8s_openapi::api::core::v1::{ResourceRequirements, Toleration};
use serde_json::Value;

use super::{
    CONTROL_PLANE_KEYS, LogLevel, SECRET_OPT_IN_LABEL, TenantPolicy, key_matches, parse_quantity,
};
use crate::render::{default_resources, listen_port};

/// Every violation of `policy` by `spec`, the Secrets included: `secret_allowed(name)`
/// tells whether the Secret `name` of the pipeline's namespace opted in.
pub fn check(
    policy: &TenantPolicy,
    spec: &EdgePipelineSpec,
    secret_allowed: &dyn Fn(&str) -> bool,
) -> Vec<FieldError> {
    let mut errors = check_spec(policy, spec);
    errors.extend(check_secrets(spec, secret_allowed));
    errors
}

/// Every violation of `policy` by `spec` that the spec alone shows (all but Secrets).
pub fn check_spec(policy: &TenantPolicy, spec: &EdgePipelineSpec) -> Vec<FieldError> {
    let mut errors = Errors::default();
    for (i, toleration) in spec.tolerations.iter().enumerate() {
        if let Err(message) = toleration_allowed(policy, toleration) {
            errors.push(format!("spec.tolerations[{i}]"), message);
        }
    }
    for (key, value) in &spec.node_selector {
        if let Err(message) = label_allowed(policy, key, value) {
            errors.push(format!("spec.nodeSelector[{key}]"), message);
        }
    }
    // On loopback the embedded broker serves its own pod only; beyond loopback it is
    // exposed on the node with a hostPort, which the policy must allow.
    if let Some(embedded) = spec
        .source
        .mqtt
        .embedded
        .as_ref()
        .filter(|e| !crate::render::is_loopback(&e.listen))
    {
        if !policy.embedded_broker {
            errors.push(
                "spec.source.mqtt.embedded.listen",
                "an embedded MQTT broker exposed on the node is not allowed by the cluster policy (listen on 127.0.0.1 to keep it inside the pod)",
            );
        } else if let Some(port) = listen_port(&embedded.listen)
            && !policy.host_ports.iter().any(|range| range.contains(port))
        {
            let allowed = if policy.host_ports.is_empty() {
                "none".to_string()
            } else {
                join(policy.host_ports.iter().map(ToString::to_string))
            };
            errors.push(
                "spec.source.mqtt.embedded.listen",
                format!(
                    "host port {port} is not allowed by the cluster policy (allowed host ports: {allowed})"
                ),
            );
        }
    }
    resources(policy, spec.agent.resources.as_ref(), &mut errors);
    if let Some(filter) = &spec.agent.log_level {
        match most_verbose(filter) {
            Ok(level) if level > policy.max_log_level => errors.push(
                "spec.agent.logLevel",
                format!(
                    "{filter:?} logs at {} but the cluster policy allows at most {}",
                    level.name(),
                    policy.max_log_level.name()
                ),
            ),
            Ok(_) => {}
            Err(message) => errors.push("spec.agent.logLevel", message),
        }
    }
    errors.0
}

/// A `secretKeyRef` of a spec: where it is and what it names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SecretReference {
    /// Field path, e.g. `spec.sink.http.headers[0].valueFrom.secretKeyRef`.
    pub path: String,
    /// The Secret's name (in the pipeline's namespace).
    pub name: String,
}

/// Every `secretKeyRef` anywhere in the spec, found by walking the spec as the API
/// stores it, so a field added to the API later is covered without a change here.
pub fn secret_references(spec: &EdgePipelineSpec) -> Vec<SecretReference> {
    fn walk(value: &Value, path: &str, out: &mut Vec<SecretReference>) {
        match value {
            Value::Object(map) => {
                for (key, child) in map {
                    let child_path = format!("{path}.{key}");
                    if key == "secretKeyRef"
                        && let Some(name) = child.get("name").and_then(Value::as_str)
                    {
                        out.push(SecretReference {
                            path: child_path.clone(),
                            name: name.to_string(),
                        });
                    }
                    walk(child, &child_path, out);
                }
            }
            Value::Array(items) => {
                for (i, item) in items.iter().enumerate() {
                    walk(item, &format!("{path}[{i}]"), out);
                }
            }
            _ => {}
        }
    }
    let mut out = vec![];
    if let Ok(value) = serde_json::to_value(spec) {
        walk(&value, "spec", &mut out);
    }
    out
}

/// Every Secret reference whose Secret did not opt in.
pub fn check_secrets(
    spec: &EdgePipelineSpec,
    secret_allowed: &dyn Fn(&str) -> bool,
) -> Vec<FieldError> {
    secret_references(spec)
        .into_iter()
        .filter(|r| !secret_allowed(&r.name))
        .map(|r| FieldError {
            message: format!(
                "Secret {:?} is not labelled {SECRET_OPT_IN_LABEL}: \"true\" (or does not exist); \
                 pipelines may only use Secrets that opted in",
                r.name
            ),
            path: r.path,
        })
        .collect()
}

#[derive(Default)]
struct Errors(Vec<FieldError>);

impl Errors {
    fn push(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.0.push(FieldError {
            path: path.into(),
            message: message.into(),
        });
    }
}

fn join(items: impl Iterator<Item = String>) -> String {
    items.collect::<Vec<_>>().join(", ")
}

fn is_control_plane(key: &str) -> bool {
    CONTROL_PLANE_KEYS.contains(&key)
}

fn toleration_allowed(policy: &TenantPolicy, t: &Toleration) -> Result<(), String> {
    let key = t.key.as_deref().unwrap_or_default();
    if key.is_empty() {
        // `operator: Exists` without a key tolerates every taint.
        let anything = policy
            .tolerations
            .iter()
            .any(|r| r.key == "*" && r.values.is_empty() && r.effects.is_empty());
        return if policy.control_plane && anything {
            Ok(())
        } else {
            Err(
                "a toleration without a key tolerates every taint, control-plane taints included; \
                 it is not allowed by the cluster policy"
                    .to_string(),
            )
        };
    }
    if is_control_plane(key) {
        return if policy.control_plane {
            Ok(())
        } else {
            Err(format!(
                "toleration of {key} is not allowed by the cluster policy"
            ))
        };
    }
    let rules: Vec<_> = policy
        .tolerations
        .iter()
        .filter(|r| key_matches(&r.key, key))
        .collect();
    if rules.is_empty() {
        let allowed = if policy.tolerations.is_empty() {
            "none".to_string()
        } else {
            join(policy.tolerations.iter().map(|r| r.key.clone()))
        };
        return Err(format!(
            "toleration of {key} is not allowed by the cluster policy (allowed taint keys: {allowed})"
        ));
    }
    let exists = t.operator.as_deref() == Some("Exists");
    let value = t.value.as_deref().unwrap_or_default();
    let effect = t.effect.as_deref().unwrap_or_default();
    let fits = |r: &&super::TolerationRule| {
        let value_ok = r.values.is_empty() || (!exists && r.values.iter().any(|v| v == value));
        let effect_ok = r.effects.is_empty() || r.effects.iter().any(|e| e == effect);
        value_ok && effect_ok
    };
    if rules.iter().any(fits) {
        return Ok(());
    }
    let mut wanted = vec![];
    for rule in &rules {
        if !rule.values.is_empty() {
            wanted.push(format!(
                "operator Equal with a value in [{}]",
                rule.values.join(", ")
            ));
        }
        if !rule.effects.is_empty() {
            wanted.push(format!("an effect in [{}]", rule.effects.join(", ")));
        }
    }
    Err(format!(
        "toleration of {key} is not allowed by the cluster policy as written (it needs {})",
        wanted.join(" and ")
    ))
}

fn label_allowed(policy: &TenantPolicy, key: &str, value: &str) -> Result<(), String> {
    if is_control_plane(key) {
        return if policy.control_plane {
            Ok(())
        } else {
            Err(format!(
                "selecting nodes by {key} (control-plane nodes) is not allowed by the cluster policy"
            ))
        };
    }
    let rules: Vec<_> = policy
        .node_selector
        .iter()
        .filter(|r| key_matches(&r.key, key))
        .collect();
    if rules.is_empty() {
        let allowed = if policy.node_selector.is_empty() {
            "none".to_string()
        } else {
            join(policy.node_selector.iter().map(|r| r.key.clone()))
        };
        return Err(format!(
            "selecting nodes by {key} is not allowed by the cluster policy (allowed label keys: {allowed})"
        ));
    }
    if rules
        .iter()
        .any(|r| r.values.is_empty() || r.values.iter().any(|v| v == value))
    {
        return Ok(());
    }
    let values: Vec<String> = rules.iter().flat_map(|r| r.values.clone()).collect();
    Err(format!(
        "selecting nodes by {key}={value} is not allowed by the cluster policy (allowed values: {})",
        values.join(", ")
    ))
}

/// The path of a resource under `spec.agent.resources.<kind>`.
fn resource_path(kind: &str, name: &str) -> String {
    if name.bytes().all(|b| b.is_ascii_alphanumeric()) {
        format!("spec.agent.resources.{kind}.{name}")
    } else {
        format!("spec.agent.resources.{kind}[{name}]")
    }
}

fn resources(policy: &TenantPolicy, set: Option<&ResourceRequirements>, errors: &mut Errors) {
    let defaulted = set.is_none();
    let resources = set.cloned().unwrap_or_else(default_resources);
    let requests = resources.requests.clone().unwrap_or_default();
    let limits = resources.limits.clone().unwrap_or_default();
    let ceilings = &policy.resources;
    let hint = if defaulted {
        " (the operator's default; set spec.agent.resources)"
    } else {
        ""
    };

    if resources.claims.as_ref().is_some_and(|c| !c.is_empty()) {
        errors.push(
            "spec.agent.resources.claims",
            "resource claims are not allowed by the cluster policy",
        );
    }
    for (kind, map, caps) in [
        ("requests", &requests, &ceilings.requests),
        ("limits", &limits, &ceilings.limits),
    ] {
        for name in map.keys() {
            let known = matches!(name.as_str(), "cpu" | "memory") || caps.contains_key(name);
            if !known {
                errors.push(
                    resource_path(kind, name),
                    format!("{name} is not allowed by the cluster policy"),
                );
            }
        }
    }
    // What Kubernetes will use: a request left unset is its limit.
    for (name, cap) in &ceilings.requests {
        let Ok(ceiling) = cap.amount() else { continue };
        let (quantity, from_limit) = match (requests.get(name), limits.get(name)) {
            (Some(request), _) => (request, false),
            (None, Some(limit)) => (limit, true),
            (None, None) => continue,
        };
        match parse_quantity(&quantity.0) {
            Ok(amount) if amount > ceiling => {
                let what = if from_limit {
                    format!("unset, so Kubernetes requests the limit {}", quantity.0)
                } else {
                    quantity.0.clone()
                };
                errors.push(
                    resource_path("requests", name),
                    format!("{what} is above the cluster policy's ceiling of {cap}{hint}"),
                );
            }
            Ok(_) => {}
            Err(message) => errors.push(resource_path("requests", name), message),
        }
    }
    for (name, cap) in &ceilings.limits {
        let Ok(ceiling) = cap.amount() else { continue };
        match limits.get(name) {
            Some(limit) => match parse_quantity(&limit.0) {
                Ok(amount) if amount > ceiling => errors.push(
                    resource_path("limits", name),
                    format!(
                        "{} is above the cluster policy's ceiling of {cap}{hint}",
                        limit.0
                    ),
                ),
                Ok(_) => {}
                Err(message) => errors.push(resource_path("limits", name), message),
            },
            // An unset memory limit is no limit at all; an unset CPU limit only lets the
            // agent use idle CPU, which never takes CPU from other pods' requests.
            None if name == "memory" => errors.push(
                resource_path("limits", name),
                format!("required by the cluster policy (at most {cap}){hint}"),
            ),
            None => {}
        }
    }
}

/// The most verbose level a `RUST_LOG`-style filter enables. A directive is `level`,
/// `target=level`, or `target` alone (which enables everything, i.e. trace, for it).
fn most_verbose(filter: &str) -> Result<LogLevel, String> {
    let mut most = LogLevel::Off;
    for directive in filter.split(',').map(str::trim).filter(|d| !d.is_empty()) {
        let level = match directive.rsplit_once('=') {
            Some((_, level)) => LogLevel::parse(level.trim()).ok_or_else(|| {
                format!("{directive:?} does not end in a log level (off, error, warn, info, debug, trace)")
            })?,
            None => LogLevel::parse(directive).unwrap_or(LogLevel::Trace),
        };
        most = most.max(level);
    }
    Ok(most)
}

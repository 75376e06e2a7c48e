//! Semantic validation of an `EdgePipelineSpec`, reporting every problem at once, each
//! with the path of the field it concerns (`spec.processors[2].deadband.absolute: must
//! be > 0`).
//!
//! This is the complete check used by `edge-agent check`, by the agent at start and by the
//! operator before it touches a DaemonSet. The CRD's CEL rules enforce the same rules at
//! admission wherever CEL can state them: `validate/rules_agree` pairs every CEL rule with
//! its check here, lists the checks only this side makes and why (JSON cannot hold them,
//! the OpenAPI schema covers them, or they are syntaxes kept in one Rust function), and
//! holds the two layers to the same verdicts on generated specs.

mod delivery;
mod inference;
mod transport;

use std::fmt;

pub use self::transport::file_next_to_model;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use crate::redact;
use crate::spec::*;
use crate::units::{parse_duration, parse_size};

/// Largest `spec.source.maxPayloadSize`: 16 MiB.
pub const MAX_PAYLOAD_SIZE: u64 = 16 * 1024 * 1024;
/// Largest `spec.source.maxDevices`.
pub const MAX_DEVICES: u32 = 100_000;

/// One problem with a spec, with the path of the field it concerns.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldError {
    /// Field path, e.g. `spec.processors[2].deadband.absolute`.
    pub path: String,
    /// What is wrong, e.g. `must be > 0`.
    pub message: String,
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

impl std::error::Error for FieldError {}

/// Joins field errors one per line, for logs, Events and conditions.
pub fn describe(errors: &[FieldError]) -> String {
    errors
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("\n")
}

/// Validates a spec; `Err` holds every problem found.
pub fn validate(spec: &EdgePipelineSpec) -> Result<(), Vec<FieldError>> {
    let mut v = Validator::default();
    v.source(&spec.source);
    if let Some(inference) = &spec.inference {
        v.inference(inference, spec.source.format.encoding);
    }
    for (i, p) in spec.processors.iter().enumerate() {
        v.processor(&format!("spec.processors[{i}]"), p);
        if p.aggregate.is_some() && i + 1 < spec.processors.len() {
            v.err(
                format!("spec.processors[{i}].aggregate"),
                "must be the last processor",
            );
        }
    }
    for (i, a) in spec.actions.iter().enumerate() {
        v.action(&format!("spec.actions[{i}]"), a, spec);
    }
    v.buffer(&spec.buffer);
    v.sink(&spec.sink);
    v.agent(&spec.agent);
    if let Some(rollout) = &spec.rollout {
        v.duration(
            "spec.rollout.progressDeadline",
            &rollout.progress_deadline,
            true,
        );
        if let Some(max) = &rollout.max_unavailable {
            v.max_unavailable("spec.rollout.maxUnavailable", max);
        }
        if let Some(canary) = &rollout.canary {
            let selector = canary.node_selector.as_ref().filter(|s| !s.is_empty());
            match (selector, canary.count) {
                (Some(_), Some(_)) | (None, None) => v.err(
                    "spec.rollout.canary",
                    "set exactly one of nodeSelector and count",
                ),
                (None, Some(count)) if count < 1 => {
                    v.err("spec.rollout.canary.count", "must be at least 1")
                }
                _ => {}
            }
            v.duration("spec.rollout.canary.soak", &canary.soak, false);
        }
    }
    if let Some(max) = &spec.agent.max_unavailable {
        v.max_unavailable("spec.agent.maxUnavailable", max);
    }
    // One message per field: a golden file that is a URL is not also a bad file name.
    for e in crate::names::check_spec(spec) {
        if !v.errors.iter().any(|x| x.path == e.path) {
            v.errors.push(e);
        }
    }
    if v.errors.is_empty() {
        Ok(())
    } else {
        Err(v.errors)
    }
}

#[derive(Default)]
struct Validator {
    errors: Vec<FieldError>,
}

impl Validator {
    fn err(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.errors.push(FieldError {
            path: path.into(),
            message: message.into(),
        });
    }

    fn duration(&mut self, path: &str, d: &crate::units::Duration, positive: bool) {
        match parse_duration(&d.0) {
            Ok(v) if positive && v.is_zero() => self.err(path, "must be > 0"),
            Ok(_) => {}
            Err(e) => self.err(path, e.to_string()),
        }
    }

    /// A count of at least 1, or a percentage from `1%` to `100%`.
    fn max_unavailable(&mut self, path: &str, max: &IntOrString) {
        match max {
            IntOrString::Int(n) if *n >= 1 => {}
            IntOrString::Int(_) => self.err(path, "must be at least 1"),
            IntOrString::String(s) => {
                // Digits without a sign or a leading zero, as the CRD's pattern has it.
                let percent = s
                    .strip_suffix('%')
                    .filter(|p| !p.starts_with('0') && p.bytes().all(|b| b.is_ascii_digit()))
                    .and_then(|p| p.parse::<u32>().ok());
                if !percent.is_some_and(|p| (1..=100).contains(&p)) {
                    self.err(
                        path,
                        format!("{s:?} is not a number or a percentage from 1% to 100%"),
                    );
                }
            }
        }
    }

    fn finite(&mut self, path: &str, x: f64) -> bool {
        if x.is_finite() {
            true
        } else {
            self.err(path, "must be a finite number");
            false
        }
    }

    fn positive(&mut self, path: &str, x: f64) {
        if self.finite(path, x) && x <= 0.0 {
            self.err(path, "must be > 0");
        }
    }

    fn embedded(&mut self, e: &EmbeddedBroker, shared_login: bool) {
        match e.listen.parse::<std::net::SocketAddr>() {
            Err(_) => self.err(
                "spec.source.mqtt.embedded.listen",
                format!("{:?} is not an address like 127.0.0.1:1883", e.listen),
            ),
            Ok(addr) if !addr.ip().is_loopback() && e.users.is_empty() && !shared_login => {
                self.err(
                    "spec.source.mqtt.embedded.users",
                    format!(
                        "required when listen ({}) is not a loopback address: without them anyone on the network could publish, subscribe to # or take the agent's client id",
                        e.listen
                    ),
                )
            }
            Ok(_) => {}
        }
        if let Some(tls) = &e.tls {
            let path = "spec.source.mqtt.embedded.tls";
            self.value_from(&format!("{path}.cert"), &tls.cert);
            self.value_from(&format!("{path}.key"), &tls.key);
            if let Some(ca) = &tls.client_ca {
                self.value_from(&format!("{path}.clientCa"), ca);
            }
        }
        let mut seen = std::collections::BTreeSet::new();
        for (i, u) in e.users.iter().enumerate() {
            let path = format!("spec.source.mqtt.embedded.users[{i}]");
            if u.username.is_empty() {
                self.err(format!("{path}.username"), "must not be empty");
            } else if !seen.insert(u.username.as_str()) {
                self.err(format!("{path}.username"), "duplicate username");
            }
            self.value_from(&format!("{path}.passwordFrom"), &u.password_from);
            for (field, filters) in [("publish", &u.publish), ("subscribe", &u.subscribe)] {
                for (j, f) in filters.iter().enumerate() {
                    if let Err(msg) = check_topic_filter(&f.replace("{username}", "u")) {
                        self.err(format!("{path}.{field}[{j}]"), msg);
                    }
                }
            }
        }
    }

    fn source(&mut self, s: &Source) {
        let m = &s.mqtt;
        match (&m.url, &m.embedded) {
            (None, None) => self.err(
                "spec.source.mqtt.url",
                "required (or set spec.source.mqtt.embedded)",
            ),
            (Some(url), _) => self.url("spec.source.mqtt.url", url, &["mqtt", "mqtts"]),
            (None, Some(_)) => {}
        }
        if let Some(e) = &m.embedded {
            self.embedded(e, m.username.is_some() && m.password_from.is_some());
        }
        if m.topics.is_empty() {
            self.err("spec.source.mqtt.topics", "at least one topic is required");
        }
        for (i, t) in m.topics.iter().enumerate() {
            if let Err(msg) = check_topic_filter(t) {
                self.err(format!("spec.source.mqtt.topics[{i}]"), msg);
            }
        }
        if m.qos > 1 {
            self.err("spec.source.mqtt.qos", "must be 0 or 1");
        }
        if let Some(id) = &m.client_id
            && (id.is_empty() || id.len() > 128)
        {
            self.err("spec.source.mqtt.clientId", "must be 1 to 128 characters");
        }
        if let Some(p) = &m.password_from {
            self.value_from("spec.source.mqtt.passwordFrom", p);
        }
        if m.password_from.is_some() && m.username.is_none() {
            self.err(
                "spec.source.mqtt.username",
                "required when passwordFrom is set",
            );
        }
        if let Some(tls) = &m.tls {
            self.tls("spec.source.mqtt.tls", tls);
        }
        self.tls_scheme(
            "spec.source.mqtt.tls",
            m.tls.as_ref(),
            m.url.as_deref(),
            "mqtts",
        );
        self.duration("spec.source.mqtt.keepAlive", &m.keep_alive, true);
        self.path_expr("spec.source.format.value", &s.format.value, false);
        self.path_expr("spec.source.format.device", &s.format.device, true);
        if let Some(ts) = &s.format.timestamp {
            self.path_expr("spec.source.format.timestamp", ts, false);
        }
        match parse_size(&s.max_payload_size.0) {
            Ok(0) => self.err("spec.source.maxPayloadSize", "must be > 0"),
            Ok(n) if n > MAX_PAYLOAD_SIZE => self.err(
                "spec.source.maxPayloadSize",
                "must be at most 16Mi (the agent holds a message in memory while it is handled)",
            ),
            Ok(_) => {}
            Err(e) => self.err("spec.source.maxPayloadSize", e.to_string()),
        }
        if s.max_devices == 0 || s.max_devices > MAX_DEVICES {
            self.err(
                "spec.source.maxDevices",
                "must be between 1 and 100000 (per-device state is kept in memory)",
            );
        }
    }

    fn path_expr(&mut self, path: &str, expr: &str, topic_allowed: bool) {
        if expr.is_empty() {
            self.err(path, "must not be empty");
        } else if let Some(rest) = expr.strip_prefix("topic[") {
            let index_ok = rest
                .strip_suffix(']')
                .is_some_and(|n| n.parse::<usize>().is_ok());
            if !topic_allowed {
                self.err(path, "a topic segment is only allowed for device");
            } else if !index_ok {
                self.err(path, format!("{expr:?} is not topic[N]"));
            }
        } else if expr.split('.').any(str::is_empty) {
            self.err(path, format!("{expr:?} is not a dotted path"));
        }
    }

    fn url(&mut self, path: &str, url: &str, schemes: &[&str]) {
        match url.split_once("://") {
            Some((scheme, rest)) if schemes.contains(&scheme) && !rest.is_empty() => {}
            _ => self.err(
                path,
                format!(
                    "{:?} must start with {}",
                    redact::url(url),
                    schemes
                        .iter()
                        .map(|s| format!("{s}://"))
                        .collect::<Vec<_>>()
                        .join(" or ")
                ),
            ),
        }
    }

    fn value_from(&mut self, path: &str, v: &ValueFrom) {
        let set = [
            v.secret_key_ref.is_some(),
            v.env.is_some(),
            v.file.is_some(),
        ]
        .iter()
        .filter(|x| **x)
        .count();
        if set != 1 {
            self.err(path, "exactly one of secretKeyRef, env or file must be set");
        }
        if let Some(r) = &v.secret_key_ref {
            if r.name.is_empty() || r.key.is_empty() {
                self.err(format!("{path}.secretKeyRef"), "name and key are required");
            } else {
                // Both become a path of the file the agent reads the value from.
                if let Err(message) = crate::names::check_dns_subdomain(&r.name) {
                    self.err(format!("{path}.secretKeyRef.name"), message);
                }
                if let Err(message) = crate::names::check_config_map_key(&r.key) {
                    self.err(format!("{path}.secretKeyRef.key"), message);
                }
            }
        }
        if let Some(e) = &v.env
            && (e.is_empty() || e.contains('='))
        {
            self.err(
                format!("{path}.env"),
                "must be an environment variable name",
            );
        }
    }

    fn tls(&mut self, path: &str, tls: &Tls) {
        for (name, v) in [("ca", &tls.ca), ("cert", &tls.cert), ("key", &tls.key)] {
            if let Some(v) = v {
                self.value_from(&format!("{path}.{name}"), v);
            }
        }
        if tls.cert.is_some() != tls.key.is_some() {
            self.err(path, "cert and key must be set together");
        }
    }

    fn processor(&mut self, path: &str, p: &Processor) {
        if p.kind().is_none() {
            self.err(
                path,
                "exactly one of significantChange, deadband, range, threshold or aggregate must be set",
            );
        }
        // Every stage that is set is checked, also when more than one is (as the CRD does).
        for stage in p.stages() {
            self.stage(path, stage);
        }
    }

    fn stage(&mut self, path: &str, stage: ProcessorKind<'_>) {
        match stage {
            ProcessorKind::SignificantChange(sc) => {
                let path = format!("{path}.significantChange");
                if sc.window == 0 {
                    self.err(format!("{path}.window"), "must be > 0");
                }
                if self.finite(&format!("{path}.threshold"), sc.threshold) && sc.threshold < 0.0 {
                    self.err(format!("{path}.threshold"), "must be >= 0");
                }
            }
            ProcessorKind::Deadband(d) => {
                let path = format!("{path}.deadband");
                if d.absolute.is_some() == d.percent.is_some() {
                    self.err(&path, "exactly one of absolute or percent must be set");
                }
                if let Some(a) = d.absolute {
                    self.positive(&format!("{path}.absolute"), a);
                }
                if let Some(p) = d.percent {
                    self.positive(&format!("{path}.percent"), p);
                }
                if let Some(s) = &d.max_silence {
                    self.duration(&format!("{path}.maxSilence"), s, true);
                }
            }
            ProcessorKind::Range(r) => {
                let path = format!("{path}.range");
                if r.min.is_none() && r.max.is_none() {
                    self.err(&path, "set min, max or both");
                }
                let min_ok = r.min.is_none_or(|x| self.finite(&format!("{path}.min"), x));
                let max_ok = r.max.is_none_or(|x| self.finite(&format!("{path}.max"), x));
                if let (Some(min), Some(max)) = (r.min, r.max)
                    && min_ok
                    && max_ok
                    && min > max
                {
                    self.err(format!("{path}.max"), "must be >= min");
                }
            }
            ProcessorKind::Threshold(t) => {
                let path = format!("{path}.threshold");
                if t.above.is_none() && t.below.is_none() {
                    self.err(&path, "set above, below or both");
                }
                if let Some(a) = t.above {
                    self.finite(&format!("{path}.above"), a);
                }
                if let Some(b) = t.below {
                    self.finite(&format!("{path}.below"), b);
                }
            }
            ProcessorKind::Aggregate(a) => {
                let path = format!("{path}.aggregate");
                self.duration(&format!("{path}.window"), &a.window, true);
                if a.functions.is_empty() {
                    self.err(
                        format!("{path}.functions"),
                        "at least one function is required",
                    );
                }
            }
        }
    }

    fn topic_template(&mut self, path: String, topic: &str) {
        if topic.is_empty() || topic.contains(['+', '#']) {
            self.err(path.clone(), "must be a topic name without wildcards");
        }
        let unknown: Vec<&str> = placeholders(topic)
            .filter(|p| !matches!(*p, "device" | "pipeline" | "node"))
            .collect();
        if !unknown.is_empty() {
            self.err(
                path,
                format!(
                    "unknown placeholder {{{}}}; use {{device}}, {{pipeline}} or {{node}}",
                    unknown[0]
                ),
            );
        }
    }

    /// The episode fields of an action: each only with the trigger it applies to.
    fn episode(&mut self, path: &str, a: &Action, spec: &EdgePipelineSpec) {
        if let Some(clear) = a.clear_below {
            let field = format!("{path}.clearBelow");
            if a.trigger != ActionTrigger::Anomaly {
                self.err(&field, "is only used with trigger: anomaly");
            }
            if self.finite(&field, clear)
                && let Some(inference) = &spec.inference
                && clear > inference.threshold
            {
                self.err(
                    field,
                    format!("must be <= inference.threshold ({})", inference.threshold),
                );
            }
        }
        if let Some(margin) = a.hysteresis {
            let field = format!("{path}.hysteresis");
            if a.trigger != ActionTrigger::Threshold {
                self.err(&field, "is only used with trigger: threshold");
            }
            if self.finite(&field, margin) && margin < 0.0 {
                self.err(field, "must be >= 0");
            }
        }
        if a.clear_after == Some(0) {
            self.err(format!("{path}.clearAfter"), "must be >= 1");
        }
        if let Some(cooldown) = &a.cooldown {
            self.duration(&format!("{path}.cooldown"), cooldown, false);
        }
        if a.trigger == ActionTrigger::Classification {
            if a.clear_after.is_some() {
                self.err(
                    format!("{path}.clearAfter"),
                    "a classification is a single event with nothing to clear",
                );
            }
            if a.resolved.is_some() {
                self.err(
                    format!("{path}.resolved"),
                    "a classification is a single event with nothing to clear",
                );
            }
        }
        if let Some(topic) = a.resolved.as_ref().and_then(|r| r.topic.as_deref()) {
            self.topic_template(format!("{path}.resolved.topic"), topic);
        }
    }

    fn action(&mut self, path: &str, a: &Action, spec: &EdgePipelineSpec) {
        self.topic_template(format!("{path}.mqtt.topic"), &a.mqtt.topic);
        self.episode(path, a, spec);
        if a.mqtt.qos > 1 {
            self.err(format!("{path}.mqtt.qos"), "must be 0 or 1");
        }
        match a.trigger {
            ActionTrigger::Anomaly | ActionTrigger::Classification if spec.inference.is_none() => {
                self.err(format!("{path}.trigger"), "needs spec.inference")
            }
            ActionTrigger::Threshold if !spec.processors.iter().any(|p| p.threshold.is_some()) => {
                self.err(format!("{path}.trigger"), "needs a threshold processor")
            }
            _ => {}
        }
    }

    fn agent(&mut self, a: &AgentSettings) {
        if !(1..=65535).contains(&a.metrics_port) {
            self.err("spec.agent.metricsPort", "must be a port number (1-65535)");
        }
    }
}

/// `{name}` placeholders in a template.
fn placeholders(template: &str) -> impl Iterator<Item = &str> {
    template
        .split('{')
        .skip(1)
        .filter_map(|part| part.split_once('}').map(|(name, _)| name))
}

/// Checks an MQTT topic filter: non-empty, `#` only as the last level, `+` and `#` only
/// as whole levels.
pub fn check_topic_filter(filter: &str) -> Result<(), String> {
    if filter.is_empty() {
        return Err("must not be empty".into());
    }
    let levels: Vec<&str> = filter.split('/').collect();
    for (i, level) in levels.iter().enumerate() {
        if level.contains('#') && (*level != "#" || i != levels.len() - 1) {
            return Err(format!("{filter:?}: '#' must be a whole last level"));
        }
        if level.contains('+') && *level != "+" {
            return Err(format!("{filter:?}: '+' must be a whole level"));
        }
    }
    Ok(())
}

#[cfg(all(test, feature = "kube"))]
mod rules_agree;
#[cfg(test)]
mod tests;

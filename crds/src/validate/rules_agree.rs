//! The two layers of API rules agree: the CRD's CEL rules (evaluated with kube-cel, as the
//! API server would at admission) and [`validate`] (what `edge-agent check`, the agent and
//! the operator run).
//!
//! [`SHARED`] says which CEL rule is which `validate()` check; [`CEL_ONLY`] and
//! [`VALIDATE_ONLY`] list the rules of one layer only, each with the reason. A property
//! test generates specs around every rule's boundary and asserts, for each shared rule,
//! that CEL rejects a spec (at a given object) exactly when `validate()` reports the
//! matching field error there. A CEL rule that is in no table, or a `validate()` error that
//! matches no table, fails the test until it is classified.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};

use kube_cel::{CompiledSchema, ErrorKind, ValidationError};
use proptest::prelude::*;
use proptest::strategy::Union;
use proptest::test_runner::{Config, TestRunner};
use serde_json::{Value, json};

use crate::validate::{FieldError, validate};
use crate::{EdgePipelineSpec, renamed};

/// A rule both layers enforce: where the CEL rule reports (`[]` stands for any list index)
/// and its message, then where `validate()` reports the same problem and a part of its
/// message (several when `validate()` names one of several fields, or words the problem
/// in more than one way).
type Shared = (
    (&'static str, &'static str),
    &'static [(&'static str, &'static str)],
);

/// Every CEL rule that has a `validate()` counterpart (besides those of [`VALUE_FROM`] and
/// [`TLS`], which stand in many places).
const SHARED: &[Shared] = &[
    // spec
    (
        ("spec.processors", "aggregate must be the last processor"),
        &[("spec.processors[].aggregate", "must be the last processor")],
    ),
    (
        (
            "spec.actions",
            "an action's clearBelow must be <= inference.threshold",
        ),
        &[(
            "spec.actions[].clearBelow",
            "must be <= inference.threshold",
        )],
    ),
    (
        (
            "spec.actions",
            "an anomaly or classification action needs spec.inference",
        ),
        &[("spec.actions[].trigger", "needs spec.inference")],
    ),
    (
        (
            "spec.actions",
            "a threshold action needs a threshold processor",
        ),
        &[("spec.actions[].trigger", "needs a threshold processor")],
    ),
    (
        (
            "spec.inference.task",
            "task: classification needs source.format.encoding: image",
        ),
        &[(
            "spec.inference.task",
            "classification needs spec.source.format.encoding: image",
        )],
    ),
    (
        (
            "spec.inference.task",
            "image payloads need inference.task: classification",
        ),
        &[(
            "spec.inference.task",
            "image payloads need task: classification",
        )],
    ),
    // spec.source
    (
        (
            "spec.source.mqtt",
            "set url, or embedded to run a broker inside the agent",
        ),
        &[(
            "spec.source.mqtt.url",
            "required (or set spec.source.mqtt.embedded)",
        )],
    ),
    (
        ("spec.source.mqtt", "qos must be 0 or 1"),
        &[("spec.source.mqtt.qos", "must be 0 or 1")],
    ),
    (
        ("spec.source.mqtt", "at least one topic is required"),
        &[("spec.source.mqtt.topics", "at least one topic is required")],
    ),
    (
        ("spec.source.mqtt.keepAlive", "keepAlive must be > 0"),
        &[("spec.source.mqtt.keepAlive", "must be > 0")],
    ),
    (
        ("spec.source.maxPayloadSize", "maxPayloadSize must be > 0"),
        &[("spec.source.maxPayloadSize", "must be > 0")],
    ),
    (
        (
            "spec.source.maxPayloadSize",
            "maxPayloadSize must be at most 16Mi",
        ),
        &[("spec.source.maxPayloadSize", "must be at most 16Mi")],
    ),
    (
        (
            "spec.source.mqtt.username",
            "username is required when passwordFrom is set",
        ),
        &[(
            "spec.source.mqtt.username",
            "required when passwordFrom is set",
        )],
    ),
    (
        (
            "spec.source.mqtt.embedded.users",
            "embedded.users is required when embedded.listen is not a loopback address",
        ),
        &[("spec.source.mqtt.embedded.users", "required when listen")],
    ),
    (
        (
            "spec.source.mqtt.tls",
            "tls is only used with an mqtts:// url",
        ),
        &[("spec.source.mqtt.tls", "so it would not be used")],
    ),
    // spec.inference
    (
        ("spec.inference", "window must be > 0"),
        &[("spec.inference.window", "must be > 0")],
    ),
    (
        ("spec.inference", "topK must be > 0"),
        &[("spec.inference.topK", "must be > 0")],
    ),
    (
        ("spec.inference.timeout", "timeout must be > 0"),
        &[("spec.inference.timeout", "must be > 0")],
    ),
    (
        ("spec.inference.golden.tolerance", "tolerance must be > 0"),
        &[("spec.inference.golden.tolerance", "must be > 0")],
    ),
    (
        (
            "spec.inference.golden.vectors[]",
            "input and output must not be empty",
        ),
        &[(
            "spec.inference.golden.vectors[]",
            "input and output must not be empty",
        )],
    ),
    (
        (
            "spec.inference.input",
            "input is only for task: classification (readings use normalize)",
        ),
        &[("spec.inference.input", "only for task: classification")],
    ),
    (
        (
            "spec.inference.labelsFile",
            "labelsFile is a file next to the model, not a URL",
        ),
        &[("spec.inference.labelsFile", "is a URL")],
    ),
    (
        ("spec.inference.golden", "set file or vectors"),
        &[("spec.inference.golden", "set file or vectors")],
    ),
    (
        (
            "spec.inference.golden.file",
            "file is a file next to the model, not a URL",
        ),
        &[("spec.inference.golden.file", "is a URL")],
    ),
    (
        (
            "spec.inference.input.mean",
            "mean takes one value for every channel or three (R, G, B)",
        ),
        &[(
            "spec.inference.input.mean",
            "takes one value for every channel or three",
        )],
    ),
    (
        (
            "spec.inference.input.std",
            "std takes one value for every channel or three (R, G, B)",
        ),
        &[(
            "spec.inference.input.std",
            "takes one value for every channel or three",
        )],
    ),
    (
        ("spec.inference.input.std", "std values must be > 0"),
        &[("spec.inference.input.std", "is not > 0")],
    ),
    (
        (
            "spec.inference.model",
            "exactly one of path, configMap or url must be set",
        ),
        &[(
            "spec.inference.model",
            "exactly one of path, configMap or url must be set",
        )],
    ),
    (
        ("spec.inference.model", "url requires sha256"),
        &[("spec.inference.model.sha256", "required with url")],
    ),
    (
        ("spec.inference.model", "sha256 is only used with url"),
        &[("spec.inference.model.sha256", "only used with url")],
    ),
    (
        (
            "spec.inference.model.headers",
            "headers are only used with url",
        ),
        &[("spec.inference.model.headers", "only used with url")],
    ),
    (
        (
            "spec.inference.normalize",
            "set either mean and std, or min and max",
        ),
        &[(
            "spec.inference.normalize",
            "set either mean and std, or min and max",
        )],
    ),
    (
        ("spec.inference.normalize", "std must be > 0"),
        &[("spec.inference.normalize.std", "must be > 0")],
    ),
    (
        ("spec.inference.normalize", "max must be > min"),
        &[("spec.inference.normalize.max", "must be > min")],
    ),
    // spec.processors
    (
        (
            "spec.processors[]",
            "exactly one of significantChange, deadband, range, threshold or aggregate must be set",
        ),
        &[(
            "spec.processors[]",
            "exactly one of significantChange, deadband, range, threshold or aggregate must be set",
        )],
    ),
    (
        ("spec.processors[].significantChange", "window must be > 0"),
        &[("spec.processors[].significantChange.window", "must be > 0")],
    ),
    (
        (
            "spec.processors[].significantChange",
            "threshold must be >= 0",
        ),
        &[(
            "spec.processors[].significantChange.threshold",
            "must be >= 0",
        )],
    ),
    (
        (
            "spec.processors[].deadband",
            "exactly one of absolute or percent must be set",
        ),
        &[(
            "spec.processors[].deadband",
            "exactly one of absolute or percent must be set",
        )],
    ),
    (
        ("spec.processors[].deadband", "absolute must be > 0"),
        &[("spec.processors[].deadband.absolute", "must be > 0")],
    ),
    (
        ("spec.processors[].deadband", "percent must be > 0"),
        &[("spec.processors[].deadband.percent", "must be > 0")],
    ),
    (
        (
            "spec.processors[].deadband.maxSilence",
            "maxSilence must be > 0",
        ),
        &[("spec.processors[].deadband.maxSilence", "must be > 0")],
    ),
    (
        ("spec.processors[].range", "set min, max or both"),
        &[("spec.processors[].range", "set min, max or both")],
    ),
    (
        ("spec.processors[].range", "min must be <= max"),
        &[("spec.processors[].range.max", "must be >= min")],
    ),
    (
        ("spec.processors[].threshold", "set above, below or both"),
        &[("spec.processors[].threshold", "set above, below or both")],
    ),
    (
        ("spec.processors[].aggregate", "window must be > 0"),
        &[("spec.processors[].aggregate.window", "must be > 0")],
    ),
    (
        (
            "spec.processors[].aggregate",
            "at least one function is required",
        ),
        &[(
            "spec.processors[].aggregate.functions",
            "at least one function is required",
        )],
    ),
    // spec.actions
    (
        (
            "spec.actions[].clearBelow",
            "clearBelow is only used with trigger: anomaly",
        ),
        &[(
            "spec.actions[].clearBelow",
            "is only used with trigger: anomaly",
        )],
    ),
    (
        (
            "spec.actions[].hysteresis",
            "hysteresis is only used with trigger: threshold",
        ),
        &[(
            "spec.actions[].hysteresis",
            "is only used with trigger: threshold",
        )],
    ),
    (
        ("spec.actions[].hysteresis", "hysteresis must be >= 0"),
        &[("spec.actions[].hysteresis", "must be >= 0")],
    ),
    (
        ("spec.actions[].clearAfter", "clearAfter must be >= 1"),
        &[("spec.actions[].clearAfter", "must be >= 1")],
    ),
    (
        (
            "spec.actions[].resolved",
            "a classification is a single event with nothing to clear: clearAfter and resolved are not used",
        ),
        &[
            (
                "spec.actions[].clearAfter",
                "a classification is a single event with nothing to clear",
            ),
            (
                "spec.actions[].resolved",
                "a classification is a single event with nothing to clear",
            ),
        ],
    ),
    (
        ("spec.actions[].mqtt", "qos must be 0 or 1"),
        &[("spec.actions[].mqtt.qos", "must be 0 or 1")],
    ),
    // spec.buffer
    (
        ("spec.buffer", "maxBytes must be at least 64Ki"),
        &[("spec.buffer.maxBytes", "must be at least 64Ki")],
    ),
    (
        ("spec.buffer", "maxAge must be > 0"),
        &[("spec.buffer.maxAge", "must be > 0")],
    ),
    (
        (
            "spec.buffer.maxDeadLetterBytes",
            "maxDeadLetterBytes must be > 0",
        ),
        &[("spec.buffer.maxDeadLetterBytes", "must be > 0")],
    ),
    (
        (
            "spec.buffer.maxDeadLetterBytes",
            "maxDeadLetterBytes must be at most half of maxBytes",
        ),
        &[("spec.buffer.maxDeadLetterBytes", "must be at most half")],
    ),
    (
        ("spec.buffer.encryption.keys", "key ids must be unique"),
        &[("spec.buffer.encryption.keys", "key ids must be unique")],
    ),
    // spec.sink
    (
        ("spec.sink", "exactly one of http or mqtt must be set"),
        &[("spec.sink", "exactly one of http or mqtt must be set")],
    ),
    (
        ("spec.sink.http", "batchSize must be > 0"),
        &[("spec.sink.http.batchSize", "must be > 0")],
    ),
    (
        ("spec.sink.http", "flushInterval must be > 0"),
        &[("spec.sink.http.flushInterval", "must be > 0")],
    ),
    (
        ("spec.sink.http", "timeout must be > 0"),
        &[("spec.sink.http.timeout", "must be > 0")],
    ),
    (
        (
            "spec.sink.http.deadLetterOn",
            "deadLetterOn takes 4xx codes other than 401, 403, 407, 408 and 429",
        ),
        &[(
            "spec.sink.http.deadLetterOn[]",
            "is not a content rejection",
        )],
    ),
    (
        (
            "spec.sink.http.retry.initialBackoff",
            "initialBackoff must be > 0",
        ),
        &[("spec.sink.http.retry.initialBackoff", "must be > 0")],
    ),
    (
        ("spec.sink.http.retry.maxBackoff", "maxBackoff must be > 0"),
        &[("spec.sink.http.retry.maxBackoff", "must be > 0")],
    ),
    (
        (
            "spec.sink.http.tls",
            "tls is only used with an https:// url",
        ),
        &[("spec.sink.http.tls", "so it would not be used")],
    ),
    (
        ("spec.sink.mqtt", "qos must be 0 or 1"),
        &[("spec.sink.mqtt.qos", "must be 0 or 1")],
    ),
    (
        ("spec.sink.mqtt", "batchSize must be > 0"),
        &[("spec.sink.mqtt.batchSize", "must be > 0")],
    ),
    (
        ("spec.sink.mqtt", "flushInterval must be > 0"),
        &[("spec.sink.mqtt.flushInterval", "must be > 0")],
    ),
    (
        (
            "spec.sink.mqtt.tls",
            "tls is only used with an mqtts:// url",
        ),
        &[("spec.sink.mqtt.tls", "so it would not be used")],
    ),
    (
        (
            "spec.sink.rateLimit.bytesPerSecond",
            "bytesPerSecond must be > 0",
        ),
        &[("spec.sink.rateLimit.bytesPerSecond", "must be > 0")],
    ),
    (
        ("spec.sink.rateLimit.burst", "burst must be > 0"),
        &[("spec.sink.rateLimit.burst", "must be > 0")],
    ),
    (
        (
            "spec.sink.rateLimit.schedule[].to",
            "to must differ from from (a window cannot be empty or the whole day)",
        ),
        &[("spec.sink.rateLimit.schedule[].to", "must differ from from")],
    ),
    // spec.agent, spec.rollout
    (
        ("spec.agent", "metricsPort must be a port number"),
        &[("spec.agent.metricsPort", "must be a port number")],
    ),
    (
        (
            "spec.agent",
            "maxUnavailable must be at least 1, or a percentage from 1% to 100%",
        ),
        &[
            ("spec.agent.maxUnavailable", "must be at least 1"),
            (
                "spec.agent.maxUnavailable",
                "is not a number or a percentage from 1% to 100%",
            ),
        ],
    ),
    (
        (
            "spec.rollout",
            "maxUnavailable must be at least 1, or a percentage from 1% to 100%",
        ),
        &[
            ("spec.rollout.maxUnavailable", "must be at least 1"),
            (
                "spec.rollout.maxUnavailable",
                "is not a number or a percentage from 1% to 100%",
            ),
        ],
    ),
    (
        (
            "spec.rollout.canary",
            "set exactly one of nodeSelector and count",
        ),
        &[(
            "spec.rollout.canary",
            "set exactly one of nodeSelector and count",
        )],
    ),
    (
        (
            "spec.rollout.progressDeadline",
            "progressDeadline must be > 0",
        ),
        &[("spec.rollout.progressDeadline", "must be > 0")],
    ),
];

/// The message of the `ValueFrom` rule, which both layers report at the `ValueFrom` itself.
const VALUE_FROM_MESSAGE: &str = "exactly one of secretKeyRef, env or file must be set";

/// Every place a `ValueFrom` (a Secret key, an environment variable or a file) stands.
const VALUE_FROM: &[&str] = &[
    "spec.source.mqtt.passwordFrom",
    "spec.source.mqtt.tls.ca",
    "spec.source.mqtt.tls.cert",
    "spec.source.mqtt.tls.key",
    "spec.source.mqtt.embedded.tls.cert",
    "spec.source.mqtt.embedded.tls.key",
    "spec.source.mqtt.embedded.tls.clientCa",
    "spec.source.mqtt.embedded.users[].passwordFrom",
    "spec.inference.model.headers[].valueFrom",
    "spec.buffer.encryption.keys[].keyFrom",
    "spec.sink.http.headers[].valueFrom",
    "spec.sink.http.tls.ca",
    "spec.sink.http.tls.cert",
    "spec.sink.http.tls.key",
    "spec.sink.mqtt.passwordFrom",
    "spec.sink.mqtt.tls.ca",
    "spec.sink.mqtt.tls.cert",
    "spec.sink.mqtt.tls.key",
];

/// The message of the `Tls` rule (a client certificate needs its key), reported at the
/// `tls` block by both layers.
const TLS_MESSAGE: &str = "cert and key must be set together";

/// Every place a `Tls` (client TLS settings) stands.
const TLS: &[&str] = &[
    "spec.source.mqtt.tls",
    "spec.sink.http.tls",
    "spec.sink.mqtt.tls",
];

/// CEL rules without a `validate()` counterpart: (where, message, why).
const CEL_ONLY: &[(&str, &str, &str)] = &[
    (
        "spec.actions[].on",
        renamed::ON_RENAMED,
        "the typed spec has no key `on`: `parse_pipeline` refuses it before `validate()` \
         runs, with the same message (crate::renamed, tests/tests/api.rs)",
    ),
    (
        "spec.actions[].trigger",
        "set trigger: anomaly, threshold or classification",
        "`trigger` is a required field of the Rust type, so a spec without it does not \
         parse; the CRD needs a rule because it cannot mark it required (crate::renamed)",
    ),
];

/// Why a `validate()` check has no CEL rule: the OpenAPI schema already enforces it.
const OPENAPI: &str = "enforced at admission by the OpenAPI schema (pattern, minimum, \
                       maximum, minLength, maxItems), so no CEL rule repeats it";
/// Why a `validate()` check has no CEL rule: it is a syntax kept in one Rust function.
const SYNTAX: &str = "a syntax checked by the one Rust function the agent also uses to \
                      read the value (MQTT topics, payload paths, names that become file \
                      paths); the API server checks the shape only";
/// `validate()` checks without a CEL rule: (where, a part of the message, why). A path
/// starting with `*` matches any path that ends with the rest; one ending with `*`, any
/// path that starts with the rest.
const VALIDATE_ONLY: &[(&str, &str, &str)] = &[
    (
        "*",
        "must be a finite number",
        "JSON has no NaN or infinity, so the API server never sees one; YAML read by the \
         agent does (`.nan`, `.inf`)",
    ),
    (
        "spec.source.mqtt.embedded.listen",
        "is not an address like",
        "CEL has no parser for a socket address; the shared rule (users off loopback) is \
         compared on addresses both layers read",
    ),
    (
        "spec.source.mqtt.embedded.users[].username",
        "duplicate username",
        "a pairwise check over up to 1000 users is beyond the API server's CEL cost budget",
    ),
    // The OpenAPI schema.
    ("*", "is not a duration", OPENAPI),
    ("*", "is not a size", OPENAPI),
    (
        "spec.inference.model.sha256",
        "must be 64 lowercase hex",
        OPENAPI,
    ),
    (
        "spec.source.maxDevices",
        "must be between 1 and 100000",
        OPENAPI,
    ),
    ("spec.rollout.canary.count", "must be at least 1", OPENAPI),
    (
        "spec.sink.backlog.sharePercent",
        "must be 0 to 100",
        OPENAPI,
    ),
    (
        "spec.sink.rateLimit.schedule",
        "at most 24 windows",
        OPENAPI,
    ),
    (
        "spec.sink.rateLimit.schedule[]*",
        "is not a time of day",
        OPENAPI,
    ),
    (
        "spec.buffer.encryption.keys",
        "must list 1 to 8 keys",
        OPENAPI,
    ),
    (
        "spec.buffer.encryption.keys[].id",
        "must be 1 to 63 characters",
        OPENAPI,
    ),
    ("spec.sink.http.url", "must start with", OPENAPI),
    ("spec.sink.mqtt.url", "must start with", OPENAPI),
    ("spec.source.mqtt.url", "must start with", OPENAPI),
    ("spec.inference.model.url", "must start with", OPENAPI),
    (
        "spec.source.mqtt.clientId",
        "must be 1 to 128 characters",
        OPENAPI,
    ),
    (
        "spec.inference.model.configMap",
        "name and key are required",
        OPENAPI,
    ),
    (
        "spec.source.mqtt.embedded.users[].username",
        "must not be empty",
        OPENAPI,
    ),
    // Syntaxes kept in Rust.
    ("spec.source.mqtt.topics[]", "", SYNTAX),
    ("*.publish[]", "", SYNTAX),
    ("*.subscribe[]", "", SYNTAX),
    ("*.topic", "without wildcards", SYNTAX),
    ("*.topic", "unknown placeholder", SYNTAX),
    ("spec.source.format.*", "", SYNTAX),
    ("*.secretKeyRef", "name and key are required", SYNTAX),
    ("*.secretKeyRef.name", "", SYNTAX),
    ("*.secretKeyRef.key", "", SYNTAX),
    ("*.env", "must be an environment variable name", SYNTAX),
    ("*.headers[].name", "must be an HTTP header name", SYNTAX),
    ("spec.inference.model.configMap.key", "", SYNTAX),
    ("spec.inference.golden.file", "must be a", SYNTAX),
    ("spec.inference.labelsFile", "must be a", SYNTAX),
    ("spec.inference.golden.file", "must not be empty", SYNTAX),
    ("spec.inference.labelsFile", "must not be empty", SYNTAX),
];

/// Whether a `validate()` error is listed in [`VALIDATE_ONLY`].
fn validate_only(e: &FieldError) -> bool {
    let path = general(&e.path);
    VALIDATE_ONLY.iter().any(|(pattern, fragment, _)| {
        let path_ok = if let Some(suffix) = pattern.strip_prefix('*') {
            path.ends_with(suffix)
        } else if let Some(prefix) = pattern.strip_suffix('*') {
            path.starts_with(prefix)
        } else {
            path == *pattern
        };
        path_ok && e.message.contains(fragment)
    })
}

/// A rule both layers enforce, with the rules that stand in many places expanded.
struct Row {
    /// Where the CEL rule reports (`[]` for any index).
    at: &'static str,
    /// The CEL rule's message.
    message: &'static str,
    /// Where `validate()` reports the same problem, and a part of its message.
    checks: Vec<(&'static str, &'static str)>,
}

/// The rows of the shared table.
fn shared_rows() -> Vec<Row> {
    let mut rows: Vec<Row> = SHARED
        .iter()
        .map(|&((at, message), checks)| Row {
            at,
            message,
            checks: checks.to_vec(),
        })
        .collect();
    for (places, message) in [(TLS, TLS_MESSAGE), (VALUE_FROM, VALUE_FROM_MESSAGE)] {
        rows.extend(places.iter().map(|&at| Row {
            at,
            message,
            checks: vec![(at, message)],
        }));
    }
    rows
}

/// `spec.processors[2].range` as `["spec", "processors", "[2]", "range"]`.
fn segments(path: &str) -> Vec<&str> {
    let mut out = vec![];
    for part in path.split('.') {
        match part.find('[') {
            Some(i) => {
                if i > 0 {
                    out.push(&part[..i]);
                }
                out.extend(part[i..].split_inclusive(']'));
            }
            None => out.push(part),
        }
    }
    out
}

/// Joins segments back into a path.
fn join(segments: &[&str]) -> String {
    let mut out = String::new();
    for s in segments {
        if !out.is_empty() && !s.starts_with('[') {
            out.push('.');
        }
        out.push_str(s);
    }
    out
}

/// A path with every list index written `[]`.
fn general(path: &str) -> String {
    let segs: Vec<&str> = segments(path)
        .into_iter()
        .map(|s| if s.starts_with('[') { "[]" } else { s })
        .collect();
    join(&segs)
}

/// How many leading segments two general paths share.
fn common_depth(a: &str, b: &str) -> usize {
    segments(a)
        .iter()
        .zip(segments(b).iter())
        .take_while(|(x, y)| x == y)
        .count()
}

/// Every CEL rule of the schema: (general path it reports at, rule text) -> message.
fn cel_rules(compiled: &CompiledSchema) -> BTreeMap<(String, String), String> {
    fn walk(node: &CompiledSchema, path: &str, out: &mut BTreeMap<(String, String), String>) {
        for v in node.validations.iter().flatten() {
            let at = match v.rule.field_path.as_deref() {
                Some(fp) => format!("{path}{fp}"),
                None => path.to_string(),
            };
            let message = v.rule.message.clone().unwrap_or_default();
            out.insert((at, v.rule.rule.clone()), message);
        }
        for (name, child) in &node.properties {
            walk(child, &format!("{path}.{name}"), out);
        }
        if let Some(items) = &node.items {
            walk(items, &format!("{path}[]"), out);
        }
    }
    let mut out = BTreeMap::new();
    walk(compiled, "", &mut out);
    out.into_iter()
        .map(|((at, rule), m)| ((at.trim_start_matches('.').to_string(), rule), m))
        .collect()
}

fn compiled_schema() -> CompiledSchema {
    let crd = serde_json::to_value(crate::crd()).expect("the CRD serializes");
    kube_cel::compile_schema(&crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"])
}

#[test]
fn every_cel_rule_is_classified_and_every_row_names_a_rule() {
    let rules = cel_rules(&compiled_schema());
    let in_schema: BTreeSet<(String, String)> = rules
        .iter()
        .map(|((at, _), message)| (at.clone(), message.clone()))
        .collect();
    let shared: BTreeSet<(String, String)> = shared_rows()
        .into_iter()
        .map(|row| (row.at.to_string(), row.message.to_string()))
        .collect();
    let cel_only: BTreeSet<(String, String)> = CEL_ONLY
        .iter()
        .map(|(at, message, _)| (at.to_string(), message.to_string()))
        .collect();
    let unclassified: Vec<_> = in_schema
        .iter()
        .filter(|r| !shared.contains(*r) && !cel_only.contains(*r))
        .collect();
    assert!(
        unclassified.is_empty(),
        "CEL rules in neither SHARED (with the validate() check that enforces the same) \
         nor CEL_ONLY (with the reason): {unclassified:#?}"
    );
    let stale: Vec<_> = shared
        .iter()
        .chain(&cel_only)
        .filter(|r| !in_schema.contains(*r))
        .collect();
    assert!(
        stale.is_empty(),
        "rows naming no CEL rule of the schema: {stale:#?}"
    );
    assert!(shared.len() >= 60, "{} shared rules", shared.len());
}

// ---- The generator: specs around each rule's boundary, as a user would write them ----

type Json = BoxedStrategy<Value>;
type Field = (&'static str, BoxedStrategy<Option<Value>>);

/// One of these values.
fn pick(values: Value) -> Json {
    let Value::Array(values) = values else {
        panic!("pick takes a JSON array");
    };
    prop::sample::select(values).boxed()
}

/// A field that is always present.
fn req(name: &'static str, value: Json) -> Field {
    (name, value.prop_map(Some).boxed())
}

/// A field that is present or absent.
fn opt(name: &'static str, value: Json) -> Field {
    (name, prop::option::of(value).boxed())
}

/// An object with these fields (absent ones left out).
fn object(fields: Vec<Field>) -> Json {
    let (names, values): (Vec<&'static str>, Vec<_>) = fields.into_iter().unzip();
    values
        .prop_map(move |values| {
            Value::Object(
                names
                    .iter()
                    .zip(values)
                    .filter_map(|(name, value)| Some((name.to_string(), value?)))
                    .collect(),
            )
        })
        .boxed()
}

/// A list of `len` items (an explicit `[]` included when the range allows it).
fn list(item: Json, len: std::ops::Range<usize>) -> Json {
    prop::collection::vec(item, len)
        .prop_map(Value::from)
        .boxed()
}

/// One of these strategies, by weight.
fn weighted(choices: Vec<(u32, Json)>) -> Json {
    Union::new_weighted(choices).boxed()
}

fn value_from() -> Json {
    pick(json!([
        {},
        {"env": "TOKEN"},
        {"file": "/run/secrets/token"},
        {"secretKeyRef": {"name": "creds", "key": "token"}},
        {"env": "TOKEN", "file": "/run/secrets/token"},
    ]))
}

fn tls() -> Json {
    object(vec![
        opt("ca", value_from()),
        opt("cert", value_from()),
        opt("key", value_from()),
    ])
}

fn header() -> Json {
    object(vec![
        req("name", pick(json!(["Authorization"]))),
        req("valueFrom", value_from()),
    ])
}

fn source() -> Json {
    let user = object(vec![
        req("username", pick(json!(["dev1", "dev2"]))),
        req("passwordFrom", value_from()),
    ]);
    let embedded = object(vec![
        opt(
            "listen",
            pick(json!([
                "127.0.0.1:1883",
                "127.3.2.1:1883",
                "[::1]:1883",
                "0.0.0.0:1883",
                "192.168.1.5:1883"
            ])),
        ),
        opt("users", list(user, 0..3)),
        opt(
            "tls",
            object(vec![
                req("cert", value_from()),
                req("key", value_from()),
                opt("clientCa", value_from()),
            ]),
        ),
    ]);
    let mqtt = object(vec![
        opt(
            "url",
            pick(json!(["mqtt://broker:1883", "mqtts://broker:8883"])),
        ),
        req("topics", list(pick(json!(["sensors/#", "a/+/b"])), 0..3)),
        opt("qos", pick(json!([0, 1, 2]))),
        opt("username", pick(json!(["agent"]))),
        opt("passwordFrom", value_from()),
        opt("tls", tls()),
        opt("keepAlive", pick(json!(["30s", "0s"]))),
        opt("embedded", embedded),
    ]);
    object(vec![
        req("mqtt", mqtt),
        opt(
            "format",
            object(vec![opt("encoding", pick(json!(["json", "image"])))]),
        ),
        opt(
            "maxPayloadSize",
            pick(json!(["0", "64Ki", "16Mi", "16777217", "17Mi"])),
        ),
    ])
}

fn inference() -> Json {
    let files = pick(json!([
        "golden.json",
        "https://elsewhere.example/g.json",
        "//elsewhere.example/g.json",
        "dir\\g.json",
        "file:g.json"
    ]));
    let model = object(vec![
        opt("path", pick(json!(["/models/m.tflite"]))),
        opt(
            "configMap",
            pick(json!([{"name": "model", "key": "m.tflite"}])),
        ),
        opt("url", pick(json!(["https://models.example/m.tflite"]))),
        opt("sha256", pick(json!(["ab".repeat(32)]))),
        opt("headers", list(header(), 0..2)),
    ]);
    let normalize = object(vec![
        opt("mean", pick(json!([0, 2.5]))),
        opt("std", pick(json!([-1, 0, 0.0, 1.5]))),
        opt("min", pick(json!([0, 1.0]))),
        opt("max", pick(json!([0.0, 1, 10.5]))),
    ]);
    let vector = object(vec![
        req("input", pick(json!([[1.0], []]))),
        req("output", pick(json!([[0.5], []]))),
    ]);
    let golden = object(vec![
        opt("file", files.clone()),
        opt("vectors", list(vector, 0..2)),
        opt("tolerance", pick(json!([0.001, 0, -1.0]))),
    ]);
    let input = object(vec![
        opt("mean", list(pick(json!([0.5, 0])), 0..4)),
        opt("std", list(pick(json!([0.5, 1, 0, -1.0])), 0..4)),
    ]);
    object(vec![
        req("model", model),
        opt("task", pick(json!(["anomaly", "classification"]))),
        opt("window", pick(json!([0, 1, 16]))),
        opt("threshold", pick(json!([0.5, 0.8, 1]))),
        opt("normalize", normalize),
        opt("golden", golden),
        opt("labelsFile", files),
        opt("topK", pick(json!([0, 1, 3]))),
        opt("input", input),
        opt("timeout", pick(json!(["1s", "0s"]))),
    ])
}

fn processor() -> Json {
    let kinds: Vec<(&'static str, Json)> = vec![
        (
            "significantChange",
            object(vec![
                opt("window", pick(json!([0, 1, 10]))),
                req("threshold", pick(json!([-1, -0.5, 0, 1.5]))),
            ]),
        ),
        (
            "deadband",
            object(vec![
                opt("absolute", pick(json!([-1.0, 0, 0.5]))),
                opt("percent", pick(json!([-1, 0.0, 5]))),
                opt("maxSilence", pick(json!(["5m", "0s"]))),
            ]),
        ),
        (
            "range",
            object(vec![
                opt("min", pick(json!([-5, 0, 1.0]))),
                opt("max", pick(json!([0, 1.0, 100]))),
            ]),
        ),
        (
            "threshold",
            object(vec![
                opt("above", pick(json!([100, 0.5]))),
                opt("below", pick(json!([-10]))),
            ]),
        ),
        (
            "aggregate",
            object(vec![
                req("window", pick(json!(["1m", "0s", "0ms"]))),
                opt("functions", list(pick(json!(["mean", "max"])), 0..3)),
            ]),
        ),
    ];
    let any = object(
        kinds
            .iter()
            .map(|(name, strategy)| opt(name, strategy.clone()))
            .collect(),
    );
    let mut choices: Vec<(u32, Json)> = kinds
        .into_iter()
        .map(|(name, strategy)| (3, object(vec![req(name, strategy)])))
        .collect();
    choices.push((2, any));
    weighted(choices)
}

fn action() -> Json {
    object(vec![
        req(
            "trigger",
            pick(json!(["anomaly", "threshold", "classification"])),
        ),
        req(
            "mqtt",
            object(vec![
                req("topic", pick(json!(["alerts/{device}"]))),
                opt("qos", pick(json!([0, 1, 2]))),
            ]),
        ),
        opt("clearBelow", pick(json!([-1, 0.5, 0.9]))),
        opt("hysteresis", pick(json!([-1.0, 0, 5]))),
        opt("clearAfter", pick(json!([0, 1, 3]))),
        opt(
            "resolved",
            pick(json!([{}, {"topic": "alerts/{device}/ok"}])),
        ),
    ])
}

fn buffer() -> Json {
    let key = object(vec![
        req("id", pick(json!(["k1", "k2"]))),
        req("keyFrom", value_from()),
    ]);
    object(vec![
        opt(
            "maxBytes",
            pick(json!(["0", "1Ki", "64Ki", "65535", "65537", "256Mi"])),
        ),
        opt(
            "maxDeadLetterBytes",
            pick(json!(["0", "1", "32768", "32769", "128Mi"])),
        ),
        opt("maxAge", pick(json!(["168h", "0s"]))),
        opt("encryption", object(vec![req("keys", list(key, 1..3))])),
    ])
}

fn sink() -> Json {
    let http = object(vec![
        req(
            "url",
            pick(json!([
                "https://ingest.example/b",
                "http://ingest.example/b"
            ])),
        ),
        opt("batchSize", pick(json!([0, 1, 500]))),
        opt("flushInterval", pick(json!(["5s", "0s"]))),
        opt("timeout", pick(json!(["10s", "0s"]))),
        opt("headers", list(header(), 0..2)),
        opt("tls", tls()),
        opt(
            "retry",
            object(vec![
                opt("initialBackoff", pick(json!(["500ms", "0s"]))),
                opt("maxBackoff", pick(json!(["60s", "0ms"]))),
            ]),
        ),
        opt(
            "deadLetterOn",
            list(pick(json!([400, 422, 499, 401, 429, 399, 500])), 0..3),
        ),
    ]);
    let mqtt = object(vec![
        req("url", pick(json!(["mqtt://up:1883", "mqtts://up:8883"]))),
        req("topic", pick(json!(["edge/{pipeline}"]))),
        opt("qos", pick(json!([0, 1, 2]))),
        opt("batchSize", pick(json!([0, 100]))),
        opt("flushInterval", pick(json!(["5s", "0s"]))),
        opt("username", pick(json!(["u"]))),
        opt("passwordFrom", value_from()),
        opt("tls", tls()),
    ]);
    let window = object(vec![
        req("from", pick(json!(["22:00", "06:00"]))),
        req("to", pick(json!(["22:00", "06:00"]))),
        req("bytesPerSecond", pick(json!(["0", "4Ki"]))),
    ]);
    let rate_limit = object(vec![
        req("bytesPerSecond", pick(json!(["0", "16Ki"]))),
        opt("burst", pick(json!(["0", "1Mi"]))),
        opt("schedule", list(window, 0..3)),
    ]);
    object(vec![
        opt("http", http),
        opt("mqtt", mqtt),
        opt("rateLimit", rate_limit),
    ])
}

fn max_unavailable() -> Json {
    pick(json!([
        0, 1, 3, -1, "0%", "1%", "50%", "100%", "101%", "01%", "+5%", "5", "abc"
    ]))
}

fn spec() -> Json {
    let agent = object(vec![
        opt("metricsPort", pick(json!([-1, 0, 1, 9464, 65535, 65536]))),
        opt("maxUnavailable", max_unavailable()),
    ]);
    let canary = object(vec![
        opt(
            "nodeSelector",
            pick(json!([{}, {"edgepipe.dev/canary": "true"}])),
        ),
        opt("count", pick(json!([1, 2]))),
    ]);
    let rollout = object(vec![
        opt("progressDeadline", pick(json!(["10m", "0s"]))),
        opt("maxUnavailable", max_unavailable()),
        opt("canary", canary),
    ]);
    object(vec![
        req("source", source()),
        opt("inference", inference()),
        opt("processors", list(processor(), 0..4)),
        opt("actions", list(action(), 0..3)),
        opt("buffer", buffer()),
        req("sink", sink()),
        opt("agent", agent),
        opt("rollout", rollout),
    ])
}

// ---- The comparison ----

/// What one spec showed: the shared rows that fired, and the disagreements.
#[derive(Default)]
struct Outcome {
    fired: BTreeSet<usize>,
    problems: Vec<String>,
}

/// Runs both layers on `spec` and compares them rule by rule.
fn compare(
    spec: &Value,
    compiled: &CompiledSchema,
    rules: &BTreeMap<(String, String), String>,
    rows: &[Row],
) -> Outcome {
    let mut outcome = Outcome::default();
    let typed: EdgePipelineSpec = match serde_json::from_value(spec.clone()) {
        Ok(typed) => typed,
        Err(e) => {
            outcome.problems.push(format!(
                "the generator made a spec that does not parse: {e}"
            ));
            return outcome;
        }
    };
    let checks: Vec<FieldError> = validate(&typed).err().unwrap_or_default();
    let object = json!({
        "apiVersion": "edgepipe.dev/v1alpha1",
        "kind": "EdgePipeline",
        "spec": spec,
    });
    let cel: Vec<ValidationError> = kube_cel::Validator::new()
        .validate_compiled(compiled, &object, None)
        .err()
        .map(|e| e.into_vec())
        .unwrap_or_default();

    // Each CEL error as (concrete path, the rule's own message).
    let mut cel_errors = vec![];
    for e in &cel {
        if e.kind != ErrorKind::ValidationFailure {
            outcome.problems.push(format!(
                "a CEL rule did not evaluate, so the user gets no message of ours: {}: {} (rule: {})",
                e.field_path, e.message, e.rule
            ));
        }
        let key = (general(&e.field_path), e.rule.clone());
        match rules.get(&key) {
            Some(message) => cel_errors.push((e.field_path.clone(), message.clone())),
            None => outcome
                .problems
                .push(format!("a CEL error from an unknown rule: {e:?}")),
        }
    }

    let matches = |e: &FieldError, &(path, fragment): &(&str, &str)| {
        general(&e.path) == path && e.message.contains(fragment)
    };
    for (i, row) in rows.iter().enumerate() {
        // Compare where the two layers report, down to the object both paths lie in:
        // `spec.actions[1]` for a rule at `spec.actions[].resolved` whose check reports at
        // `spec.actions[].clearAfter`.
        let depth = row
            .checks
            .iter()
            .map(|(path, _)| common_depth(row.at, path))
            .min()
            .unwrap_or(0);
        let object = |path: &str| {
            let segs = segments(path);
            join(&segs[..depth.min(segs.len())])
        };
        let by_cel: BTreeSet<String> = cel_errors
            .iter()
            .filter(|(path, message)| general(path) == row.at && message == row.message)
            .map(|(path, _)| object(path))
            .collect();
        let by_validate: BTreeSet<String> = checks
            .iter()
            .filter(|e| row.checks.iter().any(|c| matches(e, c)))
            .map(|e| object(&e.path))
            .collect();
        if !by_cel.is_empty() {
            outcome.fired.insert(i);
        }
        if by_cel != by_validate {
            outcome.problems.push(format!(
                "rule {:?} {:?}: CEL rejects at {by_cel:?}, validate() at {by_validate:?}",
                row.at, row.message
            ));
        }
    }

    // Every CEL error is a classified rule (the schema test checks it statically).
    for (path, message) in &cel_errors {
        let known = rows
            .iter()
            .any(|row| general(path) == row.at && row.message == message)
            || CEL_ONLY
                .iter()
                .any(|(p, m, _)| general(path) == *p && m == message);
        if !known {
            outcome
                .problems
                .push(format!("unclassified CEL rule: {path}: {message}"));
        }
    }
    // Every validate() error is a shared check or listed as validate-only.
    for e in &checks {
        let shared = rows
            .iter()
            .any(|row| row.checks.iter().any(|c| matches(e, c)));
        let only = validate_only(e);
        if !shared && !only {
            outcome.problems.push(format!(
                "a validate() error in neither SHARED nor VALIDATE_ONLY: {e}"
            ));
        }
    }
    outcome
}

/// How many specs the property test generates.
const CASES: u32 = 768;

#[test]
fn cel_rules_and_validate_agree_on_generated_specs() {
    let compiled = compiled_schema();
    let rules = cel_rules(&compiled);
    let rows = shared_rows();
    let fired: RefCell<BTreeSet<usize>> = RefCell::default();
    let mut runner = TestRunner::new(Config {
        cases: CASES,
        failure_persistence: None,
        ..Config::default()
    });
    let result = runner.run(&spec(), |spec| {
        let outcome = compare(&spec, &compiled, &rules, &rows);
        fired.borrow_mut().extend(outcome.fired);
        prop_assert!(
            outcome.problems.is_empty(),
            "{:#?}\nspec: {}",
            outcome.problems,
            serde_json::to_string_pretty(&spec).unwrap_or_default()
        );
        Ok(())
    });
    if let Err(e) = result {
        panic!("{e}");
    }
    let never: Vec<_> = rows
        .iter()
        .enumerate()
        .filter(|(i, _)| !fired.borrow().contains(i))
        .map(|(_, row)| format!("{}: {}", row.at, row.message))
        .collect();
    assert!(
        never.is_empty(),
        "the generator never broke these rules, so their agreement is untested: {never:#?}"
    );
}

/// The generator's building blocks give what they say.
#[test]
fn path_helpers() {
    assert_eq!(
        segments("spec.processors[2].range"),
        ["spec", "processors", "[2]", "range"]
    );
    assert_eq!(general("spec.a[3].b[10]"), "spec.a[].b[]");
    assert_eq!(join(&["spec", "a", "[1]", "b"]), "spec.a[1].b");
    assert_eq!(
        common_depth("spec.actions[].resolved", "spec.actions[].clearAfter"),
        3
    );
}

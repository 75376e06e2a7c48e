//! The rule table: which CEL rule of the CRD is which `validate()` check, and the rules
//! of one layer only, each with the reason.

use super::general;
use crate::renamed;
use crate::validate::FieldError;

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
#[rustfmt::skip]
const SHARED: &[Shared] = &[
    // spec
    (("spec.processors", "aggregate must be the last processor"),
        &[("spec.processors[].aggregate", "must be the last processor")]),
    (("spec.actions", "an action's clearBelow must be <= inference.threshold"),
        &[("spec.actions[].clearBelow", "must be <= inference.threshold")]),
    (("spec.actions", "an anomaly or classification action needs spec.inference"),
        &[("spec.actions[].trigger", "needs spec.inference")]),
    (("spec.actions", "a threshold action needs a threshold processor"),
        &[("spec.actions[].trigger", "needs a threshold processor")]),
    (("spec.inference.task", "task: classification needs source.format.encoding: image"),
        &[("spec.inference.task", "classification needs spec.source.format.encoding: image")]),
    (("spec.inference.task", "image payloads need inference.task: classification"),
        &[("spec.inference.task", "image payloads need task: classification")]),
    // spec.source
    (("spec.source.mqtt", "set url, or embedded to run a broker inside the agent"),
        &[("spec.source.mqtt.url", "required (or set spec.source.mqtt.embedded)")]),
    (("spec.source.mqtt", "qos must be 0 or 1"),
        &[("spec.source.mqtt.qos", "must be 0 or 1")]),
    (("spec.source.mqtt", "at least one topic is required"),
        &[("spec.source.mqtt.topics", "at least one topic is required")]),
    (("spec.source.mqtt.keepAlive", "keepAlive must be > 0"),
        &[("spec.source.mqtt.keepAlive", "must be > 0")]),
    (("spec.source.maxPayloadSize", "maxPayloadSize must be > 0"),
        &[("spec.source.maxPayloadSize", "must be > 0")]),
    (("spec.source.maxPayloadSize", "maxPayloadSize must be at most 16Mi"),
        &[("spec.source.maxPayloadSize", "must be at most 16Mi")]),
    (("spec.source.mqtt.username", "username is required when passwordFrom is set"),
        &[("spec.source.mqtt.username", "required when passwordFrom is set")]),
    (("spec.source.mqtt.embedded.users", "embedded.users is required when embedded.listen is not a loopback address"),
        &[("spec.source.mqtt.embedded.users", "required when listen")]),
    (("spec.source.mqtt.tls", "tls is only used with an mqtts:// url"),
        &[("spec.source.mqtt.tls", "so it would not be used")]),
    // spec.inference
    (("spec.inference", "window must be > 0"),
        &[("spec.inference.window", "must be > 0")]),
    (("spec.inference", "topK must be > 0"),
        &[("spec.inference.topK", "must be > 0")]),
    (("spec.inference.timeout", "timeout must be > 0"),
        &[("spec.inference.timeout", "must be > 0")]),
    (("spec.inference.golden.tolerance", "tolerance must be > 0"),
        &[("spec.inference.golden.tolerance", "must be > 0")]),
    (("spec.inference.golden.vectors[]", "input and output must not be empty"),
        &[("spec.inference.golden.vectors[]", "input and output must not be empty")]),
    (("spec.inference.input", "input is only for task: classification (readings use normalize)"),
        &[("spec.inference.input", "only for task: classification")]),
    (("spec.inference.labelsFile", "labelsFile is a file next to the model, not a URL"),
        &[("spec.inference.labelsFile", "is a URL")]),
    (("spec.inference.golden", "set file or vectors"),
        &[("spec.inference.golden", "set file or vectors")]),
    (("spec.inference.golden.file", "file is a file next to the model, not a URL"),
        &[("spec.inference.golden.file", "is a URL")]),
    (("spec.inference.input.mean", "mean takes one value for every channel or three (R, G, B)"),
        &[("spec.inference.input.mean", "takes one value for every channel or three")]),
    (("spec.inference.input.std", "std takes one value for every channel or three (R, G, B)"),
        &[("spec.inference.input.std", "takes one value for every channel or three")]),
    (("spec.inference.input.std", "std values must be > 0"),
        &[("spec.inference.input.std", "is not > 0")]),
    (("spec.inference.model", "exactly one of path, configMap or url must be set"),
        &[("spec.inference.model", "exactly one of path, configMap or url must be set")]),
    (("spec.inference.model", "url requires sha256"),
        &[("spec.inference.model.sha256", "required with url")]),
    (("spec.inference.model", "sha256 is only used with url"),
        &[("spec.inference.model.sha256", "only used with url")]),
    (("spec.inference.model.headers", "headers are only used with url"),
        &[("spec.inference.model.headers", "only used with url")]),
    (("spec.inference.normalize", "set either mean and std, or min and max"),
        &[("spec.inference.normalize", "set either mean and std, or min and max")]),
    (("spec.inference.normalize", "std must be > 0"),
        &[("spec.inference.normalize.std", "must be > 0")]),
    (("spec.inference.normalize", "max must be > min"),
        &[("spec.inference.normalize.max", "must be > min")]),
    // spec.processors
    (("spec.processors[]", "exactly one of significantChange, deadband, range, threshold or aggregate must be set"),
        &[("spec.processors[]", "exactly one of significantChange, deadband, range, threshold or aggregate must be set")]),
    (("spec.processors[].significantChange", "window must be > 0"),
        &[("spec.processors[].significantChange.window", "must be > 0")]),
    (("spec.processors[].significantChange", "threshold must be >= 0"),
        &[("spec.processors[].significantChange.threshold", "must be >= 0")]),
    (("spec.processors[].deadband", "exactly one of absolute or percent must be set"),
        &[("spec.processors[].deadband", "exactly one of absolute or percent must be set")]),
    (("spec.processors[].deadband", "absolute must be > 0"),
        &[("spec.processors[].deadband.absolute", "must be > 0")]),
    (("spec.processors[].deadband", "percent must be > 0"),
        &[("spec.processors[].deadband.percent", "must be > 0")]),
    (("spec.processors[].deadband.maxSilence", "maxSilence must be > 0"),
        &[("spec.processors[].deadband.maxSilence", "must be > 0")]),
    (("spec.processors[].range", "set min, max or both"),
        &[("spec.processors[].range", "set min, max or both")]),
    (("spec.processors[].range", "min must be <= max"),
        &[("spec.processors[].range.max", "must be >= min")]),
    (("spec.processors[].threshold", "set above, below or both"),
        &[("spec.processors[].threshold", "set above, below or both")]),
    (("spec.processors[].aggregate", "window must be > 0"),
        &[("spec.processors[].aggregate.window", "must be > 0")]),
    (("spec.processors[].aggregate", "at least one function is required"),
        &[("spec.processors[].aggregate.functions", "at least one function is required")]),
    // spec.actions
    (("spec.actions[].clearBelow", "clearBelow is only used with trigger: anomaly"),
        &[("spec.actions[].clearBelow", "is only used with trigger: anomaly")]),
    (("spec.actions[].hysteresis", "hysteresis is only used with trigger: threshold"),
        &[("spec.actions[].hysteresis", "is only used with trigger: threshold")]),
    (("spec.actions[].hysteresis", "hysteresis must be >= 0"),
        &[("spec.actions[].hysteresis", "must be >= 0")]),
    (("spec.actions[].clearAfter", "clearAfter must be >= 1"),
        &[("spec.actions[].clearAfter", "must be >= 1")]),
    (("spec.actions[].resolved", "a classification is a single event with nothing to clear: clearAfter and resolved are not used"),
        &[
            ("spec.actions[].clearAfter", "a classification is a single event with nothing to clear"),
            ("spec.actions[].resolved", "a classification is a single event with nothing to clear"),
        ]),
    (("spec.actions[].mqtt", "qos must be 0 or 1"),
        &[("spec.actions[].mqtt.qos", "must be 0 or 1")]),
    // spec.buffer
    (("spec.buffer", "maxBytes must be at least 64Ki"),
        &[("spec.buffer.maxBytes", "must be at least 64Ki")]),
    (("spec.buffer", "maxAge must be > 0"),
        &[("spec.buffer.maxAge", "must be > 0")]),
    (("spec.buffer.maxDeadLetterBytes", "maxDeadLetterBytes must be > 0"),
        &[("spec.buffer.maxDeadLetterBytes", "must be > 0")]),
    (("spec.buffer.maxDeadLetterBytes", "maxDeadLetterBytes must be at most half of maxBytes"),
        &[("spec.buffer.maxDeadLetterBytes", "must be at most half")]),
    (("spec.buffer.encryption.keys", "key ids must be unique"),
        &[("spec.buffer.encryption.keys", "key ids must be unique")]),
    // spec.sink
    (("spec.sink", "exactly one of http or mqtt must be set"),
        &[("spec.sink", "exactly one of http or mqtt must be set")]),
    (("spec.sink.http", "batchSize must be > 0"),
        &[("spec.sink.http.batchSize", "must be > 0")]),
    (("spec.sink.http", "flushInterval must be > 0"),
        &[("spec.sink.http.flushInterval", "must be > 0")]),
    (("spec.sink.http", "timeout must be > 0"),
        &[("spec.sink.http.timeout", "must be > 0")]),
    (("spec.sink.http.deadLetterOn", "deadLetterOn takes 4xx codes other than 401, 403, 407, 408 and 429"),
        &[("spec.sink.http.deadLetterOn[]", "is not a content rejection")]),
    (("spec.sink.http.retry.initialBackoff", "initialBackoff must be > 0"),
        &[("spec.sink.http.retry.initialBackoff", "must be > 0")]),
    (("spec.sink.http.retry.maxBackoff", "maxBackoff must be > 0"),
        &[("spec.sink.http.retry.maxBackoff", "must be > 0")]),
    (("spec.sink.http.tls", "tls is only used with an https:// url"),
        &[("spec.sink.http.tls", "so it would not be used")]),
    (("spec.sink.mqtt", "qos must be 0 or 1"),
        &[("spec.sink.mqtt.qos", "must be 0 or 1")]),
    (("spec.sink.mqtt", "batchSize must be > 0"),
        &[("spec.sink.mqtt.batchSize", "must be > 0")]),
    (("spec.sink.mqtt", "flushInterval must be > 0"),
        &[("spec.sink.mqtt.flushInterval", "must be > 0")]),
    (("spec.sink.mqtt.tls", "tls is only used with an mqtts:// url"),
        &[("spec.sink.mqtt.tls", "so it would not be used")]),
    (("spec.sink.rateLimit.bytesPerSecond", "bytesPerSecond must be > 0"),
        &[("spec.sink.rateLimit.bytesPerSecond", "must be > 0")]),
    (("spec.sink.rateLimit.burst", "burst must be > 0"),
        &[("spec.sink.rateLimit.burst", "must be > 0")]),
    (("spec.sink.rateLimit.schedule[].to", "to must differ from from (a window cannot be empty or the whole day)"),
        &[("spec.sink.rateLimit.schedule[].to", "must differ from from")]),
    // spec.agent, spec.rollout
    (("spec.agent", "metricsPort must be a port number"),
        &[("spec.agent.metricsPort", "must be a port number")]),
    (("spec.agent", "maxUnavailable must be at least 1, or a percentage from 1% to 100%"),
        &[
            ("spec.agent.maxUnavailable", "must be at least 1"),
            ("spec.agent.maxUnavailable", "is not a number or a percentage from 1% to 100%"),
        ]),
    (("spec.rollout", "maxUnavailable must be at least 1, or a percentage from 1% to 100%"),
        &[
            ("spec.rollout.maxUnavailable", "must be at least 1"),
            ("spec.rollout.maxUnavailable", "is not a number or a percentage from 1% to 100%"),
        ]),
    (("spec.rollout.canary", "set exactly one of nodeSelector and count"),
        &[("spec.rollout.canary", "set exactly one of nodeSelector and count")]),
    (("spec.rollout.progressDeadline", "progressDeadline must be > 0"),
        &[("spec.rollout.progressDeadline", "must be > 0")]),
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
pub(super) const CEL_ONLY: &[(&str, &str, &str)] = &[
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
pub(super) const VALIDATE_ONLY: &[(&str, &str, &str)] = &[
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
pub(super) fn validate_only(e: &FieldError) -> bool {
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
pub(super) struct Row {
    /// Where the CEL rule reports (`[]` for any index).
    pub(super) at: &'static str,
    /// The CEL rule's message.
    pub(super) message: &'static str,
    /// Where `validate()` reports the same problem, and a part of its message.
    pub(super) checks: Vec<(&'static str, &'static str)>,
}

/// The rows of the shared table.
pub(super) fn shared_rows() -> Vec<Row> {
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

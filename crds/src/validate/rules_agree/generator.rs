//! The generator: specs around each rule's boundary, as a user would write them (JSON,
//! absent fields, explicit empty lists), from a few chosen values per field so that every
//! rule is broken and kept in the same run.

use proptest::prelude::*;
use proptest::strategy::Union;
use serde_json::{Value, json};

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

pub(super) fn spec() -> Json {
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

//! The network-facing rules of [`super::validate`], on small specs.

use crate::{FieldError, parse_pipeline, validate};

fn problems(spec_yaml: &str) -> Vec<FieldError> {
    let file = parse_pipeline(spec_yaml).expect("the spec parses");
    validate(&file.spec).err().unwrap_or_default()
}

fn paths(spec_yaml: &str) -> Vec<String> {
    problems(spec_yaml).into_iter().map(|e| e.path).collect()
}

const SOURCE: &str = "source:\n  mqtt: {url: \"mqtt://127.0.0.1:1883\", topics: [a]}\n";
const SINK: &str = "sink:\n  http: {url: \"https://ingest.example/b\"}\n";

#[test]
fn a_tls_block_on_a_plaintext_url_is_an_error_naming_the_field() {
    let tls = "{ca: {file: /ca.pem}}";
    let source = format!(
        "source:\n  mqtt: {{url: \"mqtt://user:pw@h:1883\", topics: [a], tls: {tls}}}\n{SINK}"
    );
    let errors = problems(&source);
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert_eq!(errors[0].path, "spec.source.mqtt.tls");
    assert!(
        errors[0].message.contains("mqtts://"),
        "{}",
        errors[0].message
    );
    assert!(!errors[0].message.contains("pw"), "{}", errors[0].message);

    let embedded = format!("source:\n  mqtt: {{topics: [a], embedded: {{}}, tls: {tls}}}\n{SINK}");
    assert_eq!(paths(&embedded), ["spec.source.mqtt.tls"]);

    let http = format!("{SOURCE}sink:\n  http: {{url: \"http://ingest/b\", tls: {tls}}}\n");
    assert_eq!(paths(&http), ["spec.sink.http.tls"]);

    let mqtt =
        format!("{SOURCE}sink:\n  mqtt: {{url: \"mqtt://up:1883\", topic: t, tls: {tls}}}\n");
    assert_eq!(paths(&mqtt), ["spec.sink.mqtt.tls"]);

    for ok in [
        format!("source:\n  mqtt: {{url: \"mqtts://h\", topics: [a], tls: {tls}}}\n{SINK}"),
        format!("{SOURCE}sink:\n  http: {{url: \"https://ingest/b\", tls: {tls}}}\n"),
        format!("{SOURCE}sink:\n  mqtt: {{url: \"mqtts://up\", topic: t, tls: {tls}}}\n"),
    ] {
        assert_eq!(paths(&ok), Vec::<String>::new(), "{ok}");
    }
}

#[test]
fn golden_and_labels_files_are_files_next_to_the_model_never_urls() {
    let sha = "ab".repeat(32);
    let spec = |golden: &str, labels: &str| {
        format!(
            "{SOURCE}{SINK}inference:\n  model: {{url: \"https://m.example/a.tflite\", sha256: \"{sha}\"}}\n  \
             golden: {{file: \"{golden}\"}}\n  labelsFile: \"{labels}\"\n"
        )
    };
    assert_eq!(
        paths(&spec("a.golden.json", "labels.txt")),
        Vec::<String>::new()
    );
    for bad in [
        "https://evil.example/g.json",
        "//evil.example/g.json",
        "/\\\\evil.example/g.json", // YAML for /\evil.example
        "file:/etc/passwd",
    ] {
        assert_eq!(
            paths(&spec(bad, "labels.txt")),
            ["spec.inference.golden.file"],
            "{bad}"
        );
        assert_eq!(
            paths(&spec("g.json", bad)),
            ["spec.inference.labelsFile"],
            "{bad}"
        );
    }
}

#[test]
fn model_headers_need_a_url_and_valid_names() {
    let sha = "ab".repeat(32);
    let with_url = format!(
        "{SOURCE}{SINK}inference:\n  model:\n    url: \"https://m.example/a.tflite\"\n    sha256: \"{sha}\"\n    \
         headers: [{{name: Authorization, valueFrom: {{env: TOKEN}}}}, {{name: \"bad name\", valueFrom: {{}}}}]\n"
    );
    assert_eq!(
        paths(&with_url),
        [
            "spec.inference.model.headers[1].name",
            "spec.inference.model.headers[1].valueFrom"
        ]
    );
    let on_a_path = format!(
        "{SOURCE}{SINK}inference:\n  model:\n    path: /m.tflite\n    \
         headers: [{{name: Authorization, valueFrom: {{env: TOKEN}}}}]\n"
    );
    assert_eq!(paths(&on_a_path), ["spec.inference.model.headers"]);
}

#[test]
fn only_content_rejections_may_dead_letter() {
    let spec = |codes: &str| {
        format!(
            "{SOURCE}sink:\n  http: {{url: \"https://ingest.example/b\", deadLetterOn: {codes}}}\n"
        )
    };
    assert_eq!(paths(&spec("[400, 409, 413, 422]")), Vec::<String>::new());
    assert_eq!(
        paths(&spec("[400, 401, 403, 407, 408, 429, 500, 302]")),
        [1, 2, 3, 4, 5, 6, 7]
            .map(|i| format!("spec.sink.http.deadLetterOn[{i}]"))
            .to_vec()
    );
}

#[test]
fn episode_fields_belong_to_their_trigger_and_are_in_range() {
    let spec = |inference: &str, processors: &str, action: &str| {
        format!(
            "{SOURCE}{inference}{processors}actions:\n  - {action}\nsink:\n  http: {{url: \"https://ingest.example/b\"}}\n"
        )
    };
    let model = "inference:\n  model: {path: /m.tflite}\n  threshold: 0.8\n";
    let threshold = "processors:\n  - threshold: {above: 100}\n";
    let ok = [
        spec(
            model,
            "",
            "{trigger: anomaly, mqtt: {topic: a}, clearBelow: 0.5, clearAfter: 3, cooldown: 5m, resolved: {}}",
        ),
        spec(
            "",
            threshold,
            "{trigger: threshold, mqtt: {topic: a}, hysteresis: 5, cooldown: 0s, resolved: {topic: \"a/{device}/ok\"}}",
        ),
    ];
    for text in ok {
        assert_eq!(paths(&text), Vec::<String>::new(), "{text}");
    }
    let bad = [
        (
            spec(
                model,
                "",
                "{trigger: anomaly, mqtt: {topic: a}, clearBelow: 0.9}",
            ),
            "spec.actions[0].clearBelow",
        ),
        (
            spec(
                model,
                "",
                "{trigger: anomaly, mqtt: {topic: a}, hysteresis: 1}",
            ),
            "spec.actions[0].hysteresis",
        ),
        (
            spec(
                "",
                threshold,
                "{trigger: threshold, mqtt: {topic: a}, hysteresis: -1}",
            ),
            "spec.actions[0].hysteresis",
        ),
        (
            spec(
                "",
                threshold,
                "{trigger: threshold, mqtt: {topic: a}, clearBelow: 1}",
            ),
            "spec.actions[0].clearBelow",
        ),
        (
            spec(
                "",
                threshold,
                "{trigger: threshold, mqtt: {topic: a}, clearAfter: 0}",
            ),
            "spec.actions[0].clearAfter",
        ),
        (
            spec(
                "",
                threshold,
                "{trigger: threshold, mqtt: {topic: a}, cooldown: soon}",
            ),
            "spec.actions[0].cooldown",
        ),
        (
            spec(
                "",
                threshold,
                "{trigger: threshold, mqtt: {topic: a}, resolved: {topic: \"a/#\"}}",
            ),
            "spec.actions[0].resolved.topic",
        ),
        (
            spec(
                model,
                "",
                "{trigger: classification, mqtt: {topic: a}, resolved: {}}",
            ),
            "spec.actions[0].resolved",
        ),
    ];
    for (text, path) in bad {
        assert_eq!(paths(&text), [path], "{text}");
    }
}

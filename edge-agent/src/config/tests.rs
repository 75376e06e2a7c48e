//! Tests of loading and resolving a pipeline: defaults, `${VAR}` expansion, secrets,
//! and every problem reported at once.

use std::collections::HashMap;
use std::io::Write;

use super::resolve::client_id;
use super::*;

const MINIMAL: &str = r#"
source:
  mqtt: {url: "mqtt://${HOST_IP}:1884", topics: ["sensors/+/temperature"]}
sink:
  http: {url: "https://ingest.example.com/batch", compression: gzip}
"#;

/// Environment variables of a test case.
type Vars<'a> = &'a [(&'a str, &'a str)];

fn env(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
    let vars: HashMap<String, String> = vars
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    move |name| vars.get(name).cloned()
}

fn load(text: &str, vars: &[(&str, &str)]) -> Result<AgentConfig, ConfigError> {
    AgentConfig::from_text(text, "edge-1", &env(vars))
}

/// The field errors of an invalid pipeline, as `path: message` lines.
fn problems(text: &str, vars: &[(&str, &str)]) -> Vec<String> {
    match load(text, vars) {
        Err(ConfigError::Invalid(errors)) => errors.iter().map(ToString::to_string).collect(),
        other => panic!("expected field errors, got {other:?}"),
    }
}

/// A spec with `extra` (YAML lines indented for `spec`) appended to a valid HTTP one.
fn with(source_mqtt: &str, sink: &str, extra: &str) -> String {
    format!("source:\n  mqtt: {source_mqtt}\nsink:\n  {sink}\n{extra}")
}

const MQTT_OK: &str = r#"{url: "mqtt://broker:1883", topics: [a]}"#;
const HTTP_OK: &str = r#"http: {url: "http://cloud/batch"}"#;

#[test]
fn a_bare_spec_gets_defaults_and_expanded_urls() {
    let c = load(MINIMAL, &[("HOST_IP", "10.0.0.7")]).unwrap();
    assert_eq!(
        (c.pipeline.as_str(), c.namespace.as_str(), c.name.as_str()),
        ("default/standalone", "default", "standalone")
    );
    assert_eq!(c.node, "edge-1");
    let s = &c.source;
    assert_eq!(s.url, "mqtt://10.0.0.7:1884");
    assert_eq!(
        c.spec.source.mqtt.url.as_deref(),
        Some("mqtt://10.0.0.7:1884"),
        "the spec is expanded too"
    );
    assert_eq!(
        (s.host.as_str(), s.port, s.tls, s.qos),
        ("10.0.0.7", 1884, false, 1)
    );
    assert_eq!(s.client_id, "default-standalone-edge-1");
    assert_eq!(
        (s.keep_alive, s.max_payload_bytes, s.max_devices),
        (Duration::from_secs(30), 65536, 10_000)
    );
    assert_eq!(
        (s.username.as_ref(), s.password.as_ref(), s.embedded_listen),
        (None, None, None)
    );
    assert_eq!(
        c.buffer,
        BufferSettings {
            max_bytes: 256 * 1024 * 1024,
            max_dead_letter_bytes: 64 * 1024 * 1024,
            max_age: Duration::from_secs(168 * 3600),
            when_full: WhenFull::DropOldest,
            durability: Durability::Fsync,
            keys: Default::default(),
        }
    );
    let SinkSettings::Http(h) = &c.sink else {
        panic!("http sink")
    };
    assert_eq!(
        (h.url.as_str(), h.batch_size, h.compression),
        (
            "https://ingest.example.com/batch",
            500,
            edge_crds::Compression::Gzip
        )
    );
    assert_eq!(
        (h.flush_interval, h.timeout),
        (Duration::from_secs(5), Duration::from_secs(10))
    );
    assert_eq!(
        (h.initial_backoff, h.max_backoff),
        (Duration::from_millis(500), Duration::from_secs(60))
    );
}

#[test]
fn a_full_manifest_names_the_pipeline_and_the_mqtt_sink() {
    let text = r#"
apiVersion: edgepipe.dev/v1alpha1
kind: EdgePipeline
metadata: {name: turbines, namespace: windfarm}
spec:
  source:
    mqtt: {url: "mqtts://[fd00::1]", topics: ["t/#"], qos: 0, keepAlive: 1m}
  sink:
    mqtt: {url: "mqtts://${UPSTREAM}", topic: "windfarm/{pipeline}/{node}", username: edge, passwordFrom: {env: UP_PW}}
"#;
    let c = load(
        text,
        &[("UPSTREAM", "broker.example.com:9883"), ("UP_PW", "s3cret")],
    )
    .unwrap();
    assert_eq!(c.pipeline, "windfarm/turbines");
    assert_eq!(
        (c.source.host.as_str(), c.source.port, c.source.tls),
        ("fd00::1", 8883, true)
    );
    assert_eq!(
        (c.source.qos, c.source.keep_alive),
        (0, Duration::from_secs(60))
    );
    assert_eq!(c.source.client_id, "windfarm-turbines-edge-1");
    let SinkSettings::Mqtt(m) = &c.sink else {
        panic!("mqtt sink")
    };
    assert_eq!(
        (m.host.as_str(), m.port, m.tls),
        ("broker.example.com", 9883, true)
    );
    assert_eq!(m.topic, "windfarm/windfarm/turbines/edge-1");
    assert_eq!(m.client_id, "windfarm-turbines-edge-1-sink");
    assert_eq!(
        (m.username.as_deref(), m.password.as_deref()),
        (Some("edge"), Some("s3cret"))
    );
    assert_eq!((m.qos, m.batch_size), (1, 100));
}

#[test]
fn the_embedded_broker_is_the_default_source() {
    let text = with(
        r#"{embedded: {listen: "0.0.0.0:11883", users: [{username: "press-1", passwordFrom: {env: PW}, publish: ["sensors/{username}/#"], subscribe: ["alerts/{username}"]}]}, topics: [a]}"#,
        HTTP_OK,
        "",
    );
    let c = load(&text, &[("PW", "pw1")]).unwrap();
    assert_eq!(c.source.url, "mqtt://127.0.0.1:11883");
    assert_eq!(
        (c.source.host.as_str(), c.source.port),
        ("127.0.0.1", 11883)
    );
    assert_eq!(c.source.embedded_listen, "0.0.0.0:11883".parse().ok());
    assert_eq!(
        c.source.embedded_users,
        [crate::config::EmbeddedUser {
            username: "press-1".into(),
            password: "pw1".into(),
            publish: vec!["sensors/press-1/#".into()],
            subscribe: vec!["alerts/press-1".into()],
        }]
    );
    // The default listens on loopback; anything wider needs users.
    let c = load(&with("{embedded: {}, topics: [a]}", HTTP_OK, ""), &[]).unwrap();
    assert_eq!(c.source.embedded_listen, "127.0.0.1:1883".parse().ok());
    let open = with(
        r#"{embedded: {listen: "0.0.0.0:1883"}, topics: [a]}"#,
        HTTP_OK,
        "",
    );
    let err = load(&open, &[]).unwrap_err().to_string();
    assert!(
        err.contains("spec.source.mqtt.embedded.users: required when listen (0.0.0.0:1883) is not a loopback address"),
        "{err}"
    );
}

#[test]
fn secrets_come_from_env_and_files() {
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, content: &[u8]| {
        let path = dir.path().join(name);
        std::fs::File::create(&path)
            .unwrap()
            .write_all(content)
            .unwrap();
        path.display().to_string()
    };
    let ca = write(
        "ca.pem",
        b"-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n",
    );
    let token = write("token", b"Bearer abc\r\n\n");
    let password = write("password", b"pw\n");
    let text = format!(
        r#"
source:
  mqtt:
    url: "mqtts://broker"
    topics: [a]
    username: agent
    passwordFrom: {{file: "{password}"}}
    tls: {{ca: {{file: "{ca}"}}, cert: {{env: CERT}}, key: {{env: KEY}}}}
sink:
  http:
    url: "https://cloud/batch"
    headers:
      - {{name: Authorization, valueFrom: {{file: "{token}"}}}}
      - {{name: X-Site, valueFrom: {{env: SITE}}}}
"#
    );
    let c = load(
        &text,
        &[
            ("CERT", "cert-pem"),
            ("KEY", "key-pem"),
            ("SITE", "plant 7"),
        ],
    )
    .unwrap();
    assert_eq!(
        c.source.password.as_deref(),
        Some("pw"),
        "trailing newline removed"
    );
    assert_eq!(
        c.source.tls_material,
        TlsMaterial {
            ca: Some(b"-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----".to_vec()),
            cert: Some(b"cert-pem".to_vec()),
            key: Some(b"key-pem".to_vec()),
        }
    );
    let SinkSettings::Http(h) = &c.sink else {
        panic!("http sink")
    };
    assert_eq!(
        h.headers,
        [
            ("Authorization".to_string(), "Bearer abc".to_string()),
            ("X-Site".to_string(), "plant 7".to_string())
        ]
    );
}

#[test]
fn each_resolution_problem_names_its_field() {
    let missing = "/nonexistent/edgepipe/secret";
    let cases: Vec<(String, Vars, String)> = vec![
        (
            with(r#"{url: "mqtt://b", topics: [a], username: u, passwordFrom: {env: MQTT_PASSWORD}}"#, HTTP_OK, ""),
            &[],
            "spec.source.mqtt.passwordFrom.env: environment variable MQTT_PASSWORD is not set".into(),
        ),
        (
            with(&format!(r#"{{url: "mqtt://b", topics: [a], username: u, passwordFrom: {{file: "{missing}"}}}}"#), HTTP_OK, ""),
            &[],
            format!("spec.source.mqtt.passwordFrom.file: cannot read {missing}: "),
        ),
        (
            with(r#"{url: "mqtt://b", topics: [a], username: u, passwordFrom: {secretKeyRef: {name: s, key: k}}}"#, HTTP_OK, ""),
            &[],
            "spec.source.mqtt.passwordFrom.secretKeyRef: secretKeyRef is resolved by the operator; standalone use env or file".into(),
        ),
        (
            with(r#"{url: "mqtt://${HOST_IP}:1883", topics: [a]}"#, HTTP_OK, ""),
            &[],
            "spec.source.mqtt.url: environment variable HOST_IP is not set".into(),
        ),
        (
            with(MQTT_OK, r#"http: {url: "${INGEST_URL}"}"#, ""),
            &[],
            "spec.sink.http.url: environment variable INGEST_URL is not set".into(),
        ),
        (
            with(MQTT_OK, r#"mqtt: {url: "mqtt://${UP", topic: t}"#, ""),
            &[],
            "spec.sink.mqtt.url: unterminated ${".into(),
        ),
        (
            with(r#"{url: "mqtt://${1X}", topics: [a]}"#, HTTP_OK, ""),
            &[],
            "spec.source.mqtt.url: ${1X} is not an environment variable name".into(),
        ),
        (
            with(MQTT_OK, HTTP_OK, "inference:\n  model: {url: \"https://${MODELS}/a.tflite\", sha256: \"0000000000000000000000000000000000000000000000000000000000000000\"}"),
            &[],
            "spec.inference.model.url: environment variable MODELS is not set".into(),
        ),
        (
            with(r#"{url: "mqtt://user:pw@b", topics: [a]}"#, HTTP_OK, ""),
            &[],
            "spec.source.mqtt.url: credentials are never inline".into(),
        ),
        (
            with(r#"{url: "mqtt://b:99999", topics: [a]}"#, HTTP_OK, ""),
            &[],
            "spec.source.mqtt.url: \"mqtt://b:99999\" has an invalid port".into(),
        ),
        (
            with(MQTT_OK, r#"mqtt: {url: "mqtt://b/x", topic: t}"#, ""),
            &[],
            "spec.sink.mqtt.url: \"mqtt://b/x\" must be mqtt[s]://host[:port] without a path".into(),
        ),
        (
            with(r#"{url: "mqtt://b", topics: [a], keepAlive: 500ms}"#, HTTP_OK, ""),
            &[],
            "spec.source.mqtt.keepAlive: must be between 1s and 65535s".into(),
        ),
        (
            with(MQTT_OK, r#"http: {url: "http://c", headers: [{name: X, valueFrom: {env: BAD}}]}"#, ""),
            &[("BAD", "a\nb")],
            "spec.sink.http.headers[0].valueFrom: the value is not a valid HTTP header value".into(),
        ),
        (
            with(MQTT_OK, r#"http: {url: "http://c", retry: {initialBackoff: 10s, maxBackoff: 1s}}"#, ""),
            &[],
            "spec.sink.http.retry.maxBackoff: must be >= initialBackoff".into(),
        ),
        (
            with(MQTT_OK, HTTP_OK, "processors:\n  - aggregate: {window: 1m}\n  - range: {min: 0}"),
            &[],
            "spec.processors[0].aggregate: must be the last processor".into(),
        ),
    ];
    for (text, vars, expected) in cases {
        let found = problems(&text, vars);
        assert_eq!(found.len(), 1, "{text}\n{found:#?}");
        assert!(
            found[0].starts_with(&expected),
            "{found:?} should start with {expected:?}"
        );
    }
}

#[test]
fn every_problem_is_reported_at_once() {
    let text = r#"
source:
  mqtt:
    url: "mqtt://${HOST_IP}:1883"
    topics: ["a/#/b"]
    qos: 2
    username: agent
    passwordFrom: {env: MQTT_PASSWORD}
processors:
  - aggregate: {window: 1m}
  - deadband: {absolute: 1}
sink:
  http:
    url: "https://cloud/batch"
    headers:
      - {name: Authorization, valueFrom: {secretKeyRef: {name: token, key: t}}}
"#;
    let err = load(text, &[]).unwrap_err();
    let shown = err.to_string();
    let ConfigError::Invalid(errors) = err else {
        panic!("{shown}")
    };
    let mut paths: Vec<&str> = errors.iter().map(|e| e.path.as_str()).collect();
    paths.sort_unstable();
    assert_eq!(
        paths,
        [
            "spec.processors[0].aggregate",
            "spec.sink.http.headers[0].valueFrom.secretKeyRef",
            "spec.source.mqtt.passwordFrom.env",
            "spec.source.mqtt.qos",
            "spec.source.mqtt.topics[0]",
            "spec.source.mqtt.url",
        ]
    );
    assert_eq!(shown.lines().count(), 6, "one problem per line:\n{shown}");
}

#[test]
fn a_failed_expansion_is_reported_once() {
    let text = with(r#"{url: "${BROKER}", topics: [a]}"#, HTTP_OK, "");
    assert_eq!(
        problems(&text, &[]),
        ["spec.source.mqtt.url: environment variable BROKER is not set"]
    );
    let c = load(&text, &[("BROKER", "mqtt://b:2883")]).unwrap();
    assert_eq!((c.source.host.as_str(), c.source.port), ("b", 2883));
    assert_eq!(
        problems(&text, &[("BROKER", "tcp://b")]),
        ["spec.source.mqtt.url: \"tcp://b\" must start with mqtt:// or mqtts://"],
        "the expanded URL is validated"
    );
}

#[test]
fn an_empty_node_name_is_a_problem() {
    let err = AgentConfig::from_text(&with(MQTT_OK, HTTP_OK, ""), "", &env(&[])).unwrap_err();
    assert!(err.to_string().starts_with("node: "), "{err}");
}

#[test]
fn client_ids_are_mqtt_safe_bounded_and_stable() {
    assert_eq!(client_id("factory-line1-edge-1"), "factory-line1-edge-1");
    assert_eq!(client_id("ns-p-node.example.com"), "ns-p-node.example.com");
    assert_eq!(client_id("ns-p-nöde/1 #+"), "ns-p-n-de-1---");
    let long_a = format!("ns-p-{}a", "x".repeat(200));
    let long_b = format!("ns-p-{}b", "x".repeat(200));
    let (a, b) = (client_id(&long_a), client_id(&long_b));
    assert_eq!((a.len(), b.len()), (128, 128));
    assert_ne!(a, b, "a hash of the whole keeps long ids apart");
    assert_eq!(a, client_id(&long_a), "stable across restarts");
    let text = with(MQTT_OK, HTTP_OK, "");
    let c = AgentConfig::from_text(&text, "Node_7 (rack 2)", &env(&[])).unwrap();
    assert_eq!(c.source.client_id, "default-standalone-Node_7--rack-2-");
}

#[test]
fn load_reads_a_file_and_names_unreadable_ones() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pipeline.yaml");
    std::fs::write(&path, with(MQTT_OK, HTTP_OK, "")).unwrap();
    let c = AgentConfig::load(&path, "n1").unwrap();
    assert_eq!((c.source.host.as_str(), c.node.as_str()), ("broker", "n1"));

    let missing = dir.path().join("missing.yaml");
    let err = AgentConfig::load(&missing, "n1").unwrap_err();
    assert!(matches!(err, ConfigError::Read { .. }), "{err:?}");
    assert!(err.to_string().contains("missing.yaml"), "{err}");

    let err = load("source: [", &[]).unwrap_err();
    assert!(matches!(err, ConfigError::Manifest(_)), "{err:?}");
}

#[test]
fn the_uid_of_a_manifest_names_the_queue_owner_and_must_be_a_plain_token() {
    let manifest = |uid: &str| {
        let spec: String = MINIMAL.lines().map(|l| format!("  {l}\n")).collect();
        format!(
            "apiVersion: edgepipe.dev/v1alpha1\nkind: EdgePipeline\n\
             metadata: {{name: line1, namespace: factory, uid: \"{uid}\"}}\nspec:\n{spec}"
        )
    };
    let vars = [("HOST_IP", "10.0.0.1")];
    let c = load(&manifest("3f9c2b1e-5d4a-4c3b-9a8f-0123456789ab"), &vars).unwrap();
    assert_eq!(
        c.uid.as_deref(),
        Some("3f9c2b1e-5d4a-4c3b-9a8f-0123456789ab")
    );
    assert_eq!(load(MINIMAL, &vars).unwrap().uid, None);
    for bad in ["../../etc", "a/b", "", &"x".repeat(65)] {
        let got = problems(&manifest(bad), &vars);
        assert!(
            got.iter().any(|p| p.starts_with("metadata.uid: ")),
            "{bad:?}: {got:?}"
        );
    }
}

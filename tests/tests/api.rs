//! The EdgePipeline API end to end: every shipped example passes both validation layers,
//! and every deliberately broken manifest is rejected by both, naming the right field.

use std::fs;
use std::path::PathBuf;

use edge_tests::api::{Problem, rust_layer, schema_layer};
use edge_tests::workspace_root;

fn yaml_files(dir: &str) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = fs::read_dir(workspace_root().join(dir))
        .unwrap_or_else(|e| panic!("{dir}: {e}"))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    files.sort();
    files
}

#[test]
fn every_example_passes_both_layers() {
    let examples = yaml_files("deploy/examples");
    assert!(examples.len() >= 3, "expected at least 3 examples");
    for path in examples {
        let text = fs::read_to_string(&path).unwrap();
        let file = edge_crds::parse_pipeline(&text)
            .unwrap_or_else(|e| panic!("{}: does not deserialize: {e}", path.display()));
        assert!(
            file.meta.name.is_some(),
            "{}: examples are full manifests",
            path.display()
        );
        let rust = rust_layer(&text);
        assert!(rust.is_empty(), "{}: validate(): {rust:?}", path.display());
        let schema = schema_layer(&text);
        assert!(
            schema.is_empty(),
            "{}: CRD schema/CEL: {schema:#?}",
            path.display()
        );
    }
}

/// `# expect: <field path>` in a broken manifest's header.
fn expected_path(text: &str, path: &std::path::Path) -> String {
    text.lines()
        .find_map(|l| l.strip_prefix("# expect: "))
        .unwrap_or_else(|| panic!("{}: no '# expect:' line", path.display()))
        .trim()
        .to_string()
}

/// A problem names the field when its path is the field itself or the object that holds
/// it (CEL rules sit on the object whose fields they relate), but never just `spec`.
fn names(problem: &Problem, expected: &str) -> bool {
    let p = problem.path.as_str();
    let field_or_parent = expected == p
        || expected.starts_with(&format!("{p}."))
        || expected.starts_with(&format!("{p}["));
    let leaf = expected.rsplit(['.', '[']).next().unwrap_or(expected);
    field_or_parent
        && (p != "spec" || expected == "spec")
        && (p == expected
            || problem.message.contains(leaf.trim_end_matches(']'))
            || p.len() > "spec".len())
}

#[test]
fn every_broken_manifest_is_rejected_by_both_layers_naming_the_field() {
    let broken = yaml_files("tests/manifests/broken");
    assert!(broken.len() >= 10, "expected at least 10 broken manifests");
    for path in broken {
        let text = fs::read_to_string(&path).unwrap();
        let expected = expected_path(&text, &path);

        let rust = rust_layer(&text);
        assert!(
            rust.iter().any(|p| p.path == expected),
            "{}: validate() should name {expected}, got {rust:#?}",
            path.display()
        );

        let schema = schema_layer(&text);
        assert!(
            schema.iter().any(|p| names(p, &expected)),
            "{}: the CRD should reject it naming {expected}, got {schema:#?}",
            path.display()
        );
    }
}

/// The old action key `on`, as written and as kubectl sends it (`"true"`): both layers
/// name `spec.actions[0].on` with the same message, which says what the key became.
#[test]
fn the_renamed_action_key_gets_the_same_message_from_both_layers() {
    for key in ["on", "\"true\""] {
        let text = format!(
            r#"
apiVersion: edgepipe.dev/v1alpha1
kind: EdgePipeline
metadata: {{name: old, namespace: test}}
spec:
  source:
    mqtt: {{url: "mqtt://127.0.0.1:1883", topics: ["sensors/#"]}}
  inference:
    model: {{path: /models/a.tflite}}
  actions:
    - {key}: anomaly
      mqtt: {{topic: "alerts/{{device}}"}}
  sink:
    http: {{url: "https://ingest.example.com/batch"}}
"#
        );
        let expected = Problem {
            path: "spec.actions[0].on".into(),
            message: edge_crds::renamed::ON_RENAMED.into(),
        };
        assert_eq!(rust_layer(&text), vec![expected.clone()], "{key}");
        let schema = schema_layer(&text);
        assert_eq!(schema.len(), 1, "{key}: {schema:#?}");
        assert_eq!(schema[0].path, expected.path, "{key}");
        assert!(
            schema[0].message.starts_with(&expected.message),
            "{key}: {}",
            schema[0].message
        );
        let renamed = text.replace(&format!("- {key}:"), "- trigger:");
        assert_eq!(rust_layer(&renamed), vec![], "{key}");
        assert_eq!(schema_layer(&renamed), vec![], "{key}");
    }
}

#[test]
fn all_problems_are_reported_at_once() {
    let text = r#"
apiVersion: edgepipe.dev/v1alpha1
kind: EdgePipeline
metadata: {name: many, namespace: test}
spec:
  source:
    mqtt: {url: "tcp://x", topics: ["a/#/b"], qos: 2}
  processors:
    - deadband: {absolute: -1}
    - significantChange: {window: 0, threshold: 1}
  buffer: {maxAge: "0s"}
  sink: {}
"#;
    let paths: Vec<String> = rust_layer(text).into_iter().map(|p| p.path).collect();
    for expected in [
        "spec.source.mqtt.url",
        "spec.source.mqtt.topics[0]",
        "spec.source.mqtt.qos",
        "spec.processors[0].deadband.absolute",
        "spec.processors[1].significantChange.window",
        "spec.buffer.maxAge",
        "spec.sink",
    ] {
        assert!(
            paths.iter().any(|p| p == expected),
            "missing {expected} in {paths:#?}"
        );
    }
}

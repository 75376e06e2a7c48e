//! Golden files: what the operator applies for each example in `deploy/examples/`, from
//! the library and from the `edge-operator render` binary, and every rendered object
//! checked by `kubernetes-validate --strict` against the oldest and newest Kubernetes
//! versions we support. Regenerate the golden files with `UPDATE_GOLDEN=1`.

use crate::common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{default_options, examples, golden_path, pipeline, with_spec, workspace};
use edge_operator::render::{pipeline_from_manifest, render};

/// Kubernetes versions every rendered object must be valid for (operator/README.md: supported versions).
const KUBERNETES_VERSIONS: [&str; 2] = ["1.33.0", "1.37.0"];

fn render_example(example: &Path) -> String {
    let text = std::fs::read_to_string(example).expect("example readable");
    let pipeline =
        pipeline_from_manifest(&text).unwrap_or_else(|e| panic!("{}: {e}", example.display()));
    render(&pipeline, &default_options())
        .unwrap_or_else(|e| panic!("{}: {e}", example.display()))
        .to_yaml()
        .expect("serializes")
}

#[test]
fn every_example_matches_its_golden_file() {
    let update = std::env::var_os("UPDATE_GOLDEN").is_some();
    let mut stale = vec![];
    for example in examples() {
        let rendered = render_example(&example);
        let golden = golden_path(&example);
        if update {
            std::fs::create_dir_all(golden.parent().expect("golden dir"))
                .expect("create golden dir");
            std::fs::write(&golden, &rendered).expect("write golden file");
            continue;
        }
        let expected = std::fs::read_to_string(&golden).unwrap_or_default();
        if expected != rendered {
            stale.push(golden.display().to_string());
        }
    }
    assert!(
        stale.is_empty(),
        "golden files differ from the rendered examples (UPDATE_GOLDEN=1 cargo test -p edge-operator --test operator render_golden to accept): {stale:#?}"
    );
}

#[test]
fn every_golden_file_has_an_example() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden");
    let examples: Vec<PathBuf> = examples().iter().map(|e| golden_path(e)).collect();
    for entry in std::fs::read_dir(&dir).expect("golden dir") {
        let path = entry.expect("entry").path();
        assert!(
            examples.contains(&path),
            "{} has no example",
            path.display()
        );
    }
}

#[test]
fn the_render_command_prints_the_golden_files() {
    for example in examples() {
        let out = Command::new(env!("CARGO_BIN_EXE_edge-operator"))
            .args(["render", "-f"])
            .arg(&example)
            .output()
            .expect("edge-operator runs");
        assert!(
            out.status.success(),
            "{}: {}",
            example.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        let expected = std::fs::read_to_string(golden_path(&example)).expect("golden file");
        assert!(
            String::from_utf8_lossy(&out.stdout) == expected,
            "`edge-operator render -f {}` differs from {}",
            example.display(),
            golden_path(&example).display()
        );
    }
}

#[test]
fn the_render_command_reports_an_invalid_spec_with_field_paths() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("bad.yaml");
    let text = "apiVersion: edgepipe.dev/v1alpha1\nkind: EdgePipeline\nmetadata: {name: bad, namespace: factory}\nspec:\n  \
                source: {mqtt: {url: 'mqtt://x:1883', topics: ['a/b']}}\n  \
                processors: [{range: {min: 10, max: 0}}]\n  sink: {http: {url: 'https://x/b'}}\n";
    std::fs::write(&file, text).expect("write manifest");
    let out = Command::new(env!("CARGO_BIN_EXE_edge-operator"))
        .args(["render", "-f"])
        .arg(&file)
        .output()
        .expect("edge-operator runs");
    assert!(!out.status.success());
    assert!(
        out.stdout.is_empty(),
        "nothing is printed for an invalid spec"
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("spec.processors[0].range"), "{stderr}");
}

#[test]
fn the_crd_command_prints_the_committed_crd() {
    let out = Command::new(env!("CARGO_BIN_EXE_edge-operator"))
        .arg("crd")
        .output()
        .expect("edge-operator runs");
    assert!(out.status.success());
    let committed =
        std::fs::read_to_string(workspace().join("crds/edgepipelines.yaml")).expect("CRD file");
    assert!(
        String::from_utf8_lossy(&out.stdout) == committed,
        "crds/edgepipelines.yaml is stale"
    );
}

fn kubernetes_validate() -> PathBuf {
    let bin = workspace().join(".venv/bin/kubernetes-validate");
    assert!(
        bin.exists(),
        "{} is missing: run tests/scripts/install-deps.sh",
        bin.display()
    );
    bin
}

fn validate(files: &[PathBuf], version: &str) -> std::process::Output {
    Command::new(kubernetes_validate())
        .args(["--strict", "--quiet", "-k", version])
        .args(files)
        .output()
        .expect("kubernetes-validate runs")
}

#[test]
fn rendered_objects_pass_strict_schema_validation_for_supported_versions() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut files = vec![];
    let mut write = |name: &str, yaml: String| {
        let path = dir.path().join(name);
        std::fs::write(&path, yaml).expect("write rendered objects");
        files.push(path);
    };
    for example in examples() {
        let name = example
            .file_name()
            .expect("name")
            .to_string_lossy()
            .to_string();
        write(&name, render_example(&example));
    }
    // Every optional mapping at once: embedded broker, model ConfigMap, resources,
    // percentage maxUnavailable, log level, tolerations, secrets in TLS and headers.
    let everything = with_spec(
        "  source:\n    mqtt:\n      topics: [a/+]\n      embedded: {listen: '0.0.0.0:1883'}\n      \
         username: edge\n      passwordFrom: {secretKeyRef: {name: mqtt, key: password}}\n  \
         inference:\n    model: {configMap: {name: model, key: model.tflite}}\n  \
         sink:\n    http:\n      url: https://x/batch\n      headers: [{name: Authorization, valueFrom: {secretKeyRef: {name: t, key: a}}}]\n      \
         tls: {ca: {secretKeyRef: {name: t, key: ca.crt}}}\n  \
         tolerations: [{key: edge, operator: Exists, effect: NoSchedule}]\n  \
         agent:\n    metricsPort: 9100\n    maxUnavailable: 25%\n    logLevel: debug\n    \
         resources: {requests: {cpu: 50m, memory: 64Mi}, limits: {cpu: '1', memory: 512Mi}}\n",
    );
    let mut options = default_options();
    options.model_version = Some("42".to_string());
    let mut owned = everything.clone();
    owned.metadata.uid = Some("7c1f1a4e-0000-4000-8000-000000000001".to_string());
    write(
        "everything.yaml",
        render(&owned, &options)
            .expect("renders")
            .to_yaml()
            .expect("yaml"),
    );
    write(
        "minimal.yaml",
        render(&pipeline(""), &default_options())
            .expect("renders")
            .to_yaml()
            .expect("yaml"),
    );

    for version in KUBERNETES_VERSIONS {
        let out = validate(&files, version);
        assert!(
            out.status.success(),
            "kubernetes-validate --strict -k {version}:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    // The check can fail: an unknown field in a DaemonSet is rejected.
    let broken = dir.path().join("broken.yaml");
    let text = std::fs::read_to_string(&files[0]).expect("rendered file");
    std::fs::write(
        &broken,
        text.replacen(
            "  revisionHistoryLimit: 5\n",
            "  revisionHistoryLimit: 5\n  surge: 1\n",
            1,
        ),
    )
    .expect("write");
    assert!(!validate(&[broken], KUBERNETES_VERSIONS[0]).status.success());
}

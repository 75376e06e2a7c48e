//! What rendering does for tenancy: the node's queue directory is built only from
//! Kubernetes names, a model ConfigMap key cannot leave the model directory, agents stay
//! off control-plane nodes unless the policy allows them, and `edge-operator render`
//! applies the tenant policy (`--policy-file`) the way the operator does.

use crate::common;

use std::process::Command;

use common::{default_options, pipeline, with_spec};
use edge_operator::render::{CONTROL_PLANE_LABELS, RenderError, render};
use serde_json::{Value, json};

fn invalid_paths(p: &edge_crds::EdgePipeline) -> Vec<String> {
    match render(p, &default_options()) {
        Err(RenderError::Invalid(errors)) => errors.into_iter().map(|e| e.path).collect(),
        other => panic!("expected Invalid, got {other:?}"),
    }
}

fn host_path(p: &edge_crds::EdgePipeline) -> Value {
    let rendered = render(p, &default_options()).unwrap_or_else(|e| panic!("{e}"));
    let ds = serde_json::to_value(rendered.daemon_set).expect("json");
    ds["spec"]["template"]["spec"]["volumes"]
        .as_array()
        .expect("volumes")
        .iter()
        .find(|v| v["name"] == "data")
        .expect("data volume")["hostPath"]
        .clone()
}

#[test]
fn the_queue_directory_is_built_from_kubernetes_names_only() {
    assert_eq!(
        host_path(&pipeline("")),
        json!({"path": "/var/lib/edgepipe/factory/line1", "type": "DirectoryOrCreate"})
    );
    // Names the API server would refuse can still come from a file (`render -f`).
    for name in ["..", "../../etc", "a/b", "Line1", "."] {
        let mut p = pipeline("");
        p.metadata.name = Some(name.to_string());
        assert!(
            invalid_paths(&p).contains(&"metadata.name".to_string()),
            "{name:?}"
        );
    }
    for namespace in ["..", "a/b", "a.b"] {
        let mut p = pipeline("");
        p.metadata.namespace = Some(namespace.to_string());
        assert!(
            invalid_paths(&p).contains(&"metadata.namespace".to_string()),
            "{namespace:?}"
        );
    }
}

#[test]
fn a_model_config_map_key_stays_in_the_model_directory() {
    let model = |key: &str| {
        pipeline(&format!(
            "  inference:\n    model: {{configMap: {{name: anomaly-model, key: '{key}'}}}}\n"
        ))
    };
    assert!(render(&model("model.tflite"), &default_options()).is_ok());
    for key in ["../../var/lib/kubelet/x", "..", "a/b"] {
        assert_eq!(
            invalid_paths(&model(key)),
            ["spec.inference.model.configMap.key"],
            "{key:?}"
        );
    }
}

#[test]
fn agents_stay_off_control_plane_nodes_unless_allowed() {
    let p = pipeline("");
    let ds = |avoid: bool| {
        let mut options = default_options();
        options.avoid_control_plane = avoid;
        serde_json::to_value(render(&p, &options).expect("renders").daemon_set).expect("json")
    };
    let affinity = &ds(true)["spec"]["template"]["spec"]["affinity"];
    let terms = &affinity["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"];
    let expressions: Vec<Value> = CONTROL_PLANE_LABELS
        .iter()
        .map(|key| json!({"key": key, "operator": "DoesNotExist"}))
        .collect();
    assert_eq!(terms, &json!([{"matchExpressions": expressions}]));
    assert!(
        ds(false)["spec"]["template"]["spec"]
            .get("affinity")
            .is_none()
    );
}

fn render_command(manifest: &str, policy: Option<&str>) -> std::process::Output {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("pipeline.yaml");
    std::fs::write(&file, manifest).expect("write manifest");
    let mut command = Command::new(env!("CARGO_BIN_EXE_edge-operator"));
    command.arg("render").arg("-f").arg(&file);
    if let Some(policy) = policy {
        let path = dir.path().join("policy.yaml");
        std::fs::write(&path, policy).expect("write policy");
        command.arg("--policy-file").arg(path);
    }
    command.output().expect("edge-operator runs")
}

#[test]
fn the_render_command_applies_the_tenant_policy() {
    let manifest = "apiVersion: edgepipe.dev/v1alpha1\nkind: EdgePipeline\nmetadata: {name: line1, namespace: factory}\nspec:\n  source:\n    mqtt: {embedded: {listen: '0.0.0.0:1883', users: [{username: d1, passwordFrom: {env: PW}, publish: ['s/d1']}]}, topics: ['s/#']}\n  sink:\n    http: {url: 'https://ingest.example.com/batch'}\n  tolerations:\n    - {key: node-role.kubernetes.io/control-plane, operator: Exists}\n";
    let refused = render_command(manifest, None);
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        stderr.contains("spec.tolerations[0]: toleration of node-role.kubernetes.io/control-plane is not allowed by the cluster policy")
            && stderr.contains("spec.source.mqtt.embedded.listen: an embedded MQTT broker exposed on the node is not allowed"),
        "{stderr}"
    );

    let allowed = render_command(
        manifest,
        Some("controlPlane: true\nembeddedBroker: true\nhostPorts: [1883]\n"),
    );
    let stdout = String::from_utf8_lossy(&allowed.stdout);
    assert!(
        allowed.status.success(),
        "{}",
        String::from_utf8_lossy(&allowed.stderr)
    );
    assert!(stdout.contains("hostPort: 1883"), "{stdout}");
    assert!(
        !stdout.contains("nodeAffinity"),
        "controlPlane: true lets the agents on control-plane nodes"
    );

    let broken = render_command(manifest, Some("hostPorts: [99999]\n"));
    assert!(!broken.status.success());
    assert!(
        String::from_utf8_lossy(&broken.stderr).contains("99999"),
        "{}",
        String::from_utf8_lossy(&broken.stderr)
    );

    // A pipeline inside the policy renders as before.
    let plain = with_spec(common::BASE_SPEC);
    assert!(render(&plain, &default_options()).is_ok());
}

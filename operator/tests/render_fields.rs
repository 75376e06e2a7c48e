//! Table tests for every field the operator maps into the agent's ConfigMap and DaemonSet,
//! and for the hard-coded parts (hardening, volumes, rollout strategy).

use crate::common;

use common::{default_options, pipeline, with_spec};
use edge_crds::{EdgePipeline, parse_pipeline, validate};
use edge_operator::render::{
    CONFIG_HASH_ANNOTATION, MODEL_MOUNT_DIR, RenderError, Rendered, render,
};
use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{Container, PodSpec};
use serde_json::{Value, json};

fn rendered(p: &EdgePipeline) -> Rendered {
    render(p, &default_options()).unwrap_or_else(|e| panic!("{e}"))
}

fn pod(ds: &DaemonSet) -> &PodSpec {
    ds.spec
        .as_ref()
        .and_then(|s| s.template.spec.as_ref())
        .expect("pod spec")
}

fn agent(ds: &DaemonSet) -> &Container {
    pod(ds)
        .containers
        .iter()
        .find(|c| c.name == "edge-agent")
        .expect("agent container")
}

fn hash(r: &Rendered) -> String {
    r.daemon_set
        .spec
        .as_ref()
        .and_then(|s| s.template.metadata.as_ref())
        .and_then(|m| m.annotations.as_ref())
        .and_then(|a| a.get(CONFIG_HASH_ANNOTATION))
        .cloned()
        .expect("config hash")
}

fn config_text(r: &Rendered) -> String {
    r.config_map
        .data
        .as_ref()
        .and_then(|d| d.get("pipeline.yaml"))
        .cloned()
        .expect("pipeline.yaml")
}

fn sha256_hex(text: &str) -> String {
    use sha2::{Digest, Sha256};
    hex::encode(Sha256::digest(text.as_bytes()))
}

fn ds_json(r: &Rendered) -> Value {
    serde_json::to_value(&r.daemon_set).expect("DaemonSet serializes")
}

fn env_value(r: &Rendered, name: &str) -> Option<Value> {
    agent(&r.daemon_set)
        .env
        .as_ref()?
        .iter()
        .find(|e| e.name == name)
        .map(|e| serde_json::to_value(e).expect("env"))
}

/// One row: a spec extension and what it must produce (a JSON pointer into the
/// DaemonSet and the value expected there).
struct Row {
    name: &'static str,
    extra: &'static str,
    pointer: &'static str,
    expected: Value,
}

#[test]
fn spec_fields_map_into_the_daemon_set() {
    let rows = [
        Row {
            name: "default metrics port",
            extra: "",
            pointer: "/spec/template/spec/containers/0/ports/0",
            expected: json!({"name": "metrics", "containerPort": 9464, "protocol": "TCP"}),
        },
        Row {
            name: "metricsPort -> port",
            extra: "  agent: {metricsPort: 9100}\n",
            pointer: "/spec/template/spec/containers/0/ports/0/containerPort",
            expected: json!(9100),
        },
        Row {
            name: "metricsPort -> --listen",
            extra: "  agent: {metricsPort: 9100}\n",
            pointer: "/spec/template/spec/containers/0/args/6",
            expected: json!("0.0.0.0:9100"),
        },
        Row {
            name: "liveness on the named port",
            extra: "",
            pointer: "/spec/template/spec/containers/0/livenessProbe/httpGet",
            expected: json!({"path": "/livez", "port": "metrics"}),
        },
        Row {
            name: "readiness on the named port",
            extra: "",
            pointer: "/spec/template/spec/containers/0/readinessProbe/httpGet",
            expected: json!({"path": "/readyz", "port": "metrics"}),
        },
        Row {
            name: "default resources",
            extra: "",
            pointer: "/spec/template/spec/containers/0/resources",
            expected: json!({"requests": {"cpu": "20m", "memory": "32Mi"}, "limits": {"memory": "256Mi"}}),
        },
        Row {
            name: "resources from the spec",
            extra: "  agent: {resources: {requests: {cpu: 100m}, limits: {memory: 1Gi}}}\n",
            pointer: "/spec/template/spec/containers/0/resources",
            expected: json!({"requests": {"cpu": "100m"}, "limits": {"memory": "1Gi"}}),
        },
        Row {
            name: "the operator rolls the agents out itself",
            extra: "  agent: {maxUnavailable: 3}\n",
            pointer: "/spec/updateStrategy",
            expected: json!({"type": "OnDelete"}),
        },
        Row {
            name: "nodeSelector",
            extra: "  nodeSelector: {edgepipe.dev/edge: 'true', zone: a}\n",
            pointer: "/spec/template/spec/nodeSelector",
            expected: json!({"edgepipe.dev/edge": "true", "zone": "a"}),
        },
        Row {
            name: "no nodeSelector",
            extra: "",
            pointer: "/spec/template/spec/nodeSelector",
            expected: Value::Null,
        },
        Row {
            name: "tolerations",
            extra: "  tolerations: [{key: edge, operator: Exists, effect: NoSchedule}]\n",
            pointer: "/spec/template/spec/tolerations",
            expected: json!([{"key": "edge", "operator": "Exists", "effect": "NoSchedule"}]),
        },
        Row {
            name: "no embedded broker, no mqtt port",
            extra: "",
            pointer: "/spec/template/spec/containers/0/ports/1",
            expected: Value::Null,
        },
        Row {
            name: "hostPath queue dir",
            extra: "",
            pointer: "/spec/template/spec/volumes/1",
            expected: json!({"name": "data", "hostPath": {"path": "/var/lib/edgepipe/factory/line1", "type": "DirectoryOrCreate"}}),
        },
        Row {
            name: "config as a directory",
            extra: "",
            pointer: "/spec/template/spec/containers/0/volumeMounts/0",
            expected: json!({"name": "config", "mountPath": "/etc/edgepipe", "readOnly": true}),
        },
        Row {
            name: "grace period to drain",
            extra: "",
            pointer: "/spec/template/spec/terminationGracePeriodSeconds",
            expected: json!(60),
        },
        Row {
            name: "no service account token",
            extra: "",
            pointer: "/spec/template/spec/automountServiceAccountToken",
            expected: json!(false),
        },
        Row {
            name: "hardened pod",
            extra: "",
            pointer: "/spec/template/spec/securityContext",
            expected: json!({"runAsNonRoot": true, "runAsUser": 65532, "runAsGroup": 65532, "fsGroup": 65532, "seccompProfile": {"type": "RuntimeDefault"}}),
        },
        Row {
            name: "hardened agent",
            extra: "",
            pointer: "/spec/template/spec/containers/0/securityContext",
            expected: json!({"allowPrivilegeEscalation": false, "readOnlyRootFilesystem": true, "runAsNonRoot": true, "capabilities": {"drop": ["ALL"]}}),
        },
        Row {
            name: "init container: root with CHOWN only",
            extra: "",
            pointer: "/spec/template/spec/initContainers/0/securityContext",
            expected: json!({"allowPrivilegeEscalation": false, "readOnlyRootFilesystem": true, "runAsNonRoot": false, "runAsUser": 0, "runAsGroup": 0, "capabilities": {"drop": ["ALL"], "add": ["CHOWN"]}}),
        },
        Row {
            name: "agent command",
            extra: "",
            pointer: "/spec/template/spec/containers/0/command",
            expected: json!(["edge-agent"]),
        },
        Row {
            name: "agent args",
            extra: "",
            pointer: "/spec/template/spec/containers/0/args",
            expected: json!([
                "run",
                "--config",
                "/etc/edgepipe/pipeline.yaml",
                "--data-dir",
                "/var/lib/edgepipe",
                "--listen",
                "0.0.0.0:9464"
            ]),
        },
        Row {
            name: "selector",
            extra: "",
            pointer: "/spec/selector",
            expected: json!({"matchLabels": {"app.kubernetes.io/name": "edge-agent", "app.kubernetes.io/instance": "line1"}}),
        },
    ];
    let mut failures = vec![];
    for row in rows {
        let value = ds_json(&rendered(&pipeline(row.extra)));
        let got = value.pointer(row.pointer).cloned().unwrap_or(Value::Null);
        if got != row.expected {
            failures.push(format!(
                "{}: {} = {got}, expected {}",
                row.name, row.pointer, row.expected
            ));
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
}

#[test]
fn names_labels_and_owner() {
    let mut p = pipeline("");
    let r = rendered(&p);
    let labels = json!({
        "app.kubernetes.io/name": "edge-agent", "app.kubernetes.io/instance": "line1",
        "app.kubernetes.io/managed-by": "edge-operator", "app.kubernetes.io/part-of": "edgepipe"
    });
    let mut revision_labels = labels.clone();
    revision_labels["app.kubernetes.io/component"] = json!("agent-config");
    for (meta, name, labels) in [
        (
            &r.config_map.metadata,
            format!("line1-agent-{}", &sha256_hex(&config_text(&r))[..10]),
            &revision_labels,
        ),
        (&r.daemon_set.metadata, "line1-agent".to_string(), &labels),
    ] {
        assert_eq!(meta.name.as_deref(), Some(name.as_str()));
        assert_eq!(meta.namespace.as_deref(), Some("factory"));
        assert_eq!(serde_json::to_value(&meta.labels).expect("labels"), *labels);
        assert!(
            meta.owner_references.is_none(),
            "no uid, no owner reference"
        );
    }
    assert_eq!(
        ds_json(&r).pointer("/spec/template/metadata/labels"),
        Some(&labels)
    );

    p.metadata.uid = Some("0a1b2c3d-0000-4000-8000-000000000000".to_string());
    let r = rendered(&p);
    for meta in [&r.config_map.metadata, &r.daemon_set.metadata] {
        let owners = meta.owner_references.as_ref().expect("owner reference");
        assert_eq!(owners.len(), 1);
        let owner = &owners[0];
        assert_eq!(
            (owner.api_version.as_str(), owner.kind.as_str()),
            ("edgepipe.dev/v1alpha1", "EdgePipeline")
        );
        assert_eq!(
            (owner.name.as_str(), owner.uid.as_str()),
            ("line1", "0a1b2c3d-0000-4000-8000-000000000000")
        );
        assert_eq!(owner.controller, Some(true));
        assert_eq!(owner.block_owner_deletion, Some(true));
    }
}

#[test]
fn each_configuration_is_an_immutable_revision_the_pod_mounts_by_name() {
    let base = rendered(&pipeline(""));
    let revision = base.config_map.metadata.name.clone().expect("a name");
    assert_eq!(base.config_map.immutable, Some(true));
    let mounted = |r: &Rendered| {
        edge_operator::render::mounted_revision(pod(&r.daemon_set)).map(str::to_string)
    };
    assert_eq!(mounted(&base), Some(revision.clone()));
    let config_mount = agent(&base.daemon_set)
        .volume_mounts
        .iter()
        .flatten()
        .find(|m| m.mount_path == "/etc/edgepipe")
        .expect("the configuration is mounted");
    assert_eq!(config_mount.sub_path, None, "a directory, never subPath");

    // (name, extra spec, same revision and pod template as the base?)
    let cases = [
        ("the same spec again", "", true),
        (
            "another progress deadline: not the agent's configuration",
            "  rollout: {progressDeadline: 20s}\n",
            true,
        ),
        (
            "a processor",
            "  processors: [{deadband: {absolute: 0.5}}]\n",
            false,
        ),
        ("a log level", "  agent: {logLevel: debug}\n", false),
    ];
    for (name, extra, same) in cases {
        let r = rendered(&pipeline(extra));
        let other = r.config_map.metadata.name.clone().expect("a name");
        assert_eq!(other == revision, same, "{name}: {other}");
        assert_eq!(mounted(&r), Some(other.clone()), "{name}");
        assert_eq!(
            serde_json::to_value(&r.daemon_set.spec).expect("json")
                == serde_json::to_value(&base.daemon_set.spec).expect("json"),
            same,
            "{name}: the pod template changes exactly when the revision does"
        );
        assert!(
            other.starts_with("line1-agent-") && other.len() == "line1-agent-".len() + 10,
            "{name}: {other}"
        );
        assert!(!config_text(&r).contains("progressDeadline"), "{name}");
    }
}

#[test]
fn environment_comes_from_the_downward_api_and_the_spec() {
    let r = rendered(&pipeline("  agent: {logLevel: 'edge_agent=debug'}\n"));
    assert_eq!(
        env_value(&r, "NODE_NAME"),
        Some(
            json!({"name": "NODE_NAME", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}})
        )
    );
    assert_eq!(
        env_value(&r, "HOST_IP"),
        Some(json!({"name": "HOST_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.hostIP"}}}))
    );
    assert_eq!(
        env_value(&r, "POD_NAMESPACE"),
        Some(
            json!({"name": "POD_NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}})
        )
    );
    assert_eq!(
        env_value(&r, "RUST_LOG"),
        Some(json!({"name": "RUST_LOG", "value": "edge_agent=debug"}))
    );
    assert_eq!(env_value(&rendered(&pipeline("")), "RUST_LOG"), None);
}

#[test]
fn the_config_map_holds_the_pipeline_the_agent_runs() {
    let p = pipeline("  processors: [{significantChange: {window: 10, threshold: 2.0}}]\n");
    let r = rendered(&p);
    let text = &r.config_map.data.as_ref().expect("data")["pipeline.yaml"];
    let config = parse_pipeline(text).expect("parses");
    assert_eq!(config.meta.id(), "factory/line1");
    assert_eq!(
        config.spec, p.spec,
        "without secrets or a model ConfigMap the spec is unchanged"
    );
    assert!(validate(&config.spec).is_ok());
    assert_eq!(config.meta.uid, None, "the configuration carries no uid");
}

#[test]
fn the_agent_is_told_the_pipeline_uid_the_node_queue_belongs_to() {
    let mut p = pipeline("");
    assert_eq!(env_value(&rendered(&p), "EDGEPIPE_PIPELINE_UID"), None);
    p.metadata.uid = Some("3f9c2b1e-5d4a-4c3b-9a8f-0123456789ab".to_string());
    let first = rendered(&p);
    assert_eq!(
        env_value(&first, "EDGEPIPE_PIPELINE_UID"),
        Some(
            json!({"name": "EDGEPIPE_PIPELINE_UID", "value": "3f9c2b1e-5d4a-4c3b-9a8f-0123456789ab"})
        )
    );
    // In the pod, not in the configuration: the revision is the spec's alone.
    p.metadata.uid = Some("3f9c2b1e-5d4a-4c3b-9a8f-0123456789ac".to_string());
    let again = rendered(&p);
    assert_eq!(config_text(&first), config_text(&again));
    assert_eq!(
        first.config_map.metadata.name,
        again.config_map.metadata.name
    );
    assert_ne!(ds_json(&first), ds_json(&again));
}

#[test]
fn a_config_map_model_is_mounted_and_the_config_points_at_it() {
    let model = "  inference:\n    model: {configMap: {name: anomaly-model, key: model.tflite}}\n    golden: {file: model.golden.json}\n";
    let r = rendered(&pipeline(model));
    let ds = ds_json(&r);
    let volumes = ds
        .pointer("/spec/template/spec/volumes")
        .and_then(Value::as_array)
        .expect("volumes");
    assert!(
        volumes.contains(&json!({"name": "model", "configMap": {"name": "anomaly-model"}})),
        "{volumes:?}"
    );
    let mounts = ds
        .pointer("/spec/template/spec/containers/0/volumeMounts")
        .and_then(Value::as_array)
        .expect("mounts");
    assert!(
        mounts.contains(&json!({"name": "model", "mountPath": MODEL_MOUNT_DIR, "readOnly": true}))
    );
    assert!(
        mounts.iter().all(|m| m.get("subPath").is_none()),
        "never subPath: updates must reach the pod"
    );
    let config = parse_pipeline(&r.config_map.data.as_ref().expect("data")["pipeline.yaml"])
        .expect("parses");
    let model = &config.spec.inference.as_ref().expect("inference").model;
    assert_eq!(
        model.path.as_deref(),
        Some("/etc/edgepipe-model/model.tflite")
    );
    assert!(model.config_map.is_none());
    assert!(validate(&config.spec).is_ok());

    let r = rendered(&pipeline(
        "  inference:\n    model: {path: /models/a.tflite}\n",
    ));
    let volumes = ds_json(&r)
        .pointer("/spec/template/spec/volumes")
        .cloned()
        .expect("volumes");
    assert!(
        !volumes.to_string().contains("\"model\""),
        "no model volume for a path model"
    );
}

#[test]
fn an_embedded_broker_is_exposed_with_a_host_port_only_beyond_loopback() {
    let r = rendered(&with_spec(
        "  source:\n    mqtt: {topics: [a], embedded: {listen: '0.0.0.0:1884', users: [{username: press-1, passwordFrom: {secretKeyRef: {name: devices, key: press-1}}, publish: ['a']}]}}\n  sink:\n    http: {url: 'https://x/b'}\n",
    ));
    let ds = ds_json(&r);
    let port = ds
        .pointer("/spec/template/spec/containers/0/ports/1")
        .cloned();
    assert_eq!(
        port,
        Some(json!({"name": "mqtt", "containerPort": 1884, "hostPort": 1884, "protocol": "TCP"}))
    );
    // The device's password reaches the agent as a file of the mounted Secret, never in
    // the ConfigMap.
    let volumes = ds
        .pointer("/spec/template/spec/volumes")
        .cloned()
        .unwrap_or_default();
    assert!(
        volumes.to_string().contains(
            r#"{"name":"secret-0","secret":{"defaultMode":288,"items":[{"key":"press-1","path":"press-1"}],"optional":false,"secretName":"devices"}}"#
        ),
        "{volumes}"
    );
    assert!(
        config_text(&r).contains("file: /etc/edgepipe-secrets/devices/press-1"),
        "{}",
        config_text(&r)
    );
    let local = rendered(&with_spec(
        "  source:\n    mqtt: {topics: [a], embedded: {}}\n  sink:\n    http: {url: 'https://x/b'}\n",
    ));
    assert_eq!(
        ds_json(&local).pointer("/spec/template/spec/containers/0/ports/1"),
        None,
        "a loopback broker serves the pod only"
    );
}

#[test]
fn the_config_hash_follows_the_config_and_the_model() {
    let base = hash(&rendered(&pipeline("")));
    assert_eq!(base.len(), 64);
    assert_eq!(
        hash(&rendered(&pipeline(""))),
        base,
        "same input, same hash"
    );
    assert_ne!(
        hash(&rendered(&pipeline("  buffer: {maxBytes: 1Gi}\n"))),
        base
    );

    let model = pipeline("  inference:\n    model: {configMap: {name: m, key: k}}\n");
    let mut options = default_options();
    let unknown = hash(&render(&model, &options).expect("renders"));
    options.model_version = Some("100".to_string());
    let v100 = hash(&render(&model, &options).expect("renders"));
    options.model_version = Some("101".to_string());
    let v101 = hash(&render(&model, &options).expect("renders"));
    assert!(
        unknown != v100 && v100 != v101,
        "a new model version rolls the agents"
    );

    options.agent_image = "registry.local/edge-agent:dev".to_string();
    let r = render(&model, &options).expect("renders");
    assert_eq!(
        agent(&r.daemon_set).image.as_deref(),
        Some("registry.local/edge-agent:dev")
    );
}

#[test]
fn invalid_pipelines_are_refused_with_field_paths() {
    let bad = pipeline("  processors: [{range: {min: 5, max: 1}}]\n");
    match render(&bad, &default_options()) {
        Err(RenderError::Invalid(errors)) => {
            assert!(
                errors
                    .iter()
                    .any(|e| e.path.starts_with("spec.processors[0].range")),
                "{errors:?}"
            )
        }
        other => panic!("expected Invalid, got {other:?}"),
    }

    let mut long = pipeline("");
    long.metadata.name = Some("a".repeat(58));
    match render(&long, &default_options()) {
        Err(RenderError::Invalid(errors)) => assert_eq!(errors[0].path, "metadata.name"),
        other => panic!("expected Invalid, got {other:?}"),
    }

    let port = with_spec(
        "  source:\n    mqtt: {topics: [a], embedded: {listen: 'anywhere'}}\n  sink:\n    http: {url: 'https://x/b'}\n",
    );
    match render(&port, &default_options()) {
        Err(RenderError::Invalid(errors)) => {
            assert!(
                errors
                    .iter()
                    .any(|e| e.path == "spec.source.mqtt.embedded.listen"),
                "{errors:?}"
            )
        }
        other => panic!("expected Invalid, got {other:?}"),
    }

    let mut nameless = pipeline("");
    nameless.metadata.namespace = None;
    assert!(matches!(
        render(&nameless, &default_options()),
        Err(RenderError::MissingNamespace)
    ));
}

#[test]
fn every_pod_carries_a_digest_of_its_template() {
    let hash = |spec: &str| {
        ds_json(&rendered(&pipeline(spec)))
            .pointer("/spec/template/metadata/annotations/edgepipe.dev~1template-hash")
            .and_then(|v| v.as_str().map(str::to_string))
            .expect("a template hash")
    };
    let base = hash("");
    assert_eq!(base.len(), 16);
    assert_eq!(base, hash(""), "the same spec, the same template");
    assert_ne!(base, hash("  agent: {logLevel: debug}\n"), "another pod");
    assert_eq!(
        base,
        hash("  rollout: {maxUnavailable: 3, paused: true}\n"),
        "how a change is rolled out is not part of the pod"
    );
}

#[test]
fn the_agent_logs_in_the_pipelines_format() {
    let env = |spec: &str| {
        ds_json(&rendered(&with_spec(spec)))
            .pointer("/spec/template/spec/containers/0/env")
            .cloned()
            .unwrap_or_default()
            .as_array()
            .cloned()
            .unwrap_or_default()
            .into_iter()
            .find(|e| e["name"] == "EDGEPIPE_LOG_FORMAT")
    };
    let base = "  source:\n    mqtt: {url: 'mqtt://b:1883', topics: [a]}\n  sink:\n    http: {url: 'https://x/b'}\n";
    assert_eq!(env(base), None, "the agent's default (text)");
    assert_eq!(
        env(&format!("{base}  agent: {{logFormat: json}}\n")),
        Some(json!({"name": "EDGEPIPE_LOG_FORMAT", "value": "json"}))
    );
}

/// Nodes pull one image: the init container runs from the agent image, so an operator
/// upgrade alone changes no agent pod template.
#[test]
fn every_container_of_the_agent_pod_uses_the_agent_image() {
    let ds = ds_json(&rendered(&pipeline("")));
    let pod = &ds["spec"]["template"]["spec"];
    let images: Vec<String> = ["initContainers", "containers"]
        .iter()
        .flat_map(|list| pod[*list].as_array().cloned().unwrap_or_default())
        .map(|c| c["image"].as_str().unwrap_or_default().to_string())
        .collect();
    assert_eq!(images.len(), 2, "{pod}");
    assert!(
        images
            .iter()
            .all(|i| *i == edge_operator::default_agent_image()),
        "{images:?}"
    );
    let command = &pod["initContainers"][0]["command"];
    assert_eq!(
        (&command[0], &command[1]),
        (&json!("edge-agent"), &json!("prepare-data-dir"))
    );
}

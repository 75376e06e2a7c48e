//! Status that tells the truth, against a real control plane with the chart installed by
//! Helm and the operator run as the chart's ServiceAccount:
//!
//! - an apply the API server refuses (a real `ValidatingAdmissionPolicy` that denies
//!   DaemonSets with hostPath volumes in one namespace) turns a Ready pipeline `Degraded`
//!   with reason `ApplyFailed`, the admission message and a Warning Event; once the policy
//!   is gone the pipeline recovers to Ready;
//! - a ConfigMap of the agent's name (the revision the operator would create) created by
//!   someone else first is never taken over:
//!   the pipeline gets `Conflict` naming it, the ConfigMap stays as it was, the pipeline
//!   beside it runs; deleting the foreign ConfigMap lets the operator create its own;
//! - one pipeline stored with a field this operator does not know (a newer CRD) is
//!   `Invalid` naming the field while the others are reconciled, also when the operator
//!   starts with it in the first list page (the strict types would fail the whole list);
//! - a model ConfigMap rolls the agents when its content changes, not when a label is
//!   added to it.

use std::time::Duration;

use edge_testkit::cluster::{Cluster, Node};
use edge_testkit::operator::Operator;
use edge_testkit::poll;
use edge_tests::fleet::{EDGE_NODES, pipeline_manifest, rendered_revision};
use edge_tests::helm::{self, NAMESPACE};

/// The operator Deployment the chart creates for release `edgepipe`.
const DEPLOYMENT: &str = "edgepipe-edge-operator";
const WAIT: Duration = Duration::from_secs(180);

/// A cluster with two edge nodes, the chart installed and the operator running.
fn start(name: &str) -> (Cluster, Operator) {
    let cluster = installed(name);
    let operator = run_operator(&cluster);
    (cluster, operator)
}

/// A cluster with two edge nodes and the chart installed.
fn installed(name: &str) -> Cluster {
    let cluster = Cluster::start(
        name,
        &[
            Node::new("edge-1").label("edgepipe.dev/edge", "true"),
            Node::new("edge-2").label("edgepipe.dev/edge", "true"),
        ],
    );
    let install = helm::install_on(cluster.kubeconfig(), &[], &["--wait", "--timeout", "120s"]);
    assert!(install.success, "helm install: {}", install.stderr);
    cluster
}

/// The operator of the chart, run as its ServiceAccount, once ready.
fn run_operator(cluster: &Cluster) -> Operator {
    let operator = Operator::from_deployment(cluster, NAMESPACE, DEPLOYMENT, "operator-0");
    poll(WAIT, "the operator's /readyz", || {
        operator.ready().then_some(())
    });
    operator
}

/// Waits for `type_=True` with `reason`; returns its message.
fn wait_true(cluster: &Cluster, namespace: &str, name: &str, type_: &str, reason: &str) -> String {
    poll(WAIT, &format!("{name}: {type_}/{reason}"), || match cluster
        .pipeline_condition(namespace, name, type_)
    {
        Some((status, r, message)) if status == "True" && r == reason => Some(message),
        _ => None,
    })
}

/// The Warning Events about pipeline `name`: `(reason, note)`.
fn warnings(cluster: &Cluster, namespace: &str, name: &str) -> Vec<(String, String)> {
    let events = cluster.warning_events(namespace, name);
    events["items"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|e| {
            (
                e["reason"].as_str().unwrap_or_default().to_string(),
                e["message"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect()
}

fn exists(cluster: &Cluster, namespace: &str, kind: &str, name: &str) -> bool {
    cluster
        .kubectl(&["get", kind, name, "-n", namespace])
        .status
        .success()
}

const NO_HOST_PATH: &str = r#"apiVersion: admissionregistration.k8s.io/v1
kind: ValidatingAdmissionPolicy
metadata: {name: no-host-path}
spec:
  failurePolicy: Fail
  matchConstraints:
    resourceRules:
      - apiGroups: ["apps"]
        apiVersions: ["v1"]
        operations: ["CREATE", "UPDATE"]
        resources: ["daemonsets"]
  validations:
    - expression: "!has(object.spec.template.spec.volumes) || object.spec.template.spec.volumes.all(v, !has(v.hostPath))"
      message: "hostPath volumes are not allowed in namespace guarded"
---
apiVersion: admissionregistration.k8s.io/v1
kind: ValidatingAdmissionPolicyBinding
metadata: {name: no-host-path}
spec:
  policyName: no-host-path
  validationActions: [Deny]
  matchResources:
    namespaceSelector:
      matchLabels: {kubernetes.io/metadata.name: guarded}
"#;

/// A DaemonSet with a hostPath volume, to learn when the policy is in force.
const PROBE: &str = r#"apiVersion: apps/v1
kind: DaemonSet
metadata: {name: probe, namespace: guarded}
spec:
  selector: {matchLabels: {app: probe}}
  template:
    metadata: {labels: {app: probe}}
    spec:
      containers: [{name: c, image: example.com/probe:1}]
      volumes: [{name: v, hostPath: {path: /var/lib/probe}}]
"#;

#[test]
fn a_refused_apply_degrades_the_pipeline_until_the_admission_policy_goes() {
    let (cluster, _operator) = start("apply-failed");
    let _guard = cluster.guard();
    cluster.namespace("guarded");
    cluster.apply(&pipeline_manifest(
        "guarded",
        "line1",
        EDGE_NODES,
        Some(100),
    ));
    cluster.wait_pipeline_ready("guarded", "line1");

    cluster.apply(NO_HOST_PATH);
    poll(WAIT, "the admission policy to refuse hostPath", || {
        let out = cluster.kubectl_stdin(&["create", "--dry-run=server", "-f", "-"], PROBE);
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        (!out.status.success() && stderr.contains("hostPath volumes are not allowed")).then_some(())
    });

    // A new spec the API server refuses to apply: Ready=True does not stay.
    cluster.apply(&pipeline_manifest(
        "guarded",
        "line1",
        EDGE_NODES,
        Some(200),
    ));
    let message = wait_true(&cluster, "guarded", "line1", "Degraded", "ApplyFailed");
    assert!(
        message.contains("hostPath volumes are not allowed in namespace guarded")
            && message.contains("no-host-path"),
        "the Degraded message is not the API server's: {message}"
    );
    let ready = cluster
        .pipeline_condition("guarded", "line1", "Ready")
        .expect("Ready");
    assert_eq!(
        (ready.0.as_str(), ready.1.as_str()),
        ("False", "ApplyFailed")
    );
    let refused = poll(WAIT, "an ApplyFailed Warning Event", || {
        let found: Vec<(String, String)> = warnings(&cluster, "guarded", "line1")
            .into_iter()
            .filter(|(reason, _)| reason == "ApplyFailed")
            .collect();
        (!found.is_empty()).then_some(found)
    });
    assert_eq!(refused.len(), 1, "one Event per transition: {refused:?}");
    assert!(refused[0].1.contains("hostPath volumes are not allowed"));

    // The policy goes: the retry applies, and the pipeline is Ready with the new spec.
    cluster.kubectl_ok(&[
        "delete",
        "validatingadmissionpolicybinding,validatingadmissionpolicy",
        "no-host-path",
    ]);
    cluster.wait_pipeline_ready("guarded", "line1");
    let degraded = cluster
        .pipeline_condition("guarded", "line1", "Degraded")
        .expect("Degraded");
    assert_eq!(degraded.0, "False", "{degraded:?}");
    let config = cluster.agent_config_map("guarded", "line1");
    assert!(
        config["data"].to_string().contains("batchSize: 200"),
        "the new spec is applied: {config}"
    );
}

#[test]
fn a_foreign_config_map_of_the_agent_name_is_a_conflict_and_stays_untouched() {
    let (cluster, _operator) = start("conflict");
    let _guard = cluster.guard();
    cluster.namespace("shared");
    let line2 = pipeline_manifest("shared", "line2", EDGE_NODES, Some(100));
    let revision = rendered_revision(&line2);
    cluster.kubectl_ok(&[
        "create",
        "configmap",
        &revision,
        "-n",
        "shared",
        "--from-literal=owner=someone-else",
    ]);
    let before = cluster.get_json(&["configmap", &revision, "-n", "shared"]);
    cluster.apply(&line2);
    cluster.apply(&pipeline_manifest("shared", "line3", EDGE_NODES, Some(100)));

    // The pipeline beside it runs.
    cluster.wait_pipeline_ready("shared", "line3");
    assert!(exists(&cluster, "shared", "daemonset", "line3-agent"));

    let message = wait_true(&cluster, "shared", "line2", "Conflict", "NotControlled");
    assert!(
        message.contains(&format!(
            "ConfigMap shared/{revision} already exists and has no controller owner reference"
        )),
        "{message}"
    );
    let degraded = cluster
        .pipeline_condition("shared", "line2", "Degraded")
        .expect("Degraded");
    assert_eq!(
        (degraded.0.as_str(), degraded.1.as_str()),
        ("True", "Conflict")
    );
    poll(WAIT, "a Conflict Warning Event", || {
        warnings(&cluster, "shared", "line2")
            .iter()
            .any(|(reason, _)| reason == "Conflict")
            .then_some(())
    });
    assert!(
        !exists(&cluster, "shared", "daemonset", "line2-agent"),
        "a pipeline in conflict got a DaemonSet"
    );
    let after = cluster.get_json(&["configmap", &revision, "-n", "shared"]);
    assert_eq!(
        after["data"], before["data"],
        "the foreign ConfigMap's data"
    );
    assert_eq!(
        after["metadata"]["resourceVersion"], before["metadata"]["resourceVersion"],
        "the foreign ConfigMap was written to: {after}"
    );
    assert!(after["metadata"]["ownerReferences"].is_null(), "{after}");

    // Its owner deletes it: the operator creates its own and the conflict is gone.
    cluster.kubectl_ok(&["delete", "configmap", &revision, "-n", "shared"]);
    cluster.wait_pipeline_ready("shared", "line2");
    assert!(
        cluster
            .pipeline_condition("shared", "line2", "Conflict")
            .is_none()
    );
    let own = cluster.agent_config_map("shared", "line2");
    assert_eq!(own["metadata"]["name"], revision.as_str());
    assert_eq!(
        own["metadata"]["ownerReferences"][0]["kind"],
        "EdgePipeline"
    );
}

/// The generated CRD with one more spec field, as a newer release would ship it.
fn crd_with_a_newer_field() -> String {
    let mut crd = serde_json::to_value(edge_crds::crd()).expect("the CRD serializes");
    let spec = crd
        .pointer_mut("/spec/versions/0/schema/openAPIV3Schema/properties/spec/properties")
        .and_then(serde_json::Value::as_object_mut)
        .expect("the CRD has spec properties");
    spec.insert(
        "priority".to_string(),
        serde_json::json!({"type": "integer", "description": "A field of a newer release."}),
    );
    crd.to_string()
}

#[test]
fn a_pipeline_with_a_field_this_operator_does_not_know_is_invalid_and_the_others_run() {
    let cluster = installed("unknown-field");
    let _guard = cluster.guard();
    cluster.namespace("factory");
    let out = cluster.kubectl_stdin(
        &["apply", "--server-side", "--force-conflicts", "-f", "-"],
        &crd_with_a_newer_field(),
    );
    assert!(
        out.status.success(),
        "applying the newer CRD: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The API server keeps the field only once it serves the newer schema.
    let newer = pipeline_manifest("factory", "newer", EDGE_NODES, Some(100))
        .replace("  nodeSelector:", "  priority: 3\n  nodeSelector:");
    poll(WAIT, "the API server to keep spec.priority", || {
        cluster.apply(&newer);
        let stored = cluster.get_json(&["epl", "newer", "-n", "factory"]);
        (stored["spec"]["priority"] == 3).then_some(())
    });
    cluster.apply(&pipeline_manifest(
        "factory",
        "plain",
        EDGE_NODES,
        Some(100),
    ));

    // The operator starts (as after `helm upgrade`) and lists pipelines, this one first.
    let _operator = run_operator(&cluster);

    // The pipeline the operator understands is reconciled...
    cluster.wait_pipeline_ready("factory", "plain");
    assert!(exists(&cluster, "factory", "daemonset", "plain-agent"));

    // ... and the other one says which field it does not know, and runs nothing.
    let message = wait_true(&cluster, "factory", "newer", "Invalid", "InvalidSpec");
    assert!(
        message.contains("spec.priority: unknown field `priority`"),
        "the Invalid condition does not name the field: {message}"
    );
    poll(WAIT, "an Invalid Warning Event", || {
        warnings(&cluster, "factory", "newer")
            .iter()
            .any(|(reason, note)| reason == "Invalid" && note.contains("spec.priority"))
            .then_some(())
    });
    assert!(!exists(&cluster, "factory", "daemonset", "newer-agent"));

    // Without the field it decodes again and runs.
    cluster.apply(&pipeline_manifest(
        "factory",
        "newer",
        EDGE_NODES,
        Some(100),
    ));
    cluster.wait_pipeline_ready("factory", "newer");
}

/// `(generation, config hash of the pod template)` of the DaemonSet `name`.
fn rollout(cluster: &Cluster, namespace: &str, name: &str) -> (i64, String) {
    let ds = cluster.get_json(&["daemonset", name, "-n", namespace]);
    (
        ds["metadata"]["generation"].as_i64().unwrap_or_default(),
        ds["spec"]["template"]["metadata"]["annotations"]["edgepipe.dev/config-hash"]
            .as_str()
            .unwrap_or_default()
            .to_string(),
    )
}

#[test]
fn a_model_config_map_rolls_the_agents_when_its_content_changes_not_its_labels() {
    let (cluster, operator) = start("model-content");
    let _guard = cluster.guard();
    cluster.namespace("models");
    cluster.apply(
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: anomaly-model\n  namespace: models\n  labels: {edgepipe.dev/model: \"true\"}\ndata: {model.tflite: weights-v1}\n",
    );
    let scored = pipeline_manifest("models", "scored", EDGE_NODES, Some(100)).replace(
        "  sink:",
        "  inference:\n    model: {configMap: {name: anomaly-model, key: model.tflite}}\n    window: 16\n    threshold: 0.8\n  sink:",
    );
    cluster.apply(&scored);
    cluster.wait_pipeline_ready("models", "scored");
    let before = rollout(&cluster, "models", "scored-agent");

    // A label (as a GitOps tool adds): the operator sees it, and leaves the fleet alone.
    let reconciles = operator.metric_sum("edge_operator_reconciliations_total");
    cluster.kubectl_ok(&[
        "label",
        "configmap",
        "anomaly-model",
        "-n",
        "models",
        "app.kubernetes.io/part-of=factory",
    ]);
    poll(WAIT, "a reconcile after the label", || {
        (operator.metric_sum("edge_operator_reconciliations_total") > reconciles).then_some(())
    });
    assert_eq!(
        rollout(&cluster, "models", "scored-agent"),
        before,
        "a label on the model rolled the agents"
    );

    // New weights: the config hash changes and the agents roll.
    cluster.kubectl_ok(&[
        "patch",
        "configmap",
        "anomaly-model",
        "-n",
        "models",
        "--type=merge",
        "-p",
        r#"{"data":{"model.tflite":"weights-v2"}}"#,
    ]);
    poll(WAIT, "a new config hash after new weights", || {
        let now = rollout(&cluster, "models", "scored-agent");
        (now.0 > before.0 && now.1 != before.1).then_some(())
    });
}

//! The Helm chart `charts/edge-operator` as a whole, checked with the real Helm CLI: lint
//! and render with default values and with every optional feature on
//! (tests/chart/values-all.yaml), every rendered object through `kubernetes-validate
//! --strict` for Kubernetes 1.33 and 1.37, the values schema and its documentation, the
//! generated CRD, and the copies of the dashboard and alert rules. The objects' content
//! is checked in chart_objects.rs.

use std::collections::{BTreeMap, BTreeSet};

use edge_tests::helm::{
    self, ALL_VALUES, RELEASE, Rendered, all_render, default_render, first_difference, merge, read,
    yaml,
};
use edge_tests::workspace_root;
use serde_json::{Value, json};

/// Kubernetes versions every rendered object must validate against: the chart's
/// minimum (Chart.yaml kubeVersion) and the newest the validator knows.
const KUBERNETES_VERSIONS: [&str; 2] = ["1.33", "1.37"];

/// Kinds kubernetes-validate has no schema for (Prometheus Operator CRDs), with the
/// reason and the test that checks their content instead.
const NOT_IN_KUBERNETES_SCHEMAS: [(&str, &str); 3] = [
    (
        "ServiceMonitor",
        "monitoring.coreos.com CRD, checked in chart_objects.rs (monitors_select_the_operator_and_every_agent)",
    ),
    (
        "PodMonitor",
        "monitoring.coreos.com CRD, checked in chart_objects.rs (monitors_select_the_operator_and_every_agent)",
    ),
    (
        "PrometheusRule",
        "monitoring.coreos.com CRD, checked in chart_objects.rs with promtool",
    ),
];

fn validate_all(render: &Rendered) {
    let skipped: BTreeMap<&str, &str> = NOT_IN_KUBERNETES_SCHEMAS.into_iter().collect();
    let mut checked = Vec::new();
    for object in &render.objects {
        match skipped.get(object.kind()) {
            Some(reason) => {
                assert_eq!(
                    object.value["apiVersion"], "monitoring.coreos.com/v1",
                    "only Prometheus Operator objects may skip kubernetes-validate"
                );
                eprintln!(
                    "not in the Kubernetes schemas: {} {} ({reason})",
                    object.kind(),
                    object.name()
                );
            }
            None => checked.push(object),
        }
    }
    assert!(!checked.is_empty());
    for version in KUBERNETES_VERSIONS {
        if let Err(e) = helm::kubernetes_validate(&checked, version) {
            panic!("{e}");
        }
    }
}

#[test]
fn lint_strict_with_default_values() {
    let run = helm::helm(&["lint", "--strict", helm::CHART]);
    assert!(
        run.success,
        "helm lint --strict:\n{}{}",
        run.stdout, run.stderr
    );
}

#[test]
fn lint_strict_with_every_feature_on() {
    let run = helm::helm(&["lint", "--strict", helm::CHART, "--values", ALL_VALUES]);
    assert!(
        run.success,
        "helm lint --strict:\n{}{}",
        run.stdout, run.stderr
    );
}

#[test]
fn default_values_render_the_operator_and_nothing_optional() {
    let kinds = default_render().kinds();
    // The ConfigMap is the tenant policy the operator enforces (never optional).
    let expected = BTreeSet::from([
        "ClusterRole",
        "ClusterRoleBinding",
        "ConfigMap",
        "CustomResourceDefinition",
        "Deployment",
        "Role",
        "RoleBinding",
        "Service",
        "ServiceAccount",
        "ValidatingAdmissionPolicy",
        "ValidatingAdmissionPolicyBinding",
    ]);
    assert_eq!(kinds, expected);
}

#[test]
fn every_feature_on_renders_every_template() {
    let kinds = all_render().kinds();
    // values-all.yaml sets watchNamespace: the ClusterRole is bound by a RoleBinding, and
    // only the read-only Nodes role cluster-wide.
    let expected = BTreeSet::from([
        "ClusterRole",
        "ClusterRoleBinding",
        "ConfigMap",
        "CustomResourceDefinition",
        "Deployment",
        "NetworkPolicy",
        "PodDisruptionBudget",
        "PodMonitor",
        "PrometheusRule",
        "Role",
        "RoleBinding",
        "Service",
        "ServiceAccount",
        "ServiceMonitor",
        "ValidatingAdmissionPolicy",
        "ValidatingAdmissionPolicyBinding",
    ]);
    assert_eq!(kinds, expected);
}

#[test]
fn default_render_passes_kubernetes_validate_strict() {
    validate_all(default_render());
}

#[test]
fn every_feature_on_passes_kubernetes_validate_strict() {
    validate_all(all_render());
}

#[test]
fn kubernetes_validate_catches_a_broken_object() {
    // The validation above must be able to fail: an unknown field in the Deployment.
    let render = default_render();
    let deployment = render
        .objects
        .iter()
        .find(|o| o.kind() == "Deployment")
        .expect("a Deployment");
    let broken = helm::Object {
        source: deployment.source.clone(),
        text: deployment
            .text
            .replace("revisionHistoryLimit:", "revisionHistoryLimt:"),
        value: deployment.value.clone(),
    };
    let err = helm::kubernetes_validate(&[&broken], "1.33").expect_err("must fail");
    assert!(err.contains("revisionHistoryLimt"), "{err}");
}

#[test]
fn values_schema_rejects_wrong_types_enums_and_unknown_keys() {
    // (--set argument, the value path Helm's error must name)
    let cases = [
        ("replicaCount=two", "/replicaCount"),
        ("replicaCount=1.5", "/replicaCount"),
        ("crds.install=yes", "/crds/install"),
        ("image.pullPolicy=Sometimes", "/image/pullPolicy"),
        ("agent.image.digest=latest", "/agent/image/digest"),
        ("logLevel=verbose", "/logLevel"),
        ("metrics.port=70000", "/metrics/port"),
        ("metrics.service.type=External", "/metrics/service/type"),
        (
            "metrics.podMonitor.interval=often",
            "/metrics/podMonitor/interval",
        ),
        (
            "networkPolicy.apiServer.cidrs[0]=kubernetes",
            "/networkPolicy/apiServer/cidrs/0",
        ),
        ("podLabels.team=1", "/podLabels/team"),
        ("serviceMonitor.enabled=true", "serviceMonitor"),
        ("rbac.create=false,rbac.clusterWide=true", "clusterWide"),
        ("tenantPolicy.maxLogLevel=loud", "/tenantPolicy/maxLogLevel"),
        (
            "tenantPolicy.hostPorts[0]=70000",
            "/tenantPolicy/hostPorts/0",
        ),
        (
            "tenantPolicy.resources.limits.memory=lots",
            "/tenantPolicy/resources/limits/memory",
        ),
        (
            "tenantPolicy.tolerations[0].effects[0]=Never",
            "/tenantPolicy/tolerations/0/effects/0",
        ),
        ("tenantPolicy.controlPlan=true", "controlPlan"),
        (
            "metrics.podMonitor.namespaces[0]=Not_A_Namespace",
            "/metrics/podMonitor/namespaces/0",
        ),
    ];
    for (set, path) in cases {
        match helm::render(&[], &[set]) {
            Ok(_) => panic!("--set {set} was accepted"),
            Err(stderr) => assert!(
                stderr.contains("schema") && stderr.contains(path),
                "--set {set}: the error does not name {path}:\n{stderr}"
            ),
        }
    }
    // And the same kind of values, correct, pass.
    let good = [
        "replicaCount=3",
        "image.pullPolicy=Always",
        "logLevel=warn",
        "metrics.port=9100",
        "metrics.service.type=NodePort",
        "networkPolicy.apiServer.cidrs[0]=192.0.2.1/32",
        "tenantPolicy.hostPorts[0]=1883",
        "tenantPolicy.hostPorts[1]=8000-8099",
        "tenantPolicy.resources.limits.memory=1Gi",
        "tenantPolicy.maxLogLevel=info",
    ];
    helm::render(&[], &good).unwrap_or_else(|e| panic!("valid values rejected: {e}"));
}

#[test]
fn values_schema_accepts_the_defaults_and_every_feature_on() {
    // Checked outside Helm too, so a value added to values.yaml without a schema entry
    // (additionalProperties: false) fails here with its path.
    let schema: Value = serde_json::from_str(&read("charts/edge-operator/values.schema.json"))
        .expect("values.schema.json is JSON");
    let validator = jsonschema::validator_for(&schema).expect("the schema compiles");
    let defaults = yaml("charts/edge-operator/values.yaml");
    let mut all = defaults.clone();
    merge(&mut all, &yaml(ALL_VALUES));
    for (name, values) in [("values.yaml", &defaults), (ALL_VALUES, &all)] {
        let errors: Vec<String> = validator
            .iter_errors(values)
            .map(|e| format!("{}: {e}", e.instance_path()))
            .collect();
        assert!(errors.is_empty(), "{name}:\n{}", errors.join("\n"));
    }
    let mut wrong = defaults;
    wrong["metrics"]["podMonitor"]["scrapeTimout"] = json!("10s");
    assert!(
        !validator.is_valid(&wrong),
        "an unknown key must be rejected"
    );
}

#[test]
fn every_value_in_values_yaml_has_a_comment() {
    // A key is documented by a comment right above it or above one of its parents
    // (e.g. the defaults inside `resources:`).
    let text = read("charts/edge-operator/values.yaml");
    let mut parents: Vec<(usize, bool)> = Vec::new();
    let mut previous = "";
    let mut undocumented = Vec::new();
    for line in text.lines() {
        let trimmed = line.trim_start();
        let indent = line.len() - trimmed.len();
        let is_key =
            !trimmed.starts_with('#') && !trimmed.starts_with('-') && trimmed.contains(':');
        if is_key {
            while parents.last().is_some_and(|(i, _)| *i >= indent) {
                parents.pop();
            }
            let commented = previous.trim_start().starts_with('#');
            let documented = commented || parents.last().is_some_and(|(_, d)| *d);
            let leaf = !trimmed.trim_end().ends_with(':');
            if leaf && !documented {
                undocumented.push(trimmed.to_string());
            }
            parents.push((indent, documented));
        }
        if !trimmed.is_empty() {
            previous = line;
        }
    }
    assert!(
        undocumented.is_empty(),
        "values without a comment: {undocumented:?}"
    );
}

#[test]
fn crd_template_is_the_generated_crd_with_a_keep_policy() {
    let mut crd = default_render().one("CustomResourceDefinition").clone();
    let metadata = crd["metadata"].as_object_mut().expect("metadata");
    let annotations = metadata.remove("annotations").expect("annotations");
    let labels = metadata.remove("labels").expect("labels");
    assert_eq!(annotations, json!({"helm.sh/resource-policy": "keep"}));
    assert_eq!(labels["app.kubernetes.io/managed-by"], "Helm");
    if let Some(at) = first_difference(&crd, &yaml("crds/edgepipelines.yaml"), String::new()) {
        panic!(
            "the chart's CRD differs from crds/edgepipelines.yaml at {at}: \
             cp crds/edgepipelines.yaml charts/edge-operator/files/crds/edgepipelines.yaml"
        );
    }

    let no_keep = helm::render(&[], &["crds.keep=false"]).expect("renders");
    let crd = no_keep.one("CustomResourceDefinition");
    assert!(
        crd["metadata"].get("annotations").is_none(),
        "{}",
        crd["metadata"]
    );
    let off = helm::render(&[], &["crds.install=false"]).expect("renders");
    assert!(off.all("CustomResourceDefinition").is_empty());
}

#[test]
fn chart_copies_are_identical_to_their_originals() {
    let pairs = [
        (
            "crds/edgepipelines.yaml",
            "charts/edge-operator/files/crds/edgepipelines.yaml",
        ),
        (
            "deploy/grafana/edgepipe.json",
            "charts/edge-operator/files/edgepipe.json",
        ),
        (
            "deploy/prometheus/edgepipe-rules.yaml",
            "charts/edge-operator/files/edgepipe-rules.yaml",
        ),
    ];
    for (original, copy) in pairs {
        let a = std::fs::read(workspace_root().join(original)).expect(original);
        let b = std::fs::read(workspace_root().join(copy)).expect(copy);
        assert!(
            a == b,
            "{copy} differs from {original}: cp {original} {copy}"
        );
    }
}

#[test]
fn release_names_and_labels_are_consistent() {
    let render = all_render();
    for object in &render.objects {
        let labels = &object.value["metadata"]["labels"];
        assert_eq!(
            labels["app.kubernetes.io/instance"], RELEASE,
            "{}",
            object.source
        );
        assert_eq!(
            labels["app.kubernetes.io/part-of"], "edgepipe",
            "{}",
            object.source
        );
        let namespaced = !matches!(
            object.kind(),
            "ClusterRole"
                | "ClusterRoleBinding"
                | "CustomResourceDefinition"
                | "ValidatingAdmissionPolicy"
                | "ValidatingAdmissionPolicyBinding"
        );
        assert_eq!(
            object.value["metadata"].get("namespace").is_some(),
            namespaced,
            "{} {}: namespace",
            object.kind(),
            object.name()
        );
    }
}

//! The objects of the Helm chart `charts/edge-operator`, rendered by the real Helm CLI:
//! RBAC against the operator's own list of permissions, the operator's hardened
//! Deployment and its images, the metrics Service, the Prometheus Operator monitors and
//! rule, the Grafana dashboard ConfigMap and the NetworkPolicy.

use std::collections::BTreeSet;
use std::process::Command;

use edge_operator::rbac::Scope;
use edge_tests::helm::{
    self, NAMESPACE, RELEASE, Rendered, all_render, default_render, read, strings, yaml,
};
use edge_tests::tool;
use serde_json::{Value, json};

fn app_version() -> String {
    yaml("charts/edge-operator/Chart.yaml")["appVersion"]
        .as_str()
        .expect("Chart.yaml has appVersion")
        .to_string()
}

fn operator_container(render: &Rendered) -> &Value {
    &render.one("Deployment")["spec"]["template"]["spec"]["containers"][0]
}

/// (apiGroup, resource, verb) triples granted by RBAC rules.
fn grants(rules: &Value) -> BTreeSet<(String, String, String)> {
    let mut out = BTreeSet::new();
    for rule in rules.as_array().expect("rules is a list") {
        // Only binding is granted by name: of the agents' ClusterRole alone.
        if let Some(names) = rule.get("resourceNames") {
            assert_eq!(
                rule["resources"],
                serde_json::json!(["clusterroles"]),
                "{rule}"
            );
            assert_eq!(rule["verbs"], serde_json::json!(["bind"]), "{rule}");
            assert_eq!(names, &serde_json::json!([AGENT_ROLE]), "{rule}");
        }
        assert!(rule.get("nonResourceURLs").is_none(), "{rule}");
        for group in strings(&rule["apiGroups"]) {
            for resource in strings(&rule["resources"]) {
                for verb in strings(&rule["verbs"]) {
                    out.insert((group.into(), resource.into(), verb.into()));
                }
            }
        }
    }
    out
}

/// The operator's own list of the permissions it uses, as triples, for one scope.
fn required(scope: Scope) -> BTreeSet<(String, String, String)> {
    as_triples(edge_operator::required_permissions(), scope)
}

fn as_triples(
    permissions: Vec<edge_operator::Permission>,
    scope: Scope,
) -> BTreeSet<(String, String, String)> {
    permissions
        .into_iter()
        .filter(|p| p.scope == scope)
        .flat_map(|p| {
            p.verbs
                .iter()
                .map(|v| {
                    (
                        p.api_group.to_string(),
                        p.resource.to_string(),
                        v.to_string(),
                    )
                })
                .collect::<Vec<_>>()
        })
        .collect()
}

fn assert_same_grants(what: &str, granted: BTreeSet<(String, String, String)>, scope: Scope) {
    let expected = required(scope);
    assert!(!expected.is_empty());
    let extra: Vec<_> = granted.difference(&expected).collect();
    let missing: Vec<_> = expected.difference(&granted).collect();
    assert!(
        extra.is_empty() && missing.is_empty(),
        "{what} differs from edge_operator::required_permissions(): \
         extra {extra:?}, missing {missing:?}"
    );
}

/// The object of `kind` named `name`.
fn named<'a>(render: &'a Rendered, kind: &str, name: &str) -> &'a Value {
    render
        .all(kind)
        .into_iter()
        .find(|o| o.value["metadata"]["name"] == name)
        .map(|o| &o.value)
        .unwrap_or_else(|| panic!("no {kind} {name}"))
}

/// The operator's ClusterRole (namespaced resources) and its read-only one for Nodes.
const ROLE: &str = "edgepipe-edge-operator";
const NODES_ROLE: &str = "edgepipe-edge-operator-nodes";
/// The ClusterRole each pipeline's agent ServiceAccount is bound to (its fleet record).
const AGENT_ROLE: &str = "edgepipe-edge-operator-agent";

#[test]
fn cluster_roles_grant_exactly_what_the_operator_uses() {
    let render = default_render();
    assert_eq!(render.all("ClusterRole").len(), 3);
    let agents = named(render, "ClusterRole", AGENT_ROLE);
    assert_eq!(
        agents["rules"],
        json!([{"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["create", "patch"]}]),
        "agents may only create and patch Leases (the admission policy narrows it to their own)"
    );
    let role = named(render, "ClusterRole", ROLE);
    assert_same_grants("ClusterRole", grants(&role["rules"]), Scope::Cluster);
    let nodes = named(render, "ClusterRole", NODES_ROLE);
    assert_same_grants(
        "ClusterRole for Nodes",
        grants(&nodes["rules"]),
        Scope::ClusterScoped,
    );

    let account = render.one("ServiceAccount");
    for name in [ROLE, NODES_ROLE] {
        let binding = named(render, "ClusterRoleBinding", name);
        assert_eq!(binding["roleRef"]["kind"], "ClusterRole");
        assert_eq!(binding["roleRef"]["name"], name);
        assert_eq!(
            binding["subjects"],
            json!([{"kind": "ServiceAccount", "name": account["metadata"]["name"], "namespace": NAMESPACE}])
        );
    }
    let pod = &render.one("Deployment")["spec"]["template"]["spec"];
    assert_eq!(pod["serviceAccountName"], account["metadata"]["name"]);
}

#[test]
fn the_node_fallback_adds_exactly_its_own_permissions() {
    let render = helm::render(&[], &["agent.fallback.enabled=true"]).expect("renders");
    for (kind, name, scope) in [
        ("ClusterRole", ROLE, Scope::Cluster),
        (
            "Role",
            "edgepipe-edge-operator-leader-election",
            Scope::LeaseNamespace,
        ),
    ] {
        let mut expected = required(scope);
        expected.extend(as_triples(edge_operator::fallback_permissions(), scope));
        let granted = grants(&named(&render, kind, name)["rules"]);
        assert_eq!(granted, expected, "{kind} {name} with agent.fallback");
    }
    let args =
        strings(&render.one("Deployment")["spec"]["template"]["spec"]["containers"][0]["args"])
            .join(" ");
    assert!(
        args.contains("--fallback-unit-dir=/etc/systemd/system --fallback-grace-seconds=120"),
        "{args}"
    );
}

#[test]
fn watch_namespace_binds_the_role_in_that_namespace_only() {
    let render = helm::render(&[], &["watchNamespace=factory"]).expect("renders");
    let cluster_wide: Vec<&Value> = render
        .all("ClusterRoleBinding")
        .into_iter()
        .map(|b| &b.value)
        .collect();
    assert_eq!(
        cluster_wide.len(),
        1,
        "watchNamespace binds only the read-only Nodes role cluster-wide: {cluster_wide:?}"
    );
    assert_eq!(cluster_wide[0]["roleRef"]["name"], NODES_ROLE);
    let binding = render
        .all("RoleBinding")
        .into_iter()
        .find(|b| b.value["roleRef"]["kind"] == "ClusterRole")
        .map(|b| &b.value)
        .expect("a RoleBinding of the ClusterRole");
    assert_eq!(binding["metadata"]["namespace"], "factory");
    assert_eq!(binding["roleRef"]["name"], ROLE);
}

#[test]
fn leases_are_granted_only_in_the_release_namespace() {
    let render = default_render();
    let role = render.one("Role");
    assert_eq!(role["metadata"]["namespace"], NAMESPACE);
    assert_same_grants("Role", grants(&role["rules"]), Scope::LeaseNamespace);
    let binding = render.one("RoleBinding");
    assert_eq!(binding["metadata"]["namespace"], NAMESPACE);
    assert_eq!(binding["roleRef"]["kind"], "Role");
    assert_eq!(binding["roleRef"]["name"], role["metadata"]["name"]);
    assert_eq!(
        binding["subjects"][0]["name"],
        render.one("ServiceAccount")["metadata"]["name"]
    );

    let without = helm::render(&[], &["rbac.create=false"]).expect("renders");
    for kind in ["ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding"] {
        assert!(
            without.all(kind).is_empty(),
            "rbac.create=false still renders {kind}"
        );
    }
}

#[test]
fn operator_deployment_is_hardened() {
    let render = default_render();
    let deployment = render.one("Deployment");
    let pod = &deployment["spec"]["template"]["spec"];
    assert_eq!(pod["automountServiceAccountToken"], true);
    assert_eq!(
        render.one("ServiceAccount")["automountServiceAccountToken"],
        false
    );
    let pod_security = &pod["securityContext"];
    assert_eq!(pod_security["runAsNonRoot"], true);
    assert_eq!(pod_security["runAsUser"], 65532);
    assert_eq!(pod_security["seccompProfile"]["type"], "RuntimeDefault");
    assert!(pod.get("hostNetwork").is_none() && pod.get("hostPID").is_none());

    let containers = pod["containers"].as_array().expect("containers");
    assert_eq!(containers.len(), 1);
    let c = &containers[0];
    let sc = &c["securityContext"];
    assert_eq!(sc["runAsNonRoot"], true);
    assert_eq!(sc["runAsUser"], 65532);
    assert_eq!(sc["allowPrivilegeEscalation"], false);
    assert_eq!(sc["readOnlyRootFilesystem"], true);
    assert_eq!(sc["privileged"], false);
    assert_eq!(sc["capabilities"], json!({"drop": ["ALL"]}));
    assert_eq!(sc["seccompProfile"]["type"], "RuntimeDefault");

    assert!(c["resources"]["requests"]["cpu"].is_string());
    assert!(c["resources"]["requests"]["memory"].is_string());
    assert!(c["resources"]["limits"]["memory"].is_string());
    assert_eq!(
        c["ports"],
        json!([{"name": "metrics", "containerPort": 8080, "protocol": "TCP"}])
    );
    assert_eq!(
        c["livenessProbe"]["httpGet"],
        json!({"path": "/livez", "port": "metrics"})
    );
    assert_eq!(
        c["readinessProbe"]["httpGet"],
        json!({"path": "/readyz", "port": "metrics"})
    );
    let pod_namespace = c["env"]
        .as_array()
        .expect("env")
        .iter()
        .find(|e| e["name"] == "POD_NAMESPACE")
        .expect("POD_NAMESPACE is set");
    assert_eq!(
        pod_namespace["valueFrom"]["fieldRef"]["fieldPath"],
        "metadata.namespace"
    );
}

#[test]
fn operator_and_agent_images_follow_the_app_version() {
    let version = app_version();
    assert_eq!(
        version,
        env!("CARGO_PKG_VERSION"),
        "Chart.yaml appVersion must be the workspace version"
    );
    let c = operator_container(default_render());
    assert_eq!(
        c["image"],
        format!("ghcr.io/edgepipe/edge-operator:{version}")
    );
    assert_eq!(
        strings(&c["args"]),
        [
            "run",
            &format!("--agent-image=ghcr.io/edgepipe/edge-agent:{version}"),
            "--listen=0.0.0.0:8080",
            "--policy-file=/etc/edge-operator/policy.yaml",
            "--agent-cluster-role=edgepipe-edge-operator-agent",
            "--heartbeat-seconds=30",
        ]
    );
    // The chart's defaults are the operator's own defaults.
    let args = strings(&c["args"]);
    assert!(
        args.contains(&format!("--agent-image={}", edge_operator::default_agent_image()).as_str())
    );
    assert_eq!(default_render().one("Deployment")["spec"]["replicas"], 1);

    let c = operator_container(all_render());
    assert_eq!(c["image"], "ghcr.io/edgepipe/edge-operator:0.1.0-test");
    assert_eq!(
        strings(&c["args"]),
        [
            "run",
            "--agent-image=registry.example.com/edgepipe/edge-agent@sha256:\
             0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
            "--listen=0.0.0.0:9090",
            "--policy-file=/etc/edge-operator/policy.yaml",
            "--agent-cluster-role=edgepipe-edge-operator-agent",
            "--heartbeat-seconds=15",
            "--fallback-unit-dir=/etc/systemd/system",
            "--fallback-grace-seconds=60",
            "--namespace=factory",
            "--leader-elect",
            &format!("--lease-name={RELEASE}-edge-operator"),
        ]
    );
}

#[test]
fn more_than_one_replica_elects_a_leader_and_gets_a_disruption_budget() {
    assert!(default_render().all("PodDisruptionBudget").is_empty());
    let render = all_render();
    let deployment = render.one("Deployment");
    assert_eq!(deployment["spec"]["replicas"], 2);
    assert!(strings(&operator_container(render)["args"]).contains(&"--leader-elect"));
    let pdb = render.one("PodDisruptionBudget");
    assert_eq!(pdb["spec"]["minAvailable"], 1);
    assert_eq!(pdb["spec"]["unhealthyPodEvictionPolicy"], "AlwaysAllow");
    assert_eq!(
        pdb["spec"]["selector"]["matchLabels"],
        deployment["spec"]["selector"]["matchLabels"]
    );
}

#[test]
fn metrics_service_reaches_the_operator_pods() {
    let render = default_render();
    let service = render.one("Service");
    let pod_labels = &render.one("Deployment")["spec"]["template"]["metadata"]["labels"];
    for (key, value) in service["spec"]["selector"].as_object().expect("selector") {
        assert_eq!(&pod_labels[key], value, "selector {key}");
    }
    assert_eq!(
        service["spec"]["ports"],
        json!([{"name": "metrics", "port": 8080, "targetPort": "metrics", "protocol": "TCP"}])
    );
}

#[test]
fn monitors_select_the_operator_and_every_agent() {
    let render = all_render();
    let monitor = render.one("PodMonitor");
    let name = monitor["metadata"]["name"].as_str().expect("name");
    // AgentDown selects job=~".*edge-agent.*"; the job is "<namespace>/<PodMonitor name>".
    assert!(
        name.contains("edge-agent"),
        "PodMonitor {name} would not match AgentDown"
    );
    assert!(read("deploy/prometheus/edgepipe-rules.yaml").contains(r#"job=~".*edge-agent.*""#));
    assert_eq!(
        monitor["metadata"]["labels"]["release"],
        "kube-prometheus-stack"
    );
    // values-all.yaml watches one namespace: only its agents are scraped.
    assert_eq!(
        monitor["spec"]["namespaceSelector"],
        json!({"matchNames": ["factory"]})
    );
    assert_eq!(
        monitor["spec"]["selector"]["matchLabels"]["app.kubernetes.io/name"],
        "edge-agent"
    );
    let endpoint = &monitor["spec"]["podMetricsEndpoints"][0];
    assert_eq!(endpoint["port"], "metrics");
    assert_eq!(endpoint["path"], "/metrics");
    assert_eq!(endpoint["relabelings"][0]["targetLabel"], "node");

    // The operator's agent pods carry the selected labels and the named port.
    let manifest = read("deploy/examples/temperature-significant-change.yaml");
    let pipeline: edge_crds::EdgePipeline =
        serde_saphyr::from_str(&manifest).expect("the example is an EdgePipeline");
    let agents = edge_operator::render(&pipeline, &edge_tests::fleet::render_options())
        .expect("the operator renders it");
    let daemon_set = serde_json::to_value(&agents.daemon_set).expect("DaemonSet serializes");
    let pod = &daemon_set["spec"]["template"];
    for (key, value) in monitor["spec"]["selector"]["matchLabels"]
        .as_object()
        .expect("matchLabels")
    {
        assert_eq!(
            &pod["metadata"]["labels"][key], value,
            "agent pod label {key}"
        );
    }
    let ports: Vec<&Value> = pod["spec"]["containers"]
        .as_array()
        .expect("containers")
        .iter()
        .flat_map(|c| c["ports"].as_array().cloned().unwrap_or_default())
        .filter(|p| p["name"] == endpoint["port"])
        .map(|_| &endpoint["port"])
        .collect();
    assert_eq!(ports.len(), 1, "the agent pod has one port named metrics");

    let monitor = render.one("ServiceMonitor");
    let service = render.one("Service");
    for (key, value) in monitor["spec"]["selector"]["matchLabels"]
        .as_object()
        .expect("matchLabels")
    {
        assert_eq!(&service["metadata"]["labels"][key], value, "selector {key}");
    }
    assert_eq!(
        monitor["spec"]["namespaceSelector"]["matchNames"],
        json!([NAMESPACE])
    );
    assert_eq!(
        monitor["spec"]["endpoints"][0]["port"],
        service["spec"]["ports"][0]["name"]
    );
}

#[test]
fn prometheus_rule_is_the_shipped_rules_file() {
    let rule = all_render().one("PrometheusRule");
    assert_eq!(
        rule["metadata"]["labels"]["release"],
        "kube-prometheus-stack"
    );
    assert_eq!(rule["spec"], yaml("deploy/prometheus/edgepipe-rules.yaml"));
    // promtool checks the spec as Prometheus would load it.
    let file = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("chart-prometheusrule.json");
    std::fs::write(&file, rule["spec"].to_string()).expect("write rules");
    let out = Command::new(tool("promtool"))
        .args(["check", "rules"])
        .arg(&file)
        .output()
        .expect("promtool runs");
    assert!(
        out.status.success(),
        "promtool check rules:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn dashboard_config_map_is_for_the_grafana_sidecar() {
    let render = all_render();
    let cm = &render
        .all("ConfigMap")
        .into_iter()
        .find(|o| o.name().ends_with("-dashboard"))
        .expect("the dashboard ConfigMap")
        .value;
    assert_eq!(cm["metadata"]["labels"]["grafana_dashboard"], "1");
    assert_eq!(cm["metadata"]["namespace"], "monitoring");
    assert_eq!(cm["metadata"]["annotations"]["grafana_folder"], "Edgepipe");
    let shipped: Value =
        serde_json::from_str(&read("deploy/grafana/edgepipe.json")).expect("dashboard JSON");
    let text = cm["data"]["edgepipe.json"]
        .as_str()
        .expect("edgepipe.json key");
    let rendered: Value = serde_json::from_str(text).expect("ConfigMap holds JSON");
    assert_eq!(rendered, shipped);
}

#[test]
fn network_policy_allows_metrics_in_and_only_dns_and_the_api_server_out() {
    let render = all_render();
    let policy = &render.one("NetworkPolicy")["spec"];
    assert_eq!(
        policy["podSelector"]["matchLabels"],
        render.one("Deployment")["spec"]["selector"]["matchLabels"]
    );
    assert_eq!(policy["policyTypes"], json!(["Ingress", "Egress"]));
    assert_eq!(
        policy["ingress"],
        json!([{
            "ports": [{"port": "metrics", "protocol": "TCP"}],
            "from": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}]
        }])
    );
    assert_eq!(
        policy["egress"],
        json!([
            {
                "to": [{
                    "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "kube-system"}},
                    "podSelector": {"matchLabels": {"k8s-app": "kube-dns"}}
                }],
                "ports": [{"port": 53, "protocol": "UDP"}, {"port": 53, "protocol": "TCP"}]
            },
            {
                "ports": [{"port": 443, "protocol": "TCP"}, {"port": 6443, "protocol": "TCP"}],
                "to": [{"ipBlock": {"cidr": "10.0.0.10/32"}}]
            }
        ])
    );
}

#[test]
fn the_operator_logs_as_the_chart_says() {
    let env = |render: &Rendered| {
        render.one("Deployment")["spec"]["template"]["spec"]["containers"][0]["env"]
            .as_array()
            .expect("env")
            .iter()
            .find(|e| e["name"] == "EDGEPIPE_LOG_FORMAT")
            .map(|e| e["value"].clone())
    };
    assert_eq!(env(default_render()), Some(json!("text")));
    let json_logs = helm::render(&[], &["logFormat=json"]).expect("render");
    assert_eq!(env(&json_logs), Some(json!("json")));
    assert!(
        helm::render(&[], &["logFormat=xml"]).is_err(),
        "the values schema refuses other formats"
    );
}

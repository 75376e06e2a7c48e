//! What the Helm chart does for tenancy, rendered by the real Helm CLI: the tenant policy
//! reaches the operator as the file its `--policy-file` names (the chart's defaults are
//! the operator's built-in defaults, and a changed policy restarts the operator), and
//! the agents' PodMonitor scrapes only the namespaces that run pipelines.

use edge_operator::policy::{PortRange, TenantPolicy};
use edge_tests::helm::{self, Rendered, default_render, strings};
use serde_json::{Value, json};

fn policy_config_map(render: &Rendered) -> &Value {
    &render
        .all("ConfigMap")
        .into_iter()
        .find(|o| o.name().ends_with("-policy"))
        .expect("the tenant policy ConfigMap")
        .value
}

/// The policy as the operator reads it from the rendered ConfigMap.
fn policy_of(render: &Rendered) -> TenantPolicy {
    let text = policy_config_map(render)["data"]["policy.yaml"]
        .as_str()
        .expect("policy.yaml");
    TenantPolicy::from_yaml(text).unwrap_or_else(|e| panic!("{e}\n{text}"))
}

fn pod(render: &Rendered) -> &Value {
    &render.one("Deployment")["spec"]["template"]
}

fn checksum(render: &Rendered) -> String {
    pod(render)["metadata"]["annotations"]["checksum/tenant-policy"]
        .as_str()
        .expect("checksum annotation")
        .to_string()
}

#[test]
fn the_chart_default_policy_is_the_operators_built_in_policy() {
    assert_eq!(policy_of(default_render()), TenantPolicy::default());
}

#[test]
fn the_operator_reads_the_policy_from_the_mounted_config_map() {
    let render = default_render();
    let spec = &pod(render)["spec"];
    let container = &spec["containers"][0];
    let file = strings(&container["args"])
        .into_iter()
        .find_map(|a| a.strip_prefix("--policy-file="))
        .expect("--policy-file")
        .to_string();
    let mount = container["volumeMounts"]
        .as_array()
        .expect("volumeMounts")
        .iter()
        .find(|m| file.starts_with(&format!("{}/", m["mountPath"].as_str().unwrap_or("-"))))
        .expect("the policy file is on a mount");
    assert_eq!(mount["readOnly"], true);
    let volume = spec["volumes"]
        .as_array()
        .expect("volumes")
        .iter()
        .find(|v| v["name"] == mount["name"])
        .expect("the mounted volume");
    let config_map = policy_config_map(render);
    assert_eq!(volume["configMap"]["name"], config_map["metadata"]["name"]);
    let key = file.rsplit('/').next().expect("file name");
    assert!(config_map["data"][key].is_string(), "{file} is not a key");
}

#[test]
fn a_custom_policy_reaches_the_operator_and_restarts_it() {
    let custom = helm::render(
        &[],
        &[
            "tenantPolicy.embeddedBroker=true",
            "tenantPolicy.hostPorts={1883,8000-8099}",
            "tenantPolicy.resources.limits.memory=1Gi",
            "tenantPolicy.maxLogLevel=info",
            "podAnnotations.example\\.com/team=edge",
        ],
    )
    .expect("renders");
    let policy = policy_of(&custom);
    assert!(policy.embedded_broker);
    assert_eq!(
        policy.host_ports,
        [
            PortRange {
                first: 1883,
                last: 1883
            },
            PortRange {
                first: 8000,
                last: 8099
            }
        ]
    );
    assert_eq!(policy.resources.limits["memory"].0, "1Gi");
    assert_eq!(
        policy.resources.requests,
        TenantPolicy::default().resources.requests,
        "what is not set keeps the chart's default"
    );
    assert_ne!(
        checksum(&custom),
        checksum(default_render()),
        "a new policy must roll the operator"
    );
    assert_eq!(
        pod(&custom)["metadata"]["annotations"]["example.com/team"],
        "edge"
    );
}

#[test]
fn the_agent_pod_monitor_never_selects_every_namespace_by_default() {
    let selector = |sets: &[&str]| {
        let mut all = vec!["metrics.podMonitor.enabled=true"];
        all.extend_from_slice(sets);
        helm::render(&[], &all).map(|r| r.one("PodMonitor")["spec"]["namespaceSelector"].clone())
    };
    assert_eq!(
        selector(&["watchNamespace=factory"]).expect("renders"),
        json!({"matchNames": ["factory"]})
    );
    assert_eq!(
        selector(&[
            "watchNamespace=factory",
            "metrics.podMonitor.namespaces={a}"
        ])
        .expect("renders"),
        json!({"matchNames": ["factory"]}),
        "a namespaced operator's agents live in its namespace only"
    );
    assert_eq!(
        selector(&["metrics.podMonitor.namespaces={factory,plant-2}"]).expect("renders"),
        json!({"matchNames": ["factory", "plant-2"]})
    );
    let refused = selector(&[]).expect_err("a cluster-wide PodMonitor needs its namespaces");
    assert!(
        refused.contains("metrics.podMonitor.namespaces"),
        "{refused}"
    );
    assert_eq!(
        selector(&["metrics.podMonitor.anyNamespace=true"]).expect("renders"),
        json!({"any": true}),
        "every namespace only when asked for"
    );
    let defaults = helm::yaml("charts/edge-operator/values.yaml");
    assert_eq!(defaults["metrics"]["podMonitor"]["anyNamespace"], false);
}

/// Secrets: watched (as metadata) and read one by one (the referenced, opted-in ones, to
/// hash the referenced keys); no write verb.
#[test]
fn the_operator_may_read_secrets_but_never_write_them() {
    let role = default_render()
        .all("ClusterRole")
        .into_iter()
        .find(|r| r.value["metadata"]["name"] == "edgepipe-edge-operator")
        .map(|r| &r.value)
        .expect("the operator's ClusterRole");
    let secrets: Vec<&Value> = role["rules"]
        .as_array()
        .expect("rules")
        .iter()
        .filter(|r| strings(&r["resources"]).contains(&"secrets"))
        .collect();
    assert_eq!(secrets.len(), 1, "{secrets:?}");
    assert_eq!(strings(&secrets[0]["verbs"]), ["get", "list", "watch"]);
}

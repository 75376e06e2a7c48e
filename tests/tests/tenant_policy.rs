//! The tenant policy against a real control plane, through the path a user takes: the
//! chart installed with Helm and a policy (`--set tenantPolicy...`), the operator run as
//! the chart's ServiceAccount with the policy file the chart mounts, and pipelines
//! applied with the real kubectl into one namespace. Each pipeline that asks for more
//! than the policy allows (a control-plane toleration, a host port not allowed,
//! resources over the ceiling, a Secret that did not opt in) gets `Invalid` with reason
//! `ForbiddenByPolicy` naming the field, a Warning Event, and no DaemonSet or ConfigMap;
//! a compliant pipeline beside them runs, on edge nodes only (never the control-plane
//! node its selector also matches). Withdrawing its Secret's opt-in removes its agents,
//! labelling the Secret again brings them back. The operator reads the data of the
//! referenced Secret that opted in, and of no other Secret.

use std::time::Duration;

use edge_testkit::cluster::{Cluster, Node};
use edge_testkit::operator::Operator;
use edge_testkit::poll;
use edge_tests::helm::{self, NAMESPACE};
use serde_json::Value;

/// The operator Deployment the chart creates for release `edgepipe`.
const DEPLOYMENT: &str = "edgepipe-edge-operator";
const TENANT: &str = "tenant-a";
const WAIT: Duration = Duration::from_secs(120);

/// A pipeline in the tenant's namespace: `source` and `extra` are YAML at the
/// indentation of `spec:`'s children.
fn pipeline(name: &str, source: &str, extra: &str) -> String {
    format!(
        "apiVersion: edgepipe.dev/v1alpha1\nkind: EdgePipeline\nmetadata: {{name: {name}, namespace: {TENANT}}}\nspec:\n{source}  sink:\n    http:\n      url: https://ingest.example.com/batch\n      headers:\n        - name: Authorization\n          valueFrom: {{secretKeyRef: {{name: shared-token, key: authorization}}}}\n  nodeSelector: {{edgepipe.dev/edge: \"true\"}}\n{extra}"
    )
}

const BROKER_SOURCE: &str =
    "  source:\n    mqtt: {url: 'mqtt://${HOST_IP}:1883', topics: ['sensors/#']}\n";

/// (pipeline name, its spec, what the Invalid message must name)
fn outside_the_policy() -> Vec<(&'static str, String, Vec<&'static str>)> {
    vec![
        (
            "control-plane",
            pipeline(
                "control-plane",
                BROKER_SOURCE,
                "  tolerations:\n    - {key: node-role.kubernetes.io/control-plane, operator: Exists, effect: NoSchedule}\n",
            ),
            vec![
                "spec.tolerations[0]: toleration of node-role.kubernetes.io/control-plane is not allowed by the cluster policy",
            ],
        ),
        (
            "mqtt-port",
            pipeline(
                "mqtt-port",
                "  source:\n    mqtt: {embedded: {listen: '0.0.0.0:1883', users: [{username: press-1, passwordFrom: {env: PRESS_1_PASSWORD}, publish: ['sensors/press-1/#']}]}, topics: ['sensors/#']}\n",
                "",
            ),
            vec![
                "spec.source.mqtt.embedded.listen: host port 1883 is not allowed by the cluster policy (allowed host ports: 8883)",
            ],
        ),
        (
            "too-big",
            pipeline(
                "too-big",
                BROKER_SOURCE,
                "  agent:\n    resources: {requests: {cpu: 100m, memory: 64Gi}, limits: {memory: 64Gi}}\n",
            ),
            vec![
                "spec.agent.resources.requests.memory: 64Gi is above the cluster policy's ceiling of 256Mi",
                "spec.agent.resources.limits.memory: 64Gi is above the cluster policy's ceiling of 512Mi",
            ],
        ),
        (
            "no-opt-in",
            pipeline("no-opt-in", BROKER_SOURCE, "")
                .replace("name: shared-token", "name: ingest-token"),
            vec![
                "spec.sink.http.headers[0].valueFrom.secretKeyRef: Secret \"ingest-token\" is not labelled edgepipe.dev/allow-pipelines: \"true\"",
            ],
        ),
    ]
}

/// The compliant pipeline: the embedded broker on an allowed port, a toleration of the
/// edge taint, an opted-in Secret, resources within the ceilings.
fn compliant() -> String {
    pipeline(
        "compliant",
        "  source:\n    mqtt: {embedded: {listen: '0.0.0.0:8883', users: [{username: press-1, passwordFrom: {env: PRESS_1_PASSWORD}, publish: ['sensors/press-1/#']}]}, topics: ['sensors/#']}\n",
        "  tolerations:\n    - {key: edgepipe.dev/edge, operator: Exists, effect: NoSchedule}\n  agent:\n    resources: {requests: {cpu: 50m, memory: 64Mi}, limits: {memory: 256Mi}}\n",
    )
}

/// Waits for `Invalid=True` with reason ForbiddenByPolicy; returns its message.
fn wait_forbidden(cluster: &Cluster, name: &str) -> String {
    poll(
        WAIT,
        &format!("{name}: Invalid/ForbiddenByPolicy"),
        || match cluster.pipeline_condition(TENANT, name, "Invalid") {
            Some((status, reason, message))
                if status == "True" && reason == "ForbiddenByPolicy" =>
            {
                Some(message)
            }
            _ => None,
        },
    )
}

fn warning_reasons(cluster: &Cluster, name: &str) -> Vec<String> {
    let events = cluster.warning_events(TENANT, name);
    events["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| e["reason"].as_str().map(str::to_string))
        .collect()
}

fn exists(cluster: &Cluster, kind: &str, name: &str) -> bool {
    cluster
        .kubectl(&["get", kind, name, "-n", TENANT])
        .status
        .success()
}

fn secret(cluster: &Cluster, name: &str) {
    cluster.kubectl_ok(&[
        "create",
        "secret",
        "generic",
        name,
        "-n",
        TENANT,
        "--from-literal=authorization=Bearer test",
    ]);
}

/// Labels (`key=value`) or unlabels (`key-`) the Secret `name` of the tenant, as a user
/// opts it in to pipelines or withdraws that.
fn label_secret(cluster: &Cluster, name: &str, label: &str) {
    cluster.kubectl_ok(&["label", "secret", name, "-n", TENANT, label]);
}

/// The operator's requests as `verb resource` for the audit events matching `keep`.
fn operator_requests(
    cluster: &Cluster,
    operator: &Operator,
    keep: impl Fn(&Value) -> bool,
) -> Vec<String> {
    cluster
        .audit_events()
        .iter()
        .filter(|e| e["user"]["username"] == operator.user.as_str())
        .filter(|e| keep(e))
        .map(|e| {
            format!(
                "{} {} ({})",
                e["verb"], e["requestURI"], e["responseStatus"]["code"]
            )
        })
        .collect()
}

#[test]
fn pipelines_outside_the_tenant_policy_get_no_agents_and_the_rest_keep_running() {
    let cluster = Cluster::start(
        "tenancy",
        &[
            Node::new("edge-1").label("edgepipe.dev/edge", "true"),
            Node::new("edge-2")
                .label("edgepipe.dev/edge", "true")
                .taint("edgepipe.dev/edge", "true", "NoSchedule"),
            // A k3s server: labelled control plane, not tainted, and (by mistake or
            // malice) carrying the edge label the pipelines select.
            Node::new("server-1")
                .label("node-role.kubernetes.io/control-plane", "true")
                .label("edgepipe.dev/edge", "true"),
        ],
    );
    let _guard = cluster.guard();
    let install = helm::install_on(
        cluster.kubeconfig(),
        &[
            "tenantPolicy.embeddedBroker=true",
            "tenantPolicy.hostPorts={8883}",
        ],
        &["--wait", "--timeout", "120s"],
    );
    assert!(install.success, "helm install: {}", install.stderr);
    let operator = Operator::from_deployment(&cluster, NAMESPACE, DEPLOYMENT, "operator-0");
    poll(WAIT, "the operator's /readyz", || {
        operator.ready().then_some(())
    });

    cluster.namespace(TENANT);
    secret(&cluster, "ingest-token");
    secret(&cluster, "shared-token");
    label_secret(
        &cluster,
        "shared-token",
        "edgepipe.dev/allow-pipelines=true",
    );

    let bad = outside_the_policy();
    for (_, manifest, _) in &bad {
        cluster.apply(manifest);
    }
    cluster.apply(&compliant());

    // One bad object never stops the rest: the compliant pipeline runs beside them, on
    // the edge nodes only.
    cluster.wait_pipeline_ready(TENANT, "compliant");
    assert_eq!(cluster.agent_config_maps(TENANT, "compliant").len(), 1);
    let placed = poll(WAIT, "compliant's agents on both edge nodes", || {
        let nodes = cluster.agent_nodes(TENANT, "compliant");
        (nodes == ["edge-1", "edge-2"]).then_some(nodes)
    });
    assert!(!placed.contains(&"server-1".to_string()));
    let ds = cluster.get_json(&["daemonset", "compliant-agent", "-n", TENANT]);
    let ports = ds["spec"]["template"]["spec"]["containers"][0]["ports"].to_string();
    assert!(ports.contains("\"hostPort\":8883"), "{ports}");

    for (name, _, expected) in &bad {
        let message = wait_forbidden(&cluster, name);
        for line in expected {
            assert!(
                message.contains(line),
                "{name}: the Invalid condition does not say {line:?}:\n{message}"
            );
        }
        poll(WAIT, &format!("{name}: a Warning Event"), || {
            warning_reasons(&cluster, name)
                .iter()
                .any(|r| r == "ForbiddenByPolicy")
                .then_some(())
        });
        let ready = cluster
            .pipeline_condition(TENANT, name, "Ready")
            .expect("Ready condition");
        assert_eq!(
            (ready.0.as_str(), ready.1.as_str()),
            ("False", "ForbiddenByPolicy")
        );
        let agent = format!("{name}-agent");
        assert!(
            !exists(&cluster, "daemonset", &agent),
            "{name} got a DaemonSet"
        );
        assert!(
            cluster.agent_config_maps(TENANT, name).is_empty(),
            "{name} got a ConfigMap"
        );
        assert!(
            cluster.agent_nodes(TENANT, name).is_empty(),
            "{name} runs agents"
        );
    }

    // Withdrawing the Secret's opt-in stops the agents that use it...
    label_secret(&cluster, "shared-token", "edgepipe.dev/allow-pipelines-");
    let message = wait_forbidden(&cluster, "compliant");
    assert!(
        message
            .contains("spec.sink.http.headers[0].valueFrom.secretKeyRef: Secret \"shared-token\""),
        "{message}"
    );
    let gone = cluster.kubectl(&[
        "wait",
        "--for=delete",
        "daemonset/compliant-agent",
        "-n",
        TENANT,
        "--timeout=120s",
    ]);
    assert!(
        gone.status.success() || String::from_utf8_lossy(&gone.stderr).contains("NotFound"),
        "the agents of a pipeline that lost its Secret stay: {}",
        String::from_utf8_lossy(&gone.stderr)
    );
    poll(WAIT, "compliant's configuration revisions to go", || {
        cluster
            .agent_config_maps(TENANT, "compliant")
            .is_empty()
            .then_some(())
    });
    poll(WAIT, "compliant's agent pods to go", || {
        cluster
            .agent_nodes(TENANT, "compliant")
            .is_empty()
            .then_some(())
    });

    // ... and opting in again brings them back.
    label_secret(
        &cluster,
        "shared-token",
        "edgepipe.dev/allow-pipelines=true",
    );
    cluster.wait_pipeline_ready(TENANT, "compliant");
    poll(WAIT, "compliant's agents back on both edge nodes", || {
        (cluster.agent_nodes(TENANT, "compliant") == ["edge-1", "edge-2"]).then_some(())
    });

    // RBAC exactly as the chart grants it; Secrets listed and watched (as metadata), and
    // read only when a pipeline references them and they opted in: never `ingest-token`.
    let refused = operator_requests(&cluster, &operator, |e| e["responseStatus"]["code"] == 403);
    assert!(
        refused.is_empty(),
        "RBAC refused the operator: {refused:#?}"
    );
    let secrets = operator_requests(&cluster, &operator, |e| {
        e["objectRef"]["resource"] == "secrets"
    });
    assert!(!secrets.is_empty(), "the operator never watched Secrets");
    let reads: Vec<&String> = secrets
        .iter()
        .filter(|r| !(r.starts_with("\"list\"") || r.starts_with("\"watch\"")))
        .collect();
    let opted_in = format!("\"get\" \"/api/v1/namespaces/{TENANT}/secrets/shared-token\" ");
    assert!(
        reads.iter().any(|r| r.starts_with(&opted_in)),
        "the operator never read the referenced, opted-in Secret: {secrets:#?}"
    );
    let others: Vec<&&String> = reads.iter().filter(|r| !r.starts_with(&opted_in)).collect();
    assert!(
        others.is_empty(),
        "the operator read Secrets no running pipeline may use: {others:#?}"
    );
}

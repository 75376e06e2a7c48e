//! The chart's life cycle and the namespaced, highly available operator against a real
//! control plane: `helm install` with `watchNamespace` and two replicas, two operator
//! processes (as the chart's ServiceAccount) electing a leader on the Lease, `kill -9`
//! of the leader, `helm upgrade`, and `helm uninstall` keeping the CRD.
//!
//! One test, in order: each step builds on the cluster state the last one left.

use std::time::{Duration, Instant};

use edge_testkit::cluster::{Cluster, Node};
use edge_testkit::operator::Operator;
use edge_testkit::poll;
use edge_tests::fleet::{EDGE_NODES, pipeline_manifest};
use edge_tests::helm::{self, CHART, NAMESPACE, RELEASE};
use serde_json::Value;

const DEPLOYMENT: &str = "edgepipe-edge-operator";
const LEASE: &str = "edgepipe-edge-operator";
const CRD: &str = "edgepipelines.edgepipe.dev";
const WAIT: Duration = Duration::from_secs(120);
/// The Lease duration the operator uses (edge_operator::leader::LEASE_DURATION_SECONDS).
const LEASE_DURATION: Duration = Duration::from_secs(15);

fn helm_run(cluster: &Cluster, args: &[&str]) -> helm::HelmRun {
    let run = helm::helm_on(cluster.kubeconfig(), args);
    assert!(run.success, "helm {}: {}", args.join(" "), run.stderr);
    run
}

/// Pipeline `line1` of `namespace` on the edge nodes.
fn pipeline(namespace: &str, batch: u32) -> String {
    pipeline_manifest(namespace, "line1", EDGE_NODES, Some(batch))
}

fn holder(cluster: &Cluster) -> Option<String> {
    let out = cluster.kubectl(&["get", "lease", LEASE, "-n", NAMESPACE, "-o", "json"]);
    let lease: Value = serde_json::from_slice(&out.stdout).ok()?;
    lease["spec"]["holderIdentity"]
        .as_str()
        .filter(|h| !h.is_empty())
        .map(str::to_string)
}

fn reconciles(operator: &Operator) -> f64 {
    operator.metric_sum("edge_operator_reconciliations_total")
}

fn config_hash(cluster: &Cluster, namespace: &str) -> Option<String> {
    let out = cluster.kubectl(&[
        "get",
        "daemonset",
        "line1-agent",
        "-n",
        namespace,
        "-o",
        "json",
    ]);
    let ds: Value = serde_json::from_slice(&out.stdout).ok()?;
    ds["spec"]["template"]["metadata"]["annotations"]["edgepipe.dev/config-hash"]
        .as_str()
        .map(str::to_string)
}

fn forbidden(cluster: &Cluster, user: &str) -> Vec<String> {
    cluster
        .audit_events()
        .iter()
        .filter(|e| e["user"]["username"] == user && e["responseStatus"]["code"] == 403)
        .map(|e| format!("{} {}", e["verb"], e["requestURI"]))
        .collect()
}

#[test]
fn namespaced_operator_with_leader_election_through_the_chart_life_cycle() {
    let cluster = Cluster::start(
        "scoped",
        &[
            Node::new("edge-1").label("edgepipe.dev/edge", "true"),
            Node::new("edge-2").label("edgepipe.dev/edge", "true"),
            Node::new("server-1"),
        ],
    );
    let _guard = cluster.guard();
    cluster.namespace("team-a");
    cluster.namespace("team-b");

    // Test 1: helm install, with the operator limited to team-a and two replicas.
    let install = helm::install_on(
        cluster.kubeconfig(),
        &["watchNamespace=team-a", "replicaCount=2"],
        &["--wait", "--timeout", "120s"],
    );
    assert!(install.success, "helm install: {}", install.stderr);
    cluster.kubectl_ok(&[
        "wait",
        "--for=condition=Established",
        &format!("crd/{CRD}"),
        "--timeout=60s",
    ]);
    cluster.kubectl_ok(&["get", "clusterrole", DEPLOYMENT]);
    cluster.kubectl_ok(&["get", "rolebinding", DEPLOYMENT, "-n", "team-a"]);
    cluster.kubectl_ok(&[
        "get",
        "role",
        &format!("{DEPLOYMENT}-leader-election"),
        "-n",
        NAMESPACE,
    ]);
    assert!(
        !cluster
            .kubectl(&["get", "clusterrolebinding", DEPLOYMENT])
            .status
            .success(),
        "watchNamespace must not bind the operator cluster-wide"
    );
    let deployment = cluster.get_json(&["deployment", DEPLOYMENT, "-n", NAMESPACE]);
    assert_eq!(deployment["spec"]["replicas"], 2);
    assert_eq!(deployment["status"]["readyReplicas"], 2);

    // Test 8: two operators as the chart's ServiceAccount; one leads, one stands by.
    let a = Operator::from_deployment(&cluster, NAMESPACE, DEPLOYMENT, "operator-a");
    let b = Operator::from_deployment(&cluster, NAMESPACE, DEPLOYMENT, "operator-b");
    let leader = poll(WAIT, "a Lease holder", || holder(&cluster));
    assert!(leader == a.identity || leader == b.identity, "{leader}");

    // Test 2, namespaced: team-a is reconciled, team-b is out of the operator's reach.
    cluster.apply(&pipeline("team-a", 100));
    cluster.apply(&pipeline("team-b", 100));
    let ready = cluster.kubectl(&[
        "wait",
        "--for=condition=Ready",
        "epl/line1",
        "-n",
        "team-a",
        "--timeout=120s",
    ]);
    assert!(
        ready.status.success(),
        "team-a not Ready: {}\n{}\n{}",
        String::from_utf8_lossy(&ready.stderr),
        a.log_tail(20),
        b.log_tail(20)
    );
    let (leading, standing_by) = if leader == a.identity {
        (&a, &b)
    } else {
        (&b, &a)
    };
    assert!(reconciles(leading) > 0.0, "the leader reconciled nothing");
    assert_eq!(
        reconciles(standing_by),
        0.0,
        "the standby reconciled: only the leader may write"
    );
    assert!(
        config_hash(&cluster, "team-b").is_none(),
        "the operator reached beyond its namespace"
    );
    let team_b = cluster.get_json(&["epl", "line1", "-n", "team-b"]);
    assert!(team_b["status"].is_null(), "team-b got a status: {team_b}");

    // kill -9 of the leader: the standby takes over within the Lease duration and rolls
    // out the next change.
    let before = config_hash(&cluster, "team-a").expect("team-a's DaemonSet");
    let (mut leading, survivor) = if leader == a.identity { (a, b) } else { (b, a) };
    leading.kill();
    let killed = leading.identity.clone();
    let killed_at = Instant::now();
    cluster.apply(&pipeline("team-a", 200));
    let new_holder = poll(WAIT, "a new Lease holder", || {
        holder(&cluster).filter(|h| *h != killed)
    });
    let takeover = killed_at.elapsed();
    eprintln!("the standby took the Lease {takeover:?} after kill -9 of the leader");
    assert_eq!(new_holder, survivor.identity);
    assert!(
        takeover <= LEASE_DURATION + Duration::from_secs(5),
        "takeover took {takeover:?}, the Lease lasts {LEASE_DURATION:?}"
    );
    poll(WAIT, "the new leader to roll out the change", || {
        config_hash(&cluster, "team-a").filter(|h| *h != before)
    });
    let user = survivor.user.clone();
    let refused = forbidden(&cluster, &user);
    assert!(
        refused.is_empty(),
        "RBAC refused the operator: {refused:#?}"
    );
    assert!(
        cluster
            .audit_events()
            .iter()
            .any(|e| e["user"]["username"] == user.as_str()),
        "the audit log holds no request of {user}"
    );

    // helm upgrade changes the release in place.
    helm_run(
        &cluster,
        &[
            "upgrade",
            RELEASE,
            CHART,
            "--namespace",
            NAMESPACE,
            "--reuse-values",
            "--set",
            "logLevel=debug",
            "--wait",
            "--timeout",
            "120s",
        ],
    );
    let deployment = cluster.get_json(&["deployment", DEPLOYMENT, "-n", NAMESPACE]);
    let env = &deployment["spec"]["template"]["spec"]["containers"][0]["env"];
    assert!(
        env.as_array()
            .into_iter()
            .flatten()
            .any(|v| v["name"] == "RUST_LOG" && v["value"] == "debug"),
        "helm upgrade did not reach the Deployment: {env}"
    );

    // helm uninstall keeps the CRD, and with it every pipeline.
    helm_run(
        &cluster,
        &["uninstall", RELEASE, "--namespace", NAMESPACE, "--wait"],
    );
    assert!(
        !cluster
            .kubectl(&["get", "deployment", DEPLOYMENT, "-n", NAMESPACE])
            .status
            .success(),
        "helm uninstall left the operator"
    );
    cluster.kubectl_ok(&["get", "crd", CRD]);
    cluster.kubectl_ok(&["get", "epl", "line1", "-n", "team-a"]);
}

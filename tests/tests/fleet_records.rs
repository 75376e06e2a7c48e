//! The agents' fleet records, against a real control plane with kwok's simulated nodes,
//! the chart installed by Helm and the operator run as the chart's ServiceAccount:
//!
//! - each pipeline gets its agent ServiceAccount and RoleBinding, and the pod template
//!   projects that account's token;
//! - real agent binaries on the host, one per simulated node, each with a token bound to
//!   its agent pod (what the kubelet projects), keep their node's record: one agent
//!   delivers, one's upstream is down, one has a backlog behind a capped link;
//!   one ran in fallback for a while before (the node's fallback run is reported);
//!   `status.fleet`, the
//!   `kubectl get epl` columns and the operator's metrics say so, and an agent killed
//!   with `kill -9` turns offline once its record expires;
//! - the API server (the chart's ValidatingAdmissionPolicy) lets an agent's token write
//!   only its own pipeline's record of its own node: another node's record, a record
//!   labelled for another node and any other Lease of the namespace are denied; and
//!   `edge-agent doctor` finds the same by a server-side dry run.

use std::sync::OnceLock;
use std::time::Duration;

use edge_testkit::agent::Agent;
use edge_testkit::cluster::{Cluster, Node};
use edge_testkit::mqtt::{Mosquitto, Publisher};
use edge_testkit::receiver::Receiver;
use edge_testkit::{pipeline_yaml, poll};
use edge_tests::fleet::{Fleet, pipeline_manifest, site_nodes};
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(180);
/// The namespace of the pipelines, and the label value of their nodes.
const SITE: &str = "records";

fn fleet() -> &'static Fleet {
    static FLEET: OnceLock<Fleet> = OnceLock::new();
    FLEET.get_or_init(|| {
        let nodes: Vec<Node> = (1..=3)
            .map(|i| Node::new(&format!("{SITE}-{i}")).label("edgepipe.dev/site", SITE))
            .collect();
        let fleet = Fleet::start("fleet-records", &nodes);
        fleet.cluster.namespace(SITE);
        fleet
    })
}

/// Applies pipeline `name` on the site's nodes and returns its agent pods as
/// `(pod, node)`, sorted by node.
fn apply_pipeline(cluster: &Cluster, name: &str) -> Vec<(String, String)> {
    cluster.apply(&pipeline_manifest(SITE, name, &site_nodes(SITE), None));
    poll(WAIT, "an agent pod on each of the 3 nodes", || {
        let mut pods: Vec<(String, String)> = cluster
            .agent_pods(SITE, name)
            .iter()
            .filter_map(|p| {
                Some((
                    p["metadata"]["name"].as_str()?.to_string(),
                    p["spec"]["nodeName"].as_str()?.to_string(),
                ))
            })
            .collect();
        pods.sort_by(|a, b| a.1.cmp(&b.1));
        (pods.len() == 3).then_some(pods)
    })
}

fn fleet_status(cluster: &Cluster, name: &str) -> Value {
    cluster.get_json(&["epl", name, "-n", SITE])["status"]["fleet"].clone()
}

/// The host agent standing in for pipeline `pipeline`'s pod `pod` on `node`: its own
/// broker topic, the given upstream (and `sink_extra` in its sink), the pod's token, a
/// 1 s heartbeat.
fn host_agent(
    cluster: &Cluster,
    dir: &std::path::Path,
    pipeline: &str,
    (pod, node): &(String, String),
    broker: u16,
    (upstream, sink_extra): (u16, &str),
) -> Agent {
    let (token, _) = cluster.pod_token(SITE, &format!("edgepipe-agent.{pipeline}"), pod);
    let config = pipeline_yaml(
        SITE,
        pipeline,
        &format!(
            r#"  source:
    mqtt: {{url: "mqtt://127.0.0.1:{broker}", topics: ["sensors/{node}/#"], clientId: {node}}}
    format: {{value: value, device: device_id}}
  sink:
    http:
      url: http://127.0.0.1:{upstream}/ingest
      batchSize: 5
      flushInterval: 100ms
      retry: {{initialBackoff: 50ms, maxBackoff: 500ms}}
{sink_extra}"#
        ),
    );
    let lease = format!("edgepipe-agent.{pipeline}.{node}");
    let dir = dir.join(node);
    std::fs::create_dir_all(&dir).unwrap();
    let ca = cluster.ca_file();
    Agent::start_with_env(
        &dir,
        &config,
        &[
            ("NODE_NAME", node),
            ("POD_NAMESPACE", SITE),
            ("EDGEPIPE_FLEET_LEASE", &lease),
            ("EDGEPIPE_HEARTBEAT_SECONDS", "1"),
            ("EDGEPIPE_KUBE_API", cluster.server()),
            ("EDGEPIPE_KUBE_TOKEN_FILE", token.to_str().unwrap()),
            ("EDGEPIPE_KUBE_CA_FILE", ca.to_str().unwrap()),
        ],
    )
}

#[test]
fn a_pipeline_gets_an_agent_account_whose_token_its_pods_project() {
    let Fleet { cluster, .. } = fleet();
    let _guard = cluster.guard();
    apply_pipeline(cluster, "accounts");
    let account = cluster.get_json(&["serviceaccount", "edgepipe-agent.accounts", "-n", SITE]);
    assert_eq!(account["automountServiceAccountToken"], false);
    assert_eq!(
        account["metadata"]["ownerReferences"][0]["kind"],
        "EdgePipeline"
    );
    let binding = cluster.get_json(&["rolebinding", "edgepipe-agent.accounts", "-n", SITE]);
    assert_eq!(binding["roleRef"]["name"], "edgepipe-edge-operator-agent");
    assert_eq!(binding["subjects"][0]["name"], "edgepipe-agent.accounts");
    let ds = cluster.get_json(&["daemonset", "accounts-agent", "-n", SITE]);
    let pod = &ds["spec"]["template"]["spec"];
    assert_eq!(pod["serviceAccountName"], "edgepipe-agent.accounts");
    assert_eq!(pod["automountServiceAccountToken"], false);
    let projected = pod["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == "api")
        .expect("the api volume");
    assert_eq!(
        projected["projected"]["sources"][0]["serviceAccountToken"]["expirationSeconds"],
        3600
    );
    let env = pod["containers"][0]["env"].as_array().unwrap();
    assert!(
        env.iter().any(|e| e["name"] == "EDGEPIPE_FLEET_LEASE"
            && e["value"] == "edgepipe-agent.accounts.$(NODE_NAME)"),
        "{env:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_report_their_state_into_the_fleet_status() {
    let Fleet { cluster, operator } = fleet();
    let _guard = cluster.guard();
    let pods = apply_pipeline(cluster, "line");
    let dir = tempfile::tempdir().unwrap();
    let broker = Mosquitto::start();
    let receiver = Receiver::start().await;
    let dead = Receiver::down();
    let mut delivering = host_agent(
        cluster,
        dir.path(),
        "line",
        &pods[0],
        broker.port,
        (receiver.port, ""),
    );
    let mut stuck = host_agent(
        cluster,
        dir.path(),
        "line",
        &pods[1],
        broker.port,
        (dead.port, ""),
    );
    // The third delivers, but through a link capped far below what it receives: a backlog
    // that waits while its upstream is up.
    let mut thin = host_agent(
        cluster,
        dir.path(),
        "line",
        &pods[2],
        broker.port,
        (
            receiver.port,
            "    rateLimit: {bytesPerSecond: \"64\", burst: \"64\"}\n",
        ),
    );
    delivering.wait_ready().await;
    // The node of the delivering agent was cut off from the control plane a while: the
    // node's fallback ran the pipeline it stored (`edge-agent fallback`), until the agent
    // came back. Its record says so.
    delivering.terminate();
    let fallback_dir = dir.path().join("fallback");
    std::fs::create_dir_all(&fallback_dir).unwrap();
    let mut fallback = Agent::start_fallback(&fallback_dir, &delivering.data_dir);
    fallback.wait_ready().await;
    fallback.terminate();
    delivering.restart();
    delivering.wait_ready().await;
    stuck.wait_ready().await;
    thin.wait_ready().await;

    let mut publisher = Publisher::connect(broker.port, "sensors");
    for (_, node) in &pods {
        for i in 0..20 {
            let payload = format!(r#"{{"device_id":"d{i}","value":{i}}}"#);
            publisher
                .send(&format!("sensors/{node}/temperature"), payload)
                .await;
        }
    }
    publisher.flush().await;

    let (good, bad, behind) = (&pods[0].1, &pods[1].1, &pods[2].1);
    let fleet = poll(
        WAIT,
        "status.fleet with one upstream down and one backlog",
        || {
            let fleet = fleet_status(cluster, "line");
            (fleet["reporting"] == 3
                && fleet["upstreamDown"] == 1
                && fleet["backlogged"] == 1
                && fleet["backlogRecords"].as_i64() >= Some(20)
                && fleet["offline"] == 0)
                .then_some(fleet)
        },
    );
    let backlogged = fleet["worst"]
        .as_array()
        .unwrap()
        .iter()
        .find(|w| w["node"] == behind.as_str())
        .unwrap_or_else(|| panic!("{behind} among the worst: {fleet}"));
    assert!(
        backlogged["reason"]
            .as_str()
            .unwrap()
            .starts_with("backlog "),
        "{fleet}"
    );
    assert!(fleet["backlogBytes"].as_i64() > Some(0), "{fleet}");
    assert_eq!(fleet["fallbackRuns"][0]["node"], good.as_str(), "{fleet}");
    assert!(
        fleet["fallbackRuns"][0]["seconds"].as_i64() >= Some(0),
        "{fleet}"
    );
    assert_eq!(fleet["worst"][0]["node"], bad.as_str(), "{fleet}");
    let reason = fleet["worst"][0]["reason"].as_str().unwrap();
    assert!(reason.starts_with("upstream down since "), "{reason}");
    assert!(
        fleet["worst"]
            .as_array()
            .unwrap()
            .iter()
            .all(|w| w["node"] != good.as_str()),
        "the delivering node is fine: {fleet}"
    );
    assert!(
        receiver.accepted().len() >= 20,
        "the delivering agent sent its readings"
    );

    let table = cluster.kubectl_ok(&["get", "epl", "-n", SITE, "line"]);
    println!("kubectl get epl -n {SITE} line:\n{table}");
    let header: Vec<&str> = table.lines().next().unwrap().split_whitespace().collect();
    for column in ["DOWN", "BACKLOG", "OLDEST"] {
        assert!(header.contains(&column), "{table}");
    }
    let down = header.iter().position(|c| *c == "DOWN").unwrap();
    let row: Vec<&str> = table.lines().nth(1).unwrap().split_whitespace().collect();
    assert_eq!(row[down], "1", "{table}");

    let series = format!(
        "edge_operator_fleet_agents{{namespace=\"{SITE}\",pipeline=\"line\",state=\"upstream_down\"}}"
    );
    poll(WAIT, "the operator's fleet metrics", || {
        let metrics = operator.metrics();
        (metrics.get(&series) == Some(&1.0)
            && metrics
                .iter()
                .any(|(k, v)| k.starts_with("edge_operator_fleet_backlog_bytes{") && *v > 0.0))
        .then_some(())
    });

    // A dead agent stops renewing its record: offline once it expires (3 intervals).
    stuck.kill();
    let fleet = poll(WAIT, "the killed agent counted offline", || {
        let fleet = fleet_status(cluster, "line");
        (fleet["offline"] == 1 && fleet["upstreamDown"] == 0).then_some(fleet)
    });
    assert_eq!(fleet["worst"][0]["node"], bad.as_str(), "{fleet}");
    assert!(
        fleet["worst"][0]["reason"]
            .as_str()
            .unwrap()
            .starts_with("offline: last heartbeat "),
        "{fleet}"
    );
    let written: f64 = delivering
        .metrics()
        .iter()
        .filter(|(k, _)| {
            k.starts_with("edge_agent_heartbeats_total{") && k.contains("outcome=\"ok\"")
        })
        .map(|(_, v)| v)
        .sum();
    assert!(written >= 2.0, "{}", delivering.log_text());
}

#[test]
fn an_agent_token_writes_only_its_own_record() {
    let Fleet { cluster, .. } = fleet();
    let _guard = cluster.guard();
    let pods = apply_pipeline(cluster, "guarded");
    let (own_pod, own_node) = &pods[0];
    let other_node = &pods[1].1;
    let (_, kubeconfig) = cluster.pod_token(SITE, "edgepipe-agent.guarded", own_pod);
    let lease = |name: &str, pipeline: &str, node: &str| {
        format!(
            r#"apiVersion: coordination.k8s.io/v1
kind: Lease
metadata:
  name: {name}
  namespace: {SITE}
  labels: {{app.kubernetes.io/managed-by: edge-agent, edgepipe.dev/pipeline: {pipeline}, edgepipe.dev/node: {node}}}
spec: {{holderIdentity: {node}, leaseDurationSeconds: 90}}
"#
        )
    };
    let apply = |manifest: String| {
        cluster.kubectl_as(
            &kubeconfig,
            &[
                "apply",
                "--server-side",
                "--field-manager=edge-agent",
                "-f",
                "-",
            ],
            Some(&manifest),
        )
    };

    let own = apply(lease(
        &format!("edgepipe-agent.guarded.{own_node}"),
        "guarded",
        own_node,
    ));
    assert!(
        own.status.success(),
        "its own record: {}",
        String::from_utf8_lossy(&own.stderr)
    );

    let denied = [
        (
            lease(
                &format!("edgepipe-agent.guarded.{other_node}"),
                "guarded",
                other_node,
            ),
            "may write only its own record",
        ),
        (
            lease(
                &format!("edgepipe-agent.guarded.{own_node}"),
                "guarded",
                other_node,
            ),
            "labelled with the agent's own pipeline and node",
        ),
        (
            lease(
                &format!("edgepipe-agent.other.{own_node}"),
                "other",
                own_node,
            ),
            "may write only its own record",
        ),
        (
            lease("some-controller-leader", "guarded", own_node),
            "may write only its own record",
        ),
    ];
    for (manifest, message) in denied {
        let out = apply(manifest.clone());
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && stderr.contains(message),
            "expected a denial with {message:?} for\n{manifest}\ngot: {stderr}"
        );
    }
    // `edge-agent doctor` in the pod asks the API server the same by a dry run: its own
    // record is accepted, another node's refused with the policy's message.
    let (token, _) = cluster.pod_token(SITE, "edgepipe-agent.guarded", own_pod);
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("pipeline.yaml");
    std::fs::write(
        &config,
        format!(
            "apiVersion: edgepipe.dev/v1alpha1\nkind: EdgePipeline\nmetadata: {{name: guarded, namespace: {SITE}}}\nspec:\n  source:\n    mqtt: {{url: \"mqtt://127.0.0.1:1\", topics: [\"sensors/#\"]}}\n  sink:\n    http: {{url: \"http://127.0.0.1:1/ingest\"}}\n"
        ),
    )
    .unwrap();
    let doctor = |lease: &str| -> Value {
        let out = std::process::Command::new(edge_testkit::workspace_bin("edge-agent"))
            .args([
                "doctor",
                "--output",
                "json",
                "--timeout",
                "2s",
                "--node-name",
                own_node,
            ])
            .arg("--config")
            .arg(&config)
            .arg("--data-dir")
            .arg(dir.path().join("data"))
            .env("POD_NAMESPACE", SITE)
            .env("EDGEPIPE_FLEET_LEASE", lease)
            .env("EDGEPIPE_KUBE_API", cluster.server())
            .env("EDGEPIPE_KUBE_TOKEN_FILE", &token)
            .env("EDGEPIPE_KUBE_CA_FILE", cluster.ca_file())
            .output()
            .expect("edge-agent doctor");
        let report: Value = serde_json::from_slice(&out.stdout).expect("doctor's JSON");
        report["checks"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == "fleet-record")
            .cloned()
            .expect("a fleet-record check")
    };
    let own = doctor(&format!("edgepipe-agent.guarded.{own_node}"));
    assert_eq!(own["status"], "ok", "{own}");
    assert!(own["detail"].as_str().unwrap().contains("dry run"), "{own}");
    let other = doctor(&format!("edgepipe-agent.guarded.{other_node}"));
    assert_eq!(other["status"], "failed", "{other}");
    assert!(
        other["detail"]
            .as_str()
            .unwrap()
            .contains("may write only its own record"),
        "{other}"
    );

    // Nor may it delete a record (RBAC grants no delete; the policy refuses it anyway).
    let out = cluster.kubectl_as(
        &kubeconfig,
        &[
            "delete",
            "lease",
            "-n",
            SITE,
            &format!("edgepipe-agent.guarded.{own_node}"),
        ],
        None,
    );
    assert!(!out.status.success());
}

//! The operator, the CRD and the chart against a real control plane (etcd,
//! kube-apiserver with RBAC and admission, kube-controller-manager, kube-scheduler) with
//! kwok's simulated nodes: the chart installed with the real Helm CLI, every manifest
//! applied with the real kubectl, the operator running on the host as the chart's
//! ServiceAccount (cluster-wide here; the namespaced mode and leader election are in
//! `cluster_scoped.rs`), and an agent run with the ConfigMap the operator wrote.
//!
//! One cluster serves every test of this file; each test works in namespaces of its own
//! and ends by checking that the operator was never refused a request (RBAC exactly as
//! the chart grants it).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use edge_crds::EdgePipeline;
use edge_testkit::cluster::{Cluster, Node, condition};
use edge_testkit::{Agent, Mosquitto, Publisher, Receiver, eventually, pipeline_yaml, poll};
use edge_tests::api::{rust_layer, schema_layer};
use edge_tests::fleet::{EDGE_NODES, Fleet, admin_client, pipeline_manifest, watch_agent_pods};
use edge_tests::workspace_root;
use futures::StreamExt;
use kube::Api;
use kube::runtime::watcher;
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(120);

/// The shared cluster: six edge nodes labelled `edgepipe.dev/edge=true` (edge-3 also
/// tainted `edgepipe.dev/edge=true:NoSchedule`), one server node without the label, the
/// chart installed, and the operator running as the chart's ServiceAccount.
fn fleet() -> &'static Fleet {
    static FLEET: OnceLock<Fleet> = OnceLock::new();
    FLEET.get_or_init(|| {
        let mut nodes: Vec<Node> = (1..=6)
            .map(|i| Node::new(&format!("edge-{i}")).label("edgepipe.dev/edge", "true"))
            .collect();
        nodes[2] = nodes[2]
            .clone()
            .taint("edgepipe.dev/edge", "true", "NoSchedule");
        nodes.push(Node::new("server-1"));
        Fleet::start("operator", &nodes)
    })
}

/// The operator's write requests so far (audit IDs with verb and URI).
fn operator_writes(fleet: &Fleet) -> Vec<String> {
    fleet
        .cluster
        .audit_events()
        .iter()
        .filter(|e| e["user"]["username"] == fleet.operator.user.as_str())
        .filter(|e| {
            matches!(
                e["verb"].as_str(),
                Some("create" | "update" | "patch" | "delete")
            )
        })
        .map(|e| format!("{} {} {}", e["auditID"], e["verb"], e["requestURI"]))
        .collect()
}

/// Every request the operator made went through: RBAC grants all it needs. Checked at
/// the end of every test, over everything the operator did so far.
fn assert_never_forbidden(fleet: &Fleet) {
    let events = fleet.cluster.audit_events();
    let mine: Vec<&Value> = events
        .iter()
        .filter(|e| e["user"]["username"] == fleet.operator.user.as_str())
        .collect();
    assert!(
        !mine.is_empty(),
        "the audit log holds no request of {}",
        fleet.operator.user
    );
    let refused: Vec<String> = mine
        .iter()
        .filter(|e| e["responseStatus"]["code"] == 403)
        .map(|e| format!("{} {}", e["verb"], e["requestURI"]))
        .collect();
    assert!(
        refused.is_empty(),
        "RBAC refused the operator (the chart must grant these): {refused:#?}"
    );
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn yaml_files(dir: &str) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(workspace_root().join(dir))
        .unwrap_or_else(|e| panic!("{dir}: {e}"))
        .map(|e| e.expect("directory entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    files.sort();
    files
}

/// The object kubectl sends for a manifest file (YAML 1.1, as kubectl reads it).
fn as_kubectl_sends(cluster: &Cluster, file: &Path) -> Value {
    let file = file.display().to_string();
    let out = cluster.kubectl_ok(&["create", "--dry-run=client", "-o", "json", "-f", &file]);
    serde_json::from_str(&out).expect("kubectl prints JSON")
}

/// The nodes a pipeline's agents belong on: those matching its nodeSelector whose
/// NoSchedule/NoExecute taints its tolerations tolerate.
fn selected_nodes(cluster: &Cluster, pipeline: &Value) -> BTreeSet<String> {
    let selector = pipeline["spec"]["nodeSelector"]
        .as_object()
        .cloned()
        .unwrap_or_default();
    let tolerations = pipeline["spec"]["tolerations"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let tolerated = |taint: &Value| {
        tolerations.iter().any(|t| {
            let key_ok = t["key"].is_null() || t["key"] == taint["key"];
            let effect_ok = t["effect"].is_null() || t["effect"] == taint["effect"];
            let value_ok = t["operator"] == "Exists" || t["value"] == taint["value"];
            key_ok && effect_ok && value_ok
        })
    };
    cluster.get_json(&["nodes"])["items"]
        .as_array()
        .expect("node list")
        .iter()
        .filter(|n| {
            selector
                .iter()
                .all(|(k, v)| &n["metadata"]["labels"][k.as_str()] == v)
        })
        .filter(|n| {
            n["spec"]["taints"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|t| t["effect"] != "PreferNoSchedule")
                .all(tolerated)
        })
        .filter_map(|n| n["metadata"]["name"].as_str().map(str::to_string))
        .collect()
}

/// Creates the Secrets a pipeline references, with every referenced key, labelled so
/// pipelines may use them (as the README tells a user to).
fn opt_in_secrets(cluster: &Cluster, namespace: &str, pipeline: &Value) {
    let spec: edge_crds::EdgePipelineSpec =
        serde_json::from_value(pipeline["spec"].clone()).expect("an EdgePipeline spec");
    let mounts = edge_operator::render::referenced_secrets(&spec).expect("valid references");
    for mount in mounts {
        let data: String = mount
            .keys
            .iter()
            .map(|key| format!("  {key}: test\n"))
            .collect();
        cluster.apply(&format!(
            "apiVersion: v1\nkind: Secret\nmetadata:\n  name: {}\n  namespace: {namespace}\n  labels: {{edgepipe.dev/allow-pipelines: \"true\"}}\nstringData:\n{data}",
            mount.secret
        ));
    }
}

/// Test 3 (with the checks of deploy/e2e/run.sh that need no container runtime): every
/// example applied unchanged with kubectl becomes Ready, its agents run on exactly the
/// nodes it selects, as the hardened pods the operator renders.
#[test]
fn every_example_applies_with_kubectl_and_runs_on_the_nodes_it_selects() {
    let fleet = fleet();
    let cluster = &fleet.cluster;
    let _guard = cluster.guard();
    let examples = yaml_files("deploy/examples");
    assert!(examples.len() >= 3);
    for path in &examples {
        let sent = as_kubectl_sends(cluster, path);
        let namespace = sent["metadata"]["namespace"]
            .as_str()
            .expect("examples name their namespace");
        let name = sent["metadata"]["name"].as_str().expect("name");
        cluster.namespace(namespace);
        opt_in_secrets(cluster, namespace, &sent);
        let file = path.display().to_string();
        let out = cluster.kubectl(&["apply", "-f", &file]);
        assert!(
            out.status.success(),
            "kubectl apply -f {file}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        cluster.wait_pipeline_ready(namespace, name);

        let agent = format!("{name}-agent");
        let config_map = cluster.agent_config_map(namespace, name);
        assert!(config_map["data"]["pipeline.yaml"].is_string());
        assert_eq!(
            config_map["immutable"], true,
            "{file}: a revision is immutable"
        );
        let daemon_set = cluster.get_json(&["daemonset", &agent, "-n", namespace]);
        let owner = &daemon_set["metadata"]["ownerReferences"][0];
        assert_eq!(
            (owner["kind"].as_str(), owner["name"].as_str()),
            (Some("EdgePipeline"), Some(name)),
            "{file}: the DaemonSet is owned by its pipeline"
        );

        let expected = selected_nodes(cluster, &sent);
        assert!(!expected.is_empty(), "{file} selects no test node");
        let placed = poll(WAIT, &format!("{file}: agents on {expected:?}"), || {
            let nodes = cluster.agent_nodes(namespace, name);
            (nodes.iter().cloned().collect::<BTreeSet<_>>() == expected
                && nodes.len() == expected.len())
            .then_some(nodes)
        });
        for pod in cluster.agent_pods(namespace, name) {
            assert_eq!(pod["spec"]["securityContext"]["runAsUser"], 65532);
            assert_eq!(pod["spec"]["securityContext"]["runAsNonRoot"], true);
        }

        let status = &cluster.get_json(&["epl", name, "-n", namespace])["status"];
        assert_eq!(status["desiredNodes"], placed.len());
        assert_eq!(status["readyNodes"], placed.len());
        let events = cluster.kubectl_ok(&[
            "get",
            "events",
            "-n",
            namespace,
            "--field-selector",
            &format!("involvedObject.name={name}"),
            "-o",
            "jsonpath={.items[*].reason}",
        ]);
        assert!(
            events.contains("Created"),
            "{file}: no Created Event: {events}"
        );

        // Printer columns: every one filled in, but the fleet's (DOWN, BACKLOG, OLDEST),
        // which stay empty until an agent reports: no agent process runs on a simulated
        // node (`fleet_records.rs` fills them).
        let table = cluster.kubectl_ok(&["get", "epl", name, "-n", namespace, "-o", "wide"]);
        let columns = printer_columns(&table);
        for (column, value) in &columns {
            let fleet = ["DOWN", "BACKLOG", "OLDEST"].contains(column);
            assert!(fleet || !value.is_empty(), "{column} is empty:\n{table}");
        }
        assert!(!table.contains("<none>"), "{table}");
        assert_eq!(columns["READY"], "True", "{table}");
        assert_eq!(columns["NODES"], placed.len().to_string(), "{table}");
        assert_eq!(columns["DESIRED"], placed.len().to_string(), "{table}");
    }

    let explain = cluster.kubectl_ok(&["explain", "edgepipeline.spec.sink"]);
    let doc =
        edge_tests::api::crd_schema()["properties"]["spec"]["properties"]["sink"]["description"]
            .as_str()
            .expect("spec.sink is documented")
            .to_string();
    let first_words: String = doc.split_whitespace().take(4).collect::<Vec<_>>().join(" ");
    assert!(
        explain
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ")
            .contains(&first_words),
        "kubectl explain does not show the field's documentation ({first_words}):\n{explain}"
    );
    assert!(
        explain.contains("http") && explain.contains("mqtt"),
        "{explain}"
    );
    assert_never_forbidden(fleet);
}

/// Test 4: the real API server rejects every broken manifest at admission naming the
/// field, and agrees with both Rust-side layers on every manifest we ship or test.
#[test]
fn admission_rejects_broken_manifests_and_agrees_with_our_validation() {
    let fleet = fleet();
    let cluster = &fleet.cluster;
    let _guard = cluster.guard();
    let broken = yaml_files("tests/manifests/broken");
    let mut all = yaml_files("deploy/examples");
    all.extend(broken.iter().cloned());
    all.push(workspace_root().join("deploy/docker/pipeline.yaml"));
    let mut disagreements = Vec::new();
    for path in &all {
        let text = read(path);
        let sent = as_kubectl_sends(cluster, path);
        if let Some(namespace) = sent["metadata"]["namespace"].as_str() {
            cluster.namespace(namespace);
        }
        let file = path.display().to_string();
        let out = cluster.kubectl(&["apply", "--dry-run=server", "-f", &file]);
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        let api_accepts = out.status.success();
        let rust = rust_layer(&text);
        let schema = schema_layer(&text);
        if api_accepts != rust.is_empty() || api_accepts != schema.is_empty() {
            disagreements.push(format!(
                "{file}: API server {} ({stderr}), validate() {rust:?}, CRD schema/CEL {schema:?}",
                if api_accepts { "accepts" } else { "rejects" }
            ));
        }
        if broken.contains(path) {
            let expected = text
                .lines()
                .find_map(|l| l.strip_prefix("# expect: "))
                .unwrap_or_else(|| panic!("{file}: no '# expect:' line"))
                .trim()
                .to_string();
            assert!(!api_accepts, "{file}: the API server accepted it");
            // The field itself, or the object holding it (CEL rules sit on the object
            // whose fields they relate), but never just `spec`.
            let named = ancestors(&expected)
                .into_iter()
                .any(|p| stderr.contains(&format!("{p}:")) || stderr.contains(&format!("{p} ")));
            assert!(
                named,
                "{file}: the API server's error does not name {expected}: {stderr}"
            );
        }
    }
    assert!(
        disagreements.is_empty(),
        "the real API server and our validation disagree:\n{}",
        disagreements.join("\n")
    );
    // The other Kubernetes manifest we ship: the node broker of deploy/e2e.
    let broker = workspace_root().join("deploy/e2e/mosquitto.yaml");
    let broker = broker.display().to_string();
    cluster.namespace("edge-broker");
    let out = cluster.kubectl(&["apply", "--dry-run=server", "-f", &broker]);
    assert!(
        out.status.success(),
        "{broker}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_never_forbidden(fleet);
}

/// `spec.a[0].b` -> [`spec.a[0].b`, `spec.a[0]`, `spec.a`] (never `spec` alone).
fn ancestors(path: &str) -> Vec<String> {
    let mut out = vec![path.to_string()];
    let mut rest = path.to_string();
    while let Some(cut) = rest.rfind(['.', '[']) {
        rest.truncate(cut);
        if rest == "spec" {
            break;
        }
        out.push(rest.clone());
    }
    out
}

/// A pipeline on every edge node (tolerating edge-3's taint) with a given batch size.
fn rollout_pipeline(namespace: &str, name: &str, batch: u32, max_unavailable: u32) -> String {
    format!(
        "{}  tolerations:\n    - {{key: edgepipe.dev/edge, operator: Exists, effect: NoSchedule}}\n  agent: {{maxUnavailable: {max_unavailable}}}\n",
        pipeline_manifest(namespace, name, EDGE_NODES, Some(batch))
    )
}

/// Creates `namespace` and applies [`rollout_pipeline`] there, then waits for Ready.
fn apply_ready(cluster: &Cluster, namespace: &str, name: &str, batch: u32, max_unavailable: u32) {
    cluster.namespace(namespace);
    cluster.apply(&rollout_pipeline(namespace, name, batch, max_unavailable));
    cluster.wait_pipeline_ready(namespace, name);
}

/// Test 5: a spec change rolls the DaemonSet with never more than `maxUnavailable` agents
/// down at once (every pod event observed through a watch), the status goes Progressing
/// and then Ready, and once done the operator stays quiet.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spec_change_rolls_out_within_max_unavailable_and_then_stays_quiet() {
    let fleet = fleet();
    let cluster = &fleet.cluster;
    let _guard = cluster.guard();
    let (namespace, name, max_unavailable) = ("rollout", "line2", 2);
    apply_ready(cluster, namespace, name, 100, max_unavailable);
    let nodes = selected_nodes(cluster, &cluster.get_json(&["epl", name, "-n", namespace]));
    assert_eq!(nodes.len(), 6);

    let client = admin_client(cluster).await;
    // Watch every agent pod and track, after each event, how many selected nodes have no
    // ready, non-terminating agent.
    let worst = Arc::new(Mutex::new(0usize));
    let watch = {
        let worst = worst.clone();
        let nodes = nodes.clone();
        watch_agent_pods(client.clone(), namespace, name, move |live| {
            let available: BTreeSet<String> = live
                .values()
                .filter(|p| p.metadata.deletion_timestamp.is_none())
                .filter(|p| {
                    p.status
                        .as_ref()
                        .and_then(|s| s.conditions.as_ref())
                        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
                })
                .filter_map(|p| p.spec.as_ref()?.node_name.clone())
                .collect();
            let down = nodes.iter().filter(|n| !available.contains(*n)).count();
            let mut worst = worst.lock().expect("lock");
            *worst = (*worst).max(down);
        })
    };
    watch.wait_listed(WAIT).await;

    let pipelines: Api<EdgePipeline> = Api::namespaced(client.clone(), namespace);
    let seen_progressing = Arc::new(Mutex::new(false));
    let status_watch = {
        let seen = seen_progressing.clone();
        let field = format!("metadata.name={name}");
        tokio::spawn(async move {
            let stream = watcher(pipelines, watcher::Config::default().fields(&field));
            futures::pin_mut!(stream);
            while let Some(Ok(event)) = stream.next().await {
                if let watcher::Event::Apply(p) = event {
                    let rolling = p.status.iter().flat_map(|s| &s.conditions).any(|c| {
                        c.type_ == "Progressing" && c.status == "True" && c.reason == "RollingOut"
                    });
                    if rolling {
                        *seen.lock().expect("lock") = true;
                    }
                }
            }
        })
    };
    let before = cluster.get_json(&["daemonset", &format!("{name}-agent"), "-n", namespace]);
    let generation = before["metadata"]["generation"]
        .as_i64()
        .expect("generation");
    cluster.apply(&rollout_pipeline(namespace, name, 200, max_unavailable));
    let started = Instant::now();
    eventually(WAIT, "the rollout to complete", async || {
        let ds = cluster.get_json(&["daemonset", &format!("{name}-agent"), "-n", namespace]);
        let s = &ds["status"];
        let done = ds["metadata"]["generation"].as_i64() > Some(generation)
            && s["observedGeneration"] == ds["metadata"]["generation"]
            && s["updatedNumberScheduled"] == 6
            && s["numberReady"] == 6;
        done.then_some(())
    })
    .await;
    let rollout = started.elapsed();
    cluster.wait_pipeline_ready(namespace, name);
    drop(watch);
    status_watch.abort();
    let worst = *worst.lock().expect("lock");
    eprintln!("rollout of 6 agents took {rollout:?}; at most {worst} down at once");
    assert!(
        worst >= 1,
        "the watch saw no agent replaced: nothing was observed"
    );
    assert!(
        worst <= max_unavailable as usize,
        "{worst} agents were down at once, maxUnavailable is {max_unavailable}"
    );
    assert!(
        *seen_progressing.lock().expect("lock"),
        "the status never reported Progressing/RollingOut"
    );
    let progressing = condition(
        &cluster.get_json(&["epl", name, "-n", namespace]),
        "Progressing",
    );
    assert_eq!(
        progressing.map(|c| (c.0, c.1)),
        Some(("False".to_string(), "RolloutComplete".to_string()))
    );

    // At rest: a reconcile (forced by an annotation) changes nothing.
    let snapshot = |c: &Cluster| {
        let ep = c.get_json(&["epl", name, "-n", namespace]);
        let ds = c.get_json(&["daemonset", &format!("{name}-agent"), "-n", namespace]);
        let cm = c.agent_config_map(namespace, name);
        (
            ep["status"].clone(),
            ds["metadata"]["resourceVersion"].clone(),
            cm["metadata"]["resourceVersion"].clone(),
        )
    };
    let quiet = snapshot(cluster);
    let writes_before = operator_writes(fleet);
    let reconciles = fleet
        .operator
        .metric_sum("edge_operator_reconciliations_total");
    cluster.kubectl_ok(&[
        "annotate",
        "epl",
        name,
        "-n",
        namespace,
        "touched=1",
        "--overwrite",
    ]);
    eventually(WAIT, "a reconcile of the touched pipeline", async || {
        (fleet
            .operator
            .metric_sum("edge_operator_reconciliations_total")
            > reconciles)
            .then_some(())
    })
    .await;
    assert_eq!(
        snapshot(cluster),
        quiet,
        "a reconcile at rest changed something"
    );
    let written: Vec<String> = operator_writes(fleet)
        .into_iter()
        .filter(|w| !writes_before.contains(w) && w.contains(&format!("/namespaces/{namespace}/")))
        .collect();
    assert!(
        written.is_empty(),
        "a reconcile at rest wrote to the API server: {written:#?}"
    );
    assert_never_forbidden(fleet);
}

/// Test 6: a spec only the operator's validation rejects gets the Invalid condition
/// naming the field and a Warning Event, and the running DaemonSet is left untouched.
#[test]
fn an_invalid_spec_is_reported_and_the_running_agents_are_left_alone() {
    let fleet = fleet();
    let cluster = &fleet.cluster;
    let _guard = cluster.guard();
    let (namespace, name) = ("invalid", "line3");
    apply_ready(cluster, namespace, name, 100, 1);
    let agent = format!("{name}-agent");
    let generation =
        cluster.get_json(&["daemonset", &agent, "-n", namespace])["metadata"]["generation"].clone();

    // `#` in the middle of a topic filter: the CRD accepts any string, the operator's
    // validation does not.
    let out = cluster.kubectl(&[
        "patch",
        "epl",
        name,
        "-n",
        namespace,
        "--type=merge",
        "-p",
        r#"{"spec":{"source":{"mqtt":{"topics":["sensors/#/bad"]}}}}"#,
    ]);
    assert!(
        out.status.success(),
        "the API server must accept what only the operator rejects: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let message = poll(WAIT, "the Invalid condition", || {
        let ep = cluster.get_json(&["epl", name, "-n", namespace]);
        match condition(&ep, "Invalid") {
            Some((status, _, message)) if status == "True" => Some(message),
            _ => None,
        }
    });
    assert!(
        message.contains("spec.source.mqtt.topics[0]"),
        "the Invalid condition does not name the field: {message}"
    );
    poll(WAIT, "a Warning Event Invalid", || {
        let events = cluster.warning_events(namespace, name);
        events["items"]
            .as_array()?
            .iter()
            .any(|e| e["reason"] == "Invalid")
            .then_some(())
    });
    let ds = cluster.get_json(&["daemonset", &agent, "-n", namespace]);
    assert_eq!(
        ds["metadata"]["generation"], generation,
        "the DaemonSet was changed for an invalid spec"
    );

    cluster.apply(&rollout_pipeline(namespace, name, 100, 1));
    poll(WAIT, "Invalid to clear", || {
        let ep = cluster.get_json(&["epl", name, "-n", namespace]);
        (condition(&ep, "Invalid")?.0 == "False").then_some(())
    });
    cluster.wait_pipeline_ready(namespace, name);
    assert_never_forbidden(fleet);
}

/// Test 7: deleting a pipeline removes its ConfigMap, DaemonSet and pods through the real
/// garbage collector (owner references), with no finalizer of ours.
#[test]
fn deleting_a_pipeline_garbage_collects_its_agents() {
    let fleet = fleet();
    let cluster = &fleet.cluster;
    let _guard = cluster.guard();
    let (namespace, name) = ("deletion", "line4");
    apply_ready(cluster, namespace, name, 100, 1);
    // Foreground: the pipeline is gone once its DaemonSet and ConfigMaps are, so the new
    // one finds no object of its name held by the old one (that would be a Conflict).
    cluster.kubectl_ok(&[
        "delete",
        "epl",
        name,
        "-n",
        namespace,
        "--cascade=foreground",
        "--wait=true",
    ]);
    let agent = format!("{name}-agent");
    let out = cluster.kubectl(&[
        "wait",
        "--for=delete",
        &format!("daemonset/{agent}"),
        "-n",
        namespace,
        "--timeout=120s",
    ]);
    assert!(
        out.status.success() || String::from_utf8_lossy(&out.stderr).contains("NotFound"),
        "the garbage collector did not delete the agent: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    poll(WAIT, "the configuration revisions to go", || {
        cluster
            .agent_config_maps(namespace, name)
            .is_empty()
            .then_some(())
    });
    poll(WAIT, "the agent pods to go", || {
        cluster
            .agent_nodes(namespace, name)
            .is_empty()
            .then_some(())
    });
    assert_never_forbidden(fleet);
}

/// Test 9: from the cluster to the data path. The ConfigMap the operator wrote, run by
/// the agent with the environment the pod gets (HOST_IP from the pod's status, NODE_NAME
/// from its node), carries a reading from a local Mosquitto to an HTTP receiver.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_operators_configmap_runs_an_agent_that_delivers_a_reading() {
    let fleet = fleet();
    let cluster = &fleet.cluster;
    let _guard = cluster.guard();
    let broker = Mosquitto::start();
    let receiver = Receiver::start().await;
    let (namespace, name) = ("datapath", "line5");
    cluster.namespace(namespace);
    cluster.apply(&data_path_pipeline(
        namespace,
        name,
        broker.port,
        receiver.port,
    ));
    cluster.wait_pipeline_ready(namespace, name);
    let (config, env) = agent_as_the_pod_runs_it(cluster, namespace, name);
    let node = env
        .iter()
        .find(|(k, _)| k == "NODE_NAME")
        .map(|(_, v)| v.clone())
        .expect("NODE_NAME from the downward API");
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let dir = tempfile::tempdir().expect("tempdir");
    let mut agent = Agent::start_with_env(dir.path(), &config, &env);
    agent.wait_ready().await;
    let mut publisher = Publisher::connect(broker.port, "cluster-test-sensor");
    publisher
        .send(
            "sensors/t1/temperature",
            r#"{"device_id":"t1","value":21.5}"#,
        )
        .await;
    publisher.flush().await;
    let record = eventually(
        Duration::from_secs(30),
        "the reading at the receiver",
        async || receiver.accepted().into_iter().next(),
    )
    .await;
    assert_eq!(record["device"], "t1");
    assert_eq!(record["value"], 21.5);
    assert_eq!(record["node"], node.as_str());
    assert_eq!(record["pipeline"], format!("{namespace}/{name}"));
    assert_never_forbidden(fleet);
}

/// A pipeline from the node's broker (`HOST_IP`, port `broker`) to a receiver on this
/// host, one record a batch, on the edge nodes.
fn data_path_pipeline(namespace: &str, name: &str, broker: u16, receiver: u16) -> String {
    pipeline_yaml(
        namespace,
        name,
        &format!(
            r#"  source:
    mqtt:
      url: "mqtt://${{HOST_IP}}:{broker}"
      topics: ["sensors/+/temperature"]
      qos: 1
    format: {{value: value, device: device_id}}
  sink:
    http: {{url: "http://127.0.0.1:{receiver}/ingest", batchSize: 1, flushInterval: 100ms}}
  nodeSelector: {{edgepipe.dev/edge: "true"}}
"#
        ),
    )
}

/// The pipeline file the operator wrote for `namespace/name` and the environment of its
/// agent as the kubelet would resolve the pod's fieldRefs (from its first pod).
fn agent_as_the_pod_runs_it(
    cluster: &Cluster,
    namespace: &str,
    name: &str,
) -> (String, Vec<(String, String)>) {
    let config = cluster.agent_config_map(namespace, name)["data"]["pipeline.yaml"]
        .as_str()
        .expect("the agent ConfigMap holds pipeline.yaml")
        .to_string();
    let pods = cluster.agent_pods(namespace, name);
    let pod = pods.first().expect("an agent pod");
    let node = pod["spec"]["nodeName"].as_str().expect("scheduled");
    let host_ip = pod["status"]["hostIP"].as_str().expect("hostIP");
    let mut env = Vec::new();
    for var in pod["spec"]["containers"][0]["env"]
        .as_array()
        .into_iter()
        .flatten()
    {
        let field = var["valueFrom"]["fieldRef"]["fieldPath"].as_str();
        let value = match field {
            Some("spec.nodeName") => node.to_string(),
            Some("status.hostIP") => host_ip.to_string(),
            Some("metadata.namespace") => namespace.to_string(),
            _ => var["value"].as_str().unwrap_or_default().to_string(),
        };
        env.push((var["name"].as_str().expect("env name").to_string(), value));
    }
    (config, env)
}

/// The pipeline uid the operator passes to the agent (`EDGEPIPE_PIPELINE_UID`).
fn agent_uid(env: &[(String, String)]) -> Option<&str> {
    env.iter()
        .find(|(k, _)| k == edge_crds::PIPELINE_UID_ENV)
        .map(|(_, v)| v.as_str())
}

/// Test 9b: a pipeline deleted and created again under the same name is a new pipeline
/// to the queue on the node. Its agent, run from the ConfigMap the operator wrote with the
/// pod's environment (the uid the API server gave the pipeline), sets aside what the
/// deleted one queued and never sends it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pipeline_created_again_does_not_send_the_deleted_ones_queue() {
    let fleet = fleet();
    let cluster = &fleet.cluster;
    let _guard = cluster.guard();
    let broker = Mosquitto::start();
    let mut receiver = Receiver::down();
    let (namespace, name) = ("recreated", "line6");
    cluster.namespace(namespace);
    let manifest = data_path_pipeline(namespace, name, broker.port, receiver.port);
    let uid = |c: &Cluster| {
        c.get_json(&["epl", name, "-n", namespace])["metadata"]["uid"]
            .as_str()
            .expect("uid")
            .to_string()
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let queued = format!("edge_agent_queue_records{{pipeline=\"{namespace}/{name}\"}}");
    let mut publisher = Publisher::connect(broker.port, "cluster-test-recreated");

    cluster.apply(&manifest);
    cluster.wait_pipeline_ready(namespace, name);
    let first_uid = uid(cluster);
    let (config, env) = agent_as_the_pod_runs_it(cluster, namespace, name);
    assert_eq!(
        agent_uid(&env),
        Some(first_uid.as_str()),
        "the agent is told the pipeline's uid: {env:?}"
    );
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let mut first = Agent::start_with_env(dir.path(), &config, &env);
    first.wait_ready().await;
    publisher
        .send(
            "sensors/old/temperature",
            r#"{"device_id":"old","value":1}"#,
        )
        .await;
    publisher.flush().await;
    first.wait_metric(&queued, 1.0, WAIT).await;
    assert!(first.terminate().success(), "{}", first.log_text());

    // Foreground: the pipeline is gone once its DaemonSet and ConfigMaps are, so the new
    // one finds no object of its name held by the old one (that would be a Conflict).
    cluster.kubectl_ok(&[
        "delete",
        "epl",
        name,
        "-n",
        namespace,
        "--cascade=foreground",
        "--wait=true",
    ]);
    cluster.apply(&manifest);
    cluster.wait_pipeline_ready(namespace, name);
    let second_uid = uid(cluster);
    assert_ne!(first_uid, second_uid);
    let (config, env) = eventually(WAIT, "an agent pod of the new pipeline", async || {
        let (config, env) = agent_as_the_pod_runs_it(cluster, namespace, name);
        (agent_uid(&env) == Some(second_uid.as_str())).then_some((config, env))
    })
    .await;
    receiver.resume().await;
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let mut second = Agent::start_with_env(dir.path(), &config, &env);
    second.wait_ready().await;
    publisher
        .send(
            "sensors/new/temperature",
            r#"{"device_id":"new","value":2}"#,
        )
        .await;
    publisher.flush().await;
    let arrived = tokio::time::timeout(WAIT, async {
        loop {
            if let Some(record) = receiver.accepted().into_iter().next() {
                return record;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    let record = arrived.unwrap_or_else(|_| {
        panic!(
            "the new pipeline's reading did not reach the receiver in {WAIT:?} ({} requests)\n\
             agent log:\n{}\nbroker log:\n{}",
            receiver.requests().len(),
            second.log_text(),
            broker.log_text()
        )
    });
    // Records leave in order: the old reading, had it been kept, would have come first.
    assert_eq!(record["device"], "new", "{:?}", receiver.accepted());
    assert!(
        second
            .data_dir
            .join(format!("queue.db.pipeline-{first_uid}"))
            .exists(),
        "the deleted pipeline's queue is kept on the node"
    );
    let set_aside = format!("edge_agent_queues_set_aside_total{{pipeline=\"{namespace}/{name}\"}}");
    assert_eq!(second.metric(&set_aside), 1.0);
    assert_never_forbidden(fleet);
}

/// The agent pod the operator renders, as a bare Pod in `namespace` (server-side dry run:
/// nothing is created). `mutate` edits its spec first.
fn agent_pod_dry_run(
    cluster: &Cluster,
    template: &Value,
    namespace: &str,
    mutate: impl FnOnce(&mut Value),
) -> (bool, String) {
    let mut spec = template["spec"].clone();
    mutate(&mut spec);
    // The pod runs as the pipeline's agent ServiceAccount: one of that name must exist
    // in the namespace for the pod to reach Pod Security admission at all.
    if let Some(account) = spec["serviceAccountName"].as_str() {
        let exists = cluster.kubectl(&["get", "serviceaccount", account, "-n", namespace]);
        if !exists.status.success() {
            cluster.kubectl_ok(&["create", "serviceaccount", account, "-n", namespace]);
        }
    }
    let pod = serde_json::json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "agent-psa", "namespace": namespace},
        "spec": spec,
    });
    let out = cluster.kubectl_stdin(
        &["create", "--dry-run=server", "-o", "name", "-f", "-"],
        &pod.to_string(),
    );
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The violations Pod Security admission lists, e.g. `restricted volume types (volume
/// "data" uses restricted volume type "hostPath")`, split at the top-level commas.
fn violations(error: &str) -> Vec<String> {
    let Some(line) = error
        .lines()
        .find(|l| l.contains("violates PodSecurity \""))
    else {
        return Vec::new();
    };
    let after = &line[line.find("violates PodSecurity \"").unwrap_or(0)..];
    let Some((_, list)) = after.split_once("\": ") else {
        return Vec::new();
    };
    let mut out = Vec::new();
    let (mut depth, mut start) = (0i32, 0usize);
    for (i, c) in list.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                out.push(list[start..i].trim().to_string());
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(list[start..].trim().to_string());
    out
}

/// The columns of a one-row `kubectl get` table, by header, read at the header's
/// positions (a column may be empty).
fn printer_columns(table: &str) -> BTreeMap<&str, &str> {
    let mut lines = table.lines();
    let header = lines.next().expect("header");
    let row = lines.next().expect("row");
    let starts: Vec<(usize, &str)> = header
        .split_whitespace()
        .map(|name| {
            let offset = name.as_ptr() as usize - header.as_ptr() as usize;
            (offset, name)
        })
        .collect();
    starts
        .iter()
        .enumerate()
        .map(|(i, (start, name))| {
            let end = starts.get(i + 1).map_or(row.len(), |(next, _)| *next);
            let value = row.get(*start..end.min(row.len())).unwrap_or("").trim();
            (*name, value)
        })
        .collect()
}

/// The agent pod under Pod Security admission of the real API server: at `baseline` its
/// one violation is the queue's hostPath; at `restricted` every violation is that hostPath
/// or the init container that hands the hostPath to the agent user. Without those two
/// (an emptyDir queue, no init container) the same pod is admitted at `restricted`.
#[test]
fn the_agent_pod_is_restricted_except_for_its_queue_hostpath() {
    let fleet = fleet();
    let cluster = &fleet.cluster;
    let _guard = cluster.guard();
    let (namespace, name) = ("psa-agent", "line9");
    apply_ready(cluster, namespace, name, 100, 1);
    let daemon_set = cluster.get_json(&["daemonset", &format!("{name}-agent"), "-n", namespace]);
    let template = &daemon_set["spec"]["template"];
    for level in ["baseline", "restricted"] {
        let ns = format!("psa-{level}");
        cluster.namespace(&ns);
        cluster.kubectl_ok(&[
            "label",
            "--overwrite",
            "namespace",
            &ns,
            &format!("pod-security.kubernetes.io/enforce={level}"),
        ]);
    }

    let (admitted, error) = agent_pod_dry_run(cluster, template, "psa-baseline", |_| {});
    assert!(!admitted, "a hostPath is not baseline");
    assert_eq!(
        violations(&error),
        [r#"hostPath volumes (volume "data")"#],
        "{error}"
    );

    let (admitted, error) = agent_pod_dry_run(cluster, template, "psa-restricted", |_| {});
    assert!(!admitted);
    let found = violations(&error);
    assert!(!found.is_empty(), "{error}");
    for v in &found {
        assert!(
            v.contains(r#"volume "data""#) || v.contains(r#"container "prepare-data-dir""#),
            "a violation beyond the documented exception: {v}\n{error}"
        );
    }
    assert!(
        found
            .iter()
            .any(|v| v.starts_with("restricted volume types")),
        "{error}"
    );

    let without_exception = |spec: &mut Value| {
        spec.as_object_mut().unwrap().remove("initContainers");
        for volume in spec["volumes"].as_array_mut().unwrap() {
            if volume["name"] == "data" {
                *volume = serde_json::json!({"name": "data", "emptyDir": {}});
            }
        }
    };
    let (admitted, error) =
        agent_pod_dry_run(cluster, template, "psa-restricted", without_exception);
    assert!(admitted, "the rest of the agent pod is restricted: {error}");
    assert_never_forbidden(fleet);
}

/// kwok plays the kubelet of each simulated node to the end: it renews the node's Lease
/// in `kube-node-lease` as a kubelet does. Without leases the node lifecycle controller
/// marked every node Unknown once its grace period ran out after start, unreadied every
/// pod, and the cluster flapped for the rest of the run (rollouts stalled, B9 never
/// came to rest).
#[test]
fn the_simulated_nodes_renew_their_leases_as_kubelets_do() {
    let fleet = fleet();
    let cluster = &fleet.cluster;
    let _guard = cluster.guard();
    let renewed = |node: &str| -> Option<String> {
        let out = cluster.kubectl(&["get", "lease", node, "-n", "kube-node-lease", "-o", "json"]);
        let lease: Value = serde_json::from_slice(&out.stdout).ok()?;
        assert_eq!(lease["spec"]["leaseDurationSeconds"], 40, "{lease}");
        Some(lease["spec"]["renewTime"].as_str()?.to_string())
    };
    let nodes: Vec<String> = (1..=6)
        .map(|i| format!("edge-{i}"))
        .chain(["server-1".to_string()])
        .collect();
    let first: Vec<String> = nodes
        .iter()
        .map(|node| poll(WAIT, &format!("a lease of {node}"), || renewed(node)))
        .collect();
    for (node, first) in nodes.iter().zip(first) {
        poll(WAIT, &format!("{node} renewing its lease"), || {
            renewed(node).filter(|now| *now != first)
        });
        let ready = condition(&cluster.get_json(&["node", node]), "Ready");
        assert_eq!(ready.map(|c| c.0).as_deref(), Some("True"), "{node}");
    }
}

//! A change reaches the nodes only through the rollout, and the status tells a fleet's
//! truth, against a real control plane with kwok's simulated nodes, the chart installed
//! by Helm and the operator run as the chart's ServiceAccount:
//!
//! - a spec change is a new immutable, content-named ConfigMap and a new pod template;
//!   the DaemonSet replaces the agents node by node (every pod event watched: never more
//!   than `maxUnavailable` agents on the new revision that are not ready yet), the
//!   pipeline ends Ready with `Progressing=False`, and the old revision is deleted once
//!   no pod mounts it;
//! - a rollout whose new agents never become ready is `Stalled` after its progress
//!   deadline; meanwhile the agents not reached keep their revision, whose ConfigMap
//!   still exists unchanged (what a container restarting in such a pod reads); reverting
//!   the spec completes the rollout and removes the stuck revision;
//! - a node that goes NotReady counts as offline (`status.offlineNodes`, the `Offline`
//!   column, the `edge_operator_offline_agents` metric) and its unready agent does not
//!   make the pipeline Degraded or not Ready; it counts again once the node is back.
//!
//! - the operator drives rollouts itself (the DaemonSet is on `OnDelete`): a canary
//!   node takes a new revision first and the others follow only after its soak; a
//!   canary whose new agent fails pauses the rollout (`Paused`, reason `RolloutFailed`,
//!   a Warning Event) until the spec is fixed; `rollout.paused` holds every node until it
//!   is false again; an offline node is skipped and updated when it comes back.
//!
//! One cluster serves the tests of this file; each has its own namespace and its own
//! nodes (selected by a label), so taking a node offline touches only its test.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use edge_testkit::cluster::{CRASH_LOOP_TOLERATION, Cluster, NEVER_READY_TOLERATION, Node};
use edge_testkit::poll;
use edge_tests::fleet::{
    Fleet, admin_client, pipeline_manifest, pod_ready, rendered_revision, site_nodes,
    watch_agent_pods,
};
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(180);

/// The shared cluster: three nodes for each test (`rollout-*`, `stall-*`, `offline-*`,
/// `failing-*`, `paused-*`, `catchup-*`; four `canary-*`), labelled
/// `edgepipe.dev/site=<test>`, the chart installed and the operator running.
fn fleet() -> &'static Fleet {
    static FLEET: OnceLock<Fleet> = OnceLock::new();
    FLEET.get_or_init(|| {
        let mut nodes: Vec<Node> = [
            "rollout", "stall", "offline", "failing", "paused", "catchup",
        ]
        .iter()
        .flat_map(|site| {
            (1..=3).map(move |i| Node::new(&format!("{site}-{i}")).label("edgepipe.dev/site", site))
        })
        .collect();
        // The canary site: four nodes, the second one labelled as the canary.
        nodes.extend((1..=4).map(|i| {
            let node = Node::new(&format!("canary-{i}")).label("edgepipe.dev/site", "canary");
            if i == 2 {
                node.label("edgepipe.dev/canary", "true")
            } else {
                node
            }
        }));
        Fleet::start("fleet-rollout", &nodes)
    })
}

/// A pipeline on the nodes of `site`; `extra` is appended to its spec.
fn pipeline(site: &str, name: &str, batch: u32, extra: &str) -> String {
    let manifest = pipeline_manifest(site, name, &site_nodes(site), Some(batch));
    format!("{manifest}  agent: {{maxUnavailable: 1}}\n{extra}")
}

fn status(cluster: &Cluster, namespace: &str, name: &str) -> Value {
    cluster.get_json(&["epl", name, "-n", namespace])["status"].clone()
}

/// The agent pods of a pipeline: (pod name, node, mounted revision, ready).
fn agents(cluster: &Cluster, namespace: &str, name: &str) -> Vec<(String, String, String, bool)> {
    cluster
        .live_agent_pods(namespace, name)
        .iter()
        .map(|p| {
            (
                p["metadata"]["name"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
                p["spec"]["nodeName"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
                revision_of(p).unwrap_or_default(),
                pod_ready(p),
            )
        })
        .collect()
}

fn revision_of(pod: &Value) -> Option<String> {
    pod["spec"]["volumes"]
        .as_array()?
        .iter()
        .find(|v| v["name"] == "config")?["configMap"]["name"]
        .as_str()
        .map(str::to_string)
}

fn revision_names(cluster: &Cluster, namespace: &str, name: &str) -> Vec<String> {
    cluster
        .agent_config_maps(namespace, name)
        .iter()
        .filter_map(|cm| cm["metadata"]["name"].as_str().map(str::to_string))
        .collect()
}

/// What a watch of the agent pods saw: for each pod event after the initial list, the
/// number of pods on `revision` that were not ready yet, and the pods on `revision` in
/// the order they appeared.
#[derive(Default)]
struct Watched {
    worst_unready_new: usize,
    new_pods: Vec<String>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_rolls_node_by_node_through_an_immutable_revision() {
    let fleet = fleet();
    let cluster = &fleet.cluster;
    let _guard = cluster.guard();
    let (site, name) = ("rollout", "line1");
    cluster.namespace(site);
    cluster.apply(&pipeline(site, name, 100, ""));
    cluster.wait_pipeline_ready(site, name);
    let old = cluster.agent_revision(site, name);
    assert!(old.starts_with("line1-agent-"), "{old}");
    let old_cm = cluster.agent_config_map(site, name);
    assert_eq!(old_cm["immutable"], true);
    assert_eq!(
        old_cm["metadata"]["ownerReferences"][0]["kind"],
        "EdgePipeline"
    );
    let refused = cluster.kubectl(&[
        "patch",
        "configmap",
        &old,
        "-n",
        site,
        "--type=merge",
        "-p",
        r#"{"data":{"pipeline.yaml":"edited"}}"#,
    ]);
    assert!(
        !refused.status.success() && String::from_utf8_lossy(&refused.stderr).contains("immutable"),
        "the API server keeps a revision as it is: {}",
        String::from_utf8_lossy(&refused.stderr)
    );

    // The new revision's name follows from the content, as `edge-operator render` shows.
    let changed = pipeline(site, name, 200, "");
    let new = rendered_revision(&changed);
    assert_ne!(new, old);

    // Watch every agent pod from before the change.
    let client = admin_client(cluster).await;
    let watched = Arc::new(Mutex::new(Watched::default()));
    let watch = {
        let (watched, new) = (watched.clone(), new.clone());
        watch_agent_pods(client, site, name, move |live| {
            let Ok(mut seen) = watched.lock() else { return };
            let mut unready_new = 0;
            for pod in live.values() {
                let json = serde_json::to_value(pod).unwrap_or_default();
                if revision_of(&json).as_deref() != Some(new.as_str()) {
                    continue;
                }
                let pod_name = pod.metadata.name.clone().unwrap_or_default();
                if !seen.new_pods.contains(&pod_name) {
                    seen.new_pods.push(pod_name);
                }
                if !pod_ready(&json) {
                    unready_new += 1;
                }
            }
            seen.worst_unready_new = seen.worst_unready_new.max(unready_new);
        })
    };
    watch.wait_listed(WAIT).await;

    cluster.apply(&changed);
    poll(WAIT, "the DaemonSet to mount the new revision", || {
        (cluster.agent_revision(site, name) == new).then_some(())
    });
    let new_cm = cluster.agent_config_map(site, name);
    assert_eq!(new_cm["immutable"], true);
    assert!(
        new_cm["data"]["pipeline.yaml"]
            .as_str()
            .unwrap_or_default()
            .contains("batchSize: 200"),
        "{new_cm}"
    );
    let done = poll(WAIT, "every agent on the new revision and ready", || {
        let now = agents(cluster, site, name);
        (now.len() == 3
            && now
                .iter()
                .all(|(_, _, revision, ready)| *revision == new && *ready))
        .then_some(now)
    });
    // The status of the new generation: Ready, and Progressing over.
    poll(WAIT, "the new generation Ready", || {
        let object = cluster.get_json(&["epl", name, "-n", site]);
        let s = &object["status"];
        (s["observedGeneration"] == object["metadata"]["generation"]
            && s["configRevision"] == new.as_str()
            && cluster
                .pipeline_condition(site, name, "Ready")
                .is_some_and(|c| c.0 == "True"))
        .then_some(())
    });
    let progressing = cluster
        .pipeline_condition(site, name, "Progressing")
        .expect("Progressing");
    assert_eq!(
        (progressing.0.as_str(), progressing.1.as_str()),
        ("False", "RolloutComplete")
    );
    cluster.wait_pipeline_ready(site, name);

    // The old revision goes once no pod mounts it; the new one stays.
    poll(WAIT, "the old revision to be deleted", || {
        (revision_names(cluster, site, name) == [new.clone()]).then_some(())
    });
    drop(watch);

    let seen = watched.lock().expect("watch results");
    assert!(
        seen.worst_unready_new <= 1,
        "{} agents were on the new revision without being ready at once (maxUnavailable 1)",
        seen.worst_unready_new
    );
    let mut created: Vec<&str> = seen.new_pods.iter().map(String::as_str).collect();
    created.sort_unstable();
    let mut placed: Vec<&str> = done.iter().map(|a| a.0.as_str()).collect();
    placed.sort_unstable();
    assert_eq!(
        created, placed,
        "one new agent per node, none replaced again"
    );
    let mut nodes: Vec<&str> = done.iter().map(|a| a.1.as_str()).collect();
    nodes.sort_unstable();
    nodes.dedup();
    assert_eq!(nodes.len(), 3, "{done:?}");
}

#[test]
fn a_rollout_that_never_gets_ready_is_stalled_and_the_others_keep_their_revision() {
    let fleet = fleet();
    let cluster = &fleet.cluster;
    let _guard = cluster.guard();
    let (site, name) = ("stall", "line2");
    let deadline = "  rollout: {progressDeadline: 20s}\n";
    cluster.namespace(site);
    let good = pipeline(site, name, 100, deadline);
    cluster.apply(&good);
    cluster.wait_pipeline_ready(site, name);
    let old = cluster.agent_revision(site, name);
    let old_text = cluster.agent_config_map(site, name)["data"]["pipeline.yaml"].clone();

    // New agents that never pass their readiness probe (see NEVER_READY_TOLERATION).
    let stuck_spec = format!(
        "{deadline}  tolerations:\n    - {{key: {NEVER_READY_TOLERATION}, operator: Exists}}\n"
    );
    cluster.apply(&pipeline(site, name, 100, &stuck_spec));
    let message = poll(WAIT, "Stalled=True", || {
        match cluster.pipeline_condition(site, name, "Stalled") {
            Some((s, reason, message)) if s == "True" && reason == "ProgressDeadlineExceeded" => {
                Some(message)
            }
            _ => None,
        }
    });
    assert!(message.contains("more than 20s"), "{message}");
    let stuck = cluster.agent_revision(site, name);
    assert_ne!(stuck, old);
    let progressing = cluster
        .pipeline_condition(site, name, "Progressing")
        .expect("Progressing");
    assert_eq!(
        progressing.0, "True",
        "the rollout is not over: {progressing:?}"
    );
    let degraded = cluster
        .pipeline_condition(site, name, "Degraded")
        .expect("Degraded");
    assert_eq!(
        degraded.0, "False",
        "one agent down is what maxUnavailable allows"
    );
    // The new agent missed the deadline: the rollout paused itself too.
    let (_, reason, message) = poll(WAIT, "Paused=True", || {
        cluster
            .pipeline_condition(site, name, "Paused")
            .filter(|c| c.0 == "True")
    });
    assert_eq!(reason, "RolloutFailed", "{message}");
    assert!(
        message.contains("not ready within the progress deadline"),
        "{message}"
    );
    let warnings = cluster.warning_events(site, name);
    assert!(
        warnings.to_string().contains("ProgressDeadlineExceeded"),
        "a Warning Event: {warnings}"
    );

    // Only maxUnavailable agents went to the new revision; the others still run the old
    // one, and its ConfigMap is still there as it was.
    let now = agents(cluster, site, name);
    let on_new: Vec<_> = now.iter().filter(|a| a.2 == stuck).collect();
    let on_old: Vec<_> = now.iter().filter(|a| a.2 == old).collect();
    assert_eq!(on_new.len(), 1, "{now:?}");
    assert!(!on_new[0].3, "the new agent is not ready: {now:?}");
    assert_eq!(on_old.len(), 2, "{now:?}");
    assert!(on_old.iter().all(|a| a.3), "{now:?}");
    let kept = cluster.get_json(&["configmap", &old, "-n", site]);
    assert_eq!(kept["data"]["pipeline.yaml"], old_text);
    assert_eq!(kept["immutable"], true);
    assert_eq!(revision_names(cluster, site, name).len(), 2);

    // Reverting the spec is the old revision again: the rollout completes and the stuck
    // revision goes.
    cluster.apply(&good);
    cluster.wait_pipeline_ready(site, name);
    assert_eq!(cluster.agent_revision(site, name), old);
    let stalled = cluster
        .pipeline_condition(site, name, "Stalled")
        .expect("Stalled");
    assert_eq!(stalled.0, "False", "{stalled:?}");
    poll(WAIT, "the stuck revision to be deleted", || {
        (revision_names(cluster, site, name) == [old.clone()]).then_some(())
    });
}

#[test]
fn a_node_that_goes_offline_is_counted_apart_and_the_pipeline_stays_ready() {
    let fleet = fleet();
    let cluster = &fleet.cluster;
    let _guard = cluster.guard();
    let (site, name) = ("offline", "line3");
    cluster.namespace(site);
    cluster.apply(&pipeline(site, name, 100, ""));
    cluster.wait_pipeline_ready(site, name);

    // The node loses power: no more heartbeats, and (as the node lifecycle controller
    // does) its agent is marked unready.
    cluster.set_node_ready("offline-3", false);
    let (pod, ..) = agents(cluster, site, name)
        .into_iter()
        .find(|a| a.1 == "offline-3")
        .expect("an agent on offline-3");
    let unready = json!({"status": {"conditions": [{"type": "Ready", "status": "False", "reason": "NodeNotReady"}]}});
    cluster.kubectl_ok(&[
        "patch",
        "pod",
        &pod,
        "-n",
        site,
        "--subresource=status",
        "--type=strategic",
        "-p",
        &unready.to_string(),
    ]);
    let seen = poll(WAIT, "the offline node in the status", || {
        let s = status(cluster, site, name);
        (s["offlineNodes"] == 1 && s["readyNodes"] == 2).then_some(s)
    });
    assert_eq!(seen["offlineNodeNames"], json!(["offline-3"]));
    let ready = cluster
        .pipeline_condition(site, name, "Ready")
        .expect("Ready");
    assert_eq!(
        (ready.0.as_str(), ready.1.as_str()),
        ("True", "OnlineAgentsReady"),
        "{seen}"
    );
    let degraded = cluster
        .pipeline_condition(site, name, "Degraded")
        .expect("Degraded");
    assert_eq!(degraded.0, "False", "{seen}");
    cluster.wait_pipeline_ready(site, name);
    let table = cluster.kubectl_ok(&["get", "epl", name, "-n", site]);
    let header: Vec<&str> = table
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    let row: Vec<&str> = table
        .lines()
        .nth(1)
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    let column = header
        .iter()
        .position(|h| *h == "OFFLINE")
        .expect("an Offline column");
    assert_eq!(row.get(column), Some(&"1"), "{table}");
    poll(WAIT, "edge_operator_offline_agents", || {
        (fleet.operator.metric_sum("edge_operator_offline_agents") >= 1.0).then_some(())
    });

    // Back: its agent is ready again and nothing is offline.
    cluster.set_node_ready("offline-3", true);
    poll(WAIT, "no offline node", || {
        let s = status(cluster, site, name);
        (s["offlineNodes"] == 0 && s["readyNodes"] == 3).then_some(())
    });
    let ready = cluster
        .pipeline_condition(site, name, "Ready")
        .expect("Ready");
    assert_eq!(
        (ready.0.as_str(), ready.1.as_str()),
        ("True", "AllAgentsReady")
    );
}

/// The agent pod of pipeline `namespace/name` on `node`, as JSON, if there is one (not
/// being deleted).
fn pod_on(cluster: &Cluster, namespace: &str, name: &str, node: &str) -> Option<Value> {
    let field = format!("spec.nodeName={node}");
    cluster
        .agent_pods_where(namespace, name, &["--field-selector", &field])
        .into_iter()
        .find(|p| p["metadata"]["deletionTimestamp"].is_null())
}

/// Seconds since the epoch of an RFC 3339 time in `value`.
fn seconds(value: &Value) -> i64 {
    value
        .as_str()
        .and_then(|t| t.parse::<k8s_openapi::jiff::Timestamp>().ok())
        .map(|t| t.as_second())
        .unwrap_or_else(|| panic!("a time: {value}"))
}

fn ready_since(pod: &Value) -> i64 {
    let ready = pod["status"]["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|c| c["type"] == "Ready" && c["status"] == "True")
        .unwrap_or_else(|| panic!("a ready pod: {pod}"));
    seconds(&ready["lastTransitionTime"])
}

/// The revision each node's agent mounts, by node.
fn revisions(cluster: &Cluster, namespace: &str, name: &str) -> BTreeMap<String, String> {
    agents(cluster, namespace, name)
        .into_iter()
        .map(|(_, node, revision, _)| (node, revision))
        .collect()
}

#[test]
fn a_canary_takes_a_new_revision_first_and_the_others_follow_once_it_soaked() {
    let fleet = fleet();
    let cluster = &fleet.cluster;
    let _guard = cluster.guard();
    let (site, name) = ("canary", "line4");
    let rollout = "  rollout:\n    maxUnavailable: 2\n    canary: {nodeSelector: {edgepipe.dev/canary: \"true\"}, soak: 20s}\n";
    cluster.namespace(site);
    cluster.apply(&pipeline(site, name, 100, rollout));
    cluster.wait_pipeline_ready(site, name);
    let old = cluster.agent_revision(site, name);

    cluster.apply(&pipeline(site, name, 200, rollout));
    let new = poll(WAIT, "the DaemonSet on the new revision", || {
        let revision = cluster.agent_revision(site, name);
        (revision != old).then_some(revision)
    });
    // The canary node first, alone.
    let canary = poll(
        WAIT,
        "the canary agent on the new revision and ready",
        || {
            let pod = pod_on(cluster, site, name, "canary-2")?;
            (revision_of(&pod).as_deref() == Some(new.as_str()) && pod_ready(&pod)).then_some(pod)
        },
    );
    let phase = poll(WAIT, "status.rollout in its canary phase", || {
        let s = status(cluster, site, name);
        (s["rollout"]["phase"] == "Canary").then_some(s)
    });
    assert_eq!(
        phase["rollout"]["canaryNodes"],
        json!(["canary-2"]),
        "{phase}"
    );
    let others = revisions(cluster, site, name);
    for node in ["canary-1", "canary-3", "canary-4"] {
        assert_eq!(
            others.get(node),
            Some(&old),
            "{node} waits for the canary: {others:?}"
        );
    }

    // The others follow once the canary soaked, two at a time.
    poll(WAIT, "every agent on the new revision and ready", || {
        let now = agents(cluster, site, name);
        (now.len() == 4 && now.iter().all(|a| a.2 == new && a.3)).then_some(())
    });
    cluster.wait_pipeline_ready(site, name);
    let soaked = ready_since(&canary) + 20;
    for node in ["canary-1", "canary-3", "canary-4"] {
        let pod = pod_on(cluster, site, name, node).expect("an agent");
        let created = seconds(&pod["metadata"]["creationTimestamp"]);
        assert!(
            created >= soaked,
            "{node}'s new agent was created at {created}, before the canary soaked ({soaked})"
        );
    }
    let done = status(cluster, site, name);
    assert!(done.get("rollout").is_none(), "{done}");
}

#[test]
fn a_failing_canary_pauses_the_rollout_until_the_spec_is_fixed() {
    let fleet = fleet();
    let cluster = &fleet.cluster;
    let _guard = cluster.guard();
    let (site, name) = ("failing", "line5");
    let rollout = "  rollout: {canary: {count: 1, soak: 5s}}\n";
    cluster.namespace(site);
    let good = pipeline(site, name, 100, rollout);
    cluster.apply(&good);
    cluster.wait_pipeline_ready(site, name);
    let old = cluster.agent_revision(site, name);

    // The new agents crash-loop (see CRASH_LOOP_TOLERATION): the rollout pauses at once,
    // without waiting for the progress deadline (10 minutes).
    let bad = format!(
        "{rollout}  tolerations:\n    - {{key: {CRASH_LOOP_TOLERATION}, operator: Exists}}\n"
    );
    cluster.apply(&pipeline(site, name, 100, &bad));
    let (_, reason, message) = poll(WAIT, "Paused=True", || {
        cluster
            .pipeline_condition(site, name, "Paused")
            .filter(|c| c.0 == "True")
    });
    assert_eq!(reason, "RolloutFailed", "{message}");
    assert!(message.contains("failing-1: crash-looping"), "{message}");
    let s = status(cluster, site, name);
    assert_eq!(s["rollout"]["phase"], "Failed", "{s}");
    assert_eq!(s["rollout"]["failedNodes"], json!(["failing-1"]), "{s}");
    let warnings = cluster.warning_events(site, name);
    assert!(
        warnings.to_string().contains("RolloutFailed"),
        "a Warning Event: {warnings}"
    );
    // Only the canary took the bad revision; the others run the old one, ready.
    let now = agents(cluster, site, name);
    for (_, node, revision, is_ready) in &now {
        if node == "failing-1" {
            assert_ne!(revision, &old, "{now:?}");
        } else {
            assert!(revision == &old && *is_ready, "{node}: {now:?}");
        }
    }

    // `kubectl apply` of the good spec: the rollout goes on, back to the old revision.
    cluster.apply(&good);
    cluster.wait_pipeline_ready(site, name);
    assert_eq!(cluster.agent_revision(site, name), old);
    poll(WAIT, "no Paused condition", || {
        cluster
            .pipeline_condition(site, name, "Paused")
            .is_none()
            .then_some(())
    });
    let now = agents(cluster, site, name);
    assert!(
        now.len() == 3 && now.iter().all(|a| a.2 == old && a.3),
        "{now:?}"
    );
}

#[test]
fn a_paused_fleet_does_not_move_until_it_is_resumed() {
    let fleet = fleet();
    let cluster = &fleet.cluster;
    let _guard = cluster.guard();
    let (site, name) = ("paused", "line6");
    cluster.namespace(site);
    cluster.apply(&pipeline(site, name, 100, ""));
    cluster.wait_pipeline_ready(site, name);
    let old = cluster.agent_revision(site, name);

    cluster.apply(&pipeline(site, name, 200, "  rollout: {paused: true}\n"));
    let (_, reason, _) = poll(WAIT, "Paused=True for the new generation", || {
        let object = cluster.get_json(&["epl", name, "-n", site]);
        let observed = object["status"]["observedGeneration"] == object["metadata"]["generation"];
        cluster
            .pipeline_condition(site, name, "Paused")
            .filter(|c| observed && c.0 == "True")
    });
    assert_eq!(reason, "Paused");
    let new = cluster.agent_revision(site, name);
    assert_ne!(new, old, "the DaemonSet has the new template");
    let progressing = cluster
        .pipeline_condition(site, name, "Progressing")
        .expect("Progressing");
    assert_eq!(
        (progressing.0.as_str(), progressing.1.as_str()),
        ("False", "Paused")
    );
    // However long it stays paused, no agent is replaced. (The operator reconciles on
    // every pod event and at least once a second while one is due: 10 s is plenty.)
    let before = agents(cluster, site, name);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while std::time::Instant::now() < deadline {
        let now = agents(cluster, site, name);
        assert_eq!(now, before, "a paused fleet moved");
        std::thread::sleep(Duration::from_millis(500));
    }
    assert!(before.iter().all(|a| a.2 == old && a.3), "{before:?}");

    // Resumed: the rollout completes.
    cluster.apply(&pipeline(site, name, 200, "  rollout: {paused: false}\n"));
    poll(WAIT, "every agent on the new revision and ready", || {
        let now = agents(cluster, site, name);
        (now.len() == 3 && now.iter().all(|a| a.2 == new && a.3)).then_some(())
    });
    cluster.wait_pipeline_ready(site, name);
    assert!(cluster.pipeline_condition(site, name, "Paused").is_none());
}

#[test]
fn offline_nodes_are_skipped_and_updated_when_they_come_back() {
    let fleet = fleet();
    let cluster = &fleet.cluster;
    let _guard = cluster.guard();
    let (site, name) = ("catchup", "line7");
    cluster.namespace(site);
    cluster.apply(&pipeline(site, name, 100, ""));
    cluster.wait_pipeline_ready(site, name);
    let old = cluster.agent_revision(site, name);

    cluster.set_node_ready("catchup-3", false);
    poll(WAIT, "the offline node in the status", || {
        (status(cluster, site, name)["offlineNodes"] == 1).then_some(())
    });
    cluster.apply(&pipeline(site, name, 200, ""));
    let new = poll(WAIT, "the DaemonSet on the new revision", || {
        let revision = cluster.agent_revision(site, name);
        (revision != old).then_some(revision)
    });
    // The online nodes are updated without waiting for the offline one.
    poll(WAIT, "the online agents on the new revision", || {
        let now = revisions(cluster, site, name);
        (now.get("catchup-1") == Some(&new) && now.get("catchup-2") == Some(&new)).then_some(())
    });
    poll(WAIT, "Ready with a node offline", || {
        cluster
            .pipeline_condition(site, name, "Ready")
            .filter(|c| c.0 == "True" && c.1 == "OnlineAgentsReady")
    });
    assert_eq!(
        revisions(cluster, site, name).get("catchup-3"),
        Some(&old),
        "the offline node keeps its revision"
    );

    // Back: it is updated too.
    cluster.set_node_ready("catchup-3", true);
    poll(
        WAIT,
        "the returning node's agent on the new revision",
        || {
            let pod = pod_on(cluster, site, name, "catchup-3")?;
            (revision_of(&pod).as_deref() == Some(new.as_str()) && pod_ready(&pod)).then_some(())
        },
    );
    cluster.wait_pipeline_ready(site, name);
}

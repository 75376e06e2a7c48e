//! Edgepipe on a real node: the chart, the operator and the agent as real pods on a real
//! kubelet ([`edge_testkit::node::RealNode`]: containerd, CNI, kubelet and kube-proxy of
//! the control plane's release), beside a simulated node, with the images of this build
//! imported from the Docker engine. What `deploy/e2e/run.sh` checks on k3d, and what only
//! a real node shows:
//!
//! - `helm install` runs the operator as a real pod that reaches the API server through
//!   the `kubernetes` Service; Mosquitto runs on the node (`deploy/e2e/mosquitto.yaml`,
//!   its image built the same way);
//! - `kubectl apply` of `deploy/examples/temperature-significant-change.yaml` (its sink
//!   pointed at a receiver on this host) brings the agent pod Ready through its real init
//!   container, hostPath and probes, on the labelled node only, as 65532;
//! - readings published to the node's broker reach the receiver; the agent's metrics are
//!   read through the API server's pod proxy;
//! - a spec change rolls the real pod, and the queue on the hostPath survives the restart:
//!   readings stored while the receiver refused them are delivered by the new pod;
//! - deleting the pod in the middle of a stream loses nothing: every reading once by
//!   `(node, seq)`;
//! - an invalid spec sets Invalid and leaves the running pod alone; deleting the pipeline
//!   takes its DaemonSet, ConfigMap and pod away.
//!
//! Needs root, the Docker engine and the node's packages (`tests/scripts/install-deps.sh`
//! installs them as root); port 1883 of this host must be free (the broker's hostPort).

use std::collections::{BTreeMap, BTreeSet};
use std::net::TcpListener;
use std::time::Duration;

use serde_json::Value;

use edge_testkit::cluster::{Cluster, Node, Options};
use edge_testkit::images::{self, MOSQUITTO};
use edge_testkit::metrics::sum as metric_sum;
use edge_testkit::mqtt::Publisher;
use edge_testkit::node::{RealNode, host_ip};
use edge_testkit::receiver::{Receiver, Reply};
use edge_testkit::{parse_metrics, poll, workspace_root};
use edge_tests::helm;

const NS: &str = "factory";
const PIPELINE: &str = "line1-temperature";
const AGENT: &str = "line1-temperature-agent";
const EDGE_NODE: &str = "edge-1";
const WAIT: Duration = Duration::from_secs(180);

/// The example as a user applies it, its sink pointed at `receiver_url`; `batch` replaces
/// its batch size (a spec change).
fn example(receiver_url: &str, batch: u32) -> String {
    let text = std::fs::read_to_string(
        workspace_root().join("deploy/examples/temperature-significant-change.yaml"),
    )
    .expect("the example");
    let text = text.replace("https://ingest.example.com/sensor-data/batch", receiver_url);
    assert!(text.contains(receiver_url), "the example's sink URL moved");
    let replaced = text.replace("batchSize: 500", &format!("batchSize: {batch}"));
    assert!(
        replaced != text || batch == 500,
        "the example's batchSize moved"
    );
    replaced
}

/// The live agent pod of the pipeline: (name, uid, node, template hash).
fn agent_pod(cluster: &Cluster) -> Option<(String, String, String, String)> {
    let pods = cluster.get_json(&[
        "pods",
        "-n",
        NS,
        "-l",
        &format!("app.kubernetes.io/instance={PIPELINE}"),
    ]);
    pods["items"]
        .as_array()?
        .iter()
        .find(|p| p["metadata"]["deletionTimestamp"].is_null())
        .map(|p| {
            let s = |v: &Value| v.as_str().unwrap_or_default().to_string();
            (
                s(&p["metadata"]["name"]),
                s(&p["metadata"]["uid"]),
                s(&p["spec"]["nodeName"]),
                s(&p["metadata"]["annotations"]["edgepipe.dev/template-hash"]),
            )
        })
}

/// Whether the pod `name` is Ready.
fn pod_ready(cluster: &Cluster, name: &str) -> bool {
    let out = cluster.kubectl(&[
        "get",
        "pod",
        name,
        "-n",
        NS,
        "-o",
        "jsonpath={.status.conditions[?(@.type==\"Ready\")].status}",
    ]);
    out.status.success() && String::from_utf8_lossy(&out.stdout) == "True"
}

/// Waits for a Ready agent pod other than `not` and returns it.
fn wait_new_ready_pod(cluster: &Cluster, not: &str) -> (String, String, String, String) {
    poll(WAIT, "a new Ready agent pod", || {
        agent_pod(cluster).filter(|p| p.1 != not && pod_ready(cluster, &p.0))
    })
}

/// The agent's metrics, through the API server's pod proxy (as `deploy/e2e/run.sh` reads
/// them).
fn agent_metrics(cluster: &Cluster, pod: &str) -> BTreeMap<String, f64> {
    let out = cluster.kubectl(&[
        "get",
        "--raw",
        &format!("/api/v1/namespaces/{NS}/pods/{pod}:9464/proxy/metrics"),
    ]);
    parse_metrics(&String::from_utf8_lossy(&out.stdout))
}

/// A reading whose value names it: `i` alternates far above and below the device's
/// moving average (about 5,000 after [`PRIMER`]), so the example's significant-change
/// filter passes every one.
fn reading(i: u32) -> (f64, String) {
    let value = if i.is_multiple_of(2) {
        f64::from(i)
    } else {
        10_000.0 + f64::from(i)
    };
    (value, format!(r#"{{"device_id":"t1","value":{value}}}"#))
}

/// The first reading of the device, so every later one has an average to differ from
/// (the filter may drop a device's first reading); not one of the readings checked.
const PRIMER: &str = r#"{"device_id":"t1","value":5000}"#;

fn reading_id(value: f64) -> u32 {
    (if value >= 10_000.0 {
        value - 10_000.0
    } else {
        value
    }) as u32
}

/// Every record the receiver accepted, checked: no `(node, seq)` twice with different
/// readings; returns the readings' ids, each once per `(node, seq)`.
fn delivered(receiver: &Receiver) -> Vec<u32> {
    let mut by_seq: BTreeMap<(String, u64), u32> = BTreeMap::new();
    for record in receiver.accepted() {
        let node = record["node"].as_str().unwrap_or_default().to_string();
        let seq = record["seq"].as_u64().expect("a seq");
        let id = reading_id(record["value"].as_f64().expect("a value"));
        let before = by_seq.insert((node.clone(), seq), id);
        assert!(
            before.is_none() || before == Some(id),
            "({node}, {seq}) carried two readings"
        );
    }
    by_seq.into_values().collect()
}

/// Waits until the receiver has every reading of `ids`, then checks each came once.
fn wait_delivered_once(receiver: &Receiver, ids: std::ops::Range<u32>, what: &str) {
    let want: BTreeSet<u32> = ids.collect();
    poll(WAIT, what, || {
        let got: BTreeSet<u32> = delivered(receiver).into_iter().collect();
        want.is_subset(&got).then_some(())
    });
    let all = delivered(receiver);
    for id in &want {
        let times = all.iter().filter(|i| *i == id).count();
        assert_eq!(
            times, 1,
            "reading {id} delivered {times} times by (node, seq)"
        );
    }
}

/// Publishes [`PRIMER`] on the broker at `port`.
async fn prime(port: u16) {
    let mut primer = Publisher::connect(port, "real-node-primer");
    primer.send("sensors/t1/temperature", PRIMER).await;
    primer.flush().await;
}

async fn publish(port: u16, ids: std::ops::Range<u32>, pause: Duration) {
    let mut publisher = Publisher::connect(port, &format!("real-node-{}", ids.start));
    for i in ids {
        let (_, payload) = reading(i);
        publisher.send("sensors/t1/temperature", payload).await;
        if !pause.is_zero() {
            publisher.flush().await;
            tokio::time::sleep(pause).await;
        }
    }
    publisher.flush().await;
}

/// `helm install` of the chart with this build's images, the operator on the real node,
/// and `extra` values; waits for it.
fn install_chart(cluster: &Cluster, images: (&str, &str), extra: &[&str]) {
    let (agent_image, operator_image) = images;
    let (operator_repo, operator_tag) = operator_image.split_once(':').expect("a tag");
    let (agent_repo, agent_tag) = agent_image.split_once(':').expect("a tag");
    let mut sets = vec![
        format!("image.repository={operator_repo}"),
        format!("image.tag={operator_tag}"),
        format!("agent.image.repository={agent_repo}"),
        format!("agent.image.tag={agent_tag}"),
        format!("nodeSelector.kubernetes\\.io/hostname={EDGE_NODE}"),
    ];
    sets.extend(extra.iter().map(|s| s.to_string()));
    let sets: Vec<&str> = sets.iter().map(String::as_str).collect();
    let install = helm::install_on(
        cluster.kubeconfig(),
        &sets,
        &["--wait", "--timeout", "180s"],
    );
    assert!(install.success, "helm install: {}", install.stderr);
}

/// The example's namespace and its `ingest-token` Secret (opted in), holding `token`.
fn ingest_token(cluster: &Cluster, token: &str) {
    cluster.namespace(NS);
    cluster.kubectl_ok(&[
        "create",
        "secret",
        "generic",
        "ingest-token",
        "-n",
        NS,
        &format!("--from-literal=authorization={token}"),
    ]);
    cluster.kubectl_ok(&[
        "label",
        "secret",
        "ingest-token",
        "-n",
        NS,
        "edgepipe.dev/allow-pipelines=true",
    ]);
}

/// Prints the agent's metrics when the test fails (the node prints the pods' logs).
struct Diagnose<'a>(&'a Cluster);

impl Drop for Diagnose<'_> {
    fn drop(&mut self) {
        if std::thread::panicking()
            && let Some((pod, ..)) = agent_pod(self.0)
        {
            eprintln!("--- agent {pod} metrics: {:?}", agent_metrics(self.0, &pod));
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_chart_and_the_example_run_for_real_on_a_kubelet() {
    assert!(
        TcpListener::bind(("0.0.0.0", 1883)).is_ok(),
        "port 1883 of this host is taken: the node's broker (deploy/e2e/mosquitto.yaml) needs it"
    );
    let (agent_image, operator_image) = images::build();
    let ip = host_ip();
    // A queue left on this host by an earlier run would be delivered again.
    let _ = std::fs::remove_dir_all(format!("/var/lib/edgepipe/{NS}/{PIPELINE}"));
    let cluster = Cluster::start_with(
        "real-node",
        &[Node::new("kwok-1")],
        &Options {
            advertise: Some(ip.clone()),
        },
    );
    let _guard = cluster.guard();
    let node = RealNode::join(
        &cluster,
        EDGE_NODE,
        &[("edgepipe.dev/edge", "true")],
        &[agent_image, operator_image, MOSQUITTO],
    );

    // The chart, with this build's images; the operator on the real node.
    install_chart(&cluster, (agent_image, operator_image), &[]);
    let operator_node = cluster.kubectl_ok(&[
        "get",
        "pods",
        "-n",
        helm::NAMESPACE,
        "-o",
        "jsonpath={.items[*].spec.nodeName}",
    ]);
    assert_eq!(
        operator_node.trim(),
        EDGE_NODE,
        "the operator runs on the real node"
    );

    // The node's broker, as deploy/e2e/run.sh starts it, from the image built here.
    let broker = std::fs::read_to_string(workspace_root().join("deploy/e2e/mosquitto.yaml"))
        .expect("deploy/e2e/mosquitto.yaml")
        .replace("eclipse-mosquitto:2", MOSQUITTO);
    cluster.apply(&broker);
    cluster.kubectl_ok(&[
        "rollout",
        "status",
        "ds/mosquitto",
        "-n",
        "edge-broker",
        "--timeout=180s",
    ]);

    let receiver = Receiver::start_for_containers().await;
    let url = format!("http://{ip}:{}/sensor-data/batch", receiver.port);
    ingest_token(&cluster, "Bearer real-node");
    cluster.apply(&example(&url, 500));
    let _diagnose = Diagnose(&cluster);
    cluster.wait_pipeline_ready(NS, PIPELINE);

    // deploy/e2e/run.sh's checks of the DaemonSet and its pod.
    let ds = cluster.get_json(&["ds", AGENT, "-n", NS]);
    assert_eq!(
        ds["status"]["desiredNumberScheduled"], 1,
        "only the labelled node"
    );
    assert_eq!(ds["status"]["numberReady"], 1);
    assert_eq!(ds["metadata"]["ownerReferences"][0]["kind"], "EdgePipeline");
    assert_eq!(ds["metadata"]["ownerReferences"][0]["name"], PIPELINE);
    let (pod, uid, pod_node, _) = agent_pod(&cluster).expect("an agent pod");
    assert_eq!(pod_node, EDGE_NODE);
    let spec = cluster.get_json(&["pod", &pod, "-n", NS]);
    assert_eq!(spec["spec"]["securityContext"]["runAsUser"], 65532);
    let status = cluster.get_json(&["epl", PIPELINE, "-n", NS])["status"].clone();
    assert_eq!(
        (
            status["readyNodes"].as_u64(),
            status["desiredNodes"].as_u64()
        ),
        (Some(1), Some(1)),
        "status: {status}"
    );
    let events = cluster.kubectl_ok(&[
        "get",
        "events",
        "-n",
        NS,
        "--field-selector",
        &format!("involvedObject.name={PIPELINE}"),
        "-o",
        "jsonpath={.items[*].reason}",
    ]);
    assert!(events.contains("Created"), "events: {events}");
    // The queue is on the node's disk, owned by the agent's user.
    let host_dir = format!("/var/lib/edgepipe/{NS}/{PIPELINE}");
    let owner = std::process::Command::new("stat")
        .args(["-c", "%u", &host_dir])
        .output()
        .expect("stat runs");
    assert_eq!(String::from_utf8_lossy(&owner.stdout).trim(), "65532");

    // A reading flows from the node's broker through the real pod to the receiver.
    prime(1883).await;
    publish(1883, 0..20, Duration::ZERO).await;
    wait_delivered_once(&receiver, 0..20, "the first readings at the receiver");
    let metrics = agent_metrics(&cluster, &pod);
    assert!(
        metric_sum(&metrics, "edge_agent_messages_received_total") >= 20.0,
        "metrics through the API server's proxy: {metrics:?}"
    );

    // A spec change rolls the real pod; what it had queued survives on the hostPath.
    receiver.rule(|_| Some(Reply::Status(503)));
    publish(1883, 20..40, Duration::ZERO).await;
    poll(WAIT, "the old pod to queue 20 readings", || {
        (metric_sum(&agent_metrics(&cluster, &pod), "edge_agent_queue_records") >= 20.0)
            .then_some(())
    });
    cluster.apply(&example(&url, 400));
    let (new_pod, new_uid, new_node, _) = wait_new_ready_pod(&cluster, &uid);
    assert_eq!(new_node, EDGE_NODE);
    assert_ne!(new_pod, pod);
    receiver.rule(|_| None);
    wait_delivered_once(&receiver, 0..40, "the readings queued before the rollout");

    // Deleting the pod in the middle of a stream loses nothing.
    let stream = tokio::spawn(publish(1883, 40..240, Duration::from_millis(10)));
    poll(WAIT, "the stream to reach the new pod", || {
        (delivered(&receiver).iter().any(|i| *i >= 60)).then_some(())
    });
    cluster.kubectl_ok(&["delete", "pod", &new_pod, "-n", NS, "--wait=false"]);
    stream.await.expect("the stream");
    let (third_pod, _, _, _) = wait_new_ready_pod(&cluster, &new_uid);
    wait_delivered_once(&receiver, 0..240, "every reading after the pod's deletion");

    // An invalid spec: Invalid, naming the field; the running pod untouched.
    let generation = cluster.get_json(&["ds", AGENT, "-n", NS])["metadata"]["generation"].clone();
    cluster.kubectl_ok(&[
        "patch",
        "epl",
        PIPELINE,
        "-n",
        NS,
        "--type",
        "merge",
        "-p",
        r#"{"spec":{"source":{"mqtt":{"topics":["sensors/#/bad"]}}}}"#,
    ]);
    let invalid = poll(WAIT, "the Invalid condition", || {
        cluster
            .pipeline_condition(NS, PIPELINE, "Invalid")
            .filter(|c| c.0 == "True")
    });
    assert!(
        invalid.2.contains("spec.source.mqtt.topics[0]"),
        "Invalid names the field: {invalid:?}"
    );
    assert_eq!(
        cluster.get_json(&["ds", AGENT, "-n", NS])["metadata"]["generation"],
        generation
    );
    assert!(
        pod_ready(&cluster, &third_pod),
        "the running pod is left alone"
    );

    // Deleting the pipeline takes its DaemonSet, ConfigMap and pod away.
    cluster.kubectl_ok(&["delete", "epl", PIPELINE, "-n", NS, "--wait"]);
    cluster.kubectl_ok(&[
        "wait",
        "--for=delete",
        &format!("ds/{AGENT}"),
        &format!("configmap/{AGENT}"),
        &format!("pod/{third_pod}"),
        "-n",
        NS,
        "--timeout=180s",
    ]);
    drop(node);
}

/// The node's fallback, started the way systemd starts the unit the chart installed:
/// the unit's `ExecStart` for the pipeline's instance, as its `User` and `Group`. Killed
/// when dropped.
struct Fallback(std::process::Child);

impl Fallback {
    /// Checks that the unit is enabled for `namespace/name` in `units` and that its
    /// condition (the stored pipeline) holds, then starts it.
    fn boot(
        units: &std::path::Path,
        namespace: &str,
        name: &str,
        log: &std::path::Path,
    ) -> Fallback {
        let instance = edge_crds::fallback::unit_name(namespace, name);
        let enabled = units.join("multi-user.target.wants").join(&instance);
        assert!(enabled.exists(), "{} is not enabled", enabled.display());
        let unit = std::fs::read_to_string(&enabled).expect("the unit");
        let field = |key: &str| {
            unit.lines()
                .find_map(|l| l.strip_prefix(&format!("{key}=")))
                .unwrap_or_else(|| panic!("no {key}= in the unit"))
                .replace("%I", &format!("{namespace}/{name}"))
        };
        // Every condition must hold, as systemd checks them.
        for condition in unit
            .lines()
            .filter_map(|l| l.strip_prefix("ConditionPathExists="))
        {
            let path = condition.replace("%I", &format!("{namespace}/{name}"));
            assert!(
                std::path::Path::new(&path).exists(),
                "the unit's condition {path} does not hold"
            );
        }
        let exec = field("ExecStart");
        let (user, group) = (field("User"), field("Group"));
        let out = std::fs::File::create(log).expect("fallback log");
        let child = std::process::Command::new("setpriv")
            .args([
                &format!("--reuid={user}"),
                &format!("--regid={group}"),
                "--clear-groups",
                "--",
            ])
            .args(exec.split_whitespace())
            .env_clear()
            .env("PATH", "/usr/bin:/bin")
            .stdout(out.try_clone().expect("log"))
            .stderr(out)
            .spawn()
            .expect("the fallback starts");
        Fallback(child)
    }
}

impl Drop for Fallback {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_rebooted_without_its_control_plane_runs_its_pipeline_in_fallback() {
    const NAME: &str = "line1-temperature";
    let (agent_image, operator_image) = images::build();
    let ip = host_ip();
    let host_dir = format!("/var/lib/edgepipe/{NS}/{NAME}");
    let _ = std::fs::remove_dir_all(&host_dir);
    let cluster = Cluster::start_with(
        "fallback",
        &[],
        &Options {
            advertise: Some(ip.clone()),
        },
    );
    let _guard = cluster.guard();
    let mut node = RealNode::join(
        &cluster,
        EDGE_NODE,
        &[("edgepipe.dev/edge", "true")],
        &[agent_image, operator_image],
    );
    // The node's systemd unit directory (this machine runs no systemd: the test starts
    // the unit the way systemd would at boot).
    let units = cluster.dir().join("systemd");
    std::fs::create_dir_all(&units).expect("unit directory");
    install_chart(
        &cluster,
        (agent_image, operator_image),
        &[
            "agent.fallback.enabled=true",
            &format!("agent.fallback.unitDir={}", units.display()),
            "agent.fallback.graceSeconds=5",
        ],
    );

    // The devices' broker runs on the host, as edge-agent/README.md (Node autonomy) advises
    // for sites with a fallback: a broker pod would be down with everything else after the
    // reboot.
    let broker = edge_testkit::mqtt::Mosquitto::start_for_containers();
    let receiver = Receiver::start_for_containers().await;
    let url = format!("http://{ip}:{}/sensor-data/batch", receiver.port);
    ingest_token(&cluster, "Bearer fallback");
    let pipeline = example(&url, 500).replace(
        "mqtt://${HOST_IP}:1883",
        &format!("mqtt://${{HOST_IP}}:{}", broker.port),
    );
    cluster.apply(&pipeline);
    let _diagnose = Diagnose(&cluster);
    cluster.wait_pipeline_ready(NS, PIPELINE);
    wait_new_ready_pod(&cluster, "");

    // Armed: the unit enabled, the binary on the node, the snapshot in the queue directory.
    assert!(
        std::path::Path::new(edge_crds::fallback::HOST_BIN_DIR)
            .join("edge-agent")
            .is_file()
    );
    assert!(
        std::path::Path::new(&host_dir)
            .join("pipeline.yaml")
            .is_file()
    );
    let kept_token = std::path::Path::new(&host_dir)
        .join("fallback-snapshot/files/etc/edgepipe-secrets/ingest-token/authorization");
    assert_eq!(
        std::fs::read_to_string(&kept_token).expect("the kept Secret"),
        "Bearer fallback"
    );
    prime(broker.port).await;
    publish(broker.port, 0..20, Duration::ZERO).await;
    wait_delivered_once(&receiver, 0..20, "readings before the outage");

    // The site loses its control plane, then its power.
    cluster.signal_api_server("STOP");
    node.power_off();
    publish(broker.port, 20..40, Duration::ZERO).await;
    node.boot();
    let fallback_log = cluster.dir().join("logs/fallback.log");
    let mut fallback = Fallback::boot(&units, NS, NAME, &fallback_log);
    publish(broker.port, 40..60, Duration::ZERO).await;
    wait_delivered_once(&receiver, 0..60, "the fallback delivering while cut off");
    assert!(
        receiver
            .requests()
            .iter()
            .all(|r| r.headers.get("authorization").map(String::as_str) == Some("Bearer fallback")),
        "the fallback sends the Secret it kept"
    );
    assert!(
        fallback.0.try_wait().expect("the fallback").is_none(),
        "the fallback runs"
    );

    // The control plane is back: the agent pod starts and takes the queue over.
    cluster.signal_api_server("CONT");
    let stream = tokio::spawn(publish(broker.port, 60..160, Duration::from_millis(10)));
    let status = poll(WAIT, "the fallback to hand over and exit", || {
        fallback.0.try_wait().expect("the fallback")
    });
    assert!(
        status.success(),
        "the fallback exits 0 after the handover: {status}\n{}",
        std::fs::read_to_string(&fallback_log).unwrap_or_default()
    );
    stream.await.expect("the stream");
    let (pod, ..) = poll(WAIT, "the agent pod Ready again", || {
        agent_pod(&cluster).filter(|p| pod_ready(&cluster, &p.0))
    });
    wait_delivered_once(&receiver, 0..160, "every reading across the reboot");
    let metrics = agent_metrics(&cluster, &pod);
    assert!(
        metric_sum(&metrics, "edge_agent_fallback_last_duration_seconds") > 0.0,
        "the agent reports the fallback's run"
    );

    // Deleting the pipeline disarms the node's fallback through a Job on the node.
    cluster.kubectl_ok(&["delete", "epl", PIPELINE, "-n", NS, "--wait"]);
    let jobs = poll(WAIT, "the disarm Job", || {
        let out = cluster.kubectl_ok(&[
            "get",
            "jobs",
            "-n",
            helm::NAMESPACE,
            "-l",
            &format!("edgepipe.dev/disarm={NS}.{NAME}"),
            "-o",
            "name",
        ]);
        (!out.trim().is_empty()).then_some(out)
    });
    cluster.kubectl_ok(&[
        "wait",
        "--for=condition=Complete",
        jobs.trim(),
        "-n",
        helm::NAMESPACE,
        "--timeout=180s",
    ]);
    let instance = edge_crds::fallback::unit_name(NS, NAME);
    assert!(
        !units
            .join("multi-user.target.wants")
            .join(instance)
            .exists()
    );
    assert!(
        !std::path::Path::new(&host_dir)
            .join("pipeline.yaml")
            .exists()
    );
    assert!(
        std::path::Path::new(&host_dir)
            .join("pipeline.disarmed.yaml")
            .exists()
    );
    assert!(
        !std::path::Path::new(&host_dir)
            .join("fallback-snapshot")
            .exists()
    );
}

//! B10: a fleet that reports itself. 20 EdgePipelines (`B10_PIPELINES`) on 50 simulated
//! nodes (`B10_NODES`) of a real control plane: 1,000 agents, each keeping its node's
//! fleet record with the agent's own heartbeat code (`edge_agent::runtime::heartbeat`, every
//! `B10_INTERVAL` seconds, default 30), each with a ServiceAccount token bound to its
//! agent pod (so the chart's admission policy checks every write, as in a cluster). The
//! operator runs as the chart's ServiceAccount (the release build).
//!
//! Reports, each beside a baseline from the same run:
//! - lease writes per agent per interval over a steady window (`B10_SECONDS`, default
//!   180): goal at most 1; baseline: the one write per interval the schedule allows;
//! - the operator's CPU and peak RSS while the records arrive, against the same operator
//!   with the same pipelines before any record (goal: RSS at most 64 MB);
//! - the operator's own writes (status patches) per minute in the steady window;
//! - the time from an agent's state change (its upstream going down) to `status.fleet`
//!   showing it, over `B10_TRIALS` (default 3) agents: goal within two intervals;
//!   baseline: one interval, the most an agent waits to write.
//!
//! `cargo bench -p edge-tests --bench records` (tests/bench/run.sh b10 runs it).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use edge_agent::runtime::heartbeat::{self, Settings};
use edge_agent::runtime::telemetry::Metrics;
use edge_testkit::cluster::{Cluster, Node};
use edge_testkit::operator::Operator;
use edge_testkit::poll;
use edge_testkit::process::{peak_rss, usage};
use edge_tests::helm::{self, NAMESPACE};
use k8s_openapi::api::core::v1::ServiceAccount;
use kube::Api;
use kube::api::PostParams;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

const SITE: &str = "b10";

fn setting(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Requests of `verb` on `resource` the API server has served so far (its own
/// `apiserver_request_total`; a server-side apply counts as `APPLY`).
fn requests(cluster: &Cluster, resource: &str, subresource: &str, verbs: &[&str]) -> f64 {
    let text = cluster.kubectl_ok(&["get", "--raw", "/metrics"]);
    text.lines()
        .filter(|l| l.starts_with("apiserver_request_total{"))
        .filter(|l| {
            l.contains(&format!("resource=\"{resource}\""))
                && l.contains(&format!("subresource=\"{subresource}\""))
                && verbs.iter().any(|v| l.contains(&format!("verb=\"{v}\"")))
        })
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum()
}

fn pipeline_yaml(i: usize) -> String {
    format!(
        r#"apiVersion: edgepipe.dev/v1alpha1
kind: EdgePipeline
metadata: {{name: line-{i}, namespace: {SITE}}}
spec:
  source:
    mqtt: {{url: "mqtt://${{HOST_IP}}:1883", topics: ["sensors/{i}/#"]}}
  sink:
    http: {{url: "https://ingest.example.com/batch"}}
  nodeSelector: {{edgepipe.dev/site: {SITE}}}
"#
    )
}

/// The fleet status of every pipeline, by name.
fn fleets(cluster: &Cluster) -> BTreeMap<String, Value> {
    let list = cluster.get_json(&["epl", "-n", SITE]);
    list["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| {
            Some((
                p["metadata"]["name"].as_str()?.to_string(),
                p["status"]["fleet"].clone(),
            ))
        })
        .collect()
}

/// One simulated agent: its pipeline, node, metrics and pod-bound token.
struct Agent {
    pipeline: String,
    node: String,
    pod: (String, String),
    metrics: Arc<Metrics>,
}

fn main() {
    let pipelines = setting("B10_PIPELINES", 20) as usize;
    let node_count = setting("B10_NODES", 50) as usize;
    let interval = Duration::from_secs(setting("B10_INTERVAL", 30));
    let window = Duration::from_secs(setting("B10_SECONDS", 180));
    let trials = setting("B10_TRIALS", 3) as usize;
    let nodes: Vec<Node> = (0..node_count)
        .map(|i| Node::new(&format!("edge-{i}")).label("edgepipe.dev/site", SITE))
        .collect();
    let cluster = Cluster::start("b10", &nodes);
    let _guard = cluster.guard();
    let install = helm::install_on(cluster.kubeconfig(), &[], &[]);
    assert!(install.success, "helm install: {}", install.stderr);
    let operator = Operator::from_deployment(&cluster, NAMESPACE, "edgepipe-edge-operator", "b10");
    poll(Duration::from_secs(60), "the operator ready", || {
        operator.ready().then_some(())
    });
    let pid = operator.pid().expect("the operator runs");
    cluster.namespace(SITE);
    for i in 0..pipelines {
        cluster.apply(&pipeline_yaml(i));
    }
    let agents_total = pipelines * node_count;
    poll(
        Duration::from_secs(900),
        "every agent pod scheduled and ready",
        || {
            let list = cluster.get_json(&["epl", "-n", SITE]);
            let ready = list["items"]
                .as_array()?
                .iter()
                .filter(|p| p["status"]["readyNodes"] == node_count)
                .count();
            (ready == pipelines).then_some(())
        },
    );

    // Baseline: the operator with its pipelines and no record, over a minute.
    let (_, cpu0) = usage(pid);
    let baseline_started = Instant::now();
    std::thread::sleep(Duration::from_secs(60));
    let (idle_rss, cpu1) = usage(pid);
    let idle_cpu = (cpu1 - cpu0) / baseline_started.elapsed().as_secs_f64();
    let idle_peak = peak_rss(pid);

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let _ = rustls::crypto::ring::default_provider().install_default();
    let dir = tempfile::tempdir().expect("tempdir");
    let agents: Vec<Agent> = rt.block_on(async {
        let kubeconfig =
            kube::config::Kubeconfig::read_from(cluster.kubeconfig()).expect("kubeconfig");
        let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
            .await
            .expect("kube config");
        let client = kube::Client::try_from(config).expect("client");
        let pods: Api<k8s_openapi::api::core::v1::Pod> = Api::namespaced(client.clone(), SITE);
        let accounts: Api<ServiceAccount> = Api::namespaced(client, SITE);
        let list = pods.list(&Default::default()).await.expect("agent pods");
        let mut agents = vec![];
        for pod in list.items {
            let name = pod.metadata.name.clone().unwrap_or_default();
            let uid = pod.metadata.uid.clone().unwrap_or_default();
            let node = pod
                .spec
                .as_ref()
                .and_then(|s| s.node_name.clone())
                .unwrap_or_default();
            let pipeline = pod
                .metadata
                .labels
                .as_ref()
                .and_then(|l| l.get("app.kubernetes.io/instance").cloned())
                .unwrap_or_default();
            agents.push(Agent {
                metrics: Arc::new(Metrics::new(&format!("{SITE}/{pipeline}")).expect("metrics")),
                pipeline,
                node,
                pod: (name, uid),
            });
        }
        // A token per agent pod, bound to it (and so to its node), as the kubelet projects.
        for agent in &agents {
            let request = json!({
                "apiVersion": "authentication.k8s.io/v1",
                "kind": "TokenRequest",
                "spec": {
                    "expirationSeconds": 3600,
                    "boundObjectRef": {"kind": "Pod", "apiVersion": "v1",
                                       "name": agent.pod.0, "uid": agent.pod.1}
                }
            });
            let account = format!("edgepipe-agent.{}", agent.pipeline);
            let answer: Value = accounts
                .create_subresource("token", &account, &PostParams::default(), &request)
                .await
                .expect("TokenRequest");
            let token = answer["status"]["token"].as_str().expect("a token");
            std::fs::write(dir.path().join(&agent.pod.0), token).expect("token file");
        }
        agents
    });
    assert_eq!(
        agents.len(),
        agents_total,
        "one agent pod per node and pipeline"
    );

    let stop = CancellationToken::new();
    let started = Instant::now();
    let w0 = requests(&cluster, "leases", "", &["APPLY", "PATCH", "POST", "PUT"]);
    rt.block_on(async {
        for agent in &agents {
            agent.metrics.upstream_up.set(1);
            let settings = Settings {
                lease: format!("edgepipe-agent.{}.{}", agent.pipeline, agent.node),
                namespace: SITE.to_string(),
                node: agent.node.clone(),
                pipeline: agent.pipeline.clone(),
                api: cluster.server().to_string(),
                token_file: dir.path().join(&agent.pod.0),
                ca_file: cluster.ca_file(),
                interval,
            };
            heartbeat::spawn(settings, agent.metrics.clone(), stop.clone());
        }
    });
    let all_in = poll(
        interval * 4 + Duration::from_secs(120),
        "every record in status.fleet",
        || {
            let fleets = fleets(&cluster);
            (fleets.len() == pipelines && fleets.values().all(|f| f["reporting"] == node_count))
                .then(|| started.elapsed())
        },
    );

    // The steady window: writes, the operator's CPU and status writes.
    std::thread::sleep(interval);
    let l0 = requests(&cluster, "leases", "", &["APPLY", "PATCH", "POST", "PUT"]);
    let s0 = requests(&cluster, "edgepipelines", "status", &["APPLY", "PATCH"]);
    let (_, c0) = usage(pid);
    let steady_started = Instant::now();
    std::thread::sleep(window);
    let steady = steady_started.elapsed().as_secs_f64();
    let l1 = requests(&cluster, "leases", "", &["APPLY", "PATCH", "POST", "PUT"]);
    let s1 = requests(&cluster, "edgepipelines", "status", &["APPLY", "PATCH"]);
    let (_, c1) = usage(pid);
    let intervals = steady / interval.as_secs_f64();
    let per_agent = (l1 - l0) / agents_total as f64 / intervals;
    let busy_cpu = (c1 - c0) / steady;
    let status_per_minute = (s1 - s0) / steady * 60.0;

    // Latency: an agent's upstream goes down; how long until status.fleet shows it.
    let mut latencies = vec![];
    for trial in 0..trials {
        let agent = &agents[(trial * 37 + 11) % agents.len()];
        agent.metrics.upstream_up.set(0);
        let changed = Instant::now();
        let seen = poll(interval * 4, "the change in status.fleet", || {
            let fleets = fleets(&cluster);
            (fleets.get(&agent.pipeline)?["upstreamDown"] == 1).then(|| changed.elapsed())
        });
        latencies.push(seen);
        agent.metrics.upstream_up.set(1);
        poll(interval * 4, "the recovery in status.fleet", || {
            let fleets = fleets(&cluster);
            (fleets.get(&agent.pipeline)?["upstreamDown"] == 0).then_some(())
        });
    }
    let peak = peak_rss(pid);
    stop.cancel();
    let total_writes = requests(&cluster, "leases", "", &["APPLY", "PATCH", "POST", "PUT"]) - w0;
    eprintln!(
        "b10: {total_writes} lease writes in {:.0} s",
        started.elapsed().as_secs_f64()
    );

    let mib = |b: u64| b as f64 / 1048576.0;
    let secs = |d: Duration| d.as_secs_f64();
    let worst = latencies.iter().max().copied().unwrap_or_default();
    let mean = latencies.iter().map(|d| secs(*d)).sum::<f64>() / latencies.len().max(1) as f64;
    let fleet = format!(
        "{agents_total} agents ({pipelines} pipelines x {node_count} kwok nodes), {}s heartbeat",
        interval.as_secs()
    );
    println!(
        "| B10 {fleet}: lease writes per agent per interval ({:.0} s steady) | {per_agent:.2} ({:.1} writes/s) | the schedule's bound: 1 per interval ({:.1} writes/s) | {per_agent:.2} | ≤ 1 |",
        steady,
        (l1 - l0) / steady,
        agents_total as f64 / interval.as_secs_f64(),
    );
    println!(
        "| B10 operator CPU while the records arrive | {:.1}% of a core ({status_per_minute:.1} status writes/min) | the same operator and pipelines without records: {:.1}% | {:.2}x | — |",
        busy_cpu * 100.0,
        idle_cpu * 100.0,
        busy_cpu / idle_cpu.max(0.001),
    );
    println!(
        "| B10 operator peak RSS | {:.1} MiB | before any record: {:.1} MiB (RSS {:.1} MiB) | {:.2}x | ≤ 64 MB |",
        mib(peak),
        mib(idle_peak),
        mib(idle_rss),
        mib(peak) / mib(idle_peak).max(0.1),
    );
    println!(
        "| B10 agent state change to status.fleet ({trials} agents) | worst {:.1} s, mean {mean:.1} s (every record in status.fleet {:.1} s after the agents started) | one interval, the longest an agent waits to write: {:.0} s | {:.2} | ≤ 2 intervals ({:.0} s) |",
        secs(worst),
        secs(all_in),
        secs(interval),
        secs(worst) / secs(interval),
        secs(interval) * 2.0,
    );
}

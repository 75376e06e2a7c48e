//! B9: a fleet against a real API server. 1,000 EdgePipelines (`B9_PIPELINES`) applied at
//! once with kubectl to a real control plane with 50 simulated nodes (`B9_NODES`) in 10
//! sites, each pipeline selecting one site; the operator runs as the chart's
//! ServiceAccount. Reports the time until every pipeline is Ready, the operator's peak
//! RSS and CPU, and the API writes per pipeline per minute at rest (from the API server's
//! own `apiserver_request_total`, over `B9_REST_SECONDS`, default 360: longer than the
//! operator's 5-minute periodic reconcile), each next to a baseline from
//! the same run: the operator idle with no pipeline, and the cluster's writes at rest
//! before any pipeline existed. Goals: all Ready in under 60 s, RSS at most 64 MB, zero
//! writes at rest.
//!
//! `cargo bench -p edge-tests --bench fleet` (tests/bench/run.sh b9 runs it too).

use std::time::{Duration, Instant};

use edge_testkit::cluster::{Cluster, Node};
use edge_testkit::operator::Operator;
use edge_testkit::poll;
use edge_testkit::process::{peak_rss, usage};
use edge_tests::helm::{self, NAMESPACE};

const SITES: usize = 10;
/// kubectl processes applying the pipelines at once.
const APPLIERS: usize = 4;
/// Resources whose writes count: what the operator writes and what its writes cause.
const RESOURCES: [&str; 5] = [
    "edgepipelines",
    "configmaps",
    "daemonsets",
    "events",
    "pods",
];
const WRITE_VERBS: [&str; 5] = ["POST", "PUT", "PATCH", "APPLY", "DELETE"];

fn setting(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Writes to [`RESOURCES`] the API server has served so far.
fn writes(cluster: &Cluster) -> f64 {
    let text = cluster.kubectl_ok(&["get", "--raw", "/metrics"]);
    text.lines()
        .filter(|l| l.starts_with("apiserver_request_total{"))
        .filter(|l| {
            WRITE_VERBS
                .iter()
                .any(|v| l.contains(&format!("verb=\"{v}\"")))
                && RESOURCES
                    .iter()
                    .any(|r| l.contains(&format!("resource=\"{r}\"")))
        })
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum()
}

/// Write requests the API server has completed so far, by user, from its audit logs
/// (read line by line: at this scale they are large, and rotated).
fn writes_by_user(cluster: &Cluster) -> std::collections::BTreeMap<String, u64> {
    use std::io::BufRead;
    let mut by_user = std::collections::BTreeMap::new();
    // The API server rotates its audit log (audit-<time>.log beside audit.log): read all.
    let logs = cluster.dir().join("logs");
    let files: Vec<std::path::PathBuf> = std::fs::read_dir(&logs)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|p| {
                    p.file_name()
                        .and_then(|n| n.to_str())
                        .is_some_and(|n| n.starts_with("audit") && n.ends_with(".log"))
                })
                .collect()
        })
        .unwrap_or_default();
    for path in files {
        let Ok(file) = std::fs::File::open(&path) else {
            continue;
        };
        for line in std::io::BufReader::new(file).lines().map_while(Result::ok) {
            if !line.contains("\"ResponseComplete\"") {
                continue;
            }
            let Ok(event) = serde_json::from_str::<serde_json::Value>(&line) else {
                continue;
            };
            if matches!(
                event["verb"].as_str(),
                Some("create" | "update" | "patch" | "delete")
            ) {
                let user = event["user"]["username"]
                    .as_str()
                    .unwrap_or("?")
                    .to_string();
                *by_user.entry(user).or_default() += 1;
            }
        }
    }
    by_user
}

fn pipeline_yaml(i: usize) -> String {
    format!(
        r#"---
apiVersion: edgepipe.dev/v1alpha1
kind: EdgePipeline
metadata: {{name: line-{i}, namespace: fleet}}
spec:
  source:
    mqtt: {{url: "mqtt://${{HOST_IP}}:1883", topics: ["sensors/{i}/#"]}}
  processors:
    - deadband: {{absolute: 0.5, maxSilence: 5m}}
  sink:
    http: {{url: "https://ingest.example.com/batch"}}
  nodeSelector: {{edgepipe.dev/site: "site-{site}"}}
"#,
        site = i % SITES
    )
}

/// Applies `manifests` with [`APPLIERS`] kubectl clients at once, as a GitOps tool would
/// (one kubectl applies its objects one after the other); returns how long they took.
fn apply_at_once(cluster: &Cluster, manifests: &[String]) -> Duration {
    let started = Instant::now();
    let chunks: Vec<String> = (0..APPLIERS)
        .map(|c| {
            manifests
                .iter()
                .enumerate()
                .filter(|(i, _)| i % APPLIERS == c)
                .map(|(_, m)| m.as_str())
                .collect()
        })
        .collect();
    std::thread::scope(|scope| {
        for chunk in &chunks {
            scope.spawn(move || {
                let applied = cluster.kubectl_stdin(&["apply", "-f", "-"], chunk);
                assert!(
                    applied.status.success(),
                    "kubectl apply: {}",
                    String::from_utf8_lossy(&applied.stderr)
                );
            });
        }
    });
    started.elapsed()
}

/// The baseline of the time to Ready: what the simulated cluster itself takes for the
/// same fleet without the operator. The ConfigMap and DaemonSet the operator would apply
/// for each pipeline (`edge-operator render`) are applied directly, in a cluster of their
/// own with the same nodes, and timed until every DaemonSet has all its agents ready.
/// Returns (time to all ready, time the clients took to send them).
fn bare_daemon_sets(nodes: &[Node], count: usize) -> (Duration, Duration) {
    let operator = edge_testkit::workspace_bin("edge-operator");
    let dir = std::env::temp_dir().join(format!("b9-render-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("render dir");
    let rendered: Vec<String> = (0..count)
        .map(|i| {
            let manifest = dir.join("pipeline.yaml");
            std::fs::write(&manifest, pipeline_yaml(i)).expect("manifest");
            let out = std::process::Command::new(&operator)
                .args(["render", "-f"])
                .arg(&manifest)
                .output()
                .expect("edge-operator render");
            assert!(
                out.status.success(),
                "render: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            String::from_utf8(out.stdout).expect("YAML")
        })
        .collect();
    let _ = std::fs::remove_dir_all(&dir);
    let cluster = Cluster::start("b9-bare", nodes);
    let _guard = cluster.guard();
    cluster.namespace("fleet");
    let started = Instant::now();
    let applied_in = apply_at_once(&cluster, &rendered);
    let ready_in = poll(
        Duration::from_secs(1800),
        "every bare DaemonSet ready",
        || {
            let list = cluster.get_json(&["daemonsets", "-n", "fleet"]);
            let ready = list["items"]
                .as_array()?
                .iter()
                .filter(|ds| {
                    let desired = ds["status"]["desiredNumberScheduled"].as_i64().unwrap_or(0);
                    desired > 0
                        && ds["status"]["numberReady"].as_i64() == Some(desired)
                        && ds["status"]["updatedNumberScheduled"].as_i64() == Some(desired)
                })
                .count();
            (ready == count).then(|| started.elapsed())
        },
    );
    (ready_in, applied_in)
}

fn main() {
    let count = setting("B9_PIPELINES", 1000) as usize;
    let node_count = setting("B9_NODES", 50) as usize;
    let rest = Duration::from_secs(setting("B9_REST_SECONDS", 360));
    let nodes: Vec<Node> = (0..node_count)
        .map(|i| {
            Node::new(&format!("edge-{i}"))
                .label("edgepipe.dev/edge", "true")
                .label("edgepipe.dev/site", &format!("site-{}", i % SITES))
        })
        .collect();
    let (bare_ready_in, bare_applied_in) = bare_daemon_sets(&nodes, count);
    let cluster = Cluster::start("b9", &nodes);
    let _guard = cluster.guard();
    let install = helm::install_on(cluster.kubeconfig(), &[], &[]);
    assert!(install.success, "helm install: {}", install.stderr);
    let operator = Operator::from_deployment(&cluster, NAMESPACE, "edgepipe-edge-operator", "b9");
    poll(Duration::from_secs(60), "the operator ready", || {
        operator.ready().then_some(())
    });
    let pid = operator.pid().expect("the operator runs");
    cluster.namespace("fleet");

    // Baselines: the idle operator, and the cluster's own writes with no pipeline.
    let w0 = writes(&cluster);
    let idle_started = Instant::now();
    std::thread::sleep(rest.min(Duration::from_secs(60)));
    let baseline_writes = (writes(&cluster) - w0) / idle_started.elapsed().as_secs_f64() * 60.0;
    let (idle_rss, idle_cpu) = usage(pid);

    let manifests: Vec<String> = (0..count).map(pipeline_yaml).collect();
    let started = Instant::now();
    let applied_in = apply_at_once(&cluster, &manifests);
    let mut peak = idle_rss;
    let ready_in = poll(Duration::from_secs(1800), "every pipeline Ready", || {
        peak = peak.max(usage(pid).0);
        let list = cluster.get_json(&["epl", "-n", "fleet"]);
        let ready = list["items"]
            .as_array()?
            .iter()
            .filter(|p| {
                p["status"]["conditions"].as_array().is_some_and(|c| {
                    c.iter()
                        .any(|c| c["type"] == "Ready" && c["status"] == "True")
                })
            })
            .count();
        (ready == count).then(|| started.elapsed())
    });
    let (_, busy_cpu) = usage(pid);

    let w1 = writes(&cluster);
    let by_user_before = writes_by_user(&cluster);
    let rest_started = Instant::now();
    while rest_started.elapsed() < rest {
        peak = peak.max(usage(pid).0);
        std::thread::sleep(Duration::from_millis(500));
    }
    let rest_minutes = rest_started.elapsed().as_secs_f64() / 60.0;
    let at_rest = (writes(&cluster) - w1) / rest_minutes;
    // Who wrote during the rest window (the operator's writes are the goal's).
    let mut writers: Vec<(String, u64)> = writes_by_user(&cluster)
        .into_iter()
        .map(|(user, n)| {
            let before = by_user_before.get(&user).copied().unwrap_or(0);
            (user, n.saturating_sub(before))
        })
        .filter(|(_, n)| *n > 0)
        .collect();
    writers.sort_by_key(|(_, n)| std::cmp::Reverse(*n));
    eprintln!("b9: writes during the rest window by user: {writers:?}");
    let operator_at_rest = writers
        .iter()
        .find(|(user, _)| *user == operator.user)
        .map_or(0, |(_, n)| *n) as f64
        / rest_minutes;
    let (end_rss, _) = usage(pid);
    peak = peak.max(end_rss).max(peak_rss(pid));
    let mib = |b: u64| b as f64 / 1048576.0;

    println!(
        "| B9 {count} pipelines on {node_count} kwok nodes: time to all Ready | {:.1} s from the first apply ({APPLIERS} kubectl clients took {:.1} s to send them) | the same ConfigMaps and DaemonSets applied without the operator, all agents ready: {:.1} s ({:.1} s to send) | {:.2} | < 60 s |",
        ready_in.as_secs_f64(),
        applied_in.as_secs_f64(),
        bare_ready_in.as_secs_f64(),
        bare_applied_in.as_secs_f64(),
        ready_in.as_secs_f64() / bare_ready_in.as_secs_f64().max(0.001)
    );
    println!(
        "| B9 operator peak RSS | {:.1} MiB | idle, no pipeline: {:.1} MiB | {:.2}x | ≤ 64 MB |",
        mib(peak),
        mib(idle_rss),
        mib(peak) / mib(idle_rss).max(0.1)
    );
    println!(
        "| B9 operator CPU to reconcile all | {:.1} s | idle: {:.1} s | — | — |",
        busy_cpu - idle_cpu,
        idle_cpu
    );
    println!(
        "| B9 API writes at rest, per pipeline per minute ({}s window) | {:.4} ({:.1}/min in all) | cluster before any pipeline: {:.1}/min | — | 0 |",
        rest.as_secs(),
        at_rest / count as f64,
        at_rest,
        baseline_writes
    );
    println!(
        "| B9 operator's own API writes at rest, per pipeline per minute (audit log) | {:.4} ({:.1}/min in all) | — | — | 0 |",
        operator_at_rest / count as f64,
        operator_at_rest
    );
}

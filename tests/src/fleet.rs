//! What the control-plane tests share: a cluster with the chart installed and the operator
//! running ([`Fleet`]), the EdgePipeline manifests they apply, what `edge-operator render`
//! makes of one, and a watch of a pipeline's agent pods that sees every pod event.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use edge_operator::{RenderOptions, Rendered};
use edge_testkit::cluster::{Cluster, Node};
use edge_testkit::eventually;
use edge_testkit::operator::Operator;
use edge_testkit::pipeline_yaml;
use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::runtime::watcher;
use kube::{Api, Client};
use serde_json::Value;

use crate::helm;

/// A real control plane with the chart installed by Helm and the operator running as the
/// chart's ServiceAccount.
pub struct Fleet {
    pub cluster: Cluster,
    pub operator: Operator,
}

impl Fleet {
    /// Starts the control plane `name` with these simulated nodes, installs the chart and
    /// runs the operator (see [`helm::install_and_run_operator`]).
    pub fn start(name: &str, nodes: &[Node]) -> Fleet {
        let cluster = Cluster::start(name, nodes);
        let operator = helm::install_and_run_operator(&cluster);
        Fleet { cluster, operator }
    }
}

/// The `nodeSelector` entries of the nodes labelled `edgepipe.dev/edge=true`.
pub const EDGE_NODES: &str = r#"edgepipe.dev/edge: "true""#;

/// The `nodeSelector` entries of the nodes of a site (`edgepipe.dev/site=<site>`).
pub fn site_nodes(site: &str) -> String {
    format!("edgepipe.dev/site: {site}")
}

/// The EdgePipeline `namespace/name`: `sensors/#` from the node's broker
/// (`${HOST_IP}:1883`) to a remote HTTP sink (with `batchSize` when given), on the nodes
/// `node_selector` selects (the entries of a flow mapping, e.g. [`EDGE_NODES`]). The spec
/// comes last, so a caller may append more of it (YAML at two spaces).
pub fn pipeline_manifest(
    namespace: &str,
    name: &str,
    node_selector: &str,
    batch: Option<u32>,
) -> String {
    let batch = batch
        .map(|b| format!(", batchSize: {b}"))
        .unwrap_or_default();
    pipeline_yaml(
        namespace,
        name,
        &format!(
            r#"  source:
    mqtt: {{url: "mqtt://${{HOST_IP}}:1883", topics: ["sensors/#"]}}
  sink:
    http: {{url: "https://ingest.example.com/batch"{batch}}}
  nodeSelector: {{{node_selector}}}
"#
        ),
    )
}

/// The render options of `edge-operator render -f FILE`: the default agent image, no
/// model, no Secrets, no fleet records, no fallback, off the control-plane nodes.
pub fn render_options() -> RenderOptions {
    RenderOptions::default()
}

/// What `edge-operator render` makes of the EdgePipeline `manifest`.
pub fn render_manifest(manifest: &str) -> Rendered {
    let pipeline = edge_operator::render::pipeline_from_manifest(manifest).expect("parses");
    edge_operator::render(&pipeline, &render_options()).expect("renders")
}

/// The name of the configuration revision (ConfigMap) the operator renders for
/// `manifest`.
pub fn rendered_revision(manifest: &str) -> String {
    render_manifest(manifest)
        .config_map
        .metadata
        .name
        .expect("a name")
}

/// A client of the cluster as its admin.
pub async fn admin_client(cluster: &Cluster) -> Client {
    let kubeconfig =
        kube::config::Kubeconfig::read_from(cluster.kubeconfig()).expect("admin kubeconfig");
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
        .await
        .expect("kube config");
    Client::try_from(config).expect("kube client")
}

/// Whether a pod (as JSON) has condition Ready=True.
pub fn pod_ready(pod: &Value) -> bool {
    pod["status"]["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|c| c["type"] == "Ready" && c["status"] == "True")
}

/// A running watch of a pipeline's agent pods (see [`watch_agent_pods`]); stops when
/// dropped.
pub struct AgentPodWatch {
    task: tokio::task::JoinHandle<()>,
    listed: Arc<AtomicBool>,
}

impl AgentPodWatch {
    /// Waits until the watch has listed the pods that were there when it started.
    pub async fn wait_listed(&self, wait: Duration) {
        eventually(wait, "the pod watch to list the agents", async || {
            self.listed.load(Ordering::SeqCst).then_some(())
        })
        .await;
    }
}

impl Drop for AgentPodWatch {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Watches the agent pods of the pipeline `namespace/name` and calls `seen` with every
/// live pod (by name) after each pod event, once the initial list is complete (while it
/// streams in, the pods not yet listed are not gone).
pub fn watch_agent_pods(
    client: Client,
    namespace: &str,
    name: &str,
    mut seen: impl FnMut(&BTreeMap<String, Pod>) + Send + 'static,
) -> AgentPodWatch {
    let pods: Api<Pod> = Api::namespaced(client, namespace);
    let selector = format!("app.kubernetes.io/instance={name}");
    let listed = Arc::new(AtomicBool::new(false));
    let synced = listed.clone();
    let task = tokio::spawn(async move {
        let mut live: BTreeMap<String, Pod> = BTreeMap::new();
        let mut complete = false;
        let stream = watcher(pods, watcher::Config::default().labels(&selector));
        futures::pin_mut!(stream);
        while let Some(event) = stream.next().await {
            match event {
                Ok(watcher::Event::Init) => {
                    live.clear();
                    complete = false;
                }
                Ok(watcher::Event::InitApply(pod)) => {
                    live.insert(pod.metadata.name.clone().unwrap_or_default(), pod);
                    continue;
                }
                Ok(watcher::Event::InitDone) => {
                    complete = true;
                    synced.store(true, Ordering::SeqCst);
                }
                Ok(watcher::Event::Apply(pod)) => {
                    live.insert(pod.metadata.name.clone().unwrap_or_default(), pod);
                }
                Ok(watcher::Event::Delete(pod)) => {
                    live.remove(&pod.metadata.name.clone().unwrap_or_default());
                }
                Err(_) => continue,
            }
            if complete {
                seen(&live);
            }
        }
    });
    AgentPodWatch { task, listed }
}

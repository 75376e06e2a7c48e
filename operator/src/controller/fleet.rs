//! The agent pods and the nodes as the controller caches them: reduced to what the
//! status (who is ready, on which node, with which configuration) and the removal of old
//! configuration revisions (which ConfigMap each pod mounts) need, so a fleet of
//! thousands of pods costs little memory; a pipeline's agents and offline nodes as the
//! [`Context`] finds them there; and which pipelines a pod or a node change concerns.
//!
//! A node change reaches the pipelines with an agent on it only when the node goes
//! offline or comes back, not on every heartbeat.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use k8s_openapi::api::core::v1::{Node, NodeCondition, NodeSpec, NodeStatus, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use kube::runtime::reflector::{ObjectRef, Store};
use serde::Deserialize;

use super::{Context, StoredPipeline};
use crate::render::{CONFIG_HASH_ANNOTATION, CONFIG_VOLUME, TEMPLATE_HASH_ANNOTATION};
use crate::status::{AgentPod, Fleet, node_offline};

/// Label naming the pipeline of an agent pod.
const INSTANCE_LABEL: &str = "app.kubernetes.io/instance";
/// Upper bound on the nodes whose offline state is remembered between changes.
const MAX_TRACKED_NODES: usize = 65_536;

impl Context {
    /// The agent pods of the pipeline `namespace/name` in the cache.
    pub(super) fn agent_pods(&self, namespace: &str, name: &str) -> Vec<Arc<CachedPod>> {
        self.pods
            .state()
            .into_iter()
            .filter(|pod| {
                pod.metadata.namespace.as_deref() == Some(namespace)
                    && pod
                        .metadata
                        .labels
                        .as_ref()
                        .and_then(|l| l.get("app.kubernetes.io/instance"))
                        .is_some_and(|instance| instance == name)
            })
            .collect()
    }

    /// The agent pods of the pipeline `namespace/name` and which of their nodes are
    /// offline, as the caches show them.
    pub(super) fn fleet(&self, namespace: &str, name: &str) -> Fleet {
        let agents: Vec<AgentPod> = self
            .agent_pods(namespace, name)
            .iter()
            .map(|pod| AgentPod::from(pod.as_ref()))
            .collect();
        let offline_nodes = agents
            .iter()
            .filter_map(|agent| agent.node.as_ref())
            .filter(|node| {
                self.nodes
                    .get(&ObjectRef::new(node))
                    .is_some_and(|n| node_offline(&n))
            })
            .cloned()
            .collect();
        Fleet {
            agents,
            offline_nodes,
        }
    }
}

/// An agent pod as the controller caches it: decoded from the API server's JSON into
/// only the fields it reads. A `k8s_openapi` `Pod` takes over 2 KB in memory even when
/// nearly empty (and its `Volume` over 3 KB); a fleet has thousands of agent pods.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct CachedPod {
    /// The pod's metadata, reduced by [`summarize_pod`].
    pub metadata: ObjectMeta,
    /// The node and the configuration volume.
    #[serde(default)]
    pub spec: CachedPodSpec,
    /// The Ready condition.
    #[serde(default)]
    pub status: CachedPodStatus,
}

/// What the cache keeps of a pod's spec.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CachedPodSpec {
    /// The node it is bound to.
    #[serde(default)]
    pub node_name: Option<String>,
    /// Its volumes; [`summarize_pod`] keeps only the configuration volume.
    #[serde(default)]
    pub volumes: Vec<CachedVolume>,
}

/// A volume's name and the ConfigMap it mounts, if it mounts one.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CachedVolume {
    /// The volume's name.
    pub name: String,
    /// The ConfigMap it mounts.
    #[serde(default)]
    pub config_map: Option<NameRef>,
}

/// A reference by name.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct NameRef {
    /// The name.
    #[serde(default)]
    pub name: String,
}

/// What the cache keeps of a pod's status.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CachedPodStatus {
    /// Its conditions; [`summarize_pod`] keeps only Ready.
    #[serde(default)]
    pub conditions: Vec<CachedCondition>,
    /// Its containers' restarts and waiting reasons (for the rollout).
    #[serde(default)]
    pub container_statuses: Vec<CachedContainerStatus>,
}

/// A condition's type and status.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CachedCondition {
    /// The condition's type.
    #[serde(rename = "type")]
    pub type_: String,
    /// `True`, `False` or `Unknown`.
    pub status: String,
    /// When the status last changed.
    #[serde(default)]
    pub last_transition_time: Option<Time>,
}

/// What the rollout reads of a container's status.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CachedContainerStatus {
    /// How often it restarted.
    #[serde(default)]
    pub restart_count: i32,
    /// Its state: only why it waits, if it does.
    #[serde(default)]
    pub state: Option<CachedContainerState>,
}

/// A container's state, as far as the rollout reads it.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct CachedContainerState {
    /// Set while the container waits.
    #[serde(default)]
    pub waiting: Option<CachedWaiting>,
}

/// Why a container waits.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct CachedWaiting {
    /// `CrashLoopBackOff`, `ImagePullBackOff`, `ContainerCreating`...
    #[serde(default)]
    pub reason: Option<String>,
}

/// Waiting reasons of a container that will not run without a change.
const FAILING_REASONS: [&str; 5] = [
    "CrashLoopBackOff",
    "ImagePullBackOff",
    "ErrImagePull",
    "CreateContainerConfigError",
    "InvalidImageName",
];

impl From<&CachedPod> for crate::rollout::Agent {
    fn from(pod: &CachedPod) -> Self {
        let ready = pod.status.conditions.iter().find(|c| c.type_ == "Ready");
        Self {
            name: pod.metadata.name.clone().unwrap_or_default(),
            uid: pod.metadata.uid.clone().unwrap_or_default(),
            node: pod.spec.node_name.clone().unwrap_or_default(),
            template: pod
                .metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(TEMPLATE_HASH_ANNOTATION).cloned()),
            ready: ready.is_some_and(|c| c.status == "True"),
            ready_since: ready
                .and_then(|c| c.last_transition_time.as_ref())
                .map(|t| t.0.as_second()),
            created: pod
                .metadata
                .creation_timestamp
                .as_ref()
                .map(|t| t.0.as_second()),
            restarts: pod
                .status
                .container_statuses
                .iter()
                .map(|c| c.restart_count)
                .max()
                .unwrap_or(0),
            crash_looping: pod.status.container_statuses.iter().any(|c| {
                c.state
                    .as_ref()
                    .and_then(|s| s.waiting.as_ref())
                    .and_then(|w| w.reason.as_deref())
                    .is_some_and(|r| FAILING_REASONS.contains(&r))
            }),
            deleting: pod.metadata.deletion_timestamp.is_some(),
        }
    }
}

resource_as!(CachedPod, Pod);

impl From<&CachedPod> for AgentPod {
    fn from(pod: &CachedPod) -> Self {
        Self {
            node: pod.spec.node_name.clone(),
            ready: pod
                .status
                .conditions
                .iter()
                .any(|c| c.type_ == "Ready" && c.status == "True"),
            config_hash: pod
                .metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(CONFIG_HASH_ANNOTATION).cloned()),
        }
    }
}

/// Reduces a cached agent pod to its identity, its pipeline's label, config hash, node,
/// configuration volume and Ready condition.
pub fn summarize_pod(pod: &mut CachedPod) {
    let meta = std::mem::take(&mut pod.metadata);
    let annotations = meta
        .annotations
        .map(|mut a| {
            a.retain(|k, _| k == CONFIG_HASH_ANNOTATION || k == TEMPLATE_HASH_ANNOTATION);
            a
        })
        .filter(|a| !a.is_empty());
    let labels = meta
        .labels
        .and_then(|mut l| l.remove_entry(INSTANCE_LABEL))
        .map(|instance| BTreeMap::from([instance]));
    pod.metadata = ObjectMeta {
        name: meta.name,
        namespace: meta.namespace,
        uid: meta.uid,
        resource_version: meta.resource_version,
        labels,
        deletion_timestamp: meta.deletion_timestamp,
        creation_timestamp: meta.creation_timestamp,
        annotations,
        ..ObjectMeta::default()
    };
    pod.spec.volumes.retain(|v| v.name == CONFIG_VOLUME);
    pod.spec.volumes.shrink_to_fit();
    pod.status.conditions.retain(|c| c.type_ == "Ready");
    pod.status.conditions.shrink_to_fit();
    pod.status.container_statuses.shrink_to_fit();
}

/// Reduces a node to its name, its Ready condition's status and its taints.
pub fn summarize_node(node: &mut Node) {
    let meta = std::mem::take(&mut node.metadata);
    node.metadata = ObjectMeta {
        name: meta.name,
        uid: meta.uid,
        resource_version: meta.resource_version,
        ..ObjectMeta::default()
    };
    let taints = node.spec.take().and_then(|s| s.taints);
    node.spec = Some(NodeSpec {
        taints,
        ..NodeSpec::default()
    });
    let ready: Vec<NodeCondition> = node
        .status
        .take()
        .and_then(|s| s.conditions)
        .into_iter()
        .flatten()
        .filter(|c| c.type_ == "Ready")
        .map(|c| NodeCondition {
            type_: c.type_,
            status: c.status,
            ..NodeCondition::default()
        })
        .collect();
    node.status = Some(NodeStatus {
        conditions: Some(ready),
        ..NodeStatus::default()
    });
}

/// The pipeline an agent pod belongs to.
pub fn pipeline_of_pod(pod: &CachedPod) -> Option<ObjectRef<StoredPipeline>> {
    let name = pod.metadata.labels.as_ref()?.get(INSTANCE_LABEL)?;
    let namespace = pod.metadata.namespace.as_deref()?;
    Some(ObjectRef::new(name).within(namespace))
}

/// The configuration revision a cached agent pod mounts.
pub fn revision_of_pod(pod: &CachedPod) -> Option<&str> {
    pod.spec
        .volumes
        .iter()
        .find(|v| v.name == CONFIG_VOLUME)
        .and_then(|v| v.config_map.as_ref())
        .map(|cm| cm.name.as_str())
}

/// The pipelines with an agent pod (in the cache) on `node`.
pub fn pipelines_on_node(pods: &Store<CachedPod>, node: &Node) -> Vec<ObjectRef<StoredPipeline>> {
    let Some(name) = node.metadata.name.as_deref() else {
        return vec![];
    };
    let mut found: Vec<ObjectRef<StoredPipeline>> = pods
        .state()
        .iter()
        .filter(|pod| pod.spec.node_name.as_deref() == Some(name))
        .filter_map(|pod| pipeline_of_pod(pod))
        .collect();
    found.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
    found.dedup();
    found
}

/// The offline state last seen of each node, to tell a node going offline or coming back
/// from a heartbeat.
#[derive(Default)]
pub struct OfflineChanges {
    seen: Mutex<HashMap<String, bool>>,
}

impl OfflineChanges {
    /// Whether `node`'s offline state differs from the one last seen (a node seen for
    /// the first time has changed); remembers the new one.
    pub fn changed(&self, node: &Node) -> bool {
        let Some(name) = node.metadata.name.clone() else {
            return false;
        };
        let offline = node_offline(node);
        let Ok(mut seen) = self.seen.lock() else {
            return true;
        };
        if seen.len() >= MAX_TRACKED_NODES && !seen.contains_key(&name) {
            seen.clear();
        }
        seen.insert(name, offline) != Some(offline)
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::{
        ConfigMapVolumeSource, Container, PodCondition, PodSpec, PodStatus, Taint, Volume,
    };

    use super::*;

    fn node(ready: &str, taints: &[&str]) -> Node {
        Node {
            metadata: ObjectMeta {
                name: Some("edge-1".to_string()),
                labels: Some(BTreeMap::from([("a".to_string(), "b".to_string())])),
                ..ObjectMeta::default()
            },
            spec: Some(NodeSpec {
                taints: Some(
                    taints
                        .iter()
                        .map(|key| Taint {
                            key: key.to_string(),
                            effect: "NoExecute".to_string(),
                            ..Taint::default()
                        })
                        .collect(),
                ),
                ..NodeSpec::default()
            }),
            status: Some(NodeStatus {
                conditions: Some(vec![
                    NodeCondition {
                        type_: "MemoryPressure".to_string(),
                        status: "False".to_string(),
                        ..NodeCondition::default()
                    },
                    NodeCondition {
                        type_: "Ready".to_string(),
                        status: ready.to_string(),
                        message: Some("kubelet is posting ready status".to_string()),
                        ..NodeCondition::default()
                    },
                ]),
                ..NodeStatus::default()
            }),
        }
    }

    #[test]
    fn a_summarized_node_keeps_what_decides_offline() {
        let cases = [
            ("ready", "True", &[][..], false),
            ("not ready", "False", &[][..], true),
            ("unknown (no heartbeat)", "Unknown", &[][..], true),
            (
                "ready but unreachable",
                "True",
                &["node.kubernetes.io/unreachable"][..],
                true,
            ),
            (
                "another taint",
                "True",
                &["edgepipe.dev/maintenance"][..],
                false,
            ),
        ];
        for (name, ready, taints, offline) in cases {
            let mut n = node(ready, taints);
            assert_eq!(node_offline(&n), offline, "{name}");
            summarize_node(&mut n);
            assert_eq!(node_offline(&n), offline, "{name}: after summary");
            assert!(n.metadata.labels.is_none(), "{name}");
            assert_eq!(
                n.status.and_then(|s| s.conditions).map(|c| c.len()),
                Some(1)
            );
        }
    }

    #[test]
    fn only_a_change_of_offline_state_is_a_change() {
        let changes = OfflineChanges::default();
        assert!(changes.changed(&node("True", &[])), "first sight");
        assert!(!changes.changed(&node("True", &[])), "a heartbeat");
        assert!(changes.changed(&node("Unknown", &[])), "gone offline");
        assert!(!changes.changed(&node("False", &[])), "still offline");
        assert!(changes.changed(&node("True", &[])), "back");
    }

    #[test]
    fn a_summarized_pod_keeps_its_pipeline_node_revision_and_readiness() {
        let pod = Pod {
            metadata: ObjectMeta {
                name: Some("line1-agent-x".to_string()),
                namespace: Some("factory".to_string()),
                labels: Some(BTreeMap::from([
                    (INSTANCE_LABEL.to_string(), "line1".to_string()),
                    ("pod-template-generation".to_string(), "3".to_string()),
                ])),
                annotations: Some(BTreeMap::from([
                    (CONFIG_HASH_ANNOTATION.to_string(), "abc".to_string()),
                    ("other".to_string(), "x".repeat(1000)),
                ])),
                ..ObjectMeta::default()
            },
            spec: Some(PodSpec {
                node_name: Some("edge-1".to_string()),
                containers: vec![Container {
                    name: "edge-agent".to_string(),
                    ..Container::default()
                }],
                volumes: Some(vec![
                    Volume {
                        name: CONFIG_VOLUME.to_string(),
                        config_map: Some(ConfigMapVolumeSource {
                            name: "line1-agent-0123456789".to_string(),
                            ..ConfigMapVolumeSource::default()
                        }),
                        ..Volume::default()
                    },
                    Volume {
                        name: "tmp".to_string(),
                        ..Volume::default()
                    },
                ]),
                ..PodSpec::default()
            }),
            status: Some(PodStatus {
                conditions: Some(vec![
                    PodCondition {
                        type_: "Initialized".to_string(),
                        status: "True".to_string(),
                        ..PodCondition::default()
                    },
                    PodCondition {
                        type_: "Ready".to_string(),
                        status: "True".to_string(),
                        ..PodCondition::default()
                    },
                ]),
                ..PodStatus::default()
            }),
        };
        // As the watch decodes it: from the API server's JSON.
        let mut pod: CachedPod =
            serde_json::from_value(serde_json::to_value(&pod).expect("a pod serializes"))
                .expect("a pod decodes as cached");
        summarize_pod(&mut pod);
        assert_eq!(
            pipeline_of_pod(&pod),
            Some(ObjectRef::new("line1").within("factory"))
        );
        assert_eq!(revision_of_pod(&pod), Some("line1-agent-0123456789"));
        let seen = AgentPod::from(&pod);
        assert_eq!(seen.node.as_deref(), Some("edge-1"));
        assert!(seen.ready);
        assert_eq!(seen.config_hash.as_deref(), Some("abc"));
        assert_eq!(
            pod.metadata.annotations.map(|a| a.len()),
            Some(1),
            "only the config hash is kept"
        );
        assert_eq!(pod.metadata.labels.map(|l| l.len()), Some(1));
        assert_eq!(pod.spec.volumes.len(), 1, "only the configuration volume");
        assert_eq!(pod.status.conditions.len(), 1, "only Ready");
    }
}

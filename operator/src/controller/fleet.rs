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

use k8s_openapi::api::core::v1::{
    Node, NodeCondition, NodeSpec, NodeStatus, Pod, PodCondition, PodSpec, PodStatus,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::runtime::reflector::{ObjectRef, Store};

use super::{Context, StoredPipeline};
use crate::render::{CONFIG_HASH_ANNOTATION, mounted_revision};
use crate::status::{AgentPod, Fleet, node_offline};

/// Label naming the pipeline of an agent pod.
const INSTANCE_LABEL: &str = "app.kubernetes.io/instance";
/// Where a cached agent pod keeps the ConfigMap its configuration volume mounts. Only in
/// the operator's cache: nothing is written to the API server under this name.
const CACHED_REVISION: &str = "edgepipe.dev/cached-revision";
/// Upper bound on the nodes whose offline state is remembered between changes.
const MAX_TRACKED_NODES: usize = 65_536;

impl Context {
    /// The agent pods of the pipeline `namespace/name` in the cache.
    pub(super) fn agent_pods(&self, namespace: &str, name: &str) -> Vec<Arc<Pod>> {
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
            .map(|pod| AgentPod::of(pod))
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

/// Reduces an agent pod to its identity, its pipeline's label, config hash, node, the
/// configuration revision it mounts and Ready condition. The revision is kept as the
/// cache-only annotation [`CACHED_REVISION`] rather than as the pod's `Volume` (over 3 KB
/// in memory even when nearly empty): thousands of agent pods are cached.
pub fn summarize_pod(pod: &mut Pod) {
    let meta = std::mem::take(&mut pod.metadata);
    let spec = pod.spec.take().unwrap_or_default();
    let mut annotations = BTreeMap::new();
    if let Some(hash) = meta
        .annotations
        .and_then(|mut a| a.remove(CONFIG_HASH_ANNOTATION))
    {
        annotations.insert(CONFIG_HASH_ANNOTATION.to_string(), hash);
    }
    if let Some(revision) = mounted_revision(&spec) {
        annotations.insert(CACHED_REVISION.to_string(), revision.to_string());
    }
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
        annotations: (!annotations.is_empty()).then_some(annotations),
        ..ObjectMeta::default()
    };
    pod.spec = Some(PodSpec {
        node_name: spec.node_name,
        ..PodSpec::default()
    });
    let ready: Vec<PodCondition> = pod
        .status
        .take()
        .and_then(|s| s.conditions)
        .into_iter()
        .flatten()
        .filter(|c| c.type_ == "Ready")
        .map(|c| PodCondition {
            type_: c.type_,
            status: c.status,
            ..PodCondition::default()
        })
        .collect();
    pod.status = Some(PodStatus {
        conditions: Some(ready),
        ..PodStatus::default()
    });
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
pub fn pipeline_of_pod(pod: &Pod) -> Option<ObjectRef<StoredPipeline>> {
    let name = pod.metadata.labels.as_ref()?.get(INSTANCE_LABEL)?;
    let namespace = pod.metadata.namespace.as_deref()?;
    Some(ObjectRef::new(name).within(namespace))
}

/// The configuration revision a cached agent pod mounts (see [`summarize_pod`]).
pub fn revision_of_pod(pod: &Pod) -> Option<&str> {
    pod.metadata
        .annotations
        .as_ref()?
        .get(CACHED_REVISION)
        .map(String::as_str)
}

/// The pipelines with an agent pod (in the cache) on `node`.
pub fn pipelines_on_node(pods: &Store<Pod>, node: &Node) -> Vec<ObjectRef<StoredPipeline>> {
    let Some(name) = node.metadata.name.as_deref() else {
        return vec![];
    };
    let mut found: Vec<ObjectRef<StoredPipeline>> = pods
        .state()
        .iter()
        .filter(|pod| pod.spec.as_ref().and_then(|s| s.node_name.as_deref()) == Some(name))
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
    use k8s_openapi::api::core::v1::{ConfigMapVolumeSource, Container, Taint, Volume};

    use crate::render::CONFIG_VOLUME;

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
        let mut pod = Pod {
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
        summarize_pod(&mut pod);
        assert_eq!(
            pipeline_of_pod(&pod),
            Some(ObjectRef::new("line1").within("factory"))
        );
        assert_eq!(revision_of_pod(&pod), Some("line1-agent-0123456789"));
        let seen = crate::status::AgentPod::of(&pod);
        assert_eq!(seen.node.as_deref(), Some("edge-1"));
        assert!(seen.ready);
        assert_eq!(seen.config_hash.as_deref(), Some("abc"));
        assert_eq!(
            pod.metadata.annotations.map(|a| a.len()),
            Some(2),
            "only the config hash and the revision are kept"
        );
        assert_eq!(pod.metadata.labels.map(|l| l.len()), Some(1));
        assert!(
            pod.spec
                .is_some_and(|s| s.containers.is_empty() && s.volumes.is_none())
        );
    }
}

//! What the status reads of a rollout: the DaemonSet's counts, the agent pods on
//! offline nodes ([`Fleet`]), and when the rollout last made progress (for `Stalled`).

use std::collections::BTreeSet;
use std::time::Duration;

use edge_crds::EdgePipelineStatus;
use edge_crds::status::{CONDITION_PROGRESSING, CONDITION_STALLED};
use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::Node;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

/// The agent pods of a pipeline and the nodes that are offline, as the operator's caches
/// show them. Empty when unknown: then no node counts as offline.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Fleet {
    /// The pipeline's agent pods.
    pub agents: Vec<AgentPod>,
    /// Nodes that are NotReady or unreachable (all of the cluster's, not only this
    /// pipeline's).
    pub offline_nodes: BTreeSet<String>,
}

/// What the status needs of one agent pod.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AgentPod {
    /// The node it is bound to.
    pub node: Option<String>,
    /// Its Ready condition is True.
    pub ready: bool,
    /// The `edgepipe.dev/config-hash` of its template.
    pub config_hash: Option<String>,
}

/// Taint the node lifecycle controller puts on a node whose kubelet stopped reporting.
pub const UNREACHABLE_TAINT: &str = "node.kubernetes.io/unreachable";

/// Whether a node is offline: its Ready condition is False or Unknown, or it carries the
/// `node.kubernetes.io/unreachable` taint. A node without a Ready condition yet (just
/// registered) is not.
pub fn node_offline(node: &Node) -> bool {
    let not_ready = node
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .into_iter()
        .flatten()
        .any(|c| c.type_ == "Ready" && c.status != "True");
    let unreachable = node
        .spec
        .as_ref()
        .and_then(|s| s.taints.as_ref())
        .into_iter()
        .flatten()
        .any(|t| t.key == UNREACHABLE_TAINT);
    not_ready || unreachable
}

/// What the DaemonSet (and its pods on offline nodes) report about the rollout.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(super) struct Rollout {
    pub(super) desired: i32,
    pub(super) ready: i32,
    pub(super) updated: i32,
    /// The DaemonSet controller has seen the current template.
    pub(super) observed: bool,
    /// Agents allowed down during a rollout (maxUnavailable resolved against desired).
    pub(super) allowed_unavailable: i32,
    /// Agents on offline nodes that are not ready.
    pub(super) offline_unready: i32,
    /// Agents on offline nodes that run an earlier configuration (they catch up when the
    /// node is back; the rollout does not wait for them).
    pub(super) offline_outdated: i32,
    /// The offline nodes running an agent of this pipeline, sorted.
    pub(super) offline: Vec<String>,
    /// The configuration revision (ConfigMap) the pod template mounts.
    pub(super) revision: Option<String>,
}

impl Rollout {
    pub(super) fn of(
        daemon_set: Option<&DaemonSet>,
        fleet: &Fleet,
        max_unavailable: Option<&IntOrString>,
    ) -> Self {
        let Some(ds) = daemon_set else {
            return Self::default();
        };
        let status = ds.status.clone().unwrap_or_default();
        let desired = status.desired_number_scheduled;
        let observed = match (ds.metadata.generation, status.observed_generation) {
            (Some(generation), Some(observed)) => observed >= generation,
            (None, Some(_)) => true,
            _ => false,
        };
        let template = ds.spec.as_ref().map(|s| &s.template);
        let template_hash = template
            .and_then(|t| t.metadata.as_ref())
            .and_then(|m| m.annotations.as_ref())
            .and_then(|a| a.get(crate::render::CONFIG_HASH_ANNOTATION));
        let revision = template
            .and_then(|t| t.spec.as_ref())
            .and_then(crate::render::mounted_revision)
            .map(str::to_string);
        let mut offline = BTreeSet::new();
        let (mut offline_unready, mut offline_outdated) = (0, 0);
        for agent in &fleet.agents {
            let Some(node) = agent
                .node
                .as_ref()
                .filter(|n| fleet.offline_nodes.contains(*n))
            else {
                continue;
            };
            offline.insert(node.clone());
            if !agent.ready {
                offline_unready += 1;
            }
            if agent.config_hash.as_ref() != template_hash {
                offline_outdated += 1;
            }
        }
        Self {
            desired,
            ready: status.number_ready,
            updated: status.updated_number_scheduled.unwrap_or(0),
            observed,
            allowed_unavailable: crate::rollout::resolve(max_unavailable, desired),
            offline_unready,
            offline_outdated,
            offline: offline.into_iter().collect(),
            revision,
        }
    }

    /// Whether nodes that are online still wait for the current configuration.
    pub(super) fn rolling(&self) -> bool {
        !self.observed || self.updated + self.offline_outdated < self.desired
    }

    /// Agents on online nodes that are not ready.
    pub(super) fn online_not_ready(&self) -> i32 {
        (self.desired - self.ready - self.offline_unready).max(0)
    }
}

/// When the rollout last made progress: `now` when it did since `previous` (a new
/// revision, one more node updated or ready, or a rollout that just started), the time
/// kept in `previous` otherwise.
pub(super) fn last_progress(
    previous: Option<&EdgePipelineStatus>,
    rollout: &Rollout,
    now: &Time,
) -> Time {
    let Some(previous) = previous else {
        return now.clone();
    };
    let Some(last) = previous.last_progress_time.as_ref() else {
        return now.clone();
    };
    let was_rolling = previous
        .condition(CONDITION_PROGRESSING)
        .is_some_and(|c| c.status == "True");
    let progressed = !was_rolling
        || previous.config_revision != rollout.revision
        || rollout.updated > previous.updated_nodes
        || rollout.ready > previous.ready_nodes;
    if rollout.rolling() && progressed {
        now.clone()
    } else {
        last.clone()
    }
}

/// Seconds from `earlier` to `later` (0 when `later` is not later).
pub(super) fn seconds_between(earlier: &Time, later: &Time) -> u64 {
    u64::try_from(later.0.as_second() - earlier.0.as_second()).unwrap_or(0)
}

/// How long after `now` a pipeline with `status` must be looked at again for its rollout
/// to be found stalled in time: `None` unless a rollout is under way and not stalled yet.
pub fn stall_check_in(
    status: &EdgePipelineStatus,
    deadline: Duration,
    now: &Time,
) -> Option<Duration> {
    let rolling = status
        .condition(CONDITION_PROGRESSING)
        .is_some_and(|c| c.status == "True");
    let stalled = status
        .condition(CONDITION_STALLED)
        .is_some_and(|c| c.status == "True");
    if !rolling || stalled {
        return None;
    }
    let last = status.last_progress_time.as_ref()?;
    let waited = Duration::from_secs(seconds_between(last, now));
    Some(deadline.saturating_sub(waited) + Duration::from_secs(1))
}

/// A duration as `kubectl` prints one: `90s`, `10m`, `1h30m`.
pub(super) fn human(d: Duration) -> String {
    let s = d.as_secs();
    match (s / 3600, (s % 3600) / 60, s % 60) {
        (0, 0, s) => format!("{s}s"),
        (0, m, 0) => format!("{m}m"),
        (0, m, s) => format!("{m}m{s}s"),
        (h, 0, 0) => format!("{h}h"),
        (h, m, _) => format!("{h}h{m}m"),
    }
}

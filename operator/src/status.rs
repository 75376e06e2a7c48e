//! The EdgePipeline status, computed without an API server from the pipeline, the
//! validation result (or the tenant policy's verdict, or what stopped the apply), the
//! agent DaemonSet and its pods and nodes ([`Fleet`]), and the transitions worth an Event.
//!
//! The conditions mean what a Deployment's do: `Progressing` is True while a rollout is
//! under way and False (`RolloutComplete`) once it is done, so `kubectl wait
//! --for=condition=Ready` ends; a rollout without progress (one more node updated or
//! ready) for `spec.rollout.progressDeadline` is `Stalled` (`ProgressDeadlineExceeded`),
//! the time of the last progress being kept in `status.lastProgressTime`. A node that is
//! NotReady or unreachable is *offline*: its agent is neither ready nor a failure (one
//! node without power must not make every pipeline that selects it Degraded), a rollout
//! does not wait for it, and it is reported in `status.offlineNodes`.
//!
//! Identical inputs give an identical status: `lastTransitionTime` moves only when a
//! condition's status changes, so a periodic reconcile of an unchanged pipeline writes
//! nothing.

use std::collections::BTreeSet;
use std::time::Duration;

use edge_crds::status::{
    CONDITION_CONFLICT, CONDITION_DEGRADED, CONDITION_INVALID, CONDITION_PROGRESSING,
    CONDITION_READY, CONDITION_STALLED,
};
use edge_crds::validate::describe;
use edge_crds::{EdgePipeline, EdgePipelineStatus, FieldError};
use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{Node, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

/// Condition reasons (CamelCase, as the API requires).
pub mod reason {
    /// Ready: every desired node runs the current agent and it is ready.
    pub const ALL_AGENTS_READY: &str = "AllAgentsReady";
    /// Ready: every online node runs the current agent and it is ready; some nodes are
    /// offline (see `status.offlineNodes`).
    pub const ONLINE_AGENTS_READY: &str = "OnlineAgentsReady";
    /// Stalled: the rollout made no progress within `spec.rollout.progressDeadline`.
    pub const PROGRESS_DEADLINE_EXCEEDED: &str = "ProgressDeadlineExceeded";
    /// Ready/Progressing: the DaemonSet is rolling out the current configuration.
    pub const ROLLING_OUT: &str = "RollingOut";
    /// Progressing: every desired node runs the current configuration.
    pub const ROLLOUT_COMPLETE: &str = "RolloutComplete";
    /// Ready/Degraded: some agents are not ready.
    pub const AGENTS_NOT_READY: &str = "AgentsNotReady";
    /// Ready/Progressing: no node matches the node selector and tolerations.
    pub const NO_NODES: &str = "NoNodes";
    /// Every condition when the spec is invalid.
    pub const INVALID_SPEC: &str = "InvalidSpec";
    /// Degraded: nothing is wrong.
    pub const AS_EXPECTED: &str = "AsExpected";
    /// Invalid: the spec passed validation.
    pub const VALID: &str = "Valid";
    /// Every condition when the pipeline asks for more than the cluster's tenant policy
    /// allows (its agents are removed).
    pub const FORBIDDEN_BY_POLICY: &str = "ForbiddenByPolicy";
    /// Ready/Progressing/Degraded: the API server refused to apply the ConfigMap or the
    /// DaemonSet (an admission policy or webhook, a quota...); its message is in Degraded.
    pub const APPLY_FAILED: &str = "ApplyFailed";
    /// Ready/Progressing/Degraded: an object with the agent's name is not this
    /// pipeline's (see the Conflict condition).
    pub const CONFLICT: &str = "Conflict";
    /// Conflict: the object exists and has no controller, or another controller.
    pub const NOT_CONTROLLED: &str = "NotControlled";
}

/// Why the operator did not apply the objects of a valid pipeline.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Blocked {
    /// The API server refused an apply.
    ApplyFailed {
        /// The API server's message.
        message: String,
    },
    /// An object with the agent's name exists that this pipeline does not control.
    Conflict {
        /// Which object, and who controls it.
        message: String,
    },
}

/// Longest condition message the API accepts.
const MAX_MESSAGE: usize = 32 * 1024;
/// Most offline node names listed in `status.offlineNodeNames`.
pub const MAX_OFFLINE_NAMES: usize = 10;

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

impl AgentPod {
    /// The pod as the status sees it.
    pub fn of(pod: &Pod) -> Self {
        Self {
            node: pod.spec.as_ref().and_then(|s| s.node_name.clone()),
            ready: pod
                .status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .into_iter()
                .flatten()
                .any(|c| c.type_ == "Ready" && c.status == "True"),
            config_hash: pod
                .metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(crate::render::CONFIG_HASH_ANNOTATION).cloned()),
        }
    }
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
struct Rollout {
    desired: i32,
    ready: i32,
    updated: i32,
    /// The DaemonSet controller has seen the current template.
    observed: bool,
    /// Agents allowed down during a rollout (maxUnavailable resolved against desired).
    allowed_unavailable: i32,
    /// Agents on offline nodes that are not ready.
    offline_unready: i32,
    /// Agents on offline nodes that run an earlier configuration (they catch up when the
    /// node is back; the rollout does not wait for them).
    offline_outdated: i32,
    /// The offline nodes running an agent of this pipeline, sorted.
    offline: Vec<String>,
    /// The configuration revision (ConfigMap) the pod template mounts.
    revision: Option<String>,
}

impl Rollout {
    fn of(daemon_set: Option<&DaemonSet>, fleet: &Fleet) -> Self {
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
        let max_unavailable = ds
            .spec
            .as_ref()
            .and_then(|s| s.update_strategy.as_ref())
            .and_then(|u| u.rolling_update.as_ref())
            .and_then(|r| r.max_unavailable.clone())
            .unwrap_or(IntOrString::Int(1));
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
            allowed_unavailable: resolve_max_unavailable(&max_unavailable, desired),
            offline_unready,
            offline_outdated,
            offline: offline.into_iter().collect(),
            revision,
        }
    }

    /// Whether nodes that are online still wait for the current configuration.
    fn rolling(&self) -> bool {
        !self.observed || self.updated + self.offline_outdated < self.desired
    }

    /// Agents on online nodes that are not ready.
    fn online_not_ready(&self) -> i32 {
        (self.desired - self.ready - self.offline_unready).max(0)
    }
}

/// `maxUnavailable` as a number of agents, rounding percentages up like the DaemonSet
/// controller, and at least 1.
fn resolve_max_unavailable(value: &IntOrString, desired: i32) -> i32 {
    let n = match value {
        IntOrString::Int(n) => *n,
        IntOrString::String(s) => match s
            .strip_suffix('%')
            .and_then(|p| p.trim().parse::<i64>().ok())
        {
            Some(percent) => ((i64::from(desired) * percent + 99) / 100) as i32,
            None => 1,
        },
    };
    n.max(1)
}

/// Computes the status of `pipeline` (its previous status is `pipeline.status`).
/// `validation` is the result of [`crate::render::check`]; `daemon_set` is the agent
/// DaemonSet as last applied or read, if it exists; `now` stamps conditions that change.
/// No node counts as offline (see [`compute_fleet`]).
pub fn compute(
    pipeline: &EdgePipeline,
    validation: Result<(), &[FieldError]>,
    daemon_set: Option<&DaemonSet>,
    now: &Time,
) -> EdgePipelineStatus {
    compute_fleet(pipeline, validation, daemon_set, &Fleet::default(), now)
}

/// [`compute`] knowing the agent pods and the offline nodes.
pub fn compute_fleet(
    pipeline: &EdgePipeline,
    validation: Result<(), &[FieldError]>,
    daemon_set: Option<&DaemonSet>,
    fleet: &Fleet,
    now: &Time,
) -> EdgePipelineStatus {
    compute_inner(
        pipeline.metadata.generation,
        pipeline.status.as_ref(),
        validation,
        Rollout::of(daemon_set, fleet),
        pipeline.spec.progress_deadline(),
        now,
    )
}

/// [`compute`] for a pipeline known only by its generation and previous status (one this
/// operator cannot decode).
pub fn compute_from(
    generation: Option<i64>,
    previous: Option<&EdgePipelineStatus>,
    validation: Result<(), &[FieldError]>,
    daemon_set: Option<&DaemonSet>,
    now: &Time,
) -> EdgePipelineStatus {
    compute_inner(
        generation,
        previous,
        validation,
        Rollout::of(daemon_set, &Fleet::default()),
        edge_crds::RolloutSettings::default()
            .progress_deadline
            .to_std()
            .unwrap_or(Duration::from_secs(600)),
        now,
    )
}

/// When the rollout last made progress: `now` when it did since `previous` (a new
/// revision, one more node updated or ready, or a rollout that just started), the time
/// kept in `previous` otherwise.
fn last_progress(previous: Option<&EdgePipelineStatus>, rollout: &Rollout, now: &Time) -> Time {
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
fn seconds_between(earlier: &Time, later: &Time) -> u64 {
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
fn human(d: Duration) -> String {
    let s = d.as_secs();
    match (s / 3600, (s % 3600) / 60, s % 60) {
        (0, 0, s) => format!("{s}s"),
        (0, m, 0) => format!("{m}m"),
        (0, m, s) => format!("{m}m{s}s"),
        (h, 0, 0) => format!("{h}h"),
        (h, m, _) => format!("{h}h{m}m"),
    }
}

fn compute_inner(
    generation: Option<i64>,
    previous: Option<&EdgePipelineStatus>,
    validation: Result<(), &[FieldError]>,
    rollout: Rollout,
    deadline: Duration,
    now: &Time,
) -> EdgePipelineStatus {
    let c = |type_: &str, status: bool, reason: &str, message: String| Condition {
        type_: type_.to_string(),
        status: if status { "True" } else { "False" }.to_string(),
        reason: reason.to_string(),
        message: truncate(message, MAX_MESSAGE),
        observed_generation: generation,
        last_transition_time: now.clone(),
    };

    let conditions = match validation {
        Err(errors) => vec![
            c(
                CONDITION_READY,
                false,
                reason::INVALID_SPEC,
                "the spec is invalid; the agents of the last valid spec keep running".to_string(),
            ),
            c(
                CONDITION_PROGRESSING,
                false,
                reason::INVALID_SPEC,
                "nothing is rolled out until the spec is fixed".to_string(),
            ),
            c(
                CONDITION_DEGRADED,
                true,
                reason::INVALID_SPEC,
                "the operator cannot apply an invalid spec".to_string(),
            ),
            c(
                CONDITION_INVALID,
                true,
                reason::INVALID_SPEC,
                describe(errors),
            ),
        ],
        Ok(()) => {
            let r = &rollout;
            let offline = match r.offline.len() {
                0 => String::new(),
                1 => "; 1 node offline".to_string(),
                n => format!("; {n} nodes offline"),
            };
            let counts = format!(
                "{} of {} agents updated, {} ready{offline}",
                r.updated, r.desired, r.ready
            );
            let not_ready = r.online_not_ready();
            let (ready, ready_reason, ready_message) = if r.rolling() {
                (false, reason::ROLLING_OUT, counts.clone())
            } else if r.desired == 0 {
                (
                    false,
                    reason::NO_NODES,
                    "no node matches the pipeline's nodeSelector and tolerations (control-plane nodes only count when the tenant policy allows them)".to_string(),
                )
            } else if not_ready > 0 {
                (false, reason::AGENTS_NOT_READY, counts.clone())
            } else if r.offline.is_empty() {
                (
                    true,
                    reason::ALL_AGENTS_READY,
                    format!("all {} agents are updated and ready", r.desired),
                )
            } else {
                (
                    true,
                    reason::ONLINE_AGENTS_READY,
                    format!(
                        "the agents of every online node are updated and ready; {} of {} nodes are offline ({}) and catch up when they are back",
                        r.offline.len(),
                        r.desired,
                        r.offline.join(", ")
                    ),
                )
            };
            let progressing = if r.rolling() {
                c(
                    CONDITION_PROGRESSING,
                    true,
                    reason::ROLLING_OUT,
                    counts.clone(),
                )
            } else if r.desired == 0 {
                c(
                    CONDITION_PROGRESSING,
                    false,
                    reason::NO_NODES,
                    counts.clone(),
                )
            } else {
                c(
                    CONDITION_PROGRESSING,
                    false,
                    reason::ROLLOUT_COMPLETE,
                    counts.clone(),
                )
            };
            let degraded = not_ready > 0 && (!r.rolling() || not_ready > r.allowed_unavailable);
            let last = last_progress(previous, r, now);
            let stalled = r.rolling() && seconds_between(&last, now) > deadline.as_secs();
            vec![
                c(CONDITION_READY, ready, ready_reason, ready_message),
                progressing,
                if degraded {
                    c(
                        CONDITION_DEGRADED,
                        true,
                        reason::AGENTS_NOT_READY,
                        format!("{not_ready} of {} agents are not ready{offline}", r.desired),
                    )
                } else {
                    c(
                        CONDITION_DEGRADED,
                        false,
                        reason::AS_EXPECTED,
                        counts.clone(),
                    )
                },
                c(
                    CONDITION_INVALID,
                    false,
                    reason::VALID,
                    "the spec is valid".to_string(),
                ),
                if stalled {
                    c(
                        CONDITION_STALLED,
                        true,
                        reason::PROGRESS_DEADLINE_EXCEEDED,
                        format!(
                            "the rollout made no progress for more than {} (spec.rollout.progressDeadline): {counts}",
                            human(deadline)
                        ),
                    )
                } else {
                    c(
                        CONDITION_STALLED,
                        false,
                        reason::AS_EXPECTED,
                        if r.rolling() {
                            format!("the rollout is progressing (deadline {})", human(deadline))
                        } else {
                            "no rollout is waiting".to_string()
                        },
                    )
                },
            ]
        }
    };

    let mut status = finish(generation, previous, conditions, &rollout);
    if validation.is_ok() {
        status.last_progress_time = Some(last_progress(previous, &rollout, now));
    }
    status
}

/// The status of a valid pipeline whose objects the operator did not apply: Ready and
/// Progressing False and Degraded True with reason `ApplyFailed` (the API server's message
/// in Degraded) or `Conflict` (then a `Conflict` condition names the object). The agents
/// already running are left as they are; the counts are the ones last observed.
pub fn compute_blocked(
    pipeline: &EdgePipeline,
    blocked: &Blocked,
    now: &Time,
) -> EdgePipelineStatus {
    let generation = pipeline.metadata.generation;
    let previous = pipeline.status.as_ref();
    let c = |type_: &str, status: bool, reason: &str, message: String| Condition {
        type_: type_.to_string(),
        status: if status { "True" } else { "False" }.to_string(),
        reason: reason.to_string(),
        message: truncate(message, MAX_MESSAGE),
        observed_generation: generation,
        last_transition_time: now.clone(),
    };
    let (why, degraded, conflict) = match blocked {
        Blocked::ApplyFailed { message } => (reason::APPLY_FAILED, message.clone(), None),
        Blocked::Conflict { message } => (
            reason::CONFLICT,
            format!("the operator applies nothing while the conflict lasts: {message}"),
            Some(c(
                CONDITION_CONFLICT,
                true,
                reason::NOT_CONTROLLED,
                message.clone(),
            )),
        ),
    };
    let mut conditions = vec![
        c(
            CONDITION_READY,
            false,
            why,
            "the current spec is not applied; agents already running keep the last applied one"
                .to_string(),
        ),
        c(
            CONDITION_PROGRESSING,
            false,
            why,
            "nothing is rolled out until the operator can apply the pipeline".to_string(),
        ),
        c(CONDITION_DEGRADED, true, why, degraded),
        c(
            CONDITION_INVALID,
            false,
            reason::VALID,
            "the spec is valid".to_string(),
        ),
    ];
    conditions.extend(conflict);
    let rollout = previous.map_or_else(Rollout::default, |p| Rollout {
        desired: p.desired_nodes,
        ready: p.ready_nodes,
        updated: p.updated_nodes,
        offline: p.offline_node_names.clone(),
        revision: p.config_revision.clone(),
        ..Rollout::default()
    });
    let mut status = finish(generation, previous, conditions, &rollout);
    status.offline_nodes = previous.map_or(0, |p| p.offline_nodes);
    status
}

/// The status of a pipeline outside the cluster's tenant policy: `Invalid` with reason
/// `ForbiddenByPolicy` listing `errors` (policy violations, and spec errors if any), and
/// no agents (the operator removes them).
pub fn compute_forbidden(
    pipeline: &EdgePipeline,
    errors: &[FieldError],
    now: &Time,
) -> EdgePipelineStatus {
    let generation = pipeline.metadata.generation;
    let c = |type_: &str, status: bool, message: String| Condition {
        type_: type_.to_string(),
        status: if status { "True" } else { "False" }.to_string(),
        reason: reason::FORBIDDEN_BY_POLICY.to_string(),
        message: truncate(message, MAX_MESSAGE),
        observed_generation: generation,
        last_transition_time: now.clone(),
    };
    let conditions = vec![
        c(
            CONDITION_READY,
            false,
            "the pipeline asks for more than the cluster's tenant policy allows; it runs no agents"
                .to_string(),
        ),
        c(
            CONDITION_PROGRESSING,
            false,
            "nothing is rolled out until the pipeline fits the cluster's tenant policy".to_string(),
        ),
        c(
            CONDITION_DEGRADED,
            true,
            "the operator removed the agents of a pipeline outside the cluster's tenant policy"
                .to_string(),
        ),
        c(CONDITION_INVALID, true, describe(errors)),
    ];
    finish(
        pipeline.metadata.generation,
        pipeline.status.as_ref(),
        conditions,
        &Rollout::default(),
    )
}

/// Keeps each condition's `lastTransitionTime` while its status stays, and fills in the
/// counts.
fn finish(
    generation: Option<i64>,
    previous: Option<&EdgePipelineStatus>,
    conditions: Vec<Condition>,
    rollout: &Rollout,
) -> EdgePipelineStatus {
    let conditions = conditions
        .into_iter()
        .map(|mut condition| {
            if let Some(before) = previous.and_then(|p| p.condition(&condition.type_))
                && before.status == condition.status
            {
                condition.last_transition_time = before.last_transition_time.clone();
            }
            condition
        })
        .collect();

    EdgePipelineStatus {
        observed_generation: generation,
        desired_nodes: rollout.desired,
        ready_nodes: rollout.ready,
        updated_nodes: rollout.updated,
        offline_nodes: i32::try_from(rollout.offline.len()).unwrap_or(i32::MAX),
        offline_node_names: rollout
            .offline
            .iter()
            .take(MAX_OFFLINE_NAMES)
            .cloned()
            .collect(),
        config_revision: rollout.revision.clone(),
        last_progress_time: previous.and_then(|p| p.last_progress_time.clone()),
        conditions,
    }
}

/// A change of status worth an Event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Transition {
    /// The operator applied the pipeline for the first time.
    Created,
    /// Every desired node runs the current agent and it is ready.
    RolloutComplete {
        /// The Ready condition's message.
        message: String,
    },
    /// Agents became unready outside a rollout, or more than allowed during one.
    Degraded {
        /// The Degraded condition's message.
        message: String,
    },
    /// The spec became invalid.
    Invalid {
        /// The validation errors, one per line.
        message: String,
    },
    /// The pipeline came outside the cluster's tenant policy; its agents are removed.
    Forbidden {
        /// The violations, one per line.
        message: String,
    },
    /// The API server started refusing to apply the pipeline's objects.
    ApplyFailed {
        /// The API server's message.
        message: String,
    },
    /// An object with the agent's name turned out not to be this pipeline's.
    Conflict {
        /// The Conflict condition's message.
        message: String,
    },
    /// A rollout made no progress within the progress deadline.
    Stalled {
        /// The Stalled condition's message.
        message: String,
    },
}

/// The transitions from `previous` to `new`, in the order they should be published.
pub fn transitions(
    previous: Option<&EdgePipelineStatus>,
    new: &EdgePipelineStatus,
) -> Vec<Transition> {
    let was = |type_: &str| {
        previous
            .and_then(|p| p.condition(type_))
            .is_some_and(|c| c.status == "True")
    };
    let is = |type_: &str| new.condition(type_).filter(|c| c.status == "True");
    let mut out = vec![];
    let never_applied = previous.is_none_or(|p| p.conditions.is_empty());
    let blocked = is(CONDITION_DEGRADED)
        .is_some_and(|c| c.reason == reason::APPLY_FAILED || c.reason == reason::CONFLICT);
    if never_applied && is(CONDITION_INVALID).is_none() && !blocked {
        out.push(Transition::Created);
    }
    let was_forbidden = previous
        .and_then(|p| p.condition(CONDITION_INVALID))
        .is_some_and(|c| c.status == "True" && c.reason == reason::FORBIDDEN_BY_POLICY);
    if let Some(c) = is(CONDITION_INVALID) {
        if c.reason == reason::FORBIDDEN_BY_POLICY {
            if !was_forbidden {
                out.push(Transition::Forbidden {
                    message: c.message.clone(),
                });
            }
        } else if !was(CONDITION_INVALID) {
            out.push(Transition::Invalid {
                message: c.message.clone(),
            });
        }
    }
    if let Some(c) = is(CONDITION_CONFLICT)
        && !was(CONDITION_CONFLICT)
    {
        out.push(Transition::Conflict {
            message: c.message.clone(),
        });
    }
    let was_degraded_for = |why: &str| {
        previous
            .and_then(|p| p.condition(CONDITION_DEGRADED))
            .is_some_and(|c| c.status == "True" && c.reason == why)
    };
    if let Some(c) = is(CONDITION_DEGRADED)
        && is(CONDITION_INVALID).is_none()
    {
        if c.reason == reason::APPLY_FAILED {
            if !was_degraded_for(reason::APPLY_FAILED) {
                out.push(Transition::ApplyFailed {
                    message: c.message.clone(),
                });
            }
        } else if c.reason != reason::CONFLICT && !was(CONDITION_DEGRADED) {
            out.push(Transition::Degraded {
                message: c.message.clone(),
            });
        }
    }
    if let Some(c) = is(CONDITION_STALLED)
        && !was(CONDITION_STALLED)
    {
        out.push(Transition::Stalled {
            message: c.message.clone(),
        });
    }
    if let Some(c) = is(CONDITION_READY)
        && !was(CONDITION_READY)
    {
        out.push(Transition::RolloutComplete {
            message: c.message.clone(),
        });
    }
    out
}

fn truncate(mut s: String, max: usize) -> String {
    if s.len() > max {
        let mut end = max;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
    }
    s
}

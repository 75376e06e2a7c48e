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

pub mod fleet;
mod paused;
mod rollout;
mod transitions;

use std::time::Duration;

use edge_crds::status::{
    CONDITION_CONFLICT, CONDITION_DEGRADED, CONDITION_INVALID, CONDITION_PROGRESSING,
    CONDITION_READY, CONDITION_STALLED,
};
use edge_crds::validate::describe;
use edge_crds::{EdgePipeline, EdgePipelineStatus, FieldError};
use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

pub use paused::with_rollout;
pub use rollout::{AgentPod, Fleet, UNREACHABLE_TAINT, node_offline, stall_check_in};
use rollout::{Rollout, human, last_progress, seconds_between};
pub use transitions::{Transition, transitions};

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
    /// Ready/Progressing/Degraded: a Secret or Secret key the pipeline references does
    /// not exist (Degraded names it); nothing is applied until it does.
    pub const SECRET_MISSING: &str = "SecretMissing";
    /// Conflict: the object exists and has no controller, or another controller.
    pub const NOT_CONTROLLED: &str = "NotControlled";
    /// Paused/Progressing/Ready/Stalled: `spec.rollout.paused` holds the rollout.
    pub const PAUSED: &str = "Paused";
    /// Paused/Progressing/Ready: new agents failed and the rollout paused itself.
    pub const ROLLOUT_FAILED: &str = "RolloutFailed";
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
    /// A referenced Secret or Secret key does not exist: the agents it would start could
    /// not mount it.
    SecretMissing {
        /// Which Secrets and keys are missing.
        message: String,
    },
}

/// Longest condition message the API accepts.
const MAX_MESSAGE: usize = 32 * 1024;
/// Most offline node names listed in `status.offlineNodeNames`.
pub const MAX_OFFLINE_NAMES: usize = 10;

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
        Rollout::of(daemon_set, fleet, Some(&pipeline.spec.max_unavailable())),
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
        Rollout::of(daemon_set, &Fleet::default(), None),
        edge_crds::RolloutSettings::default()
            .progress_deadline
            .to_std()
            .unwrap_or(Duration::from_secs(600)),
        now,
    )
}

fn compute_inner(
    generation: Option<i64>,
    previous: Option<&EdgePipelineStatus>,
    validation: Result<(), &[FieldError]>,
    rollout: Rollout,
    deadline: Duration,
    now: &Time,
) -> EdgePipelineStatus {
    let c = |type_: &str, status: bool, reason: &str, message: String| {
        condition(type_, status, reason, message, generation, now)
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
/// in Degraded), `SecretMissing` (the missing Secrets and keys in Degraded) or `Conflict`
/// (then a `Conflict` condition names the object). The agents
/// already running are left as they are; the counts are the ones last observed.
pub fn compute_blocked(
    pipeline: &EdgePipeline,
    blocked: &Blocked,
    now: &Time,
) -> EdgePipelineStatus {
    let generation = pipeline.metadata.generation;
    let previous = pipeline.status.as_ref();
    let c = |type_: &str, status: bool, reason: &str, message: String| {
        condition(type_, status, reason, message, generation, now)
    };
    let (why, degraded, conflict) = match blocked {
        Blocked::ApplyFailed { message } => (reason::APPLY_FAILED, message.clone(), None),
        Blocked::SecretMissing { message } => (
            reason::SECRET_MISSING,
            format!("the operator applies nothing until the Secret is complete: {message}"),
            None,
        ),
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
    let c = |type_: &str, status: bool, message: String| {
        condition(
            type_,
            status,
            reason::FORBIDDEN_BY_POLICY,
            message,
            generation,
            now,
        )
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
        // Kept until the reconcile that reads the agents' records (or plans the rollout)
        // replaces them.
        fleet: previous.and_then(|p| p.fleet.clone()),
        rollout: previous.and_then(|p| p.rollout.clone()),
    }
}

/// One condition of this generation, its message cut to [`MAX_MESSAGE`].
fn condition(
    type_: &str,
    status: bool,
    reason: &str,
    message: String,
    generation: Option<i64>,
    now: &Time,
) -> Condition {
    Condition {
        type_: type_.to_string(),
        status: if status { "True" } else { "False" }.to_string(),
        reason: reason.to_string(),
        message: truncate(message, MAX_MESSAGE),
        observed_generation: generation,
        last_transition_time: now.clone(),
    }
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

//! The EdgePipeline status, computed without an API server from the pipeline, the
//! validation result (or the tenant policy's verdict, or what stopped the apply) and the
//! agent DaemonSet, and the transitions worth an Event.
//!
//! Identical inputs give an identical status: `lastTransitionTime` moves only when a
//! condition's status changes, so a periodic reconcile of an unchanged pipeline writes
//! nothing.

use edge_crds::status::{
    CONDITION_CONFLICT, CONDITION_DEGRADED, CONDITION_INVALID, CONDITION_PROGRESSING,
    CONDITION_READY,
};
use edge_crds::validate::describe;
use edge_crds::{EdgePipeline, EdgePipelineStatus, FieldError};
use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

/// Condition reasons (CamelCase, as the API requires).
pub mod reason {
    /// Ready: every desired node runs the current agent and it is ready.
    pub const ALL_AGENTS_READY: &str = "AllAgentsReady";
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

/// What the DaemonSet reports about the rollout.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Rollout {
    desired: i32,
    ready: i32,
    updated: i32,
    /// The DaemonSet controller has seen the current template.
    observed: bool,
    /// Agents allowed down during a rollout (maxUnavailable resolved against desired).
    allowed_unavailable: i32,
}

impl Rollout {
    fn of(daemon_set: Option<&DaemonSet>) -> Self {
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
        Self {
            desired,
            ready: status.number_ready,
            updated: status.updated_number_scheduled.unwrap_or(0),
            observed,
            allowed_unavailable: resolve_max_unavailable(&max_unavailable, desired),
        }
    }

    fn rolling(&self) -> bool {
        !self.observed || self.updated < self.desired
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
pub fn compute(
    pipeline: &EdgePipeline,
    validation: Result<(), &[FieldError]>,
    daemon_set: Option<&DaemonSet>,
    now: &Time,
) -> EdgePipelineStatus {
    compute_from(
        pipeline.metadata.generation,
        pipeline.status.as_ref(),
        validation,
        daemon_set,
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
    let rollout = Rollout::of(daemon_set);
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
            let r = rollout;
            let counts = format!(
                "{} of {} agents updated, {} ready",
                r.updated, r.desired, r.ready
            );
            let (ready, ready_reason, ready_message) = if r.rolling() {
                (false, reason::ROLLING_OUT, counts.clone())
            } else if r.desired == 0 {
                (
                    false,
                    reason::NO_NODES,
                    "no node matches the pipeline's nodeSelector and tolerations (control-plane nodes only count when the tenant policy allows them)".to_string(),
                )
            } else if r.ready < r.desired {
                (false, reason::AGENTS_NOT_READY, counts.clone())
            } else {
                (
                    true,
                    reason::ALL_AGENTS_READY,
                    format!("all {} agents are updated and ready", r.desired),
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
            let not_ready = (r.desired - r.ready).max(0);
            let degraded = not_ready > 0 && (!r.rolling() || not_ready > r.allowed_unavailable);
            vec![
                c(CONDITION_READY, ready, ready_reason, ready_message),
                progressing,
                if degraded {
                    c(
                        CONDITION_DEGRADED,
                        true,
                        reason::AGENTS_NOT_READY,
                        format!("{not_ready} of {} agents are not ready", r.desired),
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
            ]
        }
    };

    finish(generation, previous, conditions, rollout)
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
        ..Rollout::default()
    });
    finish(generation, previous, conditions, rollout)
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
        Rollout::default(),
    )
}

/// Keeps each condition's `lastTransitionTime` while its status stays, and fills in the
/// counts.
fn finish(
    generation: Option<i64>,
    previous: Option<&EdgePipelineStatus>,
    conditions: Vec<Condition>,
    rollout: Rollout,
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

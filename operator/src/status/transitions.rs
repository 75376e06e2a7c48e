//! The status transitions worth an Event.

use edge_crds::EdgePipelineStatus;
use edge_crds::status::{
    CONDITION_CONFLICT, CONDITION_DEGRADED, CONDITION_INVALID, CONDITION_PAUSED, CONDITION_READY,
    CONDITION_STALLED,
};

use super::reason;

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
    /// The rollout was paused: by `spec.rollout.paused`, or by itself (new agents failed).
    Paused {
        /// The Paused condition's reason: `Paused` or `RolloutFailed`.
        reason: String,
        /// The Paused condition's message.
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
    let blocked = is(CONDITION_DEGRADED).is_some_and(|c| {
        [
            reason::APPLY_FAILED,
            reason::CONFLICT,
            reason::SECRET_MISSING,
        ]
        .contains(&c.reason.as_str())
    });
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
    let was_paused_for = |why: &str| {
        previous
            .and_then(|p| p.condition(CONDITION_PAUSED))
            .is_some_and(|c| c.status == "True" && c.reason == why)
    };
    if let Some(c) = is(CONDITION_PAUSED)
        && !was_paused_for(&c.reason)
    {
        out.push(Transition::Paused {
            reason: c.reason.clone(),
            message: c.message.clone(),
        });
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

//! The rollout's phase in the status ([`crate::rollout::Phase`]): `status.rollout`, and
//! the `Paused` condition while the rollout is held, by `spec.rollout.paused` (reason
//! `Paused`) or by itself (reason `RolloutFailed`). Held by the spec, it is not
//! `Progressing` and never `Stalled`, and its progress deadline starts again when it
//! resumes; a rollout that paused itself is still under way, and `Stalled` once its
//! deadline passes.

use edge_crds::EdgePipelineStatus;
use edge_crds::status::{
    CONDITION_PAUSED, CONDITION_PROGRESSING, CONDITION_READY, CONDITION_STALLED, RolloutStatus,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

use super::{MAX_MESSAGE, reason, truncate};
use crate::rollout::Phase;

/// At most this many nodes in `status.rollout`'s lists.
const MAX_NODES: usize = 10;

/// Sets `status.rollout` and the conditions of a rollout in `phase`, for the pipeline's
/// `generation`; `previous` is the status before.
pub fn with_rollout(
    status: &mut EdgePipelineStatus,
    previous: Option<&EdgePipelineStatus>,
    phase: &Phase,
    generation: Option<i64>,
    now: &Time,
) {
    let rollout = match phase {
        Phase::Complete => None,
        Phase::Rolling => Some(RolloutStatus {
            phase: "Rolling".to_string(),
            ..RolloutStatus::default()
        }),
        Phase::Canary { nodes, waiting } => Some(RolloutStatus {
            phase: "Canary".to_string(),
            message: waiting.clone(),
            canary_nodes: nodes.iter().take(MAX_NODES).cloned().collect(),
            ..RolloutStatus::default()
        }),
        Phase::Paused => Some(RolloutStatus {
            phase: "Paused".to_string(),
            message: "spec.rollout.paused holds every node on the revision it runs".to_string(),
            ..RolloutStatus::default()
        }),
        Phase::Failed(failed) => {
            let before = previous
                .and_then(|p| p.rollout.as_ref())
                .filter(|r| r.failed_generation.is_some() && r.failed_generation == generation);
            let mut nodes: Vec<String> = failed.iter().map(|(node, _)| node.clone()).collect();
            let mut message = failed
                .iter()
                .map(|(node, why)| format!("{node}: {why}"))
                .collect::<Vec<_>>()
                .join("; ");
            // Paused before at this spec: keep what was found then.
            if let Some(before) = before.filter(|_| nodes.is_empty()) {
                nodes.clone_from(&before.failed_nodes);
                message.clone_from(&before.message);
            }
            nodes.sort();
            nodes.truncate(MAX_NODES);
            Some(RolloutStatus {
                phase: "Failed".to_string(),
                message: truncate(
                    format!("new agents failed, the rollout paused itself: {message}"),
                    MAX_MESSAGE,
                ),
                failed_nodes: nodes,
                failed_generation: generation,
                ..RolloutStatus::default()
            })
        }
    };
    let held = match phase {
        Phase::Paused => Some((
            reason::PAUSED,
            "spec.rollout.paused is true: no agent is replaced; set it to false to resume"
                .to_string(),
        )),
        Phase::Failed(_) => Some((
            reason::ROLLOUT_FAILED,
            format!(
                "{}; fix the spec, or set spec.rollout.paused to false, to go on",
                rollout
                    .as_ref()
                    .map(|r| r.message.as_str())
                    .unwrap_or_default()
            ),
        )),
        _ => None,
    };
    status.rollout = rollout;
    status.conditions.retain(|c| c.type_ != CONDITION_PAUSED);
    let Some((why, message)) = held else {
        return;
    };
    let message = truncate(message, MAX_MESSAGE);
    let not_ready = status
        .condition(CONDITION_READY)
        .is_some_and(|c| c.status != "True");
    let mut set = |type_: &str, value: bool, why: &str, message: &str| {
        let condition = Condition {
            type_: type_.to_string(),
            status: if value { "True" } else { "False" }.to_string(),
            reason: why.to_string(),
            message: message.to_string(),
            observed_generation: generation,
            last_transition_time: previous
                .and_then(|p| p.condition(type_))
                .filter(|c| c.status == if value { "True" } else { "False" })
                .map_or_else(|| now.clone(), |c| c.last_transition_time.clone()),
        };
        match status.conditions.iter_mut().find(|c| c.type_ == type_) {
            Some(existing) => *existing = condition,
            None => status.conditions.push(condition),
        }
    };
    set(CONDITION_PAUSED, true, why, &message);
    if not_ready {
        set(CONDITION_READY, false, why, &message);
    }
    // Held on purpose: not progressing, and never stalled. A rollout that paused itself
    // is still under way (and Stalled once its deadline passes without progress).
    if why == reason::PAUSED {
        set(CONDITION_PROGRESSING, false, why, &message);
        set(CONDITION_STALLED, false, why, &message);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::jiff::Timestamp;

    fn at(s: i64) -> Time {
        Time(Timestamp::from_second(1_800_000_000 + s).unwrap())
    }

    fn rolling() -> EdgePipelineStatus {
        let c = |type_: &str, status: &str| Condition {
            type_: type_.to_string(),
            status: status.to_string(),
            reason: "RollingOut".to_string(),
            message: String::new(),
            observed_generation: Some(4),
            last_transition_time: at(0),
        };
        EdgePipelineStatus {
            conditions: vec![
                c(CONDITION_READY, "False"),
                c(CONDITION_PROGRESSING, "True"),
                c(CONDITION_STALLED, "True"),
            ],
            ..EdgePipelineStatus::default()
        }
    }

    fn condition<'a>(s: &'a EdgePipelineStatus, type_: &str) -> (&'a str, &'a str) {
        let c = s.condition(type_).expect(type_);
        (c.status.as_str(), c.reason.as_str())
    }

    #[test]
    fn a_paused_rollout_is_neither_progressing_nor_stalled() {
        let mut status = rolling();
        with_rollout(&mut status, None, &Phase::Paused, Some(4), &at(10));
        assert_eq!(
            condition(&status, CONDITION_PAUSED),
            ("True", reason::PAUSED)
        );
        assert_eq!(
            condition(&status, CONDITION_PROGRESSING),
            ("False", reason::PAUSED)
        );
        assert_eq!(
            condition(&status, CONDITION_STALLED),
            ("False", reason::PAUSED)
        );
        assert_eq!(
            condition(&status, CONDITION_READY),
            ("False", reason::PAUSED)
        );
        assert_eq!(status.rollout.as_ref().unwrap().phase, "Paused");

        // Resumed: no Paused condition, and what the rollout computed stands.
        let previous = status.clone();
        let mut status = rolling();
        with_rollout(
            &mut status,
            Some(&previous),
            &Phase::Rolling,
            Some(5),
            &at(20),
        );
        assert!(status.condition(CONDITION_PAUSED).is_none());
        assert_eq!(condition(&status, CONDITION_PROGRESSING).0, "True");
    }

    #[test]
    fn a_failed_rollout_remembers_its_generation_and_nodes() {
        let mut status = rolling();
        let failed = Phase::Failed(vec![("n2".to_string(), "crash-looping".to_string())]);
        with_rollout(&mut status, None, &failed, Some(4), &at(10));
        let rollout = status.rollout.clone().unwrap();
        assert_eq!(rollout.phase, "Failed");
        assert_eq!(rollout.failed_generation, Some(4));
        assert_eq!(rollout.failed_nodes, vec!["n2"]);
        assert!(
            rollout.message.contains("n2: crash-looping"),
            "{}",
            rollout.message
        );
        assert_eq!(
            condition(&status, CONDITION_PAUSED),
            ("True", reason::ROLLOUT_FAILED)
        );
        // Progressing and Stalled are left as the rollout computed them.
        assert_eq!(condition(&status, CONDITION_STALLED).0, "True");
        assert_eq!(condition(&status, CONDITION_PROGRESSING).0, "True");

        // Still paused at the same spec after the agent recovered: the nodes are kept,
        // and so is the condition's transition time.
        let previous = status.clone();
        let mut status = rolling();
        with_rollout(
            &mut status,
            Some(&previous),
            &Phase::Failed(vec![]),
            Some(4),
            &at(99),
        );
        assert_eq!(status.rollout.as_ref().unwrap().failed_nodes, vec!["n2"]);
        assert_eq!(
            status
                .condition(CONDITION_PAUSED)
                .unwrap()
                .last_transition_time,
            at(10)
        );
    }
}

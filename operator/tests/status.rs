//! Table tests for the status computed from a pipeline and its DaemonSet, and for the
//! transitions that publish Events.

use crate::common;

use common::{condition_summary, expected_conditions, pipeline, rolling_daemon_set};
use edge_crds::{EdgePipeline, EdgePipelineStatus, FieldError};
use edge_operator::status::{Transition, compute, reason, transitions};
use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use k8s_openapi::jiff::Timestamp;

fn at(second: i64) -> Time {
    Time(Timestamp::from_second(1_800_000_000 + second).expect("timestamp"))
}

fn ep(generation: i64, status: Option<EdgePipelineStatus>) -> EdgePipeline {
    let mut p = pipeline("");
    p.metadata.generation = Some(generation);
    p.status = status;
    p
}

/// A DaemonSet at `generation`, whose controller observed `observed`, with these counts.
fn ds(
    generation: i64,
    observed: Option<i64>,
    desired: i32,
    ready: i32,
    updated: i32,
    max_unavailable: IntOrString,
) -> DaemonSet {
    rolling_daemon_set(
        generation,
        observed,
        (desired, ready, updated),
        max_unavailable,
    )
}

/// A row: name, DaemonSet, expected `(type, status, reason)` of the five conditions,
/// expected `(desired, ready, updated)`.
type Case = (
    &'static str,
    Option<DaemonSet>,
    [(&'static str, &'static str, &'static str); 5],
    (i32, i32, i32),
);

#[test]
fn conditions_follow_the_rollout() {
    let one = IntOrString::Int(1);
    let cases: Vec<Case> = vec![
        (
            "just applied: not observed by the DaemonSet controller yet",
            Some(ds(2, Some(1), 3, 3, 3, one.clone())),
            [
                ("Ready", "False", reason::ROLLING_OUT),
                ("Progressing", "True", reason::ROLLING_OUT),
                ("Degraded", "False", reason::AS_EXPECTED),
                ("Invalid", "False", reason::VALID),
                ("Stalled", "False", reason::AS_EXPECTED),
            ],
            (3, 3, 3),
        ),
        (
            "rolling: 1 of 3 updated, one down as allowed",
            Some(ds(2, Some(2), 3, 2, 1, one.clone())),
            [
                ("Ready", "False", reason::ROLLING_OUT),
                ("Progressing", "True", reason::ROLLING_OUT),
                ("Degraded", "False", reason::AS_EXPECTED),
                ("Invalid", "False", reason::VALID),
                ("Stalled", "False", reason::AS_EXPECTED),
            ],
            (3, 2, 1),
        ),
        (
            "rolling but more agents down than maxUnavailable",
            Some(ds(2, Some(2), 4, 1, 1, one.clone())),
            [
                ("Ready", "False", reason::ROLLING_OUT),
                ("Progressing", "True", reason::ROLLING_OUT),
                ("Degraded", "True", reason::AGENTS_NOT_READY),
                ("Invalid", "False", reason::VALID),
                ("Stalled", "False", reason::AS_EXPECTED),
            ],
            (4, 1, 1),
        ),
        (
            "rolling with a 50% budget: 2 of 4 down is fine",
            Some(ds(
                2,
                Some(2),
                4,
                2,
                2,
                IntOrString::String("50%".to_string()),
            )),
            [
                ("Ready", "False", reason::ROLLING_OUT),
                ("Progressing", "True", reason::ROLLING_OUT),
                ("Degraded", "False", reason::AS_EXPECTED),
                ("Invalid", "False", reason::VALID),
                ("Stalled", "False", reason::AS_EXPECTED),
            ],
            (4, 2, 2),
        ),
        (
            "complete: every node updated and ready",
            Some(ds(2, Some(2), 3, 3, 3, one.clone())),
            [
                ("Ready", "True", reason::ALL_AGENTS_READY),
                ("Progressing", "False", reason::ROLLOUT_COMPLETE),
                ("Degraded", "False", reason::AS_EXPECTED),
                ("Invalid", "False", reason::VALID),
                ("Stalled", "False", reason::AS_EXPECTED),
            ],
            (3, 3, 3),
        ),
        (
            "degraded: rolled out but an agent is not ready",
            Some(ds(2, Some(2), 3, 2, 3, one.clone())),
            [
                ("Ready", "False", reason::AGENTS_NOT_READY),
                ("Progressing", "False", reason::ROLLOUT_COMPLETE),
                ("Degraded", "True", reason::AGENTS_NOT_READY),
                ("Invalid", "False", reason::VALID),
                ("Stalled", "False", reason::AS_EXPECTED),
            ],
            (3, 2, 3),
        ),
        (
            "no node matches",
            Some(ds(1, Some(1), 0, 0, 0, one.clone())),
            [
                ("Ready", "False", reason::NO_NODES),
                ("Progressing", "False", reason::NO_NODES),
                ("Degraded", "False", reason::AS_EXPECTED),
                ("Invalid", "False", reason::VALID),
                ("Stalled", "False", reason::AS_EXPECTED),
            ],
            (0, 0, 0),
        ),
        (
            "no DaemonSet yet",
            None,
            [
                ("Ready", "False", reason::ROLLING_OUT),
                ("Progressing", "True", reason::ROLLING_OUT),
                ("Degraded", "False", reason::AS_EXPECTED),
                ("Invalid", "False", reason::VALID),
                ("Stalled", "False", reason::AS_EXPECTED),
            ],
            (0, 0, 0),
        ),
    ];
    for (name, daemon_set, conditions, (desired, ready, updated)) in cases {
        // The case's budget is the pipeline's maxUnavailable (the DaemonSet is on
        // OnDelete; the fixture keeps it beside the counts).
        let mut pipeline = ep(7, None);
        pipeline.spec.agent.max_unavailable = daemon_set
            .as_ref()
            .and_then(|d| d.spec.as_ref())
            .and_then(|s| s.update_strategy.as_ref())
            .and_then(|u| u.rolling_update.as_ref())
            .and_then(|r| r.max_unavailable.clone());
        let status = compute(&pipeline, Ok(()), daemon_set.as_ref(), &at(0));
        assert_eq!(
            condition_summary(&status),
            expected_conditions(&conditions),
            "{name}"
        );
        assert_eq!(
            (
                status.desired_nodes,
                status.ready_nodes,
                status.updated_nodes
            ),
            (desired, ready, updated),
            "{name}"
        );
        assert_eq!(status.observed_generation, Some(7), "{name}");
        assert!(
            status
                .conditions
                .iter()
                .all(|c| c.observed_generation == Some(7) && c.last_transition_time == at(0)),
            "{name}"
        );
    }
}

#[test]
fn an_invalid_spec_lists_its_errors_and_keeps_the_running_counts() {
    let errors = vec![
        FieldError {
            path: "spec.processors[0].range".to_string(),
            message: "min must be <= max".to_string(),
        },
        FieldError {
            path: "spec.sink".to_string(),
            message: "exactly one of http or mqtt must be set".to_string(),
        },
    ];
    let running = ds(4, Some(4), 2, 2, 2, IntOrString::Int(1));
    let status = compute(&ep(5, None), Err(&errors), Some(&running), &at(0));
    assert_eq!(
        condition_summary(&status),
        expected_conditions(&[
            ("Ready", "False", reason::INVALID_SPEC),
            ("Progressing", "False", reason::INVALID_SPEC),
            ("Degraded", "True", reason::INVALID_SPEC),
            ("Invalid", "True", reason::INVALID_SPEC)
        ])
    );
    let invalid = status.condition("Invalid").expect("Invalid condition");
    assert_eq!(
        invalid.message,
        "spec.processors[0].range: min must be <= max\nspec.sink: exactly one of http or mqtt must be set"
    );
    assert_eq!(
        (
            status.desired_nodes,
            status.ready_nodes,
            status.updated_nodes
        ),
        (2, 2, 2)
    );
    assert_eq!(status.observed_generation, Some(5));
}

#[test]
fn nothing_changed_gives_an_identical_status() {
    let daemon_set = ds(2, Some(2), 3, 3, 3, IntOrString::Int(1));
    let first = compute(&ep(2, None), Ok(()), Some(&daemon_set), &at(0));
    let again = compute(
        &ep(2, Some(first.clone())),
        Ok(()),
        Some(&daemon_set),
        &at(300),
    );
    assert_eq!(
        again, first,
        "a later reconcile of the same state writes nothing"
    );
    assert_eq!(transitions(Some(&first), &again), vec![]);
}

#[test]
fn last_transition_time_moves_only_with_the_condition_status() {
    let complete = compute(
        &ep(2, None),
        Ok(()),
        Some(&ds(2, Some(2), 3, 3, 3, IntOrString::Int(1))),
        &at(0),
    );
    let rolling = compute(
        &ep(3, Some(complete.clone())),
        Ok(()),
        Some(&ds(3, Some(3), 3, 3, 1, IntOrString::Int(1))),
        &at(60),
    );
    let time = |s: &EdgePipelineStatus, t: &str| {
        s.condition(t)
            .expect("condition")
            .last_transition_time
            .clone()
    };
    assert_eq!(time(&rolling, "Ready"), at(60), "Ready flipped to False");
    assert_eq!(
        time(&rolling, "Progressing"),
        at(60),
        "Progressing flipped to True"
    );
    assert_eq!(time(&rolling, "Degraded"), at(0), "Degraded stayed False");
    assert_eq!(time(&rolling, "Invalid"), at(0), "Invalid stayed False");
    assert_ne!(
        rolling.condition("Degraded").expect("Degraded").message,
        complete.condition("Degraded").expect("Degraded").message
    );
}

#[test]
fn transitions_publish_events_once() {
    let one = IntOrString::Int(1);
    let created = compute(
        &ep(1, None),
        Ok(()),
        Some(&ds(1, None, 0, 0, 0, one.clone())),
        &at(0),
    );
    assert_eq!(transitions(None, &created), vec![Transition::Created]);

    let complete = compute(
        &ep(1, Some(created.clone())),
        Ok(()),
        Some(&ds(1, Some(1), 2, 2, 2, one.clone())),
        &at(10),
    );
    assert_eq!(
        transitions(Some(&created), &complete),
        vec![Transition::RolloutComplete {
            message: "all 2 agents are updated and ready".to_string()
        }]
    );
    assert_eq!(transitions(Some(&complete), &complete), vec![]);

    let degraded = compute(
        &ep(1, Some(complete.clone())),
        Ok(()),
        Some(&ds(1, Some(1), 2, 1, 2, one.clone())),
        &at(20),
    );
    assert_eq!(
        transitions(Some(&complete), &degraded),
        vec![Transition::Degraded {
            message: "1 of 2 agents are not ready".to_string()
        }]
    );

    let errors = [FieldError {
        path: "spec.sink".to_string(),
        message: "bad".to_string(),
    }];
    let invalid = compute(
        &ep(2, Some(degraded.clone())),
        Err(&errors),
        Some(&ds(1, Some(1), 2, 2, 2, one.clone())),
        &at(30),
    );
    assert_eq!(
        transitions(Some(&complete), &invalid),
        vec![Transition::Invalid {
            message: "spec.sink: bad".to_string()
        }]
    );
    assert_eq!(
        transitions(Some(&invalid), &invalid),
        vec![],
        "still invalid: no new Event"
    );

    let first_invalid = compute(&ep(1, None), Err(&errors), None, &at(0));
    assert_eq!(
        transitions(None, &first_invalid),
        vec![Transition::Invalid {
            message: "spec.sink: bad".to_string()
        }]
    );
}

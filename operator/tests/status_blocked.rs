//! Table tests for the status of a valid pipeline the operator did not apply (the API
//! server refused, or an object of the agent's name is someone else's), its Events, and
//! who holds an object of the agent's name.

use crate::common;

use common::pipeline;
use edge_crds::{EdgePipeline, EdgePipelineStatus};
use edge_operator::controller::{Holder, conflict_message, holder};
use edge_operator::status::{Blocked, Transition, compute, compute_blocked, transitions};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference, Time};
use k8s_openapi::jiff::Timestamp;

const UID: &str = "3f9c2b1e-5d4a-4c3b-9a8f-0123456789ab";

fn at(second: i64) -> Time {
    Time(Timestamp::from_second(1_800_000_000 + second).expect("timestamp"))
}

fn ep(status: Option<EdgePipelineStatus>) -> EdgePipeline {
    let mut p = pipeline("");
    p.metadata.generation = Some(2);
    p.status = status;
    p
}

/// `(type, status, reason)` of each condition, in order.
type Summary = Vec<(String, String, String)>;

fn summary(status: &EdgePipelineStatus) -> Summary {
    status
        .conditions
        .iter()
        .map(|c| (c.type_.clone(), c.status.clone(), c.reason.clone()))
        .collect()
}

fn rows(rows: &[(&str, &str, &str)]) -> Summary {
    rows.iter()
        .map(|(t, s, r)| (t.to_string(), s.to_string(), r.to_string()))
        .collect()
}

fn refused() -> Blocked {
    Blocked::ApplyFailed {
        message: "admission denied: no hostPath".to_string(),
    }
}

fn conflict() -> Blocked {
    Blocked::Conflict {
        message: "ConfigMap factory/line1-agent already exists".to_string(),
    }
}

#[test]
fn a_blocked_pipeline_is_degraded_with_the_reason_and_message() {
    let cases: Vec<(&str, Blocked, Summary, &str)> = vec![
        (
            "refused",
            refused(),
            rows(&[
                ("Ready", "False", "ApplyFailed"),
                ("Progressing", "False", "ApplyFailed"),
                ("Degraded", "True", "ApplyFailed"),
                ("Invalid", "False", "Valid"),
            ]),
            "admission denied: no hostPath",
        ),
        (
            "conflict",
            conflict(),
            rows(&[
                ("Ready", "False", "Conflict"),
                ("Progressing", "False", "Conflict"),
                ("Degraded", "True", "Conflict"),
                ("Invalid", "False", "Valid"),
                ("Conflict", "True", "NotControlled"),
            ]),
            "ConfigMap factory/line1-agent already exists",
        ),
    ];
    for (name, blocked, expected, message) in cases {
        let status = compute_blocked(&ep(None), &blocked, &at(0));
        assert_eq!(summary(&status), expected, "{name}");
        let degraded = status.condition("Degraded").expect("Degraded");
        assert!(degraded.message.contains(message), "{name}: {degraded:?}");
        assert!(
            status
                .conditions
                .iter()
                .all(|c| c.observed_generation == Some(2))
        );
    }
}

#[test]
fn a_blocked_pipeline_keeps_the_counts_last_observed_and_recovers() {
    let ready = EdgePipelineStatus {
        observed_generation: Some(1),
        desired_nodes: 3,
        ready_nodes: 3,
        updated_nodes: 3,
        offline_nodes: 1,
        offline_node_names: vec!["edge-3".to_string()],
        config_revision: Some("line1-agent-0123456789".to_string()),
        last_progress_time: Some(at(1)),
        conditions: vec![],
        fleet: None,
        rollout: None,
    };
    let status = compute_blocked(&ep(Some(ready)), &refused(), &at(5));
    assert_eq!(
        (
            status.desired_nodes,
            status.ready_nodes,
            status.updated_nodes,
            status.offline_nodes,
        ),
        (3, 3, 3, 1)
    );
    assert_eq!(status.offline_node_names, ["edge-3"]);
    assert_eq!(
        status.config_revision.as_deref(),
        Some("line1-agent-0123456789")
    );
    assert_eq!(status.last_progress_time, Some(at(1)));
    // Once applied, the blocked reasons and the Conflict condition are gone.
    let healthy = compute(&ep(Some(status)), Ok(()), None, &at(9));
    assert!(healthy.condition("Conflict").is_none());
    assert!(
        healthy
            .conditions
            .iter()
            .all(|c| c.reason != "ApplyFailed" && c.reason != "Conflict"),
        "{healthy:?}"
    );
}

#[test]
fn blocked_transitions_publish_one_warning_each() {
    let first = compute_blocked(&ep(None), &refused(), &at(0));
    let again = compute_blocked(&ep(Some(first.clone())), &refused(), &at(5));
    let in_conflict = compute_blocked(&ep(Some(first.clone())), &conflict(), &at(9));
    let still = compute_blocked(&ep(Some(in_conflict.clone())), &conflict(), &at(12));
    let cases: Vec<(
        &str,
        Option<&EdgePipelineStatus>,
        &EdgePipelineStatus,
        Vec<Transition>,
    )> = vec![
        (
            "first refusal: ApplyFailed, not Created",
            None,
            &first,
            vec![Transition::ApplyFailed {
                message: "admission denied: no hostPath".to_string(),
            }],
        ),
        ("refused again", Some(&first), &again, vec![]),
        (
            "refused, then a conflict",
            Some(&first),
            &in_conflict,
            vec![Transition::Conflict {
                message: "ConfigMap factory/line1-agent already exists".to_string(),
            }],
        ),
        ("still in conflict", Some(&in_conflict), &still, vec![]),
    ];
    for (name, previous, new, expected) in cases {
        assert_eq!(transitions(previous, new), expected, "{name}");
    }
    assert_eq!(
        again.condition("Degraded").map(|c| &c.last_transition_time),
        Some(&at(0)),
        "the time moves only when the status does"
    );
}

fn meta(owners: &[(&str, &str, &str, bool)]) -> ObjectMeta {
    ObjectMeta {
        owner_references: Some(
            owners
                .iter()
                .map(|(kind, name, uid, controller)| OwnerReference {
                    api_version: "v1".to_string(),
                    kind: kind.to_string(),
                    name: name.to_string(),
                    uid: uid.to_string(),
                    controller: Some(*controller),
                    block_owner_deletion: None,
                })
                .collect(),
        ),
        ..ObjectMeta::default()
    }
}

#[test]
fn only_an_object_this_pipeline_controls_is_its_own() {
    let other = |controller: Option<&str>| Holder::Other {
        controller: controller.map(str::to_string),
    };
    let cases: Vec<(&str, Option<ObjectMeta>, Holder, Option<&str>)> = vec![
        ("absent", None, Holder::Absent, None),
        (
            "this pipeline's",
            Some(meta(&[("EdgePipeline", "line1", UID, true)])),
            Holder::This,
            None,
        ),
        (
            "no owner",
            Some(ObjectMeta::default()),
            other(None),
            Some("has no controller owner reference to this pipeline"),
        ),
        (
            "owned, not controlled, by this pipeline",
            Some(meta(&[("EdgePipeline", "line1", UID, false)])),
            other(None),
            Some("has no controller owner reference"),
        ),
        (
            "an older pipeline of the same name",
            Some(meta(&[("EdgePipeline", "line1", "0ld", true)])),
            other(Some("EdgePipeline/line1")),
            Some("is controlled by EdgePipeline/line1"),
        ),
        (
            "another controller",
            Some(meta(&[("HelmRelease", "legacy", "x", true)])),
            other(Some("HelmRelease/legacy")),
            Some("is controlled by HelmRelease/legacy"),
        ),
    ];
    for (name, meta, expected, message) in cases {
        let found = holder(meta.as_ref(), Some(UID));
        assert_eq!(found, expected, "{name}");
        let text = conflict_message("ConfigMap", "factory", "line1-agent", &found);
        match (message, text) {
            (None, None) => {}
            (Some(part), Some(text)) => {
                assert!(
                    text.starts_with("ConfigMap factory/line1-agent already exists and"),
                    "{name}: {text}"
                );
                assert!(text.contains(part), "{name}: {text}");
            }
            (expected, got) => panic!("{name}: expected {expected:?}, got {got:?}"),
        }
    }
}

//! Table tests for the status of a fleet: agents on offline nodes count apart (the
//! pipeline stays Ready, a rollout does not wait for them), a rollout without progress
//! for the progress deadline is Stalled, and which configuration revisions may be
//! deleted.

use crate::common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::{condition_summary, expected_conditions, pipeline, rolling_daemon_set};
use edge_crds::{EdgePipeline, EdgePipelineStatus, RolloutSettings, units};
use edge_operator::controller::unused_revisions;
use edge_operator::render::CONFIG_HASH_ANNOTATION;
use edge_operator::status::{
    AgentPod, Fleet, Transition, compute_fleet, reason, stall_check_in, transitions,
};
use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{ConfigMapVolumeSource, PodSpec, PodTemplateSpec, Volume};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use k8s_openapi::jiff::Timestamp;

fn at(second: i64) -> Time {
    Time(Timestamp::from_second(1_800_000_000 + second).expect("timestamp"))
}

/// The test pipeline with a progress deadline of 60 s.
fn ep(status: Option<EdgePipelineStatus>) -> EdgePipeline {
    let mut p = pipeline("");
    p.metadata.generation = Some(1);
    p.spec.rollout = Some(RolloutSettings {
        progress_deadline: units::Duration::new("60s"),
        ..RolloutSettings::default()
    });
    p.status = status;
    p
}

/// A DaemonSet whose template has config hash `hash` and mounts `line1-agent-<hash>`.
fn ds(
    generation: i64,
    observed: i64,
    (desired, ready, updated): (i32, i32, i32),
    hash: &str,
) -> DaemonSet {
    let mut ds = rolling_daemon_set(
        generation,
        Some(observed),
        (desired, ready, updated),
        IntOrString::Int(1),
    );
    ds.spec.as_mut().expect("a spec").template = PodTemplateSpec {
        metadata: Some(ObjectMeta {
            annotations: Some([(CONFIG_HASH_ANNOTATION.to_string(), hash.to_string())].into()),
            ..ObjectMeta::default()
        }),
        spec: Some(PodSpec {
            volumes: Some(vec![Volume {
                name: "config".to_string(),
                config_map: Some(ConfigMapVolumeSource {
                    name: format!("line1-agent-{hash}"),
                    ..ConfigMapVolumeSource::default()
                }),
                ..Volume::default()
            }]),
            ..PodSpec::default()
        }),
    };
    ds
}

/// An agent on `node`, ready or not, running the configuration `hash`.
fn agent(node: &str, ready: bool, hash: &str) -> AgentPod {
    AgentPod {
        node: Some(node.to_string()),
        ready,
        config_hash: Some(hash.to_string()),
    }
}

fn fleet(agents: Vec<AgentPod>, offline: &[&str]) -> Fleet {
    Fleet {
        agents,
        offline_nodes: offline.iter().map(|n| n.to_string()).collect(),
    }
}

#[test]
fn agents_on_offline_nodes_are_neither_ready_nor_failures() {
    // (name, DaemonSet counts, agents, offline nodes, Ready, Progressing, Degraded, offline)
    type Case = (
        &'static str,
        (i32, i32, i32),
        Vec<AgentPod>,
        &'static [&'static str],
        (&'static str, &'static str),
        (&'static str, &'static str),
        (&'static str, &'static str),
        i32,
    );
    let cases: Vec<Case> = vec![
        (
            "every node online and ready",
            (3, 3, 3),
            vec![
                agent("edge-1", true, "v2"),
                agent("edge-2", true, "v2"),
                agent("edge-3", true, "v2"),
            ],
            &[],
            ("True", reason::ALL_AGENTS_READY),
            ("False", reason::ROLLOUT_COMPLETE),
            ("False", reason::AS_EXPECTED),
            0,
        ),
        (
            "the only unready agent is on an offline node",
            (3, 2, 3),
            vec![
                agent("edge-1", true, "v2"),
                agent("edge-2", true, "v2"),
                agent("edge-3", false, "v2"),
            ],
            &["edge-3"],
            ("True", reason::ONLINE_AGENTS_READY),
            ("False", reason::ROLLOUT_COMPLETE),
            ("False", reason::AS_EXPECTED),
            1,
        ),
        (
            "the same unready agent on an online node is a failure",
            (3, 2, 3),
            vec![
                agent("edge-1", true, "v2"),
                agent("edge-2", true, "v2"),
                agent("edge-3", false, "v2"),
            ],
            &[],
            ("False", reason::AGENTS_NOT_READY),
            ("False", reason::ROLLOUT_COMPLETE),
            ("True", reason::AGENTS_NOT_READY),
            0,
        ),
        (
            "an offline node not marked unready yet counts as offline",
            (3, 3, 3),
            vec![
                agent("edge-1", true, "v2"),
                agent("edge-2", true, "v2"),
                agent("edge-3", true, "v2"),
            ],
            &["edge-3"],
            ("True", reason::ONLINE_AGENTS_READY),
            ("False", reason::ROLLOUT_COMPLETE),
            ("False", reason::AS_EXPECTED),
            1,
        ),
        (
            "a rollout does not wait for an offline node",
            (3, 2, 2),
            vec![
                agent("edge-1", true, "v2"),
                agent("edge-2", true, "v2"),
                agent("edge-3", false, "v1"),
            ],
            &["edge-3"],
            ("True", reason::ONLINE_AGENTS_READY),
            ("False", reason::ROLLOUT_COMPLETE),
            ("False", reason::AS_EXPECTED),
            1,
        ),
        (
            "but it waits for online nodes",
            (3, 2, 1),
            vec![
                agent("edge-1", true, "v2"),
                agent("edge-2", true, "v1"),
                agent("edge-3", false, "v1"),
            ],
            &["edge-3"],
            ("False", reason::ROLLING_OUT),
            ("True", reason::ROLLING_OUT),
            ("False", reason::AS_EXPECTED),
            1,
        ),
        (
            "an unready online agent beside an offline node",
            (3, 1, 3),
            vec![
                agent("edge-1", true, "v2"),
                agent("edge-2", false, "v2"),
                agent("edge-3", false, "v2"),
            ],
            &["edge-3"],
            ("False", reason::AGENTS_NOT_READY),
            ("False", reason::ROLLOUT_COMPLETE),
            ("True", reason::AGENTS_NOT_READY),
            1,
        ),
        (
            "an offline node without an agent of this pipeline is not this pipeline's",
            (2, 2, 2),
            vec![agent("edge-1", true, "v2"), agent("edge-2", true, "v2")],
            &["edge-9"],
            ("True", reason::ALL_AGENTS_READY),
            ("False", reason::ROLLOUT_COMPLETE),
            ("False", reason::AS_EXPECTED),
            0,
        ),
    ];
    for (name, counts, agents, offline, ready, progressing, degraded, offline_nodes) in cases {
        let daemon_set = ds(2, 2, counts, "v2");
        let status = compute_fleet(
            &ep(None),
            Ok(()),
            Some(&daemon_set),
            &fleet(agents, offline),
            &at(0),
        );
        assert_eq!(
            condition_summary(&status),
            expected_conditions(&[
                ("Ready", ready.0, ready.1),
                ("Progressing", progressing.0, progressing.1),
                ("Degraded", degraded.0, degraded.1),
                ("Invalid", "False", reason::VALID),
                ("Stalled", "False", reason::AS_EXPECTED),
            ]),
            "{name}: {:#?}",
            status.conditions
        );
        assert_eq!(status.offline_nodes, offline_nodes, "{name}");
        assert_eq!(
            status.offline_node_names.len(),
            offline_nodes as usize,
            "{name}"
        );
        assert_eq!(
            status.config_revision.as_deref(),
            Some("line1-agent-v2"),
            "{name}"
        );
    }
}

#[test]
fn offline_node_names_are_sorted_and_bounded() {
    let agents: Vec<AgentPod> = (0..25)
        .map(|i| agent(&format!("pi-{i:02}"), false, "v1"))
        .collect();
    let offline: Vec<String> = (0..25).map(|i| format!("pi-{i:02}")).collect();
    let offline: Vec<&str> = offline.iter().map(String::as_str).collect();
    let status = compute_fleet(
        &ep(None),
        Ok(()),
        Some(&ds(1, 1, (25, 0, 25), "v1")),
        &fleet(agents, &offline),
        &at(0),
    );
    assert_eq!(status.offline_nodes, 25);
    assert_eq!(status.offline_node_names.len(), 10);
    assert_eq!(status.offline_node_names[0], "pi-00");
    assert_eq!(status.offline_node_names[9], "pi-09");
    let ready = status.condition("Ready").expect("Ready");
    assert_eq!(
        (ready.status.as_str(), ready.reason.as_str()),
        ("True", reason::ONLINE_AGENTS_READY)
    );
    assert!(
        ready.message.contains("25 of 25 nodes are offline"),
        "{}",
        ready.message
    );
}

fn condition(status: &EdgePipelineStatus, type_: &str) -> (String, String) {
    let c = status.condition(type_).expect("condition");
    (c.status.clone(), c.reason.clone())
}

#[test]
fn a_rollout_without_progress_for_the_deadline_is_stalled_until_it_progresses() {
    let none = Fleet::default();
    let deadline = Duration::from_secs(60);
    // Rolled out, at rest.
    let complete = compute_fleet(
        &ep(None),
        Ok(()),
        Some(&ds(1, 1, (3, 3, 3), "v1")),
        &none,
        &at(0),
    );
    assert_eq!(
        condition(&complete, "Stalled"),
        ("False".into(), reason::AS_EXPECTED.into())
    );
    assert_eq!(
        stall_check_in(&complete, deadline, &at(0)),
        None,
        "nothing to wait for"
    );

    // A new revision starts rolling at 100: the clock starts then.
    let started = compute_fleet(
        &ep(Some(complete.clone())),
        Ok(()),
        Some(&ds(2, 2, (3, 2, 0), "v2")),
        &none,
        &at(100),
    );
    assert_eq!(started.last_progress_time, Some(at(100)));
    assert_eq!(started.config_revision.as_deref(), Some("line1-agent-v2"));
    assert_eq!(
        condition(&started, "Progressing"),
        ("True".into(), reason::ROLLING_OUT.into())
    );
    assert_eq!(
        stall_check_in(&started, deadline, &at(100)),
        Some(Duration::from_secs(61))
    );

    // One node updated at 130: progress.
    let one = compute_fleet(
        &ep(Some(started.clone())),
        Ok(()),
        Some(&ds(2, 2, (3, 2, 1), "v2")),
        &none,
        &at(130),
    );
    assert_eq!(one.last_progress_time, Some(at(130)));

    // Nothing moves: still within the deadline at 190, stalled past it.
    let waiting = compute_fleet(
        &ep(Some(one.clone())),
        Ok(()),
        Some(&ds(2, 2, (3, 2, 1), "v2")),
        &none,
        &at(190),
    );
    assert_eq!(waiting.last_progress_time, Some(at(130)));
    assert_eq!(condition(&waiting, "Stalled").0, "False");
    assert_eq!(
        stall_check_in(&waiting, deadline, &at(190)),
        Some(Duration::from_secs(1))
    );
    let stalled = compute_fleet(
        &ep(Some(waiting.clone())),
        Ok(()),
        Some(&ds(2, 2, (3, 2, 1), "v2")),
        &none,
        &at(191),
    );
    assert_eq!(
        condition(&stalled, "Stalled"),
        ("True".into(), reason::PROGRESS_DEADLINE_EXCEEDED.into())
    );
    assert_eq!(
        condition(&stalled, "Progressing"),
        ("True".into(), reason::ROLLING_OUT.into())
    );
    assert_eq!(
        condition(&stalled, "Degraded").0,
        "False",
        "one agent down is within maxUnavailable"
    );
    let message = &stalled.condition("Stalled").expect("Stalled").message;
    assert!(
        message.contains("more than 1m") && message.contains("1 of 3 agents updated"),
        "{message}"
    );
    assert!(matches!(
        transitions(Some(&waiting), &stalled).as_slice(),
        [Transition::Stalled { .. }]
    ));
    assert_eq!(stall_check_in(&stalled, deadline, &at(191)), None);
    let still = compute_fleet(
        &ep(Some(stalled.clone())),
        Ok(()),
        Some(&ds(2, 2, (3, 2, 1), "v2")),
        &none,
        &at(400),
    );
    assert_eq!(still, stalled, "a stalled rollout at rest writes nothing");
    assert_eq!(
        transitions(Some(&stalled), &still),
        vec![],
        "one Event per stall"
    );

    // A fixed spec: a new revision is progress, the clock starts again.
    let fixed = compute_fleet(
        &ep(Some(still.clone())),
        Ok(()),
        Some(&ds(3, 3, (3, 2, 0), "v3")),
        &none,
        &at(500),
    );
    assert_eq!(condition(&fixed, "Stalled").0, "False");
    assert_eq!(fixed.last_progress_time, Some(at(500)));

    // Complete: Progressing ends, and nothing is stalled at rest however long it lasts.
    let done = compute_fleet(
        &ep(Some(fixed.clone())),
        Ok(()),
        Some(&ds(3, 3, (3, 3, 3), "v3")),
        &none,
        &at(560),
    );
    assert_eq!(
        condition(&done, "Progressing"),
        ("False".into(), reason::ROLLOUT_COMPLETE.into())
    );
    assert_eq!(condition(&done, "Ready").0, "True");
    let later = compute_fleet(
        &ep(Some(done.clone())),
        Ok(()),
        Some(&ds(3, 3, (3, 3, 3), "v3")),
        &none,
        &at(90_000),
    );
    assert_eq!(later, done);
}

#[test]
fn the_default_progress_deadline_is_ten_minutes() {
    let mut p = ep(None);
    p.spec.rollout = None;
    assert_eq!(p.spec.progress_deadline(), Duration::from_secs(600));
    let none = Fleet::default();
    let started = compute_fleet(&p, Ok(()), Some(&ds(2, 2, (3, 2, 0), "v2")), &none, &at(0));
    p.status = Some(started);
    let at_9m = compute_fleet(
        &p,
        Ok(()),
        Some(&ds(2, 2, (3, 2, 0), "v2")),
        &none,
        &at(540),
    );
    assert_eq!(condition(&at_9m, "Stalled").0, "False");
    p.status = Some(at_9m);
    let at_11m = compute_fleet(
        &p,
        Ok(()),
        Some(&ds(2, 2, (3, 2, 0), "v2")),
        &none,
        &at(660),
    );
    assert_eq!(condition(&at_11m, "Stalled").0, "True");
    assert!(
        at_11m
            .condition("Stalled")
            .expect("Stalled")
            .message
            .contains("more than 10m")
    );
}

#[test]
fn only_revisions_no_pod_mounts_are_removed_once_the_template_is_observed() {
    let owned: Vec<String> = [
        "line1-agent",
        "line1-agent-v1",
        "line1-agent-v2",
        "line1-agent-v3",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let used =
        |names: &[&str]| -> BTreeSet<String> { names.iter().map(|s| s.to_string()).collect() };
    // (name, DaemonSet generation and observed generation, revisions the pods mount, removed)
    type Case = (
        &'static str,
        (i64, i64),
        BTreeSet<String>,
        &'static [&'static str],
    );
    let cases: [Case; 4] = [
        (
            "mid-rollout: pods on v1 keep it",
            (3, 3),
            used(&["line1-agent-v1", "line1-agent-v3"]),
            &["line1-agent", "line1-agent-v2"],
        ),
        (
            "rolled out: every earlier revision goes",
            (3, 3),
            used(&["line1-agent-v3"]),
            &["line1-agent", "line1-agent-v1", "line1-agent-v2"],
        ),
        (
            "the DaemonSet controller has not seen the template yet: nothing goes",
            (3, 2),
            used(&[]),
            &[],
        ),
        (
            "no pods at all (no node selected): all but the current go",
            (3, 3),
            used(&[]),
            &["line1-agent", "line1-agent-v1", "line1-agent-v2"],
        ),
    ];
    for (name, (generation, observed), in_use, removed) in cases {
        let daemon_set = ds(generation, observed, (3, 3, 3), "v3");
        assert_eq!(
            unused_revisions(&owned, &daemon_set, &in_use),
            removed,
            "{name}"
        );
    }
}

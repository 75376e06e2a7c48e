//! Reconcile I/O pinned with a scripted API server (kube-rs' tower-test pattern): the
//! exact requests for a new pipeline, an updated one, an invalid one (no DaemonSet
//! write), an unchanged one (no status write), a failing API server (capped backoff),
//! and a model ConfigMap; every request is checked against `required_permissions()`.

use crate::common;

use std::sync::Arc;
use std::time::Duration;

use common::api::{Seen, internal_error, respond};
use common::cluster::{
    DS_PATH, STATUS_PATH, UID, cluster_pipeline, cm_path, condition, config_hash, daemon_set,
    expect_no_children, expect_no_daemon_set, no_models, pipeline_with_status,
    reconcile_reading_only_the_daemon_set, reconciled, run, run_with,
};
use common::default_options;
use edge_crds::{EdgePipeline, EdgePipelineStatus};
use edge_operator::controller::{
    Error, REQUEUE, StoredPipeline, content_digest, error_policy, pipelines_using_model, summarize,
};
use edge_operator::render::render;
use edge_operator::status::{Blocked, compute, compute_blocked};
use http::{Method, StatusCode};
use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use k8s_openapi::jiff::Timestamp;
use kube::core::PartialObjectMeta;
use kube::runtime::controller::Action;
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::watcher;
use serde_json::{Value, json};

#[tokio::test]
async fn a_new_pipeline_gets_its_config_map_daemon_set_status_and_a_created_event() {
    let p = cluster_pipeline(1, "", None);
    let expected = render(&p, &default_options()).expect("renders");
    let (p2, expected2) = (p.clone(), expected.clone());
    let cm_at = cm_path(&p);
    run(
        no_models(),
        move |mut api| async move {
            expect_no_children(&mut api, &cm_at).await;
            let cm = api.expect_apply(&cm_at, None).await;
            assert_eq!(
                cm.body,
                serde_json::to_value(&expected2.config_map).expect("json")
            );

            let ds_body = serde_json::to_value(&expected2.daemon_set).expect("json");
            let ds = api
                .expect_apply(DS_PATH, Some(daemon_set(&ds_body, 1, 1, 0, 0, 0)))
                .await;
            assert_eq!(
                ds.body, ds_body,
                "the DaemonSet applied is exactly the rendered one"
            );
            assert_eq!(ds.body["metadata"]["ownerReferences"][0]["uid"], UID);

            let status = api.expect(Method::PATCH, STATUS_PATH).await;
            let (seen, send) = status;
            assert_eq!(
                seen.content_type.as_deref(),
                Some("application/apply-patch+yaml")
            );
            assert!(
                seen.has_query("fieldManager", "edge-operator") && seen.has_query("force", "true")
            );
            assert_eq!(seen.body["apiVersion"], "edgepipe.dev/v1alpha1");
            assert_eq!(seen.body["kind"], "EdgePipeline");
            let status = &seen.body["status"];
            assert_eq!(status["observedGeneration"], 1);
            assert_eq!(condition(status, "Ready")["status"], "False");
            assert_eq!(condition(status, "Ready")["reason"], "NoNodes");
            assert_eq!(condition(status, "Invalid")["status"], "False");
            respond(send, StatusCode::OK, pipeline_with_status(&p2, status));

            let event = api.expect_event("factory").await;
            assert_eq!(event.body["reason"], "Created");
            assert_eq!(event.body["type"], "Normal");
            assert_eq!(event.body["reportingController"], "edge-operator");
            assert_eq!(event.body["regarding"]["kind"], "EdgePipeline");
            assert_eq!(event.body["regarding"]["name"], "line1");
            api
        },
        |ctx, metrics| async move {
            let action = reconciled(p, &ctx).await.expect("reconcile succeeds");
            assert_eq!(action, Action::requeue(REQUEUE));
            let text = metrics.encode().expect("metrics");
            assert!(
                text.contains("edge_operator_reconciliations_total{result=\"success\"} 1"),
                "{text}"
            );
        },
    )
    .await;
}

#[tokio::test]
async fn an_updated_spec_is_applied_with_a_new_config_hash_and_reports_the_rollout() {
    let old = cluster_pipeline(1, "", None);
    let old_hash = config_hash(
        &serde_json::to_value(
            render(&old, &default_options())
                .expect("renders")
                .daemon_set,
        )
        .expect("json"),
    );
    let ready_ds: DaemonSet = serde_json::from_value(daemon_set(
        &serde_json::to_value(
            render(&old, &default_options())
                .expect("renders")
                .daemon_set,
        )
        .expect("json"),
        1,
        1,
        2,
        2,
        2,
    ))
    .expect("DaemonSet");
    let complete = compute(
        &old,
        Ok(()),
        Some(&ready_ds),
        &Time(Timestamp::from_second(1_800_000_000).expect("time")),
    );
    let updated = cluster_pipeline(
        2,
        "  processors: [{deadband: {absolute: 0.5}}]\n",
        Some(complete),
    );
    let p2 = updated.clone();
    let cm_at = cm_path(&updated);
    assert_ne!(
        cm_at,
        cm_path(&old),
        "a new configuration is a new ConfigMap"
    );
    run(
        no_models(),
        move |mut api| async move {
            expect_no_children(&mut api, &cm_at).await;
            let cm = api.expect_apply(&cm_at, None).await;
            let text = cm.body["data"]["pipeline.yaml"].as_str().expect("config");
            assert!(text.contains("deadband"), "{text}");
            let (seen, send) = api.expect(Method::PATCH, DS_PATH).await;
            assert_ne!(
                config_hash(&seen.body),
                old_hash,
                "a new config rolls the agents"
            );
            respond(send, StatusCode::OK, daemon_set(&seen.body, 2, 1, 2, 2, 0));
            let (seen, send) = api.expect(Method::PATCH, STATUS_PATH).await;
            let status = &seen.body["status"];
            assert_eq!(status["observedGeneration"], 2);
            assert_eq!(condition(status, "Progressing")["status"], "True");
            assert_eq!(condition(status, "Progressing")["reason"], "RollingOut");
            assert_eq!(condition(status, "Ready")["status"], "False");
            assert_ne!(
                condition(status, "Ready")["lastTransitionTime"],
                "2027-01-15T08:00:00Z"
            );
            assert_eq!(
                condition(status, "Degraded")["lastTransitionTime"],
                "2027-01-15T08:00:00Z",
                "unchanged conditions keep their time"
            );
            respond(send, StatusCode::OK, pipeline_with_status(&p2, status));
            api
        },
        |ctx, _metrics| async move {
            reconciled(updated, &ctx).await.expect("reconcile succeeds");
        },
    )
    .await;
}

const BAD_PROCESSORS: &str = "  processors: [{range: {min: 10, max: 0}}]\n";

#[tokio::test]
async fn an_invalid_spec_leaves_the_running_daemon_set_untouched() {
    let good = cluster_pipeline(1, "", None);
    let running = daemon_set(
        &serde_json::to_value(
            render(&good, &default_options())
                .expect("renders")
                .daemon_set,
        )
        .expect("json"),
        1,
        1,
        2,
        2,
        2,
    );
    let running_ds: DaemonSet = serde_json::from_value(running.clone()).expect("DaemonSet");
    let complete = compute(
        &good,
        Ok(()),
        Some(&running_ds),
        &Time(Timestamp::from_second(1_800_000_000).expect("time")),
    );
    let bad = cluster_pipeline(2, BAD_PROCESSORS, Some(complete));
    let bad2 = bad.clone();
    let seen = run(
        no_models(),
        move |mut api| async move {
            let (_, send) = api.expect(Method::GET, DS_PATH).await;
            respond(send, StatusCode::OK, running);
            let (seen, send) = api.expect(Method::PATCH, STATUS_PATH).await;
            let status = &seen.body["status"];
            assert_eq!(condition(status, "Invalid")["status"], "True");
            assert_eq!(
                condition(status, "Invalid")["message"],
                "spec.processors[0].range.max: must be >= min"
            );
            assert_eq!(condition(status, "Ready")["reason"], "InvalidSpec");
            assert_eq!(
                (status["desiredNodes"].clone(), status["readyNodes"].clone()),
                (json!(2), json!(2)),
                "the running agents are reported"
            );
            respond(send, StatusCode::OK, pipeline_with_status(&bad2, status));
            let event = api.expect_event("factory").await;
            assert_eq!(
                (event.body["reason"].clone(), event.body["type"].clone()),
                (json!("Invalid"), json!("Warning"))
            );
            assert!(
                event.body["note"]
                    .as_str()
                    .is_some_and(|n| n.contains("spec.processors[0].range"))
            );
            api
        },
        |ctx, _metrics| async move {
            reconciled(bad, &ctx)
                .await
                .expect("an invalid spec is not an error to retry");
        },
    )
    .await;
    let writes: Vec<&Seen> = seen
        .iter()
        .filter(|s| {
            s.method != Method::GET
                && (s.path.contains("/daemonsets") || s.path.contains("/configmaps"))
        })
        .collect();
    assert!(
        writes.is_empty(),
        "no write to the DaemonSet or ConfigMap: {writes:#?}"
    );
}

#[tokio::test]
async fn a_pipeline_that_stays_invalid_publishes_nothing_new() {
    // First reconcile of an invalid pipeline without any DaemonSet: Invalid status and Event.
    let first = cluster_pipeline(1, BAD_PROCESSORS, None);
    let first2 = first.clone();
    let captured = Arc::new(std::sync::Mutex::new(None::<Value>));
    let capture = captured.clone();
    run(
        no_models(),
        move |mut api| async move {
            expect_no_daemon_set(&mut api).await;
            let (seen, send) = api.expect(Method::PATCH, STATUS_PATH).await;
            let status = seen.body["status"].clone();
            assert_eq!(
                (status["desiredNodes"].clone(), status["readyNodes"].clone()),
                (json!(0), json!(0))
            );
            respond(send, StatusCode::OK, pipeline_with_status(&first2, &status));
            *capture.lock().expect("lock") = Some(status);
            let event = api.expect_event("factory").await;
            assert_eq!(event.body["reason"], "Invalid");
            api
        },
        |ctx, _metrics| async move {
            reconciled(first, &ctx).await.expect("reconcile succeeds");
        },
    )
    .await;
    let invalid_status = captured
        .lock()
        .expect("lock")
        .take()
        .map(|status| serde_json::from_value::<EdgePipelineStatus>(status).expect("status"));
    assert!(
        invalid_status.is_some(),
        "the first reconcile patched the status"
    );

    // The periodic reconcile: same spec, status already says so. Only the read.
    let again = cluster_pipeline(1, BAD_PROCESSORS, invalid_status);
    reconcile_reading_only_the_daemon_set(again).await;
}

/// A pipeline (generation 3) whose status already says what its DaemonSet shows, and
/// that DaemonSet as the API server answers (generation 4, 2 of 2 agents ready).
fn steady_pipeline() -> (EdgePipeline, Value) {
    let p = cluster_pipeline(3, "", None);
    let rendered =
        serde_json::to_value(render(&p, &default_options()).expect("renders").daemon_set)
            .expect("json");
    let live = daemon_set(&rendered, 4, 4, 2, 2, 2);
    let live_ds: DaemonSet = serde_json::from_value(live.clone()).expect("DaemonSet");
    let status = compute(
        &p,
        Ok(()),
        Some(&live_ds),
        &Time(Timestamp::from_second(1_800_000_000).expect("time")),
    );
    (cluster_pipeline(3, "", Some(status)), live)
}

#[tokio::test]
async fn an_unchanged_pipeline_applies_its_objects_and_writes_no_status() {
    let (p, live) = steady_pipeline();
    let cm_at = cm_path(&p);
    run(
        no_models(),
        move |mut api| async move {
            expect_no_children(&mut api, &cm_at).await;
            api.expect_apply(&cm_at, None).await;
            api.expect_apply(DS_PATH, Some(live)).await;
            api
        },
        |ctx, _metrics| async move {
            reconciled(p, &ctx).await.expect("reconcile succeeds");
        },
    )
    .await;
}

/// Once a pipeline's objects are applied and the caches show them unchanged, a reconcile
/// (a pod or DaemonSet status change) applies nothing and reads the DaemonSet for the
/// status from the API server's watch cache (`resourceVersion=0`), not from etcd.
#[tokio::test]
async fn an_unchanged_pipeline_reads_its_daemon_set_from_the_watch_cache() {
    let (p, live) = steady_pipeline();
    let rendered = render(&p, &default_options()).expect("renders");
    let revision = rendered.config_map.metadata.name.clone().expect("a name");
    let cm_at = cm_path(&p);
    let mut applied_cm = serde_json::to_value(&rendered.config_map).expect("json");
    applied_cm["metadata"]["resourceVersion"] = json!("7");
    let (daemon_sets, mut ds_writer) = reflector::store::<PartialObjectMeta<DaemonSet>>();
    let (config_maps, mut cm_writer) = reflector::store::<PartialObjectMeta<ConfigMap>>();
    let cached = |name: &str, generation: Option<i64>, version: &str| ObjectMeta {
        name: Some(name.to_string()),
        namespace: Some("factory".to_string()),
        generation,
        resource_version: Some(version.to_string()),
        ..ObjectMeta::default()
    };
    let cached_ds = cached("line1-agent", Some(4), "8");
    let cached_cm = cached(&revision, None, "7");
    let live2 = live.clone();
    let seen = run_with(
        no_models(),
        move |ctx| ctx.with_owned(daemon_sets, config_maps),
        move |mut api| async move {
            expect_no_children(&mut api, &cm_at).await;
            api.expect_apply(&cm_at, Some(applied_cm)).await;
            api.expect_apply(DS_PATH, Some(live)).await;
            let (seen, send) = api.expect(Method::GET, DS_PATH).await;
            assert!(seen.has_query("resourceVersion", "0"), "{:?}", seen.query);
            respond(send, StatusCode::OK, live2);
            api
        },
        |ctx, _metrics| async move {
            reconciled(p.clone(), &ctx)
                .await
                .expect("the first reconcile applies");
            ds_writer.apply_watcher_event(&watcher::Event::Apply(PartialObjectMeta::<DaemonSet> {
                metadata: cached_ds,
                ..PartialObjectMeta::default()
            }));
            cm_writer.apply_watcher_event(&watcher::Event::Apply(PartialObjectMeta::<ConfigMap> {
                metadata: cached_cm,
                ..PartialObjectMeta::default()
            }));
            reconciled(p, &ctx)
                .await
                .expect("the second reconcile reads");
        },
    )
    .await;
    let writes = seen.iter().filter(|s| s.method != Method::GET).count();
    assert_eq!(
        writes, 2,
        "the two applies of the first reconcile, nothing after"
    );
}

#[tokio::test]
async fn failed_applies_set_degraded_and_back_off_exponentially_up_to_a_cap() {
    let p = cluster_pipeline(1, "", None);
    let p_ok = {
        let rendered =
            serde_json::to_value(render(&p, &default_options()).expect("renders").daemon_set)
                .expect("json");
        let live: DaemonSet =
            serde_json::from_value(daemon_set(&rendered, 1, 1, 0, 0, 0)).expect("DaemonSet");
        let status = compute(
            &p,
            Ok(()),
            Some(&live),
            &Time(Timestamp::from_second(1_800_000_000).expect("time")),
        );
        cluster_pipeline(1, "", Some(status))
    };
    let failing = p.clone();
    let p_failing = p.clone();
    // The pipeline as the first failure leaves it.
    let failed_once = cluster_pipeline(
        1,
        "",
        Some(compute_blocked(
            &p,
            &Blocked::ApplyFailed {
                message: "etcd is having a bad day".to_string(),
            },
            &Time(Timestamp::from_second(1_800_000_000).expect("time")),
        )),
    );
    let cm_at = cm_path(&p);
    run(
        no_models(),
        |mut api| async move {
            for attempt in 0..2 {
                expect_no_children(&mut api, &cm_at).await;
                api.expect_apply(&cm_at, None).await;
                let (_, send) = api.expect(Method::PATCH, DS_PATH).await;
                respond(send, StatusCode::INTERNAL_SERVER_ERROR, internal_error());
                if attempt == 1 {
                    // Still failing the same way: no status write, no Event.
                    continue;
                }
                // The failure is in the status, with the API server's message.
                let (seen, send) = api.expect(Method::PATCH, STATUS_PATH).await;
                let status = &seen.body["status"];
                let degraded = condition(status, "Degraded");
                assert_eq!(degraded["status"], "True");
                assert_eq!(degraded["reason"], "ApplyFailed");
                assert_eq!(degraded["message"], internal_error()["message"], "{status}");
                assert_eq!(condition(status, "Ready")["reason"], "ApplyFailed");
                respond(
                    send,
                    StatusCode::OK,
                    pipeline_with_status(&p_failing, status),
                );
                let event = api.expect_event("factory").await;
                assert_eq!(event.body["reason"], "ApplyFailed");
                assert_eq!(event.body["type"], "Warning");
            }
            expect_no_children(&mut api, &cm_at).await;
            api.expect_apply(&cm_at, None).await;
            let (seen, send) = api.expect(Method::PATCH, DS_PATH).await;
            respond(send, StatusCode::OK, daemon_set(&seen.body, 1, 1, 0, 0, 0));
            api
        },
        |ctx, metrics| async move {
            let shared = Arc::new(failing);
            for (attempt, expected) in [5, 10].into_iter().enumerate() {
                let pipeline = if attempt == 0 {
                    (*shared).clone()
                } else {
                    failed_once.clone()
                };
                let error = reconciled(pipeline, &ctx)
                    .await
                    .expect_err("the API server fails");
                assert!(matches!(error, Error::ApplyDaemonSet { .. }), "{error}");
                let action = error_policy(shared.clone(), &error, ctx.clone());
                assert_eq!(action, Action::requeue(Duration::from_secs(expected)));
            }
            reconciled(p_ok, &ctx)
                .await
                .expect("the API server recovered");
            let error = Error::MissingNamespace;
            assert_eq!(
                error_policy(shared.clone(), &error, ctx.clone()),
                Action::requeue(Duration::from_secs(5)),
                "success resets the backoff"
            );
            let text = metrics.encode().expect("metrics");
            assert!(
                text.contains("edge_operator_reconciliations_total{result=\"error\"} 2"),
                "{text}"
            );
            assert!(
                text.contains("edge_operator_reconciliations_total{result=\"success\"} 1"),
                "{text}"
            );
        },
    )
    .await;
}

#[test]
fn the_backoff_is_capped() {
    use edge_operator::controller::{BACKOFF_MAX, backoff_delay};
    let delays: Vec<u64> = (0..10).map(|n| backoff_delay(n).as_secs()).collect();
    assert_eq!(delays, [5, 10, 20, 40, 80, 160, 300, 300, 300, 300]);
    assert_eq!(backoff_delay(u32::MAX), BACKOFF_MAX);
}

/// The model ConfigMap with `content`, as the API server returns it.
fn model(content: &str) -> ConfigMap {
    ConfigMap {
        metadata: ObjectMeta {
            name: Some("anomaly-model".to_string()),
            namespace: Some("factory".to_string()),
            resource_version: Some("4711".to_string()),
            ..ObjectMeta::default()
        },
        data: Some([("model.tflite".to_string(), content.to_string())].into()),
        ..ConfigMap::default()
    }
}

/// The cache of model ConfigMaps, holding the model with `content`.
fn model_store(content: &str) -> Store<PartialObjectMeta<ConfigMap>> {
    let (store, mut writer) = reflector::store();
    writer.apply_watcher_event(&watcher::Event::Apply(summarize(model(content))));
    store
}

const MODEL: &str =
    "  inference:\n    model: {configMap: {name: anomaly-model, key: model.tflite}}\n";

#[tokio::test]
async fn the_model_config_map_version_is_part_of_the_config_hash() {
    let p = cluster_pipeline(1, MODEL, None);
    let mut options = default_options();
    options.model_version = Some(content_digest(&model("weights v1")));
    let expected = config_hash(
        &serde_json::to_value(render(&p, &options).expect("renders").daemon_set).expect("json"),
    );
    let p_status = {
        let live: DaemonSet = serde_json::from_value(daemon_set(
            &serde_json::to_value(render(&p, &options).expect("renders").daemon_set).expect("json"),
            1,
            1,
            0,
            0,
            0,
        ))
        .expect("DaemonSet");
        let status = compute(
            &p,
            Ok(()),
            Some(&live),
            &Time(Timestamp::from_second(1_800_000_000).expect("time")),
        );
        cluster_pipeline(1, MODEL, Some(status))
    };
    let cm_at = cm_path(&p);
    run(
        model_store("weights v1"),
        move |mut api| async move {
            expect_no_children(&mut api, &cm_at).await;
            api.expect_apply(&cm_at, None).await;
            let (seen, send) = api.expect(Method::PATCH, DS_PATH).await;
            assert_eq!(config_hash(&seen.body), expected);
            let volumes = seen
                .body
                .pointer("/spec/template/spec/volumes")
                .cloned()
                .unwrap_or_default();
            assert!(volumes.to_string().contains("anomaly-model"), "{volumes}");
            respond(send, StatusCode::OK, daemon_set(&seen.body, 1, 1, 0, 0, 0));
            api
        },
        |ctx, _metrics| async move {
            reconciled(p_status, &ctx)
                .await
                .expect("reconcile succeeds");
        },
    )
    .await;
}

#[test]
fn a_model_config_map_change_maps_to_the_pipelines_using_it() {
    let (pipelines, mut writer) = reflector::store::<StoredPipeline>();
    let mut uses = cluster_pipeline(1, MODEL, None);
    uses.metadata.name = Some("uses".to_string());
    let mut other_ns = uses.clone();
    other_ns.metadata.namespace = Some("elsewhere".to_string());
    let mut no_model = cluster_pipeline(1, "", None);
    no_model.metadata.name = Some("plain".to_string());
    for p in [uses, other_ns, no_model] {
        writer.apply_watcher_event(&watcher::Event::Apply(StoredPipeline::from_pipeline(&p)));
    }
    let cm = model_store("weights v1")
        .state()
        .first()
        .map(|c| (**c).clone())
        .expect("model ConfigMap");
    let refs = pipelines_using_model(&pipelines, &cm);
    assert_eq!(
        refs,
        vec![ObjectRef::<StoredPipeline>::new("uses").within("factory")]
    );
}

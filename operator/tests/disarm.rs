//! A deleted pipeline's node fallbacks, pinned with a scripted API server: a pipeline that
//! carries the fallback finalizer and is being deleted gets one disarm Job per node of
//! its agents (in the operator's namespace, bound to the node), an Event, and its
//! finalizer released by a JSON patch tested against the list it replaces; a deleted
//! pipeline without the finalizer is left alone. Every request is checked against the
//! operator's permissions with the fallback's added.

use crate::common;

use std::sync::Arc;

use common::api::respond;
use common::cluster::{cluster_pipeline, no_models, run_permitted};
use edge_operator::controller::{CachedPod, Context, StoredPipeline, reconcile_stored};
use edge_operator::{fallback_permissions, required_permissions};
use http::{Method, StatusCode};
use k8s_openapi::api::core::v1::Node;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::runtime::controller::Action;
use kube::runtime::reflector;
use kube::runtime::watcher;
use serde_json::json;

const FINALIZER: &str = "edgepipe.dev/disarm-fallback";
const JOBS: &str = "/apis/batch/v1/namespaces/edgepipe-system/jobs";
const PIPELINE: &str = "/apis/edgepipe.dev/v1alpha1/namespaces/factory/edgepipelines/line1";

/// The pipeline being deleted, with `finalizers`, as the controller's cache holds it.
fn deleted(finalizers: &[&str]) -> StoredPipeline {
    let mut p = cluster_pipeline(1, "", None);
    p.metadata.finalizers = Some(finalizers.iter().map(|f| f.to_string()).collect());
    p.metadata.deletion_timestamp = Some(Time(Timestamp::now()));
    StoredPipeline::from_pipeline(&p)
}

/// A cache of the pipeline's agent pods on `nodes`.
fn agent_pods(nodes: &[&str]) -> reflector::Store<CachedPod> {
    let (store, mut writer) = reflector::store::<CachedPod>();
    for node in nodes {
        let pod: CachedPod = serde_json::from_value(json!({
            "metadata": {
                "name": format!("line1-agent-{node}"),
                "namespace": "factory",
                "labels": {"app.kubernetes.io/instance": "line1"},
            },
            "spec": {"nodeName": node},
        }))
        .expect("a pod");
        writer.apply_watcher_event(&watcher::Event::Apply(pod));
    }
    store
}

/// The context of an operator in `edgepipe-system` with the agent pods on `nodes`.
fn with_pods_on(nodes: &[&str]) -> impl FnOnce(Context) -> Context {
    let pods = agent_pods(nodes);
    move |ctx| {
        ctx.with_fleet(pods, reflector::store::<Node>().0)
            .with_own_namespace(Some("edgepipe-system".to_string()))
    }
}

fn permissions() -> Vec<edge_operator::Permission> {
    let mut all = required_permissions();
    all.extend(fallback_permissions());
    all
}

#[tokio::test]
async fn a_deleted_armed_pipeline_gets_a_disarm_job_per_node_then_loses_its_finalizer() {
    let stored = deleted(&["example.com/other", FINALIZER]);
    run_permitted(
        no_models(),
        with_pods_on(&["edge-1", "edge-2"]),
        &permissions(),
        |mut api| async move {
            for node in ["edge-1", "edge-2"] {
                let (seen, send) = api.expect(Method::POST, JOBS).await;
                let pod = &seen.body["spec"]["template"]["spec"];
                assert_eq!(pod["nodeName"], node);
                assert_eq!(
                    seen.body["metadata"]["labels"]["edgepipe.dev/disarm"],
                    "factory.line1"
                );
                assert_eq!(
                    pod["volumes"][0]["hostPath"]["path"],
                    "/var/lib/edgepipe/factory/line1"
                );
                assert_eq!(pod["volumes"][1]["hostPath"]["path"], "/etc/systemd/system");
                respond(send, StatusCode::CREATED, seen.body.clone());
            }
            let event = api.expect_event("factory").await;
            assert_eq!(event.body["reason"], "DisarmingFallback");
            let (seen, send) = api.expect(Method::PATCH, PIPELINE).await;
            assert_eq!(
                seen.content_type.as_deref(),
                Some("application/json-patch+json")
            );
            assert_eq!(
                seen.body,
                json!([
                    {"op": "test", "path": "/metadata/finalizers", "value": ["example.com/other", FINALIZER]},
                    {"op": "add", "path": "/metadata/finalizers", "value": ["example.com/other"]},
                ])
            );
            respond(send, StatusCode::OK, json!({}));
            api
        },
        |ctx, _| async move {
            let action = reconcile_stored(Arc::new(stored), ctx)
                .await
                .expect("reconciles");
            assert_eq!(action, Action::await_change());
        },
    )
    .await;
}

#[tokio::test]
async fn a_job_that_exists_already_is_not_an_error() {
    let stored = deleted(&[FINALIZER]);
    run_permitted(
        no_models(),
        with_pods_on(&["edge-1"]),
        &permissions(),
        |mut api| async move {
            let (_, send) = api.expect(Method::POST, JOBS).await;
            respond(
                send,
                StatusCode::CONFLICT,
                json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "AlreadyExists", "code": 409, "message": "exists"}),
            );
            api.expect_event("factory").await;
            let (_, send) = api.expect(Method::PATCH, PIPELINE).await;
            respond(send, StatusCode::OK, json!({}));
            api
        },
        |ctx, _| async move {
            reconcile_stored(Arc::new(stored), ctx)
                .await
                .expect("reconciles");
        },
    )
    .await;
}

#[tokio::test]
async fn a_deleted_pipeline_without_the_finalizer_is_left_alone() {
    let stored = deleted(&["example.com/other"]);
    run_permitted(
        no_models(),
        |ctx| ctx,
        &permissions(),
        |api| async move { api },
        |ctx, _| async move {
            let action = reconcile_stored(Arc::new(stored), ctx)
                .await
                .expect("reconciles");
            assert_eq!(action, Action::await_change());
        },
    )
    .await;
}

//! Fixtures for reconcile tests: the test pipeline as the API server stores it, the
//! DaemonSet it returns, and [`run`], which drives reconciles against a scripted
//! [`ApiServer`] and checks every request against the operator's RBAC.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use edge_crds::{EdgePipeline, EdgePipelineStatus};
use edge_operator::controller::{Context, Error, reconcile};
use edge_operator::render::CONFIG_HASH_ANNOTATION;
use edge_operator::required_permissions;
use edge_operator::telemetry::Metrics;
use http::{Request, Response};
use k8s_openapi::api::core::v1::ConfigMap;
use kube::Client;
use kube::client::Body;
use kube::core::PartialObjectMeta;
use kube::runtime::controller::Action;
use kube::runtime::events::Reporter;
use kube::runtime::reflector::{self, Store};
use serde_json::{Value, json};

use super::api::{ApiServer, Seen, assert_permitted_by, not_found, respond};
use super::{default_options, pipeline};

/// The ConfigMap `line1-agent` of operators before configuration revisions.
pub const LEGACY_CM_PATH: &str = "/api/v1/namespaces/factory/configmaps/line1-agent";
pub const DS_PATH: &str = "/apis/apps/v1/namespaces/factory/daemonsets/line1-agent";
pub const STATUS_PATH: &str =
    "/apis/edgepipe.dev/v1alpha1/namespaces/factory/edgepipelines/line1/status";
pub const UID: &str = "3f9c2b1e-5d4a-4c3b-9a8f-0123456789ab";

/// The test pipeline as the API server would hand it to the controller.
pub fn cluster_pipeline(
    generation: i64,
    extra: &str,
    status: Option<EdgePipelineStatus>,
) -> EdgePipeline {
    let mut p = pipeline(extra);
    p.metadata.uid = Some(UID.to_string());
    p.metadata.generation = Some(generation);
    p.metadata.resource_version = Some(format!("{}", 100 + generation));
    p.status = status;
    p
}

/// The DaemonSet as the API server returns it: `applied` at `generation`, with a status.
pub fn daemon_set(
    applied: &Value,
    generation: i64,
    observed: i64,
    desired: i32,
    ready: i32,
    updated: i32,
) -> Value {
    let mut ds = applied.clone();
    ds["metadata"]["generation"] = json!(generation);
    ds["metadata"]["uid"] = json!("0d5e8a52-0000-4000-8000-00000000d5e7");
    ds["status"] = json!({
        "observedGeneration": observed, "desiredNumberScheduled": desired, "currentNumberScheduled": desired,
        "numberMisscheduled": 0, "numberReady": ready, "updatedNumberScheduled": updated
    });
    ds
}

pub fn pipeline_with_status(p: &EdgePipeline, status: &Value) -> Value {
    let mut body = serde_json::to_value(p).expect("pipeline serializes");
    body["status"] = status.clone();
    body
}

pub fn config_hash(ds: &Value) -> String {
    ds.pointer(&format!(
        "/spec/template/metadata/annotations/{}",
        CONFIG_HASH_ANNOTATION.replace('/', "~1")
    ))
    .and_then(Value::as_str)
    .expect("config hash")
    .to_string()
}

pub fn condition<'a>(status: &'a Value, type_: &str) -> &'a Value {
    status["conditions"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["type"] == type_))
        .unwrap_or_else(|| panic!("no {type_} condition in {status}"))
}

pub struct Harness {
    pub ctx: Arc<Context>,
    pub metrics: Arc<Metrics>,
}

pub fn harness(
    models: Store<PartialObjectMeta<ConfigMap>>,
    configure: impl FnOnce(Context) -> Context,
) -> (Harness, ApiServer) {
    let (mock, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let client = Client::new(mock, "default");
    let metrics = Arc::new(Metrics::new().expect("metrics"));
    let reporter = Reporter {
        controller: "edge-operator".to_string(),
        instance: Some("edge-operator-0".to_string()),
    };
    let ctx = Arc::new(configure(Context::new(
        client,
        default_options(),
        reporter,
        metrics.clone(),
        models,
    )));
    (Harness { ctx, metrics }, ApiServer::new(handle))
}

pub fn no_models() -> Store<PartialObjectMeta<ConfigMap>> {
    let (store, _writer) = reflector::store();
    store
}

/// Runs `script` as the API server while `test` drives reconciles; once `test` is done
/// (and the client dropped), checks the script saw every request it expects and nothing
/// more.
pub async fn run<S, SF, T, TF>(
    models: Store<PartialObjectMeta<ConfigMap>>,
    script: S,
    test: T,
) -> Vec<Seen>
where
    S: FnOnce(ApiServer) -> SF,
    SF: Future<Output = ApiServer> + Send + 'static,
    T: FnOnce(Arc<Context>, Arc<Metrics>) -> TF,
    TF: Future<Output = ()>,
{
    run_with(models, |ctx| ctx, script, test).await
}

/// [`run`] with a Context `configure`d for the test (a policy, opted-in Secrets, caches).
pub async fn run_with<S, SF, T, TF>(
    models: Store<PartialObjectMeta<ConfigMap>>,
    configure: impl FnOnce(Context) -> Context,
    script: S,
    test: T,
) -> Vec<Seen>
where
    S: FnOnce(ApiServer) -> SF,
    SF: Future<Output = ApiServer> + Send + 'static,
    T: FnOnce(Arc<Context>, Arc<Metrics>) -> TF,
    TF: Future<Output = ()>,
{
    run_permitted(models, configure, &required_permissions(), script, test).await
}

/// [`run_with`], every request checked against `permissions`.
pub async fn run_permitted<S, SF, T, TF>(
    models: Store<PartialObjectMeta<ConfigMap>>,
    configure: impl FnOnce(Context) -> Context,
    permissions: &[edge_operator::Permission],
    script: S,
    test: T,
) -> Vec<Seen>
where
    S: FnOnce(ApiServer) -> SF,
    SF: Future<Output = ApiServer> + Send + 'static,
    T: FnOnce(Arc<Context>, Arc<Metrics>) -> TF,
    TF: Future<Output = ()>,
{
    let (harness, server) = harness(models, configure);
    let script = script(server);
    let server = tokio::spawn(async move { script.await.finish().await });
    let Harness { ctx, metrics } = harness;
    test(ctx, metrics).await;
    let seen = server
        .await
        .expect("the scripted API server saw what it expected, and nothing more");
    assert_permitted_by(&seen, permissions);
    seen
}

pub async fn reconciled(p: EdgePipeline, ctx: &Arc<Context>) -> Result<Action, Error> {
    tokio::time::timeout(Duration::from_secs(10), reconcile(Arc::new(p), ctx.clone()))
        .await
        .expect("reconcile finishes")
}

/// The path of the configuration revision (ConfigMap) of pipeline `p`.
pub fn cm_path(p: &EdgePipeline) -> String {
    let rendered = edge_operator::render(p, &default_options()).expect("renders");
    let name = rendered.config_map.metadata.name.expect("a name");
    format!("/api/v1/namespaces/factory/configmaps/{name}")
}

/// Expects the read of the DaemonSet `line1-agent`; answers that there is none.
pub async fn expect_no_daemon_set(api: &mut ApiServer) {
    let (_, send) = api.expect(http::Method::GET, DS_PATH).await;
    respond(
        send,
        http::StatusCode::NOT_FOUND,
        not_found("daemonsets.apps", "line1-agent"),
    );
}

/// Reconciles `p` against an API server that has no DaemonSet of it and expects nothing
/// but that read: the periodic reconcile of a pipeline whose status already says so.
pub async fn reconcile_reading_only_the_daemon_set(p: EdgePipeline) -> Vec<Seen> {
    run(
        no_models(),
        |mut api| async move {
            expect_no_daemon_set(&mut api).await;
            api
        },
        |ctx, _metrics| async move {
            reconciled(p, &ctx).await.expect("reconcile succeeds");
        },
    )
    .await
}

/// Expects the ownership check before an apply (the metadata of the ConfigMap at
/// `cm_path`, then of the DaemonSet); answers that neither exists.
pub async fn expect_no_children(api: &mut ApiServer, cm_path: &str) {
    for (path, resource) in [(cm_path, "configmaps"), (DS_PATH, "daemonsets.apps")] {
        let (_, send) = api.expect(http::Method::GET, path).await;
        respond(
            send,
            http::StatusCode::NOT_FOUND,
            not_found(resource, "line1-agent"),
        );
    }
}

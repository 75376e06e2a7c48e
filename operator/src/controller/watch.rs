//! What the controller watches and how a change reaches a reconcile: EdgePipelines; the
//! DaemonSets and ConfigMaps it manages (metadata only); the agent pods (labelled
//! `app.kubernetes.io/managed-by=edge-operator`) and the nodes, both reduced by
//! [`super::fleet`], a node reaching the pipelines with an agent on it only when it goes
//! offline or comes back; model ConfigMaps labelled `edgepipe.dev/model=true` (cached as
//! metadata and a digest of their content) and every Secret (metadata only, without
//! annotations: the watch never receives a Secret's data), each mapped to the pipelines
//! that use it; the agents' fleet records (Leases labelled
//! `app.kubernetes.io/managed-by=edge-agent`, when agents have access to write them),
//! each mapped to its pipeline. A reconcile reads the data of the Secrets its pipeline references, once
//! they opted in, to hash it (see [`super`]). EdgePipelines are watched as stored
//! ([`StoredPipeline`]) so that one the strict types reject never breaks the watch of the
//! others.

use std::sync::Arc;

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{ConfigMap, Node, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::ListParams;
use kube::core::PartialObjectMeta;
use kube::runtime::controller::{Config as ControllerConfig, Controller};
use kube::runtime::events::Reporter;
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, Resource};
use serde_json::Value;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::fleet::{self, CachedPod, OfflineChanges};
use super::models;
use super::records::{self, CachedLease};
use super::{CONCURRENCY, Context, Error, StoredPipeline, error_policy_stored, reconcile_stored};
use crate::policy::{TenantPolicy, secret_references};
use crate::render::{FIELD_MANAGER, MANAGED_BY_SELECTOR, MODEL_SELECTOR, RenderOptions};
use crate::server::Readiness;
use crate::telemetry::Metrics;
use edge_crds::fleet::RECORD_SELECTOR;

/// Changes of a watched object buffered between its watch and the controller.
const WATCH_EVENTS: usize = 64;

/// What the controller is configured with.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Watch only this namespace (all namespaces when `None`).
    pub namespace: Option<String>,
    /// Images and defaults of the rendered objects.
    pub render: RenderOptions,
    /// This replica's name in Events (the pod name).
    pub instance: Option<String>,
    /// What pipelines may ask for.
    pub policy: TenantPolicy,
    /// The operator's own namespace (where disarm Jobs run), when known.
    pub own_namespace: Option<String>,
}

/// The pipelines (in the cache) whose model is the ConfigMap `cm`.
pub fn pipelines_using_model(
    pipelines: &Store<StoredPipeline>,
    cm: &PartialObjectMeta<ConfigMap>,
) -> Vec<ObjectRef<StoredPipeline>> {
    pipelines_in_namespace_of(pipelines, &cm.metadata, |p, name| {
        p.spec
            .value()
            .pointer("/inference/model/configMap/name")
            .and_then(Value::as_str)
            == Some(name)
    })
}

/// The pipelines (in the cache) that reference the Secret `secret` anywhere in their
/// spec: when it changes (its data rotated, the opt-in label gained or lost) they are
/// reconciled again. A pipeline that does not decode is skipped (it runs nothing new
/// until it does).
pub fn pipelines_using_secret(
    pipelines: &Store<StoredPipeline>,
    secret: &PartialObjectMeta<Secret>,
) -> Vec<ObjectRef<StoredPipeline>> {
    pipelines_in_namespace_of(pipelines, &secret.metadata, |p, name| {
        p.decode()
            .is_ok_and(|p| secret_references(&p.spec).iter().any(|r| r.name == name))
    })
}

/// The pipelines of the object's namespace for which `uses(pipeline, object name)` holds.
fn pipelines_in_namespace_of(
    pipelines: &Store<StoredPipeline>,
    object: &ObjectMeta,
    uses: impl Fn(&StoredPipeline, &str) -> bool,
) -> Vec<ObjectRef<StoredPipeline>> {
    let (Some(namespace), Some(name)) = (object.namespace.as_deref(), object.name.as_deref())
    else {
        return vec![];
    };
    pipelines
        .state()
        .iter()
        .filter(|p| p.metadata.namespace.as_deref() == Some(namespace) && uses(p, name))
        .map(|p| ObjectRef::from_obj(p.as_ref()))
        .collect()
}

fn scoped<K>(client: &Client, namespace: Option<&str>) -> Api<K>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope>,
    K::DynamicType: Default,
{
    match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    }
}

/// The Secrets of the watched namespaces, as [`summarize_secret`] reduces their
/// metadata (the API server sends no data: `PartialObjectMetadata`), cached and forwarded
/// like the other watched objects. Every Secret, not only those opted in: a rotation of a
/// referenced one must reach its pipelines, and the opt-in label is read from this cache.
fn secret_metadata(
    api: Api<PartialObjectMeta<Secret>>,
) -> (
    Store<PartialObjectMeta<Secret>>,
    mpsc::Receiver<PartialObjectMeta<Secret>>,
    JoinHandle<()>,
) {
    let events = watcher(api, watcher::Config::default()).modify(summarize_secret);
    cached(events, "Secrets")
}

/// Keeps what the controller needs of a Secret's metadata: its name, namespace, uid,
/// resourceVersion and labels. Annotations go: `kubectl apply` leaves the whole manifest,
/// data included, in `kubectl.kubernetes.io/last-applied-configuration`.
pub fn summarize_secret(secret: &mut PartialObjectMeta<Secret>) {
    let meta = &mut secret.metadata;
    meta.annotations = None;
    meta.managed_fields = None;
    meta.owner_references = None;
    meta.finalizers = None;
}

/// Drops what no reconcile reads and what costs most in a cache of thousands of owned
/// objects: their `managedFields` (every field the operator applies, kept as JSON).
fn summarize_owned<K>(object: &mut PartialObjectMeta<K>) {
    object.metadata.managed_fields = None;
}

/// Drops what no reconcile reads from a cached pipeline: its `managedFields` and the
/// whole manifest `kubectl apply` leaves in `kubectl.kubernetes.io/last-applied-configuration`.
pub fn summarize_pipeline(pipeline: &mut StoredPipeline) {
    let meta = &mut pipeline.metadata;
    meta.managed_fields = None;
    if let Some(annotations) = meta.annotations.as_mut() {
        annotations.remove(LAST_APPLIED);
        if annotations.is_empty() {
            meta.annotations = None;
        }
    }
}

/// Where client-side `kubectl apply` keeps the manifest it applied.
const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";

/// The model ConfigMaps (labelled `edgepipe.dev/model=true`) as [`models::summarize`]
/// reduces them, cached and forwarded like the Secrets.
fn model_config_maps(
    api: Api<ConfigMap>,
) -> (
    Store<PartialObjectMeta<ConfigMap>>,
    mpsc::Receiver<PartialObjectMeta<ConfigMap>>,
    JoinHandle<()>,
) {
    let config = watcher::Config::default().labels(MODEL_SELECTOR);
    let events = watcher(api, config).map_ok(models::summarize_event);
    cached(events, "model ConfigMaps")
}

/// Reflects `events` into a cache and forwards each touched object to a bounded channel.
fn cached<K, S>(events: S, what: &'static str) -> (Store<K>, mpsc::Receiver<K>, JoinHandle<()>)
where
    K: kube::runtime::reflector::Lookup + Clone + Send + Sync + 'static,
    K::DynamicType: Default + Eq + std::hash::Hash + Clone + Send + Sync,
    S: futures::Stream<Item = Result<watcher::Event<K>, watcher::Error>> + Send + 'static,
{
    let (store, writer) = reflector::store();
    let (tx, rx) = mpsc::channel(WATCH_EVENTS);
    let task = tokio::spawn(async move {
        let events = reflector::reflector(writer, events)
            .default_backoff()
            .touched_objects();
        futures::pin_mut!(events);
        while let Some(event) = events.next().await {
            match event {
                Ok(object) => {
                    if tx.send(object).await.is_err() {
                        break;
                    }
                }
                Err(error) => tracing::warn!(%error, "watching {what} failed"),
            }
        }
    });
    (store, rx, task)
}

fn into_stream<T: Send + 'static>(
    rx: mpsc::Receiver<T>,
) -> impl futures::Stream<Item = Result<T, watcher::Error>> + Send + 'static {
    futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|object| (Ok(object), rx))
    })
}

/// Runs the controller until `stop` is cancelled, letting running reconciles finish.
/// `readiness` turns true once the EdgePipeline cache is synced.
pub async fn run(
    client: Client,
    settings: Settings,
    metrics: Arc<Metrics>,
    readiness: Readiness,
    stop: CancellationToken,
) -> Result<(), Error> {
    let ns = settings.namespace.as_deref();
    let pipelines: Api<StoredPipeline> = scoped(&client, ns);
    pipelines
        .list(&ListParams::default().limit(1))
        .await
        .map_err(Error::CrdNotQueryable)?;
    let daemon_sets: Api<PartialObjectMeta<DaemonSet>> = scoped(&client, ns);
    let config_maps: Api<PartialObjectMeta<ConfigMap>> = scoped(&client, ns);
    let managed = watcher::Config::default().labels(MANAGED_BY_SELECTOR);

    // Model ConfigMaps and Secrets are cached (metadata only) before the first reconcile:
    // a restarted operator computes the same config hashes, and never takes a Secret it
    // has not seen yet for one without the opt-in label.
    let (models, model_rx, model_watch) = model_config_maps(scoped(&client, ns));
    let (secrets, secret_rx, secret_watch) =
        secret_metadata(scoped::<PartialObjectMeta<Secret>>(&client, ns));
    // The agent pods are cached before the first reconcile too: a revision is removed
    // only when no pod in the cache mounts it. The nodes are not waited for: without
    // them (RBAC may not grant them) no node counts as offline.
    let pod_events = watcher(
        scoped::<CachedPod>(&client, ns),
        watcher::Config::default().labels(MANAGED_BY_SELECTOR),
    )
    .modify(fleet::summarize_pod);
    let (pods, pod_rx, pod_watch) = cached(pod_events, "agent pods");
    let node_events = watcher(Api::<Node>::all(client.clone()), watcher::Config::default())
        .modify(fleet::summarize_node);
    let (nodes, node_rx, node_watch) = cached(node_events, "nodes");
    // The agents' fleet records, when agents have access to write them. Not waited for:
    // a pipeline without records has no `status.fleet` until they arrive.
    let (leases, lease_rx, lease_watch) = if settings.render.agent_access.is_some() {
        let lease_events = watcher(
            scoped::<CachedLease>(&client, ns),
            watcher::Config::default().labels(RECORD_SELECTOR),
        )
        .modify(records::summarize_lease);
        let (leases, rx, task) = cached(lease_events, "fleet records");
        (leases, rx, Some(task))
    } else {
        (reflector::store().0, mpsc::channel(1).1, None)
    };
    let abort = || {
        model_watch.abort();
        secret_watch.abort();
        pod_watch.abort();
        node_watch.abort();
        if let Some(task) = &lease_watch {
            task.abort();
        }
    };
    let synced = async {
        (
            models.wait_until_ready().await,
            secrets.wait_until_ready().await,
            pods.wait_until_ready().await,
        )
    };
    tokio::select! {
        _ = stop.cancelled() => {
            abort();
            return Ok(());
        }
        synced = synced => {
            if synced.0.is_err() || synced.1.is_err() || synced.2.is_err() {
                abort();
                return Ok(());
            }
        }
    }

    // The EdgePipeline cache; readiness turns true when its first full list is in.
    let (cache, writer) = reflector::store();
    let pipeline_events = watcher(pipelines, watcher::Config::default().any_semantic())
        .modify(summarize_pipeline)
        .default_backoff()
        .reflect(writer)
        .inspect(move |event| {
            if matches!(event, Ok(watcher::Event::InitDone)) && !readiness.get() {
                tracing::info!("EdgePipeline cache synced");
                readiness.set(true);
            }
        })
        .applied_objects();
    let controller = Controller::for_stream(pipeline_events, cache.clone())
        .with_config(ControllerConfig::default().concurrency(CONCURRENCY));
    metrics.count_pipelines_from(Some(cache.clone()));
    let reporter = Reporter {
        controller: FIELD_MANAGER.to_string(),
        instance: settings.instance.clone(),
    };
    let (owned_daemon_sets, daemon_sets_writer) = reflector::store();
    let (owned_config_maps, config_maps_writer) = reflector::store();
    let ctx = Arc::new(
        Context::new(client, settings.render, reporter, metrics.clone(), models)
            .with_owned(owned_daemon_sets, owned_config_maps)
            .with_policy(settings.policy, secrets)
            .with_fleet(pods.clone(), nodes)
            .with_records(leases)
            .with_own_namespace(settings.own_namespace),
    );

    let model_cache = cache.clone();
    let secret_cache = cache.clone();
    let offline_changes = OfflineChanges::default();
    tracing::info!(namespace = ns.unwrap_or("<all>"), "controller starting");
    controller
        .owns_stream(
            watcher(daemon_sets, managed.clone())
                .modify(summarize_owned)
                .default_backoff()
                .reflect(daemon_sets_writer)
                .touched_objects(),
        )
        .owns_stream(
            watcher(config_maps, managed)
                .modify(summarize_owned)
                .default_backoff()
                .reflect(config_maps_writer)
                .touched_objects(),
        )
        .watches_stream(into_stream(model_rx), move |cm| {
            pipelines_using_model(&model_cache, &cm)
        })
        .watches_stream(into_stream(secret_rx), move |secret| {
            pipelines_using_secret(&secret_cache, &secret)
        })
        .watches_stream(into_stream(pod_rx), |pod| fleet::pipeline_of_pod(&pod))
        .watches_stream(into_stream(lease_rx), |lease| {
            records::pipeline_of_lease(&lease)
        })
        .watches_stream(into_stream(node_rx), move |node| {
            if offline_changes.changed(&node) {
                fleet::pipelines_on_node(&pods, &node)
            } else {
                vec![]
            }
        })
        .graceful_shutdown_on(async move { stop.cancelled().await })
        .run(reconcile_stored, error_policy_stored, ctx)
        .for_each(|result| async move {
            if let Err(error) = result {
                tracing::debug!(%error, "controller event");
            }
        })
        .await;
    abort();
    metrics.count_pipelines_from(None);
    tracing::info!("controller stopped");
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{FieldsV1, ManagedFieldsEntry};

    use super::*;

    #[test]
    fn a_cached_pipeline_drops_managed_fields_and_the_applied_manifest_only() {
        let mut pipeline = StoredPipeline {
            metadata: ObjectMeta {
                name: Some("line1".to_string()),
                annotations: Some(BTreeMap::from([
                    (LAST_APPLIED.to_string(), "{\"spec\":{}}".repeat(100)),
                    ("team".to_string(), "plant-a".to_string()),
                ])),
                managed_fields: Some(vec![ManagedFieldsEntry {
                    manager: Some("kubectl-client-side-apply".to_string()),
                    fields_v1: Some(FieldsV1(serde_json::json!({"f:spec": {}}))),
                    ..ManagedFieldsEntry::default()
                }]),
                ..ObjectMeta::default()
            },
            spec: serde_json::json!({"source": {}}).into(),
            status: None,
        };
        let spec = pipeline.spec.clone();
        summarize_pipeline(&mut pipeline);
        assert!(pipeline.metadata.managed_fields.is_none());
        assert_eq!(
            pipeline.metadata.annotations,
            Some(BTreeMap::from([(
                "team".to_string(),
                "plant-a".to_string()
            )]))
        );
        assert_eq!(pipeline.spec, spec);

        pipeline.metadata.annotations =
            Some(BTreeMap::from([(LAST_APPLIED.to_string(), String::new())]));
        summarize_pipeline(&mut pipeline);
        assert_eq!(pipeline.metadata.annotations, None);
    }
}

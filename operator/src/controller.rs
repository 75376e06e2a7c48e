//! The EdgePipeline controller: watches, one idempotent `reconcile`, and the error policy.
//!
//! Reconcile validates the pipeline; an invalid one gets the `Invalid` condition and an
//! Event, and its running DaemonSet is left untouched. A valid one gets its ConfigMap and
//! DaemonSet server-side applied (field manager `edge-operator`), then its status patched
//! on `/status` when it changed. Events are published only on transitions. Failures are
//! retried with a per-object capped exponential backoff; success requeues every 5 minutes.
//!
//! At rest the operator writes nothing: it remembers what it last applied for each
//! pipeline (a digest of the rendered objects, the ConfigMap's resourceVersion and the
//! DaemonSet's generation the API server answered), and while its caches show both
//! objects unchanged since then, a reconcile only reads the DaemonSet for the status. A
//! new spec or model, an edit of the ConfigMap or of the DaemonSet's spec by anyone, or
//! either leaving the cache makes the next reconcile apply again; the DaemonSet's status
//! moving during a rollout does not.
//!
//! Watches: EdgePipelines; DaemonSets and ConfigMaps labelled
//! `app.kubernetes.io/managed-by=edge-operator` (metadata only); model ConfigMaps labelled
//! `edgepipe.dev/model=true` (metadata only), mapped to the pipelines that use them so a
//! new model rolls their agents. No other ConfigMap is ever cached.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use edge_crds::manifest::{API_VERSION, KIND};
use edge_crds::{EdgePipeline, FieldError};
use futures::StreamExt;
use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::{ListParams, Patch, PatchParams};
use kube::core::PartialObjectMeta;
use kube::runtime::controller::{Action, Config as ControllerConfig, Controller};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, Resource, ResourceExt};
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::render::{
    FIELD_MANAGER, MANAGED_BY_SELECTOR, MODEL_SELECTOR, RenderError, RenderOptions, agent_name,
    render,
};
use crate::server::Readiness;
use crate::status::{self, Transition};
use crate::telemetry::{Metrics, ReconcileResult};

/// How often a healthy pipeline is reconciled again.
pub const REQUEUE: Duration = Duration::from_secs(5 * 60);
/// First retry delay after a failed reconcile.
pub const BACKOFF_MIN: Duration = Duration::from_secs(5);
/// Longest retry delay.
pub const BACKOFF_MAX: Duration = Duration::from_secs(5 * 60);
/// Reconciles running at once.
const CONCURRENCY: u16 = 4;
/// Upper bound on the objects whose failure count is remembered.
const MAX_TRACKED_FAILURES: usize = 4096;
/// Upper bound on the pipelines whose last apply is remembered (a few hundred bytes each;
/// entries of deleted pipelines are only dropped when the bound clears the map, which
/// costs one no-op apply per pipeline).
const MAX_REMEMBERED_APPLIES: usize = 16_384;
/// Model ConfigMap changes buffered between their watch and the controller.
const MODEL_EVENTS: usize = 64;
/// Longest Event note the API accepts.
const MAX_NOTE: usize = 1024;

/// Why a reconcile failed (it is retried with backoff).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The object has no namespace (EdgePipelines are namespaced).
    #[error("EdgePipeline has no namespace")]
    MissingNamespace,
    /// Rendering failed for a reason other than validation.
    #[error("rendering the agent failed: {0}")]
    Render(#[source] RenderError),
    /// Server-side apply of the ConfigMap failed.
    #[error("applying ConfigMap {name} failed: {source}")]
    ApplyConfigMap {
        /// ConfigMap name.
        name: String,
        /// API error.
        source: kube::Error,
    },
    /// Server-side apply of the DaemonSet failed.
    #[error("applying DaemonSet {name} failed: {source}")]
    ApplyDaemonSet {
        /// DaemonSet name.
        name: String,
        /// API error.
        source: kube::Error,
    },
    /// Reading the DaemonSet (for the status) failed.
    #[error("reading DaemonSet {name} failed: {source}")]
    ReadDaemonSet {
        /// DaemonSet name.
        name: String,
        /// API error.
        source: kube::Error,
    },
    /// Patching `/status` failed.
    #[error("patching the status failed: {0}")]
    PatchStatus(#[source] kube::Error),
    /// EdgePipelines cannot be listed at start: the CRD is missing or RBAC forbids it.
    #[error(
        "cannot list EdgePipelines (is the CRD installed? `edge-operator crd | kubectl apply -f -`): {0}"
    )]
    CrdNotQueryable(#[source] kube::Error),
}

/// What reconcile needs, shared by every reconcile.
pub struct Context {
    client: Client,
    render: RenderOptions,
    recorder: Recorder,
    metrics: Arc<Metrics>,
    models: Store<PartialObjectMeta<ConfigMap>>,
    daemon_sets: Store<PartialObjectMeta<DaemonSet>>,
    config_maps: Store<PartialObjectMeta<ConfigMap>>,
    applied: Mutex<HashMap<ObjectRef<EdgePipeline>, Applied>>,
    failures: Mutex<HashMap<ObjectRef<EdgePipeline>, u32>>,
}

/// What reconcile last applied for a pipeline, and the versions the API server gave back.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Applied {
    digest: String,
    config_map_version: Option<String>,
    /// The DaemonSet's generation, not its resourceVersion: status updates during a
    /// rollout change the latter and are no reason to apply again.
    daemon_set_generation: Option<i64>,
}

impl Context {
    /// A context; `models` is the cache of model ConfigMaps (metadata only).
    pub fn new(
        client: Client,
        render: RenderOptions,
        reporter: Reporter,
        metrics: Arc<Metrics>,
        models: Store<PartialObjectMeta<ConfigMap>>,
    ) -> Self {
        Self {
            recorder: Recorder::new(client.clone(), reporter),
            client,
            render,
            metrics,
            models,
            daemon_sets: reflector::store().0,
            config_maps: reflector::store().0,
            applied: Mutex::new(HashMap::new()),
            failures: Mutex::new(HashMap::new()),
        }
    }

    /// Gives the context the caches (metadata only) of the DaemonSets and ConfigMaps it
    /// manages, so a reconcile at rest can tell that nothing changed since its last apply.
    /// Without them every reconcile applies.
    pub fn with_owned(
        mut self,
        daemon_sets: Store<PartialObjectMeta<DaemonSet>>,
        config_maps: Store<PartialObjectMeta<ConfigMap>>,
    ) -> Self {
        self.daemon_sets = daemon_sets;
        self.config_maps = config_maps;
        self
    }

    /// Whether `digest` is what was last applied for `key` and the caches show both
    /// objects exactly as the API server returned them then.
    fn unchanged(
        &self,
        key: &ObjectRef<EdgePipeline>,
        namespace: &str,
        child: &str,
        digest: &str,
    ) -> bool {
        let Ok(applied) = self.applied.lock() else {
            return false;
        };
        let Some(last) = applied.get(key) else {
            return false;
        };
        let cached_ds = self
            .daemon_sets
            .get(&ObjectRef::new(child).within(namespace))
            .and_then(|ds| ds.metadata.generation);
        let cached_cm = self
            .config_maps
            .get(&ObjectRef::new(child).within(namespace))
            .and_then(|cm| cm.metadata.resource_version.clone());
        last.digest == digest
            && cached_ds.is_some()
            && cached_ds == last.daemon_set_generation
            && cached_cm.is_some()
            && cached_cm == last.config_map_version
    }

    fn remember(&self, key: ObjectRef<EdgePipeline>, applied: Applied) {
        if let Ok(mut map) = self.applied.lock() {
            if map.len() >= MAX_REMEMBERED_APPLIES && !map.contains_key(&key) {
                map.clear();
            }
            map.insert(key, applied);
        }
    }

    /// The resourceVersion of the model ConfigMap of `pipeline`, if it is in the cache.
    fn model_version(&self, namespace: &str, pipeline: &EdgePipeline) -> Option<String> {
        let cm = pipeline
            .spec
            .inference
            .as_ref()?
            .model
            .config_map
            .as_ref()?;
        let key = ObjectRef::<PartialObjectMeta<ConfigMap>>::new(&cm.name).within(namespace);
        let found = self.models.get(&key);
        if found.is_none() {
            tracing::warn!(
                pipeline = %pipeline.name_any(), %namespace, configmap = %cm.name,
                "model ConfigMap not found among ConfigMaps labelled {MODEL_SELECTOR}; label it so model updates roll the agents"
            );
        }
        found?.metadata.resource_version.clone()
    }

    fn failed(&self, key: ObjectRef<EdgePipeline>) -> u32 {
        let Ok(mut failures) = self.failures.lock() else {
            return 0;
        };
        if failures.len() >= MAX_TRACKED_FAILURES && !failures.contains_key(&key) {
            failures.clear();
        }
        let attempts = failures.entry(key).or_insert(0);
        let attempt = *attempts;
        *attempts = attempts.saturating_add(1);
        attempt
    }

    fn succeeded(&self, key: &ObjectRef<EdgePipeline>) {
        if let Ok(mut failures) = self.failures.lock() {
            failures.remove(key);
        }
    }
}

/// The delay before retry number `attempt` (0-based): 5 s doubling up to 5 min.
pub fn backoff_delay(attempt: u32) -> Duration {
    BACKOFF_MIN
        .checked_mul(2_u32.saturating_pow(attempt.min(16)))
        .unwrap_or(BACKOFF_MAX)
        .min(BACKOFF_MAX)
}

/// Reconciles one pipeline (see the module documentation), recording metrics.
pub async fn reconcile(pipeline: Arc<EdgePipeline>, ctx: Arc<Context>) -> Result<Action, Error> {
    let started = Instant::now();
    let result = apply(&pipeline, &ctx).await;
    let outcome = match &result {
        Ok(_) => {
            ctx.succeeded(&ObjectRef::from_obj(pipeline.as_ref()));
            ReconcileResult::Success
        }
        Err(_) => ReconcileResult::Error,
    };
    ctx.metrics.reconciled(outcome, started.elapsed());
    result
}

/// Retries a failed reconcile after a per-object capped exponential backoff.
pub fn error_policy(pipeline: Arc<EdgePipeline>, error: &Error, ctx: Arc<Context>) -> Action {
    let attempt = ctx.failed(ObjectRef::from_obj(pipeline.as_ref()));
    let delay = backoff_delay(attempt);
    tracing::warn!(
        pipeline = %pipeline.name_any(), namespace = ?pipeline.namespace(), %error,
        retry_in_s = delay.as_secs(), "reconcile failed"
    );
    Action::requeue(delay)
}

async fn apply(pipeline: &EdgePipeline, ctx: &Context) -> Result<Action, Error> {
    let namespace = pipeline.namespace().ok_or(Error::MissingNamespace)?;
    let name = pipeline.name_any();
    let child = agent_name(&name);
    let options = RenderOptions {
        model_version: ctx.model_version(&namespace, pipeline),
        ..ctx.render.clone()
    };
    let daemon_sets: Api<DaemonSet> = Api::namespaced(ctx.client.clone(), &namespace);
    let ssa = PatchParams::apply(FIELD_MANAGER).force();

    let key = ObjectRef::from_obj(pipeline);
    let (errors, daemon_set): (Option<Vec<FieldError>>, Option<DaemonSet>) = match render(
        pipeline, &options,
    ) {
        Ok(rendered) => {
            let digest = rendered.digest().map_err(Error::Render)?;
            if ctx.unchanged(&key, &namespace, &child, &digest) {
                (None, read_daemon_set(&daemon_sets, &child).await?)
            } else {
                let config_maps: Api<ConfigMap> = Api::namespaced(ctx.client.clone(), &namespace);
                let config_map = config_maps
                    .patch(&child, &ssa, &Patch::Apply(&rendered.config_map))
                    .await
                    .map_err(|source| Error::ApplyConfigMap {
                        name: child.clone(),
                        source,
                    })?;
                let applied = daemon_sets
                    .patch(&child, &ssa, &Patch::Apply(&rendered.daemon_set))
                    .await
                    .map_err(|source| Error::ApplyDaemonSet {
                        name: child.clone(),
                        source,
                    })?;
                tracing::debug!(pipeline = %name, %namespace, "applied ConfigMap and DaemonSet");
                ctx.remember(
                    key.clone(),
                    Applied {
                        digest,
                        config_map_version: config_map.metadata.resource_version,
                        daemon_set_generation: applied.metadata.generation,
                    },
                );
                (None, Some(applied))
            }
        }
        Err(RenderError::Invalid(errors)) => {
            (Some(errors), read_daemon_set(&daemon_sets, &child).await?)
        }
        Err(other) => return Err(Error::Render(other)),
    };

    let validation = match &errors {
        Some(errors) => Err(errors.as_slice()),
        None => Ok(()),
    };
    let status = status::compute(pipeline, validation, daemon_set.as_ref(), &now());
    if pipeline.status.as_ref() != Some(&status) {
        let pipelines: Api<EdgePipeline> = Api::namespaced(ctx.client.clone(), &namespace);
        let patch = json!({ "apiVersion": API_VERSION, "kind": KIND, "status": status });
        pipelines
            .patch_status(&name, &ssa, &Patch::Apply(&patch))
            .await
            .map_err(Error::PatchStatus)?;
    }

    let reference = pipeline.object_ref(&());
    for transition in status::transitions(pipeline.status.as_ref(), &status) {
        let event = event_for(&transition, &child);
        if let Err(error) = ctx.recorder.publish(&event, &reference).await {
            tracing::warn!(pipeline = %name, %namespace, %error, reason = %event.reason, "publishing an Event failed");
        }
    }
    Ok(Action::requeue(REQUEUE))
}

/// The DaemonSet `name`, if it exists.
async fn read_daemon_set(api: &Api<DaemonSet>, name: &str) -> Result<Option<DaemonSet>, Error> {
    api.get_opt(name)
        .await
        .map_err(|source| Error::ReadDaemonSet {
            name: name.to_string(),
            source,
        })
}

/// The Event published for a status transition.
pub fn event_for(transition: &Transition, child: &str) -> Event {
    let (type_, reason, action, note) = match transition {
        Transition::Created => (
            EventType::Normal,
            "Created",
            "Apply",
            format!("applied ConfigMap {child} and DaemonSet {child}"),
        ),
        Transition::RolloutComplete { message } => (
            EventType::Normal,
            "RolloutComplete",
            "Rollout",
            message.clone(),
        ),
        Transition::Degraded { message } => {
            (EventType::Warning, "Degraded", "Rollout", message.clone())
        }
        Transition::Invalid { message } => (
            EventType::Warning,
            "Invalid",
            "Validate",
            format!("the running agents are left untouched:\n{message}"),
        ),
    };
    let mut note = note;
    if note.len() > MAX_NOTE {
        let mut end = MAX_NOTE;
        while !note.is_char_boundary(end) {
            end -= 1;
        }
        note.truncate(end);
    }
    Event {
        type_,
        reason: reason.to_string(),
        note: Some(note),
        action: action.to_string(),
        secondary: None,
    }
}

/// The time stamped on changed conditions, to the second (as the API stores it).
fn now() -> Time {
    let now = Timestamp::now();
    Time(Timestamp::from_second(now.as_second()).unwrap_or(now))
}

/// The pipelines (in the cache) whose model is the ConfigMap `cm`.
pub fn pipelines_using_model(
    pipelines: &Store<EdgePipeline>,
    cm: &PartialObjectMeta<ConfigMap>,
) -> Vec<ObjectRef<EdgePipeline>> {
    let (Some(namespace), Some(name)) = (
        cm.metadata.namespace.as_deref(),
        cm.metadata.name.as_deref(),
    ) else {
        return vec![];
    };
    pipelines
        .state()
        .iter()
        .filter(|p| p.metadata.namespace.as_deref() == Some(namespace))
        .filter(|p| {
            p.spec
                .inference
                .as_ref()
                .and_then(|i| i.model.config_map.as_ref())
                .is_some_and(|m| m.name == name)
        })
        .map(|p| ObjectRef::from_obj(p.as_ref()))
        .collect()
}

/// What the controller is configured with.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Watch only this namespace (all namespaces when `None`).
    pub namespace: Option<String>,
    /// Images and defaults of the rendered objects.
    pub render: RenderOptions,
    /// This replica's name in Events (the pod name).
    pub instance: Option<String>,
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
    let pipelines: Api<EdgePipeline> = scoped(&client, ns);
    pipelines
        .list(&ListParams::default().limit(1))
        .await
        .map_err(Error::CrdNotQueryable)?;
    let daemon_sets: Api<PartialObjectMeta<DaemonSet>> = scoped(&client, ns);
    let config_maps: Api<PartialObjectMeta<ConfigMap>> = scoped(&client, ns);
    let config_maps_for_models = config_maps.clone();
    let managed = watcher::Config::default().labels(MANAGED_BY_SELECTOR);

    // Model ConfigMaps are cached (metadata only) before the first reconcile, so a
    // restarted operator computes the same config hashes and rolls nothing.
    let (models, models_writer) = reflector::store();
    let (model_tx, model_rx) = tokio::sync::mpsc::channel(MODEL_EVENTS);
    let model_watch = tokio::spawn(async move {
        let events = reflector::reflector(
            models_writer,
            watcher(
                config_maps_for_models,
                watcher::Config::default().labels(MODEL_SELECTOR),
            ),
        )
        .default_backoff()
        .touched_objects();
        futures::pin_mut!(events);
        while let Some(event) = events.next().await {
            match event {
                Ok(cm) => {
                    if model_tx.send(cm).await.is_err() {
                        break;
                    }
                }
                Err(error) => tracing::warn!(%error, "watching model ConfigMaps failed"),
            }
        }
    });
    tokio::select! {
        _ = stop.cancelled() => {
            model_watch.abort();
            return Ok(());
        }
        synced = models.wait_until_ready() => {
            if synced.is_err() {
                model_watch.abort();
                return Ok(());
            }
        }
    }
    let model_events = futures::stream::unfold(model_rx, |mut rx| async move {
        rx.recv().await.map(|cm| (Ok::<_, watcher::Error>(cm), rx))
    });

    // The EdgePipeline cache; readiness turns true when its first full list is in.
    let (cache, writer) = reflector::store();
    let pipeline_events = watcher(pipelines, watcher::Config::default().any_semantic())
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
            .with_owned(owned_daemon_sets, owned_config_maps),
    );

    let mapper_cache = cache.clone();
    tracing::info!(namespace = ns.unwrap_or("<all>"), "controller starting");
    controller
        .owns_stream(
            watcher(daemon_sets, managed.clone())
                .default_backoff()
                .reflect(daemon_sets_writer)
                .touched_objects(),
        )
        .owns_stream(
            watcher(config_maps, managed)
                .default_backoff()
                .reflect(config_maps_writer)
                .touched_objects(),
        )
        .watches_stream(model_events, move |cm| {
            pipelines_using_model(&mapper_cache, &cm)
        })
        .graceful_shutdown_on(async move { stop.cancelled().await })
        .run(reconcile, error_policy, ctx)
        .for_each(|result| async move {
            if let Err(error) = result {
                tracing::debug!(%error, "controller event");
            }
        })
        .await;
    model_watch.abort();
    metrics.count_pipelines_from(None);
    tracing::info!("controller stopped");
    Ok(())
}

//! The EdgePipeline controller: one idempotent `reconcile`, and the error policy; what
//! it watches is in [`watch`].
//!
//! Reconcile first checks the pipeline against the cluster's tenant policy
//! ([`crate::policy`]), Secrets included. A pipeline outside it gets the `Invalid`
//! condition (reason `ForbiddenByPolicy`) naming each field, a Warning Event, and no
//! agents: its DaemonSet and ConfigMap, if it has them, are deleted (only when this
//! pipeline controls them), so tightening the policy or withdrawing a Secret's opt-in
//! also stops agents that were started before. Then reconcile validates the spec; an
//! invalid one gets the `Invalid` condition and an Event, and its running DaemonSet is
//! left untouched (a typo does not stop a working pipeline). A valid one gets its
//! ConfigMap and DaemonSet server-side applied (field manager `edge-operator`), then its
//! status patched on `/status` when it changed. Events are published only on
//! transitions. Failures are retried with a per-object capped exponential backoff;
//! success requeues every 5 minutes.
//!
//! At rest the operator writes nothing: it remembers what it last applied for each
//! pipeline (a digest of the rendered objects, the ConfigMap's resourceVersion and the
//! DaemonSet's generation the API server answered), and while its caches show both
//! objects unchanged since then, a reconcile only reads the DaemonSet for the status. A
//! new spec or model, an edit of the ConfigMap or of the DaemonSet's spec by anyone, or
//! either leaving the cache makes the next reconcile apply again; the DaemonSet's status
//! moving during a rollout does not.

mod watch;

pub use watch::{Settings, pipelines_using_model, pipelines_using_secret, run};

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use edge_crds::manifest::{API_VERSION, KIND};
use edge_crds::{EdgePipeline, EdgePipelineStatus, FieldError};
use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use k8s_openapi::jiff::Timestamp;
use kube::api::{DeleteParams, Patch, PatchParams, Preconditions, PropagationPolicy};
use kube::core::PartialObjectMeta;
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::{Api, Client, Resource, ResourceExt};
use serde_json::json;

use crate::policy::{self, SECRET_OPT_IN_LABEL, TenantPolicy};
use crate::render::{
    FIELD_MANAGER, MODEL_SELECTOR, RenderError, RenderOptions, agent_name, check, render,
};
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
    /// Deleting the agents of a pipeline outside the tenant policy failed.
    #[error("removing {kind} {name} failed: {source}")]
    Remove {
        /// `DaemonSet` or `ConfigMap`.
        kind: &'static str,
        /// Its name.
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
    policy: TenantPolicy,
    secrets: Store<PartialObjectMeta<Secret>>,
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
            policy: TenantPolicy::default(),
            secrets: reflector::store().0,
        }
    }

    /// Gives the context the tenant policy and the cache (metadata only) of the Secrets
    /// labelled `edgepipe.dev/allow-pipelines=true`. Without them the default policy
    /// applies and no Secret has opted in. The policy also decides whether the rendered
    /// agents keep off control-plane nodes.
    pub fn with_policy(
        mut self,
        policy: TenantPolicy,
        secrets: Store<PartialObjectMeta<Secret>>,
    ) -> Self {
        self.render.avoid_control_plane = !policy.control_plane;
        self.policy = policy;
        self.secrets = secrets;
        self
    }

    /// Whether the Secret `namespace/name` opted in to being used by pipelines.
    fn secret_opted_in(&self, namespace: &str, name: &str) -> bool {
        self.secrets
            .get(&ObjectRef::new(name).within(namespace))
            .is_some_and(|secret| {
                secret
                    .metadata
                    .labels
                    .as_ref()
                    .and_then(|labels| labels.get(SECRET_OPT_IN_LABEL))
                    .is_some_and(|value| value == "true")
            })
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

    fn forget(&self, key: &ObjectRef<EdgePipeline>) {
        if let Ok(mut map) = self.applied.lock() {
            map.remove(key);
        }
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
    let violations = policy::check(&ctx.policy, &pipeline.spec, &|secret| {
        ctx.secret_opted_in(&namespace, secret)
    });
    let status = if violations.is_empty() {
        status_after_apply(pipeline, ctx, &options, &key, &child, &daemon_sets).await?
    } else {
        let mut errors = check(pipeline).err().unwrap_or_default();
        errors.extend(violations);
        ctx.forget(&key);
        remove_agents(pipeline, ctx, &namespace, &child, &daemon_sets).await?;
        status::compute_forbidden(pipeline, &errors, &now())
    };

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

/// For a pipeline within the policy: applies its objects when they changed (or reads the
/// DaemonSet when they did not), or, for an invalid spec, reads the running DaemonSet
/// and leaves it alone; returns the status to write.
async fn status_after_apply(
    pipeline: &EdgePipeline,
    ctx: &Context,
    options: &RenderOptions,
    key: &ObjectRef<EdgePipeline>,
    child: &str,
    daemon_sets: &Api<DaemonSet>,
) -> Result<EdgePipelineStatus, Error> {
    let namespace = pipeline.namespace().ok_or(Error::MissingNamespace)?;
    let name = pipeline.name_any();
    let ssa = PatchParams::apply(FIELD_MANAGER).force();
    let (errors, daemon_set): (Option<Vec<FieldError>>, Option<DaemonSet>) = match render(
        pipeline, options,
    ) {
        Ok(rendered) => {
            let digest = rendered.digest().map_err(Error::Render)?;
            if ctx.unchanged(key, &namespace, child, &digest) {
                (None, read_daemon_set(daemon_sets, child).await?)
            } else {
                let config_maps: Api<ConfigMap> = Api::namespaced(ctx.client.clone(), &namespace);
                let config_map = config_maps
                    .patch(child, &ssa, &Patch::Apply(&rendered.config_map))
                    .await
                    .map_err(|source| Error::ApplyConfigMap {
                        name: child.to_string(),
                        source,
                    })?;
                let applied = daemon_sets
                    .patch(child, &ssa, &Patch::Apply(&rendered.daemon_set))
                    .await
                    .map_err(|source| Error::ApplyDaemonSet {
                        name: child.to_string(),
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
            (Some(errors), read_daemon_set(daemon_sets, child).await?)
        }
        Err(other) => return Err(Error::Render(other)),
    };

    let validation = match &errors {
        Some(errors) => Err(errors.as_slice()),
        None => Ok(()),
    };
    Ok(status::compute(
        pipeline,
        validation,
        daemon_set.as_ref(),
        &now(),
    ))
}

/// Whether `meta` is of an object this pipeline controls (its controller owner reference
/// has the pipeline's uid).
fn controlled_by(meta: &ObjectMeta, pipeline: &EdgePipeline) -> bool {
    let Some(uid) = pipeline.metadata.uid.as_deref() else {
        return false;
    };
    meta.owner_references
        .iter()
        .flatten()
        .any(|owner| owner.controller == Some(true) && owner.uid == uid)
}

/// Deletes the DaemonSet and ConfigMap of a pipeline outside the tenant policy, each
/// only when this pipeline controls it, with its uid as a precondition (so an object
/// recreated meanwhile by someone else is never deleted). The ConfigMap is found in the
/// cache of managed ConfigMaps: one that is not there yet is removed by the reconcile
/// its arrival triggers.
async fn remove_agents(
    pipeline: &EdgePipeline,
    ctx: &Context,
    namespace: &str,
    child: &str,
    daemon_sets: &Api<DaemonSet>,
) -> Result<(), Error> {
    let delete = |uid: Option<String>| DeleteParams {
        preconditions: Some(Preconditions {
            uid,
            resource_version: None,
        }),
        propagation_policy: Some(PropagationPolicy::Background),
        ..DeleteParams::default()
    };
    // Gone already, or replaced by another object: nothing of this pipeline's to delete.
    let gone = |error: &kube::Error| matches!(error, kube::Error::Api(status) if status.code == 404 || status.code == 409);
    if let Some(ds) = read_daemon_set(daemon_sets, child).await?
        && controlled_by(&ds.metadata, pipeline)
    {
        match daemon_sets
            .delete(child, &delete(ds.metadata.uid.clone()))
            .await
        {
            Ok(_) => {
                tracing::info!(pipeline = %pipeline.name_any(), %namespace, "removed the agent DaemonSet of a pipeline outside the tenant policy")
            }
            Err(error) if gone(&error) => {}
            Err(source) => {
                return Err(Error::Remove {
                    kind: "DaemonSet",
                    name: child.to_string(),
                    source,
                });
            }
        }
    }
    if let Some(cm) = ctx
        .config_maps
        .get(&ObjectRef::new(child).within(namespace))
        && controlled_by(&cm.metadata, pipeline)
    {
        let config_maps: Api<ConfigMap> = Api::namespaced(ctx.client.clone(), namespace);
        match config_maps
            .delete(child, &delete(cm.metadata.uid.clone()))
            .await
        {
            Ok(_) => {}
            Err(error) if gone(&error) => {}
            Err(source) => {
                return Err(Error::Remove {
                    kind: "ConfigMap",
                    name: child.to_string(),
                    source,
                });
            }
        }
    }
    Ok(())
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
        Transition::Forbidden { message } => (
            EventType::Warning,
            status::reason::FORBIDDEN_BY_POLICY,
            "Validate",
            format!("outside the cluster's tenant policy; its agents are removed:\n{message}"),
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

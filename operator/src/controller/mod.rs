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
//! ConfigMap (the immutable, content-named revision of its configuration) and DaemonSet
//! server-side applied (field manager `edge-operator`), unless an object of that name is
//! not this pipeline's ([`children`]: the `Conflict` condition, nothing written); an
//! apply the API server refuses gives `Degraded` with reason `ApplyFailed` and its
//! message, and is retried. Before rendering, reconcile reads the Secrets the pipeline
//! references (only once they opted in) and hashes the referenced keys' values into the
//! pod template ([`crate::render::secrets_digest`]), so a rotation rolls the agents; a
//! missing Secret or key gives `Degraded` with reason `SecretMissing` naming it, nothing
//! is applied and the running agents keep their configuration. Revisions that neither
//! the DaemonSet's template nor any of the pipeline's pods mount are deleted. Then the
//! status is computed from the
//! DaemonSet, the agent pods and their nodes (offline nodes count apart, see
//! [`crate::status`]) and patched on `/status` when it changed ([`report`]). Events are
//! published only on transitions. Failures are retried with a per-object capped
//! exponential backoff; success requeues every 5 minutes, or sooner when a rollout's
//! progress deadline comes first.
//!
//! At rest the operator writes nothing: it remembers what it last applied for each
//! pipeline (a digest of the rendered objects, the ConfigMap's resourceVersion and the
//! DaemonSet's generation the API server answered), and while its caches show both
//! objects unchanged since then, a reconcile only reads the referenced Secrets and the
//! DaemonSet for the status. A new spec, model or Secret value, an edit of the DaemonSet's spec by anyone, or either object
//! leaving the cache makes the next reconcile apply again; the DaemonSet's status moving
//! during a rollout does not.

/// Implements `kube::Resource` for `$cached`, a form in which the controller decodes and
/// caches objects of the API type `$api` (fewer fields, or some left undecoded): the same
/// kind, group, version and plural, and its own `metadata`.
macro_rules! resource_as {
    ($cached:ty, $api:ty) => {
        impl kube::Resource for $cached {
            type DynamicType = ();
            type Scope = k8s_openapi::NamespaceResourceScope;

            fn kind(dt: &()) -> std::borrow::Cow<'_, str> {
                <$api as kube::Resource>::kind(dt)
            }

            fn group(dt: &()) -> std::borrow::Cow<'_, str> {
                <$api as kube::Resource>::group(dt)
            }

            fn version(dt: &()) -> std::borrow::Cow<'_, str> {
                <$api as kube::Resource>::version(dt)
            }

            fn plural(dt: &()) -> std::borrow::Cow<'_, str> {
                <$api as kube::Resource>::plural(dt)
            }

            fn meta(&self) -> &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
                &self.metadata
            }

            fn meta_mut(
                &mut self,
            ) -> &mut k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
                &mut self.metadata
            }
        }
    };
}

mod children;
mod disarm;
mod fleet;
mod models;
mod records;
mod report;
mod settle;
mod stored;
mod watch;
mod waves;

pub use children::{Holder, conflict_message, holder, unused_revisions};
pub use fleet::{
    CachedPod, OfflineChanges, pipeline_of_pod, pipelines_on_node, revision_of_pod, summarize_node,
    summarize_pod,
};
pub use models::{MODEL_DIGEST, content_digest, summarize};
pub use records::{CachedLease, pipeline_of_lease, summarize_lease};
pub use report::event_for;
use report::write_status;
pub use stored::{JsonText, StoredPipeline};
pub use watch::{Settings, pipelines_using_model, pipelines_using_secret, run};

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use edge_crds::{EdgePipeline, EdgePipelineStatus, FieldError};
use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{ConfigMap, Node, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::{GetParams, Patch, PatchParams};
use kube::core::PartialObjectMeta;
use kube::runtime::controller::Action;
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::{Api, Client, Resource, ResourceExt};

use crate::policy::{self, SECRET_OPT_IN_LABEL, TenantPolicy};
use crate::render::{
    FIELD_MANAGER, MODEL_SELECTOR, RenderError, RenderOptions, SecretMissing, agent_name, check,
    referenced_secrets, render, secrets_digest,
};
use crate::status::{self, Blocked};
use crate::telemetry::{Metrics, ReconcileResult};

/// How often a healthy pipeline is reconciled again.
pub const REQUEUE: Duration = Duration::from_secs(5 * 60);
/// First retry delay after a failed reconcile.
pub const BACKOFF_MIN: Duration = Duration::from_secs(5);
/// Longest retry delay.
pub const BACKOFF_MAX: Duration = Duration::from_secs(5 * 60);
/// How often a pipeline in conflict looks again whether the object in its way is gone
/// (such an object is not among the watched ones), and one missing a Secret key whether
/// it is there (besides the Secret's change reaching it through the watch).
pub const CONFLICT_RECHECK: Duration = Duration::from_secs(30);
/// Reconciles running at once. A reconcile mostly waits for the API server (a few
/// writes, each a round trip), so a fleet created at once is reconciled faster with more
/// of them in flight: B9 (1,000 pipelines) took 150 s with 4, all of it waiting.
const CONCURRENCY: u16 = 16;
/// Upper bound on the objects whose failure count is remembered.
const MAX_TRACKED_FAILURES: usize = 4096;
/// Upper bound on the pipelines whose last apply is remembered (a few hundred bytes each;
/// entries of deleted pipelines are only dropped when the bound clears the map, which
/// costs one no-op apply per pipeline).
const MAX_REMEMBERED_APPLIES: usize = 16_384;

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
    /// Server-side apply of the agents' ServiceAccount or its RoleBinding failed.
    #[error("applying {kind} {name} failed: {source}")]
    ApplyAccess {
        /// `ServiceAccount` or `RoleBinding`.
        kind: &'static str,
        /// Its name.
        name: String,
        /// API error.
        source: kube::Error,
    },
    /// Reading the metadata of one of the agent's objects (who controls it) failed.
    #[error("reading {kind} {name} failed: {source}")]
    ReadObject {
        /// `ConfigMap`, `DaemonSet`, `ServiceAccount` or `RoleBinding`.
        kind: &'static str,
        /// Its name.
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
    /// Reading a referenced Secret (to hash the referenced keys' values) failed.
    #[error("reading Secret {name} failed: {source}")]
    ReadSecret {
        /// The Secret's name.
        name: String,
        /// API error.
        source: kube::Error,
    },
    /// Deleting the agents of a pipeline outside the tenant policy, or an outdated agent
    /// pod a rollout replaces, failed.
    #[error("removing {kind} {name} failed: {source}")]
    Remove {
        /// `DaemonSet`, `ConfigMap` or `Pod`.
        kind: &'static str,
        /// Its name.
        name: String,
        /// API error.
        source: kube::Error,
    },
    /// Listing the canary nodes of a rollout (by their labels) failed.
    #[error("listing the canary nodes failed: {0}")]
    ListNodes(#[source] kube::Error),
    /// Adding or releasing the fallback finalizer failed.
    #[error("updating the finalizers failed: {0}")]
    Finalizer(#[source] kube::Error),
    /// Creating the Job that disarms a node's fallback failed.
    #[error("creating the disarm Job for node {node} failed: {source}")]
    Disarm {
        /// The node.
        node: String,
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
    pods: Store<CachedPod>,
    nodes: Store<Node>,
    leases: Store<CachedLease>,
    settling: settle::Settling,
    /// The operator's own namespace (disarm Jobs go there), when known.
    own_namespace: Option<String>,
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
            pods: reflector::store().0,
            nodes: reflector::store().0,
            leases: reflector::store().0,
            settling: settle::Settling::default(),
            own_namespace: None,
        }
    }

    /// Gives the context the caches of the agent pods (labelled
    /// `app.kubernetes.io/managed-by=edge-operator`) and of the nodes, both reduced to
    /// what the status and the removal of old revisions need. Without them no node counts
    /// as offline and no revision is ever removed.
    pub fn with_fleet(mut self, pods: Store<CachedPod>, nodes: Store<Node>) -> Self {
        self.pods = pods;
        self.nodes = nodes;
        self
    }

    /// The operator's own namespace: where the Jobs disarming a deleted pipeline's node
    /// fallbacks run (without it, in the pipeline's namespace).
    pub fn with_own_namespace(mut self, namespace: Option<String>) -> Self {
        self.own_namespace = namespace;
        self
    }

    /// Gives the context the cache of the agents' fleet records
    /// ([`records::summarize_lease`]). Without it no pipeline has `status.fleet`.
    pub fn with_records(mut self, leases: Store<CachedLease>) -> Self {
        self.leases = leases;
        self
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
        revision: &str,
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
            .get(&ObjectRef::new(revision).within(namespace))
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

    /// The version of the model ConfigMap of `pipeline` (the digest of its content), if it
    /// is in the cache.
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
        models::digest_of(found?.as_ref())
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

/// Reconciles one pipeline as the API server stores it, at most once a second while its
/// spec does not change (see [`settle`]): decoded with the strict API types, it is
/// reconciled by [`reconcile`]; one that does not decode (a field this
/// operator does not know) gets the `Invalid` condition naming the field and an Event,
/// and its running agents are left untouched.
pub async fn reconcile_stored(
    stored: Arc<StoredPipeline>,
    ctx: Arc<Context>,
) -> Result<Action, Error> {
    // Deleted: only the fallback finalizer is this operator's to act on.
    if stored.metadata.deletion_timestamp.is_some() {
        return disarm::on_delete(&stored.metadata, &ctx).await;
    }
    let generation = stored.metadata.generation;
    if let Some(wait) = ctx
        .settling
        .defer(&key_of(&stored), generation, Instant::now())
    {
        return Ok(Action::requeue(wait));
    }
    let error = match stored.decode() {
        Ok(pipeline) => return reconcile(Arc::new(pipeline), ctx).await,
        Err(error) => error,
    };
    let started = Instant::now();
    let result = report::undecodable(&stored, &error, &ctx).await;
    let outcome = match &result {
        Ok(_) => {
            ctx.succeeded(&key_of(&stored));
            ReconcileResult::Success
        }
        Err(_) => ReconcileResult::Error,
    };
    ctx.metrics.reconciled(outcome, started.elapsed());
    result
}

/// The key a stored pipeline's failures are counted under.
fn key_of(stored: &StoredPipeline) -> ObjectRef<EdgePipeline> {
    let key = ObjectRef::new(&stored.name_any());
    match stored.namespace() {
        Some(namespace) => key.within(&namespace),
        None => key,
    }
}

/// Retries a failed reconcile after a per-object capped exponential backoff.
pub fn error_policy(pipeline: Arc<EdgePipeline>, error: &Error, ctx: Arc<Context>) -> Action {
    retry(ObjectRef::from_obj(pipeline.as_ref()), error, &ctx)
}

/// [`error_policy`] for the controller, which watches pipelines as stored.
pub fn error_policy_stored(
    stored: Arc<StoredPipeline>,
    error: &Error,
    ctx: Arc<Context>,
) -> Action {
    retry(key_of(&stored), error, &ctx)
}

fn retry(key: ObjectRef<EdgePipeline>, error: &Error, ctx: &Context) -> Action {
    let (name, namespace) = (key.name.clone(), key.namespace.clone());
    let attempt = ctx.failed(key);
    let delay = backoff_delay(attempt);
    tracing::warn!(
        pipeline = %name, namespace = ?namespace, %error,
        retry_in_s = delay.as_secs(), "reconcile failed"
    );
    Action::requeue(delay)
}

async fn apply(pipeline: &EdgePipeline, ctx: &Context) -> Result<Action, Error> {
    let namespace = pipeline.namespace().ok_or(Error::MissingNamespace)?;
    let name = pipeline.name_any();
    let child = agent_name(&name);
    if ctx.render.fallback.is_some() {
        disarm::ensure_finalizer(&pipeline.metadata, ctx).await?;
    }
    let mut options = RenderOptions {
        model_version: ctx.model_version(&namespace, pipeline),
        ..ctx.render.clone()
    };
    let daemon_sets: Api<DaemonSet> = Api::namespaced(ctx.client.clone(), &namespace);

    let key = ObjectRef::from_obj(pipeline);
    let violations = policy::check(&ctx.policy, &pipeline.spec, &|secret| {
        ctx.secret_opted_in(&namespace, secret)
    });
    let outcome = if violations.is_empty() {
        match referenced_secrets_digest(pipeline, ctx, &namespace).await? {
            Ok(digest) => {
                options.secrets_digest = digest;
                status_after_apply(pipeline, ctx, &options, &key, &child, &daemon_sets).await?
            }
            Err(missing) => {
                let message = missing
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join("; ");
                tracing::debug!(pipeline = %name, %namespace, %message, "a referenced Secret key is missing");
                let blocked = Blocked::SecretMissing { message };
                Outcome::Waiting(status::compute_blocked(pipeline, &blocked, &now()))
            }
        }
    } else {
        let mut errors = check(pipeline).err().unwrap_or_default();
        errors.extend(violations);
        ctx.forget(&key);
        children::remove_agents(pipeline, ctx, &namespace, &child, &daemon_sets).await?;
        Outcome::Done(status::compute_forbidden(pipeline, &errors, &now()), None)
    };

    let (status, result) = match outcome {
        Outcome::Done(status, recheck) => {
            let next = status::stall_check_in(&status, pipeline.spec.progress_deadline(), &now())
                .into_iter()
                .chain(recheck)
                .fold(REQUEUE, Duration::min);
            (status, Ok(Action::requeue(next)))
        }
        Outcome::Waiting(status) => (status, Ok(Action::requeue(CONFLICT_RECHECK))),
        Outcome::Failed(status, error) => (status, Err(error)),
    };
    write_status(
        ctx,
        &namespace,
        &name,
        pipeline.status.as_ref(),
        &status,
        &pipeline.object_ref(&()),
        &child,
    )
    .await?;
    result
}

/// What a reconcile of a pipeline within the policy comes to: the status to write, and
/// whether it failed (and is retried with backoff) or waits for a conflict to go away or
/// a missing Secret key to appear.
enum Outcome {
    /// The status, and when a fleet record expires (if one does before the next requeue).
    Done(EdgePipelineStatus, Option<Duration>),
    Waiting(EdgePipelineStatus),
    Failed(EdgePipelineStatus, Error),
}

/// The digest of the Secret keys a valid `pipeline` references ([`secrets_digest`]):
/// `Ok(None)` when it references none (or is invalid: rendering reports that), `Err`
/// naming each missing Secret or key. Each referenced Secret is read whole (RBAC has no
/// finer grain than the object); its data lives only until it is hashed, and is never
/// logged, cached or written anywhere.
async fn referenced_secrets_digest(
    pipeline: &EdgePipeline,
    ctx: &Context,
    namespace: &str,
) -> Result<Result<Option<String>, Vec<SecretMissing>>, Error> {
    if check(pipeline).is_err() {
        return Ok(Ok(None));
    }
    let Ok(mounts) = referenced_secrets(&pipeline.spec) else {
        return Ok(Ok(None));
    };
    if mounts.is_empty() {
        return Ok(Ok(None));
    }
    let api: Api<Secret> = Api::namespaced(ctx.client.clone(), namespace);
    let mut secrets = std::collections::BTreeMap::new();
    for mount in &mounts {
        let found = api
            .get_opt(&mount.secret)
            .await
            .map_err(|source| Error::ReadSecret {
                name: mount.secret.clone(),
                source,
            })?;
        if let Some(secret) = found {
            secrets.insert(mount.secret.clone(), secret);
        }
    }
    Ok(secrets_digest(&mounts, &secrets).map(Some))
}

/// The message of an apply the API server refused (an admission policy's or webhook's,
/// a quota's...), or the error itself when the API server did not answer.
fn refusal(error: &kube::Error) -> String {
    match error {
        kube::Error::Api(status) if !status.message.is_empty() => status.message.clone(),
        other => other.to_string(),
    }
}

/// For a pipeline within the policy: applies its objects when they changed (or reads the
/// DaemonSet when they did not), or, for an invalid spec, reads the running DaemonSet
/// and leaves it alone; returns the status to write. Objects of the agent's name that are
/// not this pipeline's are never applied (a conflict); an apply the API server refuses
/// gives `Degraded` with reason `ApplyFailed` and is retried.
async fn status_after_apply(
    pipeline: &EdgePipeline,
    ctx: &Context,
    options: &RenderOptions,
    key: &ObjectRef<EdgePipeline>,
    child: &str,
    daemon_sets: &Api<DaemonSet>,
) -> Result<Outcome, Error> {
    let namespace = pipeline.namespace().ok_or(Error::MissingNamespace)?;
    let name = pipeline.name_any();
    let ssa = PatchParams::apply(FIELD_MANAGER).force();
    let (errors, daemon_set): (Option<Vec<FieldError>>, Option<DaemonSet>) = match render(
        pipeline, options,
    ) {
        Ok(rendered) => {
            let digest = rendered.digest().map_err(Error::Render)?;
            let revision = rendered
                .config_map
                .metadata
                .name
                .clone()
                .unwrap_or_default();
            if ctx.unchanged(key, &namespace, child, &revision, &digest) {
                (None, observe_daemon_set(daemon_sets, child).await?)
            } else {
                // Every object of the agent's name must be absent or this pipeline's.
                let access = rendered
                    .access
                    .as_ref()
                    .and_then(|(account, _)| account.metadata.name.as_deref());
                let conflict =
                    match children::conflict(pipeline, ctx, &namespace, &revision, child).await? {
                        None => match access {
                            Some(access) => {
                                children::access_conflict(pipeline, ctx, &namespace, access).await?
                            }
                            None => None,
                        },
                        found => found,
                    };
                if let Some(message) = conflict {
                    ctx.forget(key);
                    let blocked = Blocked::Conflict { message };
                    return Ok(Outcome::Waiting(status::compute_blocked(
                        pipeline,
                        &blocked,
                        &now(),
                    )));
                }
                let failed = |message: String, error: Error| {
                    tracing::debug!(pipeline = %name, %namespace, %message, "the API server refused an apply");
                    let blocked = Blocked::ApplyFailed { message };
                    Outcome::Failed(status::compute_blocked(pipeline, &blocked, &now()), error)
                };
                if let Some((account, binding)) = &rendered.access {
                    let access = access.unwrap_or_default();
                    let applied = match apply_access(ctx, &namespace, access, account).await {
                        Ok(()) => apply_access(ctx, &namespace, access, binding).await,
                        failure => failure,
                    };
                    if let Err((message, error)) = applied {
                        return Ok(failed(message, error));
                    }
                }
                let config_maps: Api<ConfigMap> = Api::namespaced(ctx.client.clone(), &namespace);
                let config_map = match config_maps
                    .patch(&revision, &ssa, &Patch::Apply(&rendered.config_map))
                    .await
                {
                    Ok(applied) => applied,
                    Err(source) => {
                        let message = refusal(&source);
                        let name = revision.clone();
                        return Ok(failed(message, Error::ApplyConfigMap { name, source }));
                    }
                };
                let applied = match daemon_sets
                    .patch(child, &ssa, &Patch::Apply(&rendered.daemon_set))
                    .await
                {
                    Ok(applied) => applied,
                    Err(source) => {
                        let message = refusal(&source);
                        let name = child.to_string();
                        return Ok(failed(message, Error::ApplyDaemonSet { name, source }));
                    }
                };
                tracing::debug!(pipeline = %name, %namespace, configmap = %revision, "applied the configuration revision and the DaemonSet");
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

    if let Some(ds) = daemon_set
        .as_ref()
        .filter(|ds| children::controlled_by(&ds.metadata, pipeline))
    {
        // A revision left behind is removed by a later reconcile; the status comes first.
        if let Err(error) = children::collect_revisions(pipeline, ctx, &namespace, ds).await {
            tracing::warn!(pipeline = %name, %namespace, %error, "removing unused configuration revisions failed");
        }
    }
    let validation = match &errors {
        Some(errors) => Err(errors.as_slice()),
        None => Ok(()),
    };
    let fleet = ctx.fleet(&namespace, &name);
    let now = now();
    let mut status = status::compute_fleet(pipeline, validation, daemon_set.as_ref(), &fleet, &now);
    let nodes = fleet
        .agents
        .iter()
        .filter_map(|agent| agent.node.as_deref())
        .collect();
    let records = ctx.records(&namespace, &name, &nodes);
    let at = now.0.as_second();
    status.fleet = status::fleet::summarize(&records, &fleet.offline_nodes, at);
    // Looked at again when a record would expire, so a silent agent counts as offline.
    let expiry = status::fleet::next_expiry(&records, at)
        .map(|expiry| Duration::from_secs(u64::try_from(expiry - at).unwrap_or(0) + 1));
    // The rollout goes on only for a valid spec applied to this pipeline's DaemonSet.
    let step = match daemon_set
        .as_ref()
        .filter(|ds| errors.is_none() && children::controlled_by(&ds.metadata, pipeline))
    {
        Some(ds) => ctx.drive_rollout(pipeline, ds, &mut status, &now).await?,
        None => None,
    };
    let recheck = [expiry, step].into_iter().flatten().min();
    Ok(Outcome::Done(status, recheck))
}

/// Server-side applies one of the agents' access objects (the ServiceAccount or its
/// RoleBinding, both named `name`); a refusal comes with the API server's message.
async fn apply_access<K>(
    ctx: &Context,
    namespace: &str,
    name: &str,
    object: &K,
) -> Result<(), (String, Error)>
where
    K: k8s_openapi::Resource
        + Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + serde::Serialize
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
{
    let api: Api<K> = Api::namespaced(ctx.client.clone(), namespace);
    let ssa = PatchParams::apply(FIELD_MANAGER).force();
    match api.patch(name, &ssa, &Patch::Apply(object)).await {
        Ok(_) => Ok(()),
        Err(source) => Err((
            refusal(&source),
            Error::ApplyAccess {
                kind: <K as k8s_openapi::Resource>::KIND,
                name: name.to_string(),
                source,
            },
        )),
    }
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

/// The DaemonSet `name`, if it exists, as the API server's watch cache has it
/// (`resourceVersion=0`: no quorum read from etcd). For the status of a pipeline whose
/// objects are unchanged, which is reconciled because a watch event from that same cache
/// said its DaemonSet or agents changed: the cache is at least as new as that event.
async fn observe_daemon_set(api: &Api<DaemonSet>, name: &str) -> Result<Option<DaemonSet>, Error> {
    match api.get_with(name, &GetParams::any()).await {
        Ok(daemon_set) => Ok(Some(daemon_set)),
        Err(kube::Error::Api(status)) if status.is_not_found() => Ok(None),
        Err(source) => Err(Error::ReadDaemonSet {
            name: name.to_string(),
            source,
        }),
    }
}

/// The time stamped on changed conditions, to the second (as the API stores it).
fn now() -> Time {
    let now = Timestamp::now();
    Time(Timestamp::from_second(now.as_second()).unwrap_or(now))
}

//! The agent's ConfigMaps (its configuration revisions) and DaemonSet as objects a
//! pipeline controls, or not, and the removal of revisions no pod uses any more.
//!
//! The operator only ever writes or deletes an object whose controller owner reference
//! is the pipeline (same uid). An object with the agent's name that has another
//! controller, or none at all, is someone else's: the pipeline gets the `Conflict`
//! condition naming it and the object is left untouched. Unowned objects are not adopted
//! either: nothing tells a ConfigMap created by hand (or by a GitOps tool, or left
//! behind by `kubectl delete --cascade=orphan`) from one the user still relies on, and a
//! server-side apply with `force` would silently take over its fields. Deleting the
//! object (or renaming the pipeline) resolves the conflict; the operator checks again
//! every [`super::CONFLICT_RECHECK`].
//!
//! Before an apply the operator looks in its caches of the objects it manages (labelled
//! `app.kubernetes.io/managed-by=edge-operator`); only an object that is not there as
//! this pipeline's costs a read of its metadata.

use std::collections::BTreeSet;
use std::sync::Arc;

use edge_crds::EdgePipeline;
use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{ConfigMap, ServiceAccount};
use k8s_openapi::api::rbac::v1::RoleBinding;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{DeleteParams, Preconditions, PropagationPolicy};
use kube::core::PartialObjectMeta;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Api, Resource, ResourceExt};

use super::{Context, Error, read_daemon_set};
use crate::render::mounted_revision;

/// Who holds an object with the agent's name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Holder {
    /// No such object.
    Absent,
    /// This pipeline controls it.
    This,
    /// Another controller (`Kind/name`), or none.
    Other {
        /// The controller owner reference, as `Kind/name`, if any.
        controller: Option<String>,
    },
}

/// Who holds the object with metadata `meta` (`None`: it does not exist), for the
/// pipeline of uid `pipeline_uid`.
pub fn holder(meta: Option<&ObjectMeta>, pipeline_uid: Option<&str>) -> Holder {
    let Some(meta) = meta else {
        return Holder::Absent;
    };
    let controller = meta
        .owner_references
        .iter()
        .flatten()
        .find(|owner| owner.controller == Some(true));
    match controller {
        Some(owner) if Some(owner.uid.as_str()) == pipeline_uid => Holder::This,
        Some(owner) => Holder::Other {
            controller: Some(format!("{}/{}", owner.kind, owner.name)),
        },
        None => Holder::Other { controller: None },
    }
}

/// The Conflict message for `kind namespace/name` held by `holder`, if it is not this
/// pipeline's.
pub fn conflict_message(
    kind: &str,
    namespace: &str,
    name: &str,
    holder: &Holder,
) -> Option<String> {
    let Holder::Other { controller } = holder else {
        return None;
    };
    let whose = match controller {
        Some(controller) => format!("is controlled by {controller}"),
        None => "has no controller owner reference to this pipeline".to_string(),
    };
    Some(format!(
        "{kind} {namespace}/{name} already exists and {whose}; the operator leaves it untouched. Delete it (or rename the pipeline) to let the operator create its own"
    ))
}

/// Whether `meta` is of an object this pipeline controls (its controller owner reference
/// has the pipeline's uid).
pub fn controlled_by(meta: &ObjectMeta, pipeline: &EdgePipeline) -> bool {
    pipeline.metadata.uid.is_some()
        && holder(Some(meta), pipeline.metadata.uid.as_deref()) == Holder::This
}

/// The Conflict message when the ConfigMap `revision` or the DaemonSet named `child`
/// exists and is not this pipeline's; `None` when both are absent or this pipeline's.
pub async fn conflict(
    pipeline: &EdgePipeline,
    ctx: &Context,
    namespace: &str,
    revision: &str,
    child: &str,
) -> Result<Option<String>, Error> {
    let uid = pipeline.metadata.uid.as_deref();
    let config_maps: Api<ConfigMap> = Api::namespaced(ctx.client.clone(), namespace);
    let config_map = metadata(&ctx.config_maps, &config_maps, namespace, revision, uid)
        .await
        .map_err(|source| Error::ReadObject {
            kind: "ConfigMap",
            name: revision.to_string(),
            source,
        })?;
    if let Some(message) = conflict_message(
        "ConfigMap",
        namespace,
        revision,
        &holder(config_map.as_ref(), uid),
    ) {
        return Ok(Some(message));
    }
    let daemon_sets: Api<DaemonSet> = Api::namespaced(ctx.client.clone(), namespace);
    let daemon_set = metadata(&ctx.daemon_sets, &daemon_sets, namespace, child, uid)
        .await
        .map_err(|source| Error::ReadObject {
            kind: "DaemonSet",
            name: child.to_string(),
            source,
        })?;
    Ok(conflict_message(
        "DaemonSet",
        namespace,
        child,
        &holder(daemon_set.as_ref(), uid),
    ))
}

/// The Conflict message when the agents' ServiceAccount or RoleBinding (both named
/// `name`) exists and is not this pipeline's. Read from the API server (they are not
/// cached): this runs only when the pipeline's objects are applied.
pub async fn access_conflict(
    pipeline: &EdgePipeline,
    ctx: &Context,
    namespace: &str,
    name: &str,
) -> Result<Option<String>, Error> {
    let uid = pipeline.metadata.uid.as_deref();
    let read = |kind: &'static str| {
        move |source| Error::ReadObject {
            kind,
            name: name.to_string(),
            source,
        }
    };
    let accounts: Api<ServiceAccount> = Api::namespaced(ctx.client.clone(), namespace);
    let account = accounts
        .get_metadata_opt(name)
        .await
        .map_err(read("ServiceAccount"))?;
    if let Some(message) = conflict_message(
        "ServiceAccount",
        namespace,
        name,
        &holder(account.as_ref().map(|a| &a.metadata), uid),
    ) {
        return Ok(Some(message));
    }
    let bindings: Api<RoleBinding> = Api::namespaced(ctx.client.clone(), namespace);
    let binding = bindings
        .get_metadata_opt(name)
        .await
        .map_err(read("RoleBinding"))?;
    Ok(conflict_message(
        "RoleBinding",
        namespace,
        name,
        &holder(binding.as_ref().map(|b| &b.metadata), uid),
    ))
}

/// The metadata of `namespace/name`: from the cache when it shows the object as this
/// pipeline's, read from the API server otherwise.
async fn metadata<K>(
    cache: &Store<PartialObjectMeta<K>>,
    api: &Api<K>,
    namespace: &str,
    name: &str,
    uid: Option<&str>,
) -> Result<Option<ObjectMeta>, kube::Error>
where
    K: Resource<DynamicType = ()> + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    if let Some(cached) = cache.get(&ObjectRef::new(name).within(namespace))
        && holder(Some(&cached.metadata), uid) == Holder::This
    {
        return Ok(Some(cached.metadata.clone()));
    }
    Ok(api
        .get_metadata_opt(name)
        .await?
        .map(|object| object.metadata))
}

/// Deletes the DaemonSet and ConfigMaps of a pipeline outside the tenant policy, each
/// only when this pipeline controls it, with its uid as a precondition (so an object
/// recreated meanwhile by someone else is never deleted). The ConfigMaps are found in
/// the cache of managed ConfigMaps: one that is not there yet is removed by the
/// reconcile its arrival triggers.
pub async fn remove_agents(
    pipeline: &EdgePipeline,
    ctx: &Context,
    namespace: &str,
    child: &str,
    daemon_sets: &Api<DaemonSet>,
) -> Result<(), Error> {
    if let Some(ds) = read_daemon_set(daemon_sets, child).await?
        && controlled_by(&ds.metadata, pipeline)
        && delete_exact(
            daemon_sets,
            "DaemonSet",
            child,
            ds.metadata.uid.clone(),
            Some(PropagationPolicy::Background),
        )
        .await?
    {
        tracing::info!(pipeline = %pipeline.name_any(), %namespace, "removed the agent DaemonSet of a pipeline outside the tenant policy");
    }
    for cm in owned_config_maps(ctx, pipeline, namespace) {
        let Some(name) = cm.metadata.name.clone() else {
            continue;
        };
        let config_maps: Api<ConfigMap> = Api::namespaced(ctx.client.clone(), namespace);
        delete_exact(
            &config_maps,
            "ConfigMap",
            &name,
            cm.metadata.uid.clone(),
            Some(PropagationPolicy::Background),
        )
        .await?;
    }
    Ok(())
}

/// Deletes `name` if it is still the object with `uid` (with `propagation` for its
/// dependents, if given): `Ok(true)` when deleted, `Ok(false)` when it is gone already or was replaced by another
/// object (404, 409): nothing of this pipeline's to delete.
async fn delete_exact<K>(
    api: &Api<K>,
    kind: &'static str,
    name: &str,
    uid: Option<String>,
    propagation: Option<PropagationPolicy>,
) -> Result<bool, Error>
where
    K: Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let params = DeleteParams {
        preconditions: Some(Preconditions {
            uid,
            resource_version: None,
        }),
        propagation_policy: propagation,
        ..DeleteParams::default()
    };
    match api.delete(name, &params).await {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(status)) if status.code == 404 || status.code == 409 => Ok(false),
        Err(source) => Err(Error::Remove {
            kind,
            name: name.to_string(),
            source,
        }),
    }
}

/// The ConfigMaps in the cache of managed ones that this pipeline controls: its
/// configuration revisions (and the mutable `<name>-agent` of operators before them).
fn owned_config_maps(
    ctx: &Context,
    pipeline: &EdgePipeline,
    namespace: &str,
) -> Vec<Arc<PartialObjectMeta<ConfigMap>>> {
    ctx.config_maps
        .state()
        .into_iter()
        .filter(|cm| {
            cm.metadata.namespace.as_deref() == Some(namespace)
                && controlled_by(&cm.metadata, pipeline)
        })
        .collect()
}

/// The configuration revisions of a pipeline to delete: those it controls, other than
/// the one the DaemonSet's template mounts, that no pod in `in_use` (the revisions the
/// pipeline's pods mount) still reads. Nothing while the DaemonSet controller has not
/// seen the current template (it may still create pods of the previous one).
pub fn unused_revisions(
    owned: &[String],
    daemon_set: &DaemonSet,
    in_use: &BTreeSet<String>,
) -> Vec<String> {
    let observed = match (
        daemon_set.metadata.generation,
        daemon_set
            .status
            .as_ref()
            .and_then(|s| s.observed_generation),
    ) {
        (Some(generation), Some(observed)) => observed >= generation,
        _ => false,
    };
    let current = daemon_set
        .spec
        .as_ref()
        .and_then(|s| s.template.spec.as_ref())
        .and_then(mounted_revision);
    let Some(current) = current.filter(|_| observed) else {
        return vec![];
    };
    owned
        .iter()
        .filter(|name| name.as_str() != current && !in_use.contains(*name))
        .cloned()
        .collect()
}

/// Deletes the configuration revisions of a pipeline that no pod uses any more (see
/// [`unused_revisions`]), each with its uid as a precondition. The pods are the ones in
/// the operator's cache of agent pods.
pub async fn collect_revisions(
    pipeline: &EdgePipeline,
    ctx: &Context,
    namespace: &str,
    daemon_set: &DaemonSet,
) -> Result<(), Error> {
    let owned = owned_config_maps(ctx, pipeline, namespace);
    if owned.len() < 2 {
        return Ok(());
    }
    let in_use: BTreeSet<String> = ctx
        .agent_pods(namespace, &pipeline.name_any())
        .iter()
        .filter_map(|pod| super::revision_of_pod(pod))
        .map(str::to_string)
        .collect();
    let names: Vec<String> = owned
        .iter()
        .filter_map(|cm| cm.metadata.name.clone())
        .collect();
    let config_maps: Api<ConfigMap> = Api::namespaced(ctx.client.clone(), namespace);
    for name in unused_revisions(&names, daemon_set, &in_use) {
        let uid = owned
            .iter()
            .find(|cm| cm.metadata.name.as_deref() == Some(name.as_str()))
            .and_then(|cm| cm.metadata.uid.clone());
        if delete_exact(&config_maps, "ConfigMap", &name, uid, None).await? {
            tracing::info!(pipeline = %pipeline.name_any(), %namespace, configmap = %name, "deleted a configuration revision no agent uses any more");
        }
    }
    Ok(())
}

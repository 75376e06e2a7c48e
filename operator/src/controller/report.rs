//! How a reconcile reports what it found: the status, server-side applied on `/status`
//! (field manager `edge-operator`) only when it changed, and an Event for each transition
//! worth one (see [`crate::status::transitions`]); and the report of a pipeline that does
//! not decode, which is all its reconcile does.

use edge_crds::manifest::{API_VERSION, KIND};
use edge_crds::{EdgePipelineStatus, FieldError};
use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::ObjectReference;
use kube::api::{Patch, PatchParams};
use kube::core::{ApiResource, DynamicObject};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType};
use kube::{Api, Resource, ResourceExt};
use serde_json::json;

use super::{Context, Error, Holder, REQUEUE, StoredPipeline, holder, now, read_daemon_set};
use crate::render::{FIELD_MANAGER, agent_name};
use crate::status::{self, Transition};

/// Longest Event note the API accepts.
const MAX_NOTE: usize = 1024;

/// Writes the status of a pipeline that does not decode: `Invalid` naming the field, the
/// counts of its running DaemonSet (if this pipeline controls one), which is not touched.
pub(super) async fn undecodable(
    stored: &StoredPipeline,
    error: &FieldError,
    ctx: &Context,
) -> Result<Action, Error> {
    let namespace = stored.namespace().ok_or(Error::MissingNamespace)?;
    let name = stored.name_any();
    let child = agent_name(&name);
    tracing::warn!(pipeline = %name, %namespace, %error, "the stored pipeline does not decode");
    let daemon_sets: Api<DaemonSet> = Api::namespaced(ctx.client.clone(), &namespace);
    let daemon_set = read_daemon_set(&daemon_sets, &child)
        .await?
        .filter(|ds| holder(Some(&ds.metadata), stored.metadata.uid.as_deref()) == Holder::This);
    let previous = stored.status();
    let status = status::compute_from(
        stored.metadata.generation,
        previous.as_ref(),
        Err(std::slice::from_ref(error)),
        daemon_set.as_ref(),
        &now(),
    );
    let reference = stored.object_ref(&());
    write_status(
        ctx,
        &namespace,
        &name,
        previous.as_ref(),
        &status,
        &reference,
        &child,
    )
    .await?;
    Ok(Action::requeue(REQUEUE))
}

/// Patches `/status` when `status` differs from `previous`, and publishes the Events of
/// the transitions between them.
pub(super) async fn write_status(
    ctx: &Context,
    namespace: &str,
    name: &str,
    previous: Option<&EdgePipelineStatus>,
    status: &EdgePipelineStatus,
    reference: &ObjectReference,
    child: &str,
) -> Result<(), Error> {
    if previous != Some(status) {
        let patch = json!({ "apiVersion": API_VERSION, "kind": KIND, "status": status });
        let ssa = PatchParams::apply(FIELD_MANAGER).force();
        // The answer is not decoded: a pipeline this operator cannot decode has a status too.
        let raw: Api<DynamicObject> = Api::namespaced_with(
            ctx.client.clone(),
            namespace,
            &ApiResource::erase::<edge_crds::EdgePipeline>(&()),
        );
        raw.patch_status(name, &ssa, &Patch::Apply(&patch))
            .await
            .map_err(Error::PatchStatus)?;
    }
    for transition in status::transitions(previous, status) {
        let event = event_for(&transition, child);
        if let Err(error) = ctx.recorder.publish(&event, reference).await {
            tracing::warn!(pipeline = %name, %namespace, %error, reason = %event.reason, "publishing an Event failed");
        }
    }
    Ok(())
}

/// The Event published for a status transition.
pub fn event_for(transition: &Transition, child: &str) -> Event {
    let (type_, reason, action, note) = match transition {
        Transition::Created => (
            EventType::Normal,
            "Created",
            "Apply",
            format!("applied DaemonSet {child} and its configuration ConfigMap {child}-<hash>"),
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
        Transition::ApplyFailed { message } => (
            EventType::Warning,
            status::reason::APPLY_FAILED,
            "Apply",
            format!("the API server refused the agent's objects: {message}"),
        ),
        Transition::Conflict { message } => (
            EventType::Warning,
            status::reason::CONFLICT,
            "Apply",
            message.clone(),
        ),
        Transition::Paused { reason, message } => (
            if reason == status::reason::ROLLOUT_FAILED {
                EventType::Warning
            } else {
                EventType::Normal
            },
            reason.as_str(),
            "Rollout",
            message.clone(),
        ),
        Transition::Stalled { message } => (
            EventType::Warning,
            status::reason::PROGRESS_DEADLINE_EXCEEDED,
            "Rollout",
            message.clone(),
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

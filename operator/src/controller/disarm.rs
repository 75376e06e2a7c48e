//! A deleted pipeline's node fallbacks, disarmed (node autonomy, [`edge_crds::fallback`]).
//!
//! With the fallback armed ([`crate::render::FallbackInstall`]) every pipeline carries the
//! finalizer [`FINALIZER`]. When it is deleted, the operator creates one Job per node that
//! ran its agents (in the operator's own namespace, bound to the node by `nodeName`, so it
//! runs whenever the node is back: a node cut off now hears of the deletion when it next
//! reaches the control plane), then releases the finalizer at once: the pipeline and its
//! agents go as before. Each Job runs `edge-agent disarm-fallback` twice: as the agent
//! user in the pipeline's data directory (sets the stored pipeline aside, removes the kept
//! Secrets, stops a running fallback), and as root with no capability in the unit
//! directory (disables the pipeline's instance). Finished Jobs remove themselves after an
//! hour.

use std::collections::BTreeSet;

use edge_crds::fallback;
use k8s_openapi::api::batch::v1::{Job, JobSpec};
use k8s_openapi::api::core::v1::{
    Container, HostPathVolumeSource, ObjectReference, PodSpec, PodTemplateSpec, Toleration, Volume,
    VolumeMount,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::Api;
use kube::api::{DynamicObject, Patch, PatchParams, PostParams};
use kube::core::ApiResource;
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType};
use sha2::{Digest, Sha256};

use super::{Context, Error};
use crate::datadir::host_data_dir;
use crate::render::root_without_capabilities;
use crate::render::{AGENT_UID, DATA_DIR};

/// The finalizer of pipelines whose nodes keep a fallback.
pub const FINALIZER: &str = "edgepipe.dev/disarm-fallback";
/// Label of the disarm Jobs, naming the pipeline (`<namespace>.<name>`).
pub const DISARM_LABEL: &str = "edgepipe.dev/disarm";
/// How long a finished disarm Job stays for a look.
const JOB_TTL_SECONDS: i32 = 3600;
const UNITS_MOUNT: &str = "/host/systemd";
/// How long a deleted pipeline waits for the pod cache to be filled.
const POD_CACHE_WAIT: std::time::Duration = std::time::Duration::from_secs(30);

fn has_finalizer(meta: &ObjectMeta) -> bool {
    meta.finalizers
        .as_ref()
        .is_some_and(|f| f.iter().any(|f| f == FINALIZER))
}

fn pipelines(ctx: &Context, namespace: &str) -> Api<DynamicObject> {
    Api::namespaced_with(
        ctx.client.clone(),
        namespace,
        &ApiResource::erase::<edge_crds::EdgePipeline>(&()),
    )
}

/// The JSON patch that sets `finalizers` (tested against the list it replaces, so a
/// concurrent change fails the patch instead of being overwritten).
fn finalizers_patch(meta: &ObjectMeta, finalizers: Vec<String>) -> Patch<serde_json::Value> {
    let current = meta.finalizers.clone().unwrap_or_default();
    let mut ops = Vec::new();
    if meta.finalizers.is_some() {
        ops.push(
            serde_json::json!({"op": "test", "path": "/metadata/finalizers", "value": current}),
        );
    }
    ops.push(serde_json::json!({"op": "add", "path": "/metadata/finalizers", "value": finalizers}));
    Patch::Json(serde_json::from_value(serde_json::Value::Array(ops)).unwrap_or_default())
}

/// Adds [`FINALIZER`] to a pipeline that lacks it.
pub(super) async fn ensure_finalizer(meta: &ObjectMeta, ctx: &Context) -> Result<(), Error> {
    if has_finalizer(meta) {
        return Ok(());
    }
    let (namespace, name) = (
        meta.namespace.clone().unwrap_or_default(),
        meta.name.clone().unwrap_or_default(),
    );
    let mut finalizers = meta.finalizers.clone().unwrap_or_default();
    finalizers.push(FINALIZER.to_string());
    pipelines(ctx, &namespace)
        .patch(
            &name,
            &PatchParams::default(),
            &finalizers_patch(meta, finalizers),
        )
        .await
        .map_err(Error::Finalizer)?;
    Ok(())
}

/// A pipeline being deleted: one disarm Job per node of its agents, then the finalizer
/// released. Nothing for a pipeline without the finalizer.
pub(super) async fn on_delete(meta: &ObjectMeta, ctx: &Context) -> Result<Action, Error> {
    if !has_finalizer(meta) {
        return Ok(Action::await_change());
    }
    let (namespace, name) = (
        meta.namespace.clone().unwrap_or_default(),
        meta.name.clone().unwrap_or_default(),
    );
    // The nodes come from the cache of agent pods: right after a start it may not hold
    // them yet (a pipeline deleted while the operator was down).
    let _ = tokio::time::timeout(POD_CACHE_WAIT, ctx.pods.wait_until_ready()).await;
    let nodes: BTreeSet<String> = ctx
        .agent_pods(&namespace, &name)
        .iter()
        .filter_map(|pod| pod.spec.node_name.clone())
        .collect();
    let job_namespace = ctx
        .own_namespace
        .clone()
        .unwrap_or_else(|| namespace.clone());
    let jobs: Api<Job> = Api::namespaced(ctx.client.clone(), &job_namespace);
    let unit_dir = ctx
        .render
        .fallback
        .as_ref()
        .map_or(fallback::DEFAULT_UNIT_DIR.to_string(), |f| {
            f.unit_dir.clone()
        });
    for node in &nodes {
        let job = disarm_job(&namespace, &name, node, &unit_dir, &ctx.render.agent_image);
        match jobs.create(&PostParams::default(), &job).await {
            Ok(_) => {}
            Err(kube::Error::Api(status)) if status.code == 409 => {}
            Err(source) => {
                return Err(Error::Disarm {
                    node: node.clone(),
                    source,
                });
            }
        }
    }
    tracing::info!(pipeline = %name, %namespace, nodes = nodes.len(), jobs_in = %job_namespace, "disarming the nodes' fallbacks of a deleted pipeline");
    let note = format!(
        "disarming the fallback on {} node(s) ({}): Jobs in {job_namespace}, each runs when its node is reachable",
        nodes.len(),
        nodes.iter().cloned().collect::<Vec<_>>().join(", ")
    );
    let reference = pipeline_reference(meta);
    if let Err(error) = ctx
        .recorder
        .publish(
            &Event {
                type_: EventType::Normal,
                reason: "DisarmingFallback".to_string(),
                note: Some(note),
                action: "Delete".to_string(),
                secondary: None,
            },
            &reference,
        )
        .await
    {
        tracing::warn!(pipeline = %name, %namespace, %error, "publishing an Event failed");
    }
    let finalizers: Vec<String> = meta
        .finalizers
        .clone()
        .unwrap_or_default()
        .into_iter()
        .filter(|f| f != FINALIZER)
        .collect();
    match pipelines(ctx, &namespace)
        .patch(
            &name,
            &PatchParams::default(),
            &finalizers_patch(meta, finalizers),
        )
        .await
    {
        Ok(_) => Ok(Action::await_change()),
        Err(kube::Error::Api(status)) if status.code == 404 => Ok(Action::await_change()),
        Err(source) => Err(Error::Finalizer(source)),
    }
}

/// The object reference of a pipeline, for its Events.
fn pipeline_reference(meta: &ObjectMeta) -> ObjectReference {
    ObjectReference {
        api_version: Some(edge_crds::manifest::API_VERSION.to_string()),
        kind: Some(edge_crds::manifest::KIND.to_string()),
        name: meta.name.clone(),
        namespace: meta.namespace.clone(),
        uid: meta.uid.clone(),
        resource_version: meta.resource_version.clone(),
        ..ObjectReference::default()
    }
}

/// The Job disarming `namespace/name` on `node`.
pub fn disarm_job(namespace: &str, name: &str, node: &str, unit_dir: &str, image: &str) -> Job {
    let digest = hex::encode(Sha256::digest(format!("{namespace}/{name}/{node}")));
    let job_name = format!("edgepipe-disarm-{}", &digest[..16]);
    let labels = [
        (
            "app.kubernetes.io/managed-by".to_string(),
            "edge-operator".to_string(),
        ),
        (DISARM_LABEL.to_string(), format!("{namespace}.{name}")),
    ]
    .into_iter()
    .collect();
    let data_dir = host_data_dir(namespace, name).unwrap_or_default();
    let args = |more: &[&str]| -> Vec<String> {
        let mut args: Vec<String> = vec!["disarm-fallback".into()];
        args.extend(more.iter().map(|s| s.to_string()));
        args.extend([
            "--namespace".into(),
            namespace.to_string(),
            "--name".into(),
            name.to_string(),
        ]);
        args
    };
    let host = |volume: &str, path: &str, type_: &str| Volume {
        name: volume.to_string(),
        host_path: Some(HostPathVolumeSource {
            path: path.to_string(),
            type_: Some(type_.to_string()),
        }),
        ..Volume::default()
    };
    let mut as_agent = root_without_capabilities();
    as_agent.run_as_non_root = Some(true);
    as_agent.run_as_user = Some(AGENT_UID);
    as_agent.run_as_group = Some(AGENT_UID);
    let container = |name: &str, args: Vec<String>, security, mount: (&str, &str)| Container {
        name: name.to_string(),
        image: Some(image.to_string()),
        command: Some(vec!["edge-agent".to_string()]),
        args: Some(args),
        security_context: Some(security),
        volume_mounts: Some(vec![VolumeMount {
            name: mount.0.to_string(),
            mount_path: mount.1.to_string(),
            ..VolumeMount::default()
        }]),
        ..Container::default()
    };
    Job {
        metadata: ObjectMeta {
            name: Some(job_name),
            labels: Some(labels),
            annotations: Some(
                [(
                    "edgepipe.dev/pipeline".to_string(),
                    format!("{namespace}/{name}"),
                )]
                .into_iter()
                .collect(),
            ),
            ..ObjectMeta::default()
        },
        spec: Some(JobSpec {
            ttl_seconds_after_finished: Some(JOB_TTL_SECONDS),
            backoff_limit: Some(6),
            template: PodTemplateSpec {
                metadata: None,
                spec: Some(PodSpec {
                    node_name: Some(node.to_string()),
                    restart_policy: Some("OnFailure".to_string()),
                    automount_service_account_token: Some(false),
                    enable_service_links: Some(false),
                    // Edge nodes are often tainted; the Job must run on this one whatever.
                    tolerations: Some(vec![Toleration {
                        operator: Some("Exists".to_string()),
                        ..Toleration::default()
                    }]),
                    init_containers: Some(vec![container(
                        "data",
                        args(&["--data-dir", DATA_DIR]),
                        as_agent,
                        ("data", DATA_DIR),
                    )]),
                    containers: vec![container(
                        "unit",
                        args(&["--unit-dir", UNITS_MOUNT]),
                        root_without_capabilities(),
                        ("units", UNITS_MOUNT),
                    )],
                    volumes: Some(vec![
                        host("data", &data_dir, "DirectoryOrCreate"),
                        host("units", unit_dir, "DirectoryOrCreate"),
                    ]),
                    ..PodSpec::default()
                }),
            },
            ..JobSpec::default()
        }),
        status: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_disarm_job_runs_on_its_node_as_the_agent_then_as_root_without_capabilities() {
        let job = disarm_job(
            "factory",
            "line1",
            "edge-1",
            "/etc/systemd/system",
            "agent:1",
        );
        let again = disarm_job(
            "factory",
            "line1",
            "edge-1",
            "/etc/systemd/system",
            "agent:1",
        );
        assert_eq!(
            job.metadata.name, again.metadata.name,
            "one Job per pipeline and node"
        );
        assert_ne!(
            job.metadata.name,
            disarm_job(
                "factory",
                "line1",
                "edge-2",
                "/etc/systemd/system",
                "agent:1"
            )
            .metadata
            .name
        );
        let spec = job.spec.unwrap().template.spec.unwrap();
        assert_eq!(spec.node_name.as_deref(), Some("edge-1"));
        let data = &spec.init_containers.unwrap()[0];
        assert_eq!(
            data.security_context.as_ref().unwrap().run_as_user,
            Some(AGENT_UID)
        );
        assert!(
            data.args
                .as_ref()
                .unwrap()
                .contains(&"--data-dir".to_string())
        );
        let unit = &spec.containers[0];
        let security = unit.security_context.as_ref().unwrap();
        assert_eq!(security.run_as_user, Some(0));
        assert_eq!(
            security.capabilities.as_ref().unwrap().drop,
            Some(vec!["ALL".to_string()])
        );
        assert_eq!(security.capabilities.as_ref().unwrap().add, None);
        let volumes = spec.volumes.unwrap();
        assert_eq!(
            volumes[0].host_path.as_ref().unwrap().path,
            "/var/lib/edgepipe/factory/line1"
        );
        assert_eq!(
            volumes[1].host_path.as_ref().unwrap().path,
            "/etc/systemd/system"
        );
    }
}

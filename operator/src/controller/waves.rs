//! Carries out a pipeline's rollout: gathers what [`crate::rollout::plan`] needs from the
//! caches (the agent pods, the offline nodes, the agents' records) and, only while a
//! rollout has something left to do, the canary nodes (a label selector is resolved by
//! one metadata list of the nodes); deletes the pods the plan names (each with its uid as
//! a precondition, so a pod recreated meanwhile is never deleted); and puts the phase into
//! the status ([`crate::status::with_rollout`]).

use std::collections::BTreeSet;
use std::time::Duration;

use edge_crds::{EdgePipeline, EdgePipelineStatus};
use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{Node, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{DeleteParams, ListParams, Preconditions};
use kube::runtime::reflector::ObjectRef;
use kube::{Api, ResourceExt};

use super::{Context, Error};
use crate::render::TEMPLATE_HASH_ANNOTATION;
use crate::rollout::{self, Agent, Phase, Settings};
use crate::status::{self, node_offline};

impl Context {
    /// Drives the rollout of `pipeline`, whose DaemonSet (this pipeline's) is `ds`, one
    /// step; sets the phase in `status`. Returns when to look again, if a soak or a
    /// deadline comes before anything else would.
    pub(super) async fn drive_rollout(
        &self,
        pipeline: &EdgePipeline,
        ds: &DaemonSet,
        status: &mut EdgePipelineStatus,
        now: &Time,
    ) -> Result<Option<Duration>, Error> {
        let Some(template) = ds
            .spec
            .as_ref()
            .and_then(|s| s.template.metadata.as_ref())
            .and_then(|m| m.annotations.as_ref())
            .and_then(|a| a.get(TEMPLATE_HASH_ANNOTATION))
            .cloned()
        else {
            return Ok(None);
        };
        let namespace = pipeline.namespace().unwrap_or_default();
        let name = pipeline.name_any();
        let agents: Vec<Agent> = self
            .agent_pods(&namespace, &name)
            .iter()
            .map(|pod| Agent::from(pod.as_ref()))
            .collect();
        let offline: BTreeSet<String> = agents
            .iter()
            .map(|a| a.node.clone())
            .filter(|node| {
                self.nodes
                    .get(&ObjectRef::new(node))
                    .is_some_and(|n| node_offline(&n))
            })
            .collect();
        let at = now.0.as_second();
        let nodes: BTreeSet<&str> = agents.iter().map(|a| a.node.as_str()).collect();
        let upstream_down: BTreeSet<String> = self
            .records(&namespace, &name, &nodes)
            .into_iter()
            .filter(|r| r.upstream_up == Some(false) && r.expires().is_some_and(|e| e >= at))
            .map(|r| r.node)
            .collect();
        let spec = &pipeline.spec;
        let generation = pipeline.metadata.generation;
        let outdated = agents.iter().any(|a| {
            a.template.as_deref() != Some(template.as_str()) && !offline.contains(&a.node)
        });
        let canary = match spec.rollout.as_ref().and_then(|r| r.canary.as_ref()) {
            Some(canary) if outdated => Some(self.canary_nodes(canary, &agents, &offline).await?),
            _ => None,
        };
        let settings = Settings {
            template,
            desired: ds.status.as_ref().map_or(0, |s| s.desired_number_scheduled),
            max_unavailable: Some(spec.max_unavailable()),
            paused: spec.rollout_paused(),
            canary,
            soak: spec
                .rollout
                .as_ref()
                .and_then(|r| r.canary.as_ref())
                .and_then(|c| c.soak.to_std().ok())
                .unwrap_or_default(),
            deadline: spec.progress_deadline(),
            failed_before: pipeline
                .status
                .as_ref()
                .and_then(|s| s.rollout.as_ref())
                .is_some_and(|r| {
                    r.failed_generation.is_some() && r.failed_generation == generation
                }),
        };
        let plan = rollout::plan(&agents, &settings, &offline, &upstream_down, at);
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), &namespace);
        for (pod, uid) in &plan.delete {
            let params = DeleteParams {
                preconditions: Some(Preconditions {
                    uid: Some(uid.clone()),
                    resource_version: None,
                }),
                ..DeleteParams::default()
            };
            match pods.delete(pod, &params).await {
                Ok(_) => {
                    tracing::info!(pipeline = %name, %namespace, %pod, "replacing an outdated agent");
                }
                // Gone already, or replaced by another pod of the same name.
                Err(kube::Error::Api(e)) if e.code == 404 || e.code == 409 => {}
                Err(source) => {
                    return Err(Error::Remove {
                        kind: "Pod",
                        name: pod.clone(),
                        source,
                    });
                }
            }
        }
        if let Phase::Failed(failed) = &plan.phase
            && !failed.is_empty()
        {
            tracing::warn!(pipeline = %name, %namespace, ?failed, "new agents failed: the rollout is paused");
        }
        let previous = pipeline.status.as_ref();
        status::with_rollout(status, previous, &plan.phase, generation, now);
        Ok(plan.recheck)
    }

    /// The canary nodes of a rollout: the pipeline's online nodes with the selector's
    /// labels (one metadata list of the nodes), or the first `count` of them by name.
    async fn canary_nodes(
        &self,
        canary: &edge_crds::CanarySettings,
        agents: &[Agent],
        offline: &BTreeSet<String>,
    ) -> Result<BTreeSet<String>, Error> {
        let online: BTreeSet<String> = agents
            .iter()
            .map(|a| a.node.clone())
            .filter(|n| !offline.contains(n))
            .collect();
        if let Some(selector) = canary.node_selector.as_ref().filter(|s| !s.is_empty()) {
            let labels = selector
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(",");
            let nodes: Api<Node> = Api::all(self.client.clone());
            let listed = nodes
                .list_metadata(&ListParams::default().labels(&labels))
                .await
                .map_err(Error::ListNodes)?;
            return Ok(listed
                .items
                .into_iter()
                .filter_map(|n| n.metadata.name)
                .filter(|n| online.contains(n))
                .collect());
        }
        let count = usize::try_from(canary.count.unwrap_or(1).max(1)).unwrap_or(1);
        Ok(online.into_iter().take(count).collect())
    }
}

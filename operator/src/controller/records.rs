//! The agents' fleet records ([`edge_crds::fleet`]) as the controller caches them:
//! Leases labelled `app.kubernetes.io/managed-by=edge-agent`, reduced to their labels,
//! the agent's annotations, `renewTime` and duration; a pipeline's records as the
//! [`Context`] finds them (only those of nodes where the pipeline has an agent pod, so a
//! node no longer selected stops counting at once); and which pipeline a record change
//! concerns.
//!
//! The records are trusted as far as the API server lets them be written: the chart's
//! ValidatingAdmissionPolicy admits an agent's write only for its own pipeline's record
//! of the node its token is bound to.

use std::collections::{BTreeMap, BTreeSet};

use edge_crds::fleet::{ANNOTATION_PREFIX, NODE_LABEL, PIPELINE_LABEL};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::runtime::reflector::ObjectRef;
use serde::Deserialize;

use super::{Context, StoredPipeline};
use crate::status::fleet::AgentRecord;

/// An agent's record as the controller caches it.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct CachedLease {
    /// Its metadata, reduced by [`summarize_lease`].
    pub metadata: ObjectMeta,
    /// When it was renewed and for how long.
    #[serde(default)]
    pub spec: CachedLeaseSpec,
}

/// What the cache keeps of a Lease's spec.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CachedLeaseSpec {
    /// When the agent last wrote it.
    #[serde(default)]
    pub renew_time: Option<MicroTime>,
    /// How long it holds without a renewal.
    #[serde(default)]
    pub lease_duration_seconds: Option<i32>,
}

resource_as!(CachedLease, Lease);

/// Drops what no reconcile reads: `managedFields`, owner references and annotations
/// other than the agent's.
pub fn summarize_lease(lease: &mut CachedLease) {
    let meta = &mut lease.metadata;
    meta.managed_fields = None;
    meta.owner_references = None;
    if let Some(annotations) = meta.annotations.as_mut() {
        annotations.retain(|key, _| key.starts_with(ANNOTATION_PREFIX));
    }
}

/// The pipeline a record belongs to.
pub fn pipeline_of_lease(lease: &CachedLease) -> Option<ObjectRef<StoredPipeline>> {
    let namespace = lease.metadata.namespace.as_deref()?;
    let pipeline = lease.metadata.labels.as_ref()?.get(PIPELINE_LABEL)?;
    Some(ObjectRef::new(pipeline).within(namespace))
}

impl Context {
    /// The records of the pipeline `namespace/name` for the nodes in `nodes`.
    pub(super) fn records(
        &self,
        namespace: &str,
        name: &str,
        nodes: &BTreeSet<&str>,
    ) -> Vec<AgentRecord> {
        let empty = BTreeMap::new();
        self.leases
            .state()
            .iter()
            .filter(|lease| lease.metadata.namespace.as_deref() == Some(namespace))
            .filter_map(|lease| {
                let labels = lease.metadata.labels.as_ref()?;
                let node = labels.get(NODE_LABEL)?;
                (labels.get(PIPELINE_LABEL)? == name && nodes.contains(node.as_str())).then(|| {
                    AgentRecord::from_lease(
                        node.clone(),
                        lease.spec.renew_time.as_ref().map(|t| t.0.as_second()),
                        lease.spec.lease_duration_seconds.map(i64::from),
                        lease.metadata.annotations.as_ref().unwrap_or(&empty),
                    )
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cached_record_keeps_the_agents_annotations_and_its_pipeline() {
        let mut lease: CachedLease = serde_json::from_value(serde_json::json!({
            "metadata": {
                "name": "line-agent.n1",
                "namespace": "plant",
                "labels": {PIPELINE_LABEL: "line", NODE_LABEL: "n1"},
                "annotations": {
                    "agent.edgepipe.dev/backlog-bytes": "10",
                    "kubectl.kubernetes.io/last-applied-configuration": "{}"
                },
                "managedFields": [{"manager": "edge-agent"}]
            },
            "spec": {"renewTime": "2026-12-05T04:50:00.123456Z", "leaseDurationSeconds": 90,
                     "holderIdentity": "n1"}
        }))
        .unwrap();
        summarize_lease(&mut lease);
        assert!(lease.metadata.managed_fields.is_none());
        assert_eq!(
            lease
                .metadata
                .annotations
                .as_ref()
                .unwrap()
                .keys()
                .collect::<Vec<_>>(),
            vec!["agent.edgepipe.dev/backlog-bytes"]
        );
        assert_eq!(lease.spec.lease_duration_seconds, Some(90));
        assert_eq!(
            pipeline_of_lease(&lease),
            Some(ObjectRef::new("line").within("plant"))
        );
    }
}

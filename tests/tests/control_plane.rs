//! Tests against a real Kubernetes control plane (kube-apiserver, controller-manager,
//! scheduler, etcd and kwok nodes, built by `tests/k8s`): the operator, the CRD, the chart
//! and the fleet. One binary; run one area with a filter, e.g.
//! `cargo test -p edge-tests --test control_plane fleet_rollout::`.

mod cluster;
mod cluster_scoped;
mod fleet_records;
mod fleet_rollout;
mod fleet_status;
mod secret_rotation;
mod tenant_policy;

//! Tests that run containers as root: the images built and run with Docker and Compose,
//! and a real kubelet node (containerd, CNI, kube-proxy) joined to a real control plane.
//! One binary; run one area with a filter, e.g.
//! `cargo test -p edge-tests --test containers real_node::`.

mod images;
mod real_node;

//! The shared test kit of Edgepipe: every test, benchmark and the demo take their real
//! components from here, so there is one of each.
//!
//! - [`mqtt`]: a real Mosquitto broker on a free port, a QoS 1 publisher that waits for
//!   PUBACKs, a subscriber, persistent-session preparation;
//! - [`agent`]: the `edge-agent` binary with its own config, data directory and log, and
//!   its `/metrics`, `/livez` and `/readyz`;
//! - [`metrics`]: a Prometheus exposition read into series, sums and histogram quantiles;
//! - [`receiver`]: a real HTTP(S) ingest endpoint that records requests and can fail or
//!   stop, with mutual TLS on request;
//! - [`operator`]: the `edge-operator` binary as the chart runs it, as its ServiceAccount;
//! - [`cluster`]: a real Kubernetes control plane (etcd, kube-apiserver,
//!   kube-controller-manager, kube-scheduler) with kwok's simulated nodes, and kubectl;
//! - [`images`]: the agent and operator images of this build, without a registry;
//! - [`node`]: a real node (containerd, CNI, kubelet, kube-proxy) joined to that control
//!   plane, its images imported from the Docker engine;
//! - [`link`]: a thin network link (a TCP proxy with a bandwidth cap) that can be cut;
//! - [`pki`]: a private CA and certificates made with openssl;
//! - [`ports`], [`poll`]: race-free loopback ports and polling with deadlines;
//! - [`scenario`]: the thin-link scenario of the sink tests and benchmark B11;
//! - [`process`]: background processes that never outlive the test.

pub mod agent;
pub mod cluster;
pub mod images;
pub mod link;
pub mod metrics;
pub mod mqtt;
pub mod node;
pub mod operator;
pub mod pki;
pub mod poll;
pub mod ports;
pub mod process;
pub mod receiver;
pub mod scenario;

use std::path::{Path, PathBuf};

pub use agent::{Agent, Memory, http_get};
pub use link::Link;
pub use metrics::parse_metrics;
pub use mqtt::{Mosquitto, Publisher, Received, Subscriber, prepare_session};
pub use poll::{eventually, poll};
pub use ports::free_port;
pub use receiver::{Counts, Receiver, Reply, Request, ServerTls};

/// The workspace root (the directory holding the top-level Cargo.toml).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .nth(2)
        .expect("the kit lives in tests/kit of the workspace")
        .to_path_buf()
}

/// The cargo target directory (`CARGO_TARGET_DIR`, else `<workspace>/target`).
pub fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"))
}

/// The YAML of the EdgePipeline `namespace/name` with `spec` (YAML at the indentation of
/// `spec:`'s children, two spaces).
pub fn pipeline_yaml(namespace: &str, name: &str, spec: &str) -> String {
    format!(
        "apiVersion: edgepipe.dev/v1alpha1\nkind: EdgePipeline\nmetadata: {{name: {name}, namespace: {namespace}}}\nspec:\n{spec}"
    )
}

/// A binary of this workspace built by cargo (`target/debug/NAME`, or in
/// `EDGEPIPE_BIN_DIR` when set: benchmarks point it at `target/release`); panics with the
/// command that builds it when it is missing, so a test never runs a stale path silently.
pub fn workspace_bin(name: &str) -> PathBuf {
    let dir = std::env::var_os("EDGEPIPE_BIN_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| target_dir().join("debug"));
    let bin = dir.join(name);
    assert!(
        bin.is_file(),
        "{} missing: run `cargo build -p {name}` (tests/run.sh does)",
        bin.display()
    );
    bin
}

/// Path of a tool the test suite installs (`tests/scripts/install-deps.sh`): looked up in
/// the Python venv, then `tests/.tools/bin`, then `/usr/sbin` and `PATH`.
/// Panics with the install hint when it is missing, so a test never skips silently.
pub fn tool(name: &str) -> PathBuf {
    let root = workspace_root();
    let mut candidates = vec![
        root.join(".venv/bin").join(name),
        root.join("tests/.tools/bin").join(name),
        Path::new("/usr/sbin").join(name),
        Path::new("/usr/bin").join(name),
    ];
    if let Some(path) = std::env::var_os("PATH") {
        candidates.extend(std::env::split_paths(&path).map(|d| d.join(name)));
    }
    candidates
        .into_iter()
        .find(|p| p.is_file())
        .unwrap_or_else(|| panic!("{name} is not installed: run tests/scripts/install-deps.sh"))
}

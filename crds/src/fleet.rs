//! The per-node fleet record: the contract between an agent, which keeps its node's
//! record up to date, and the operator, which reads every record into `status.fleet`.
//!
//! The record is a `coordination.k8s.io/v1` Lease in the pipeline's namespace, named
//! `edgepipe-agent.<pipeline>.<node>` ([`lease_name`]) and labelled
//! with the pipeline and the node ([`PIPELINE_LABEL`], [`NODE_LABEL`]): the operator reads
//! the labels, never the name (names may have dots). Its `renewTime`
//! says when the agent last wrote it; its annotations ([`annotation`]) carry the agent's
//! state. The agent writes it by server-side apply with its pod's ServiceAccount token
//! (the pod's environment, [`LEASE_ENV`] and the rest, says where); the API server lets an
//! agent write only the record of the node its token is bound to.

/// The environment variable naming the agent's record (Lease); no record without it.
pub const LEASE_ENV: &str = "EDGEPIPE_FLEET_LEASE";
/// The environment variable with the heartbeat interval in seconds (default
/// [`DEFAULT_INTERVAL_SECONDS`]).
pub const INTERVAL_ENV: &str = "EDGEPIPE_HEARTBEAT_SECONDS";
/// The environment variable with the API server's URL (default: from
/// `KUBERNETES_SERVICE_HOST` and `KUBERNETES_SERVICE_PORT`).
pub const API_ENV: &str = "EDGEPIPE_KUBE_API";
/// The environment variable with the ServiceAccount token file (default
/// `<`[`CREDENTIALS_DIR`]`>/token`).
pub const TOKEN_FILE_ENV: &str = "EDGEPIPE_KUBE_TOKEN_FILE";
/// The environment variable with the API server's CA bundle (default
/// `<`[`CREDENTIALS_DIR`]`>/ca.crt`).
pub const CA_FILE_ENV: &str = "EDGEPIPE_KUBE_CA_FILE";
/// Where the agent pod mounts its projected ServiceAccount token and the cluster's CA.
pub const CREDENTIALS_DIR: &str = "/var/run/secrets/edgepipe.dev/api";
/// The heartbeat interval when none is set.
pub const DEFAULT_INTERVAL_SECONDS: u64 = 30;
/// A record not renewed for this many intervals is an offline agent.
pub const OFFLINE_AFTER_INTERVALS: u32 = 3;
/// The field manager of the agent's writes.
pub const FIELD_MANAGER: &str = "edge-agent";

/// Label of a record: the pipeline's name.
pub const PIPELINE_LABEL: &str = "edgepipe.dev/pipeline";
/// Label of a record: the node's name.
pub const NODE_LABEL: &str = "edgepipe.dev/node";
/// Label selector of every record.
pub const RECORD_SELECTOR: &str = "app.kubernetes.io/managed-by=edge-agent";

/// The prefix of the annotations holding the agent's state.
pub const ANNOTATION_PREFIX: &str = "agent.edgepipe.dev/";

/// The prefix of the agents' ServiceAccounts: `edgepipe-agent.<pipeline>`. The chart's
/// admission policy recognises an agent's request by it.
pub const ACCOUNT_PREFIX: &str = "edgepipe-agent.";

/// The ServiceAccount of the agents of pipeline `pipeline`.
pub fn account_name(pipeline: &str) -> String {
    format!("{ACCOUNT_PREFIX}{pipeline}")
}

/// The name of the record of pipeline `pipeline`'s agent on node `node`:
/// `edgepipe-agent.<pipeline>.<node>`, its ServiceAccount's name and the node's.
pub fn lease_name(pipeline: &str, node: &str) -> String {
    format!("{}.{node}", account_name(pipeline))
}

/// The annotations of a record, each `agent.edgepipe.dev/<key>`.
pub mod annotation {
    /// `up` or `down`: whether the last delivery to the upstream succeeded.
    pub const UPSTREAM: &str = "agent.edgepipe.dev/upstream";
    /// RFC 3339: since when the upstream has been as `upstream` says.
    pub const UPSTREAM_SINCE: &str = "agent.edgepipe.dev/upstream-since";
    /// Records waiting in the queue.
    pub const BACKLOG_RECORDS: &str = "agent.edgepipe.dev/backlog-records";
    /// Bytes waiting in the queue.
    pub const BACKLOG_BYTES: &str = "agent.edgepipe.dev/backlog-bytes";
    /// Age in seconds of the oldest queued record (0 with an empty queue).
    pub const OLDEST_SECONDS: &str = "agent.edgepipe.dev/oldest-seconds";
    /// RFC 3339: when a batch was last delivered; absent before the first.
    pub const LAST_SYNC: &str = "agent.edgepipe.dev/last-sync";
    /// Records dropped since the agent started (every reason).
    pub const DROPPED_RECORDS: &str = "agent.edgepipe.dev/dropped-records";
    /// SHA-256 of the model the agent runs; absent without a model.
    pub const MODEL_SHA256: &str = "agent.edgepipe.dev/model-sha256";
    /// The agent's version.
    pub const VERSION: &str = "agent.edgepipe.dev/version";
    /// `true` while the agent runs as the node's fallback (no pod).
    pub const FALLBACK: &str = "agent.edgepipe.dev/fallback";
    /// How long the node's last fallback run on this queue lasted, in seconds; absent
    /// when the node never ran it in fallback.
    pub const FALLBACK_LAST_SECONDS: &str = "agent.edgepipe.dev/fallback-last-seconds";
    /// RFC 3339: when that run ended.
    pub const FALLBACK_LAST_END: &str = "agent.edgepipe.dev/fallback-last-end";
    /// `true` when that run ran another revision of the pipeline than the agent's.
    pub const FALLBACK_LAST_OUTDATED: &str = "agent.edgepipe.dev/fallback-last-outdated";
}

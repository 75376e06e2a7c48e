//! The `EdgePipeline` status written by the operator: how many nodes run the current
//! agent, and conditions a human or `kubectl wait --for=condition=Ready` can read.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Condition type: every desired node runs the current agent and it is ready.
pub const CONDITION_READY: &str = "Ready";
/// Condition type: a rollout of a new configuration is in progress.
pub const CONDITION_PROGRESSING: &str = "Progressing";
/// Condition type: some agents are not ready, or the operator cannot apply the pipeline.
pub const CONDITION_DEGRADED: &str = "Degraded";
/// Condition type: the spec failed validation; the last good agents keep running.
pub const CONDITION_INVALID: &str = "Invalid";
/// Condition type: a rollout made no progress within `spec.rollout.progressDeadline`.
pub const CONDITION_STALLED: &str = "Stalled";
/// Condition type: the rollout is held, by `spec.rollout.paused` (reason `Paused`) or
/// by itself because new agents failed (reason `RolloutFailed`). Present only while True.
pub const CONDITION_PAUSED: &str = "Paused";
/// Condition type: an object with the agent's name exists that this pipeline does not
/// control; the operator leaves it untouched. Present only while True.
pub const CONDITION_CONFLICT: &str = "Conflict";

/// Observed state of an EdgePipeline.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct EdgePipelineStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Number of nodes that should run the agent.
    #[serde(default)]
    pub desired_nodes: i32,
    /// Number of nodes whose agent is ready.
    #[serde(default)]
    pub ready_nodes: i32,
    /// Number of nodes running the agent for the current configuration.
    #[serde(default)]
    pub updated_nodes: i32,
    /// Number of nodes of this pipeline that are NotReady or unreachable (a node without
    /// power, a lost link). Their agents count as offline, not as failures: they catch up
    /// when the node comes back.
    #[serde(default)]
    pub offline_nodes: i32,
    /// Names of the offline nodes, sorted; at most 10 (`offlineNodes` has the count).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 10))]
    pub offline_node_names: Vec<String>,
    /// The ConfigMap holding the configuration revision being rolled out (content-named,
    /// immutable): `<name>-agent-<hash>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_revision: Option<String>,
    /// When the current rollout last made progress (one more node updated or ready, or a
    /// new revision); `Stalled` turns True when it is older than the progress deadline.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_progress_time: Option<Time>,
    /// Conditions: `Ready`, `Progressing`, `Degraded`, `Stalled` and `Invalid`; `Conflict`
    /// while an object with the agent's name belongs to someone else.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// The rollout as the operator drives it (canary, waves, pause). Absent while
    /// nothing is rolled out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout: Option<RolloutStatus>,
    /// The agents as they report themselves: each keeps its node's record (a Lease
    /// `<name>-agent.<node>` in this namespace) up to date. Absent while no agent reports.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fleet: Option<FleetStatus>,
}

/// Where the rollout of the current revision stands.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RolloutStatus {
    /// `Canary` (the canary nodes are updated, or soak), `Rolling` (the other nodes follow,
    /// `maxUnavailable` at a time), `Paused` (`spec.rollout.paused`) or `Failed` (new agents
    /// failed: the rollout paused itself).
    pub phase: String,
    /// What the rollout waits for, or why it stopped.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
    /// The canary nodes, sorted; at most 10.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 10))]
    pub canary_nodes: Vec<String>,
    /// The nodes whose new agent failed, sorted; at most 10.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 10))]
    pub failed_nodes: Vec<String>,
    /// The `metadata.generation` at which the rollout paused itself: it stays paused until
    /// the spec changes (a fixed spec, or `rollout.paused: false`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failed_generation: Option<i64>,
}

/// The fleet of a pipeline as its agents report it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct FleetStatus {
    /// Nodes whose agent has a record.
    #[serde(default)]
    pub reporting: i32,
    /// Nodes whose agent is offline: its record not renewed for 3 heartbeat intervals, or
    /// its node NotReady.
    #[serde(default)]
    pub offline: i32,
    /// Online agents whose upstream is down (their last delivery failed).
    #[serde(default)]
    pub upstream_down: i32,
    /// Online agents whose oldest queued record waits longer than 2 heartbeat intervals.
    #[serde(default)]
    pub backlogged: i32,
    /// Records queued on all nodes.
    #[serde(default)]
    pub backlog_records: i64,
    /// Bytes queued on all nodes.
    #[serde(default)]
    pub backlog_bytes: i64,
    /// `backlogBytes` for people: `12.5 MiB`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub backlog: String,
    /// Age in seconds of the oldest queued record on any node.
    #[serde(default)]
    pub oldest_backlog_seconds: i64,
    /// `oldestBacklogSeconds` for people: `3m20s`; empty without a backlog.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub oldest_backlog: String,
    /// Records dropped on all nodes since their agents started.
    #[serde(default)]
    pub dropped_records: i64,
    /// The models the agents run, by SHA-256, with how many nodes run each; sorted.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 10))]
    pub models: Vec<ModelCount>,
    /// At most 5 nodes that need a look, worst first: offline, upstream down, backlogged.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 5))]
    pub worst: Vec<NodeReport>,
    /// The nodes that ran the pipeline in fallback (cut off from the control plane, the
    /// agent pod not started) in the last 24 hours, the most recent first; at most 5.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 5))]
    pub fallback_runs: Vec<FallbackReport>,
}

/// A node's last run of the pipeline in fallback, as its agent reports it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct FallbackReport {
    /// The node's name.
    pub node: String,
    /// How long the fallback ran, in seconds.
    pub seconds: i64,
    /// When it stopped (RFC 3339).
    pub ended: String,
    /// It ran another revision of the pipeline than the one the node runs now.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub outdated: bool,
}

/// How many nodes run one model.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ModelCount {
    /// The model's SHA-256 (hex).
    pub sha256: String,
    /// Nodes whose agent runs it.
    pub nodes: i32,
}

/// A node that needs a look, and why.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NodeReport {
    /// The node's name.
    pub node: String,
    /// Why: `offline: no heartbeat for 2m5s`, `upstream down for 4m`, `backlog 1.2 MiB,
    /// oldest 3m`.
    pub reason: String,
}

impl EdgePipelineStatus {
    /// The condition of the given type, if present.
    pub fn condition(&self, type_: &str) -> Option<&Condition> {
        self.conditions.iter().find(|c| c.type_ == type_)
    }
}

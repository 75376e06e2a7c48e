//! The operator's Prometheus metrics, registered into an explicit registry (no globals)
//! and exposed on `/metrics` by [`crate::server`]. Label values are static strings, but
//! for the namespace and name of a pipeline in the fleet series.
//!
//! - `edge_operator_reconciliations_total{result="success|error"}`
//! - `edge_operator_reconcile_duration_seconds` (histogram)
//! - `edge_operator_pipelines{condition="Ready|Progressing|Degraded|Invalid|Conflict|Stalled"}`:
//!   pipelines whose condition is `True`, counted from the controller's cache when scraped
//! - `edge_operator_offline_agents`: agents on offline (NotReady or unreachable) nodes,
//!   summed over the pipelines' `status.offlineNodes`, counted the same way
//! - `edge_operator_fleet_agents{namespace,pipeline,state="reporting|offline|upstream_down|backlogged"}`,
//!   `edge_operator_fleet_backlog_bytes{namespace,pipeline}` and
//!   `edge_operator_fleet_oldest_backlog_seconds{namespace,pipeline}`: each pipeline's
//!   `status.fleet` (the agents' own reports), for the dashboard and the alert rules;
//!   only pipelines whose agents report have these series
//! - `edge_operator_build_info{version}`: always 1

use std::sync::RwLock;
use std::time::Duration;

use edge_crds::EdgePipelineStatus;
use edge_crds::status::FleetStatus;
use edge_crds::status::{
    CONDITION_CONFLICT, CONDITION_DEGRADED, CONDITION_INVALID, CONDITION_PROGRESSING,
    CONDITION_READY, CONDITION_STALLED,
};
use kube::runtime::reflector::Store;

use crate::controller::StoredPipeline;
use prometheus::{
    Histogram, HistogramOpts, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};

/// The conditions counted by `edge_operator_pipelines`.
pub const CONDITIONS: [&str; 6] = [
    CONDITION_READY,
    CONDITION_PROGRESSING,
    CONDITION_DEGRADED,
    CONDITION_INVALID,
    CONDITION_CONFLICT,
    CONDITION_STALLED,
];

/// The outcome of one reconciliation, as a metric label.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReconcileResult {
    /// Reconcile returned `Ok`.
    Success,
    /// Reconcile returned an error (it is retried with backoff).
    Error,
}

impl ReconcileResult {
    fn label(self) -> &'static str {
        match self {
            Self::Success => "success",
            Self::Error => "error",
        }
    }
}

/// The operator's metrics.
pub struct Metrics {
    registry: Registry,
    reconciliations: IntCounterVec,
    reconcile_duration: Histogram,
    pipelines: IntGaugeVec,
    offline_agents: IntGauge,
    fleet_agents: IntGaugeVec,
    fleet_backlog_bytes: IntGaugeVec,
    fleet_oldest_backlog: IntGaugeVec,
    pipelines_source: RwLock<Option<Store<StoredPipeline>>>,
}

impl Metrics {
    /// Creates the metrics in a new registry.
    pub fn new() -> Result<Self, prometheus::Error> {
        let registry = Registry::new();
        let reconciliations = IntCounterVec::new(
            Opts::new(
                "edge_operator_reconciliations_total",
                "EdgePipeline reconciliations by result.",
            ),
            &["result"],
        )?;
        let reconcile_duration = Histogram::with_opts(
            HistogramOpts::new(
                "edge_operator_reconcile_duration_seconds",
                "Time one EdgePipeline reconciliation takes, API calls included.",
            )
            .buckets(vec![
                0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
            ]),
        )?;
        let pipelines = IntGaugeVec::new(
            Opts::new(
                "edge_operator_pipelines",
                "EdgePipelines whose condition is True, by condition.",
            ),
            &["condition"],
        )?;
        let offline_agents = IntGauge::new(
            "edge_operator_offline_agents",
            "Agents on nodes that are NotReady or unreachable, summed over EdgePipelines.",
        )?;
        let fleet_agents = IntGaugeVec::new(
            Opts::new(
                "edge_operator_fleet_agents",
                "Agents of an EdgePipeline by the state they report (status.fleet).",
            ),
            &["namespace", "pipeline", "state"],
        )?;
        let fleet_backlog_bytes = IntGaugeVec::new(
            Opts::new(
                "edge_operator_fleet_backlog_bytes",
                "Bytes queued on the nodes of an EdgePipeline, as its agents report.",
            ),
            &["namespace", "pipeline"],
        )?;
        let fleet_oldest_backlog = IntGaugeVec::new(
            Opts::new(
                "edge_operator_fleet_oldest_backlog_seconds",
                "Age of the oldest record queued on any node of an EdgePipeline.",
            ),
            &["namespace", "pipeline"],
        )?;
        let build_info = IntGaugeVec::new(
            Opts::new(
                "edge_operator_build_info",
                "Build information of edge-operator; always 1.",
            ),
            &["version"],
        )?;
        registry.register(Box::new(reconciliations.clone()))?;
        registry.register(Box::new(reconcile_duration.clone()))?;
        registry.register(Box::new(pipelines.clone()))?;
        registry.register(Box::new(offline_agents.clone()))?;
        registry.register(Box::new(fleet_agents.clone()))?;
        registry.register(Box::new(fleet_backlog_bytes.clone()))?;
        registry.register(Box::new(fleet_oldest_backlog.clone()))?;
        registry.register(Box::new(build_info.clone()))?;

        build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);
        for result in [ReconcileResult::Success, ReconcileResult::Error] {
            reconciliations.with_label_values(&[result.label()]);
        }
        for condition in CONDITIONS {
            pipelines.with_label_values(&[condition]).set(0);
        }
        Ok(Self {
            registry,
            reconciliations,
            reconcile_duration,
            pipelines,
            offline_agents,
            fleet_agents,
            fleet_backlog_bytes,
            fleet_oldest_backlog,
            pipelines_source: RwLock::new(None),
        })
    }

    /// Records one reconciliation.
    pub fn reconciled(&self, result: ReconcileResult, took: Duration) {
        self.reconciliations
            .with_label_values(&[result.label()])
            .inc();
        self.reconcile_duration.observe(took.as_secs_f64());
    }

    /// The cache `edge_operator_pipelines` is counted from (the running controller's);
    /// `None` while this replica is not the leader.
    pub fn count_pipelines_from(&self, store: Option<Store<StoredPipeline>>) {
        if store.is_none() {
            // A replica that stops leading reports no pipeline's fleet.
            self.observe_fleets([]);
        }
        if let Ok(mut source) = self.pipelines_source.write() {
            *source = store;
        }
    }

    /// Sets `edge_operator_pipelines` and `edge_operator_offline_agents` from the statuses of a set of pipelines.
    pub fn observe_pipelines(&self, statuses: impl IntoIterator<Item = EdgePipelineStatus>) {
        let mut counts = [0_i64; CONDITIONS.len()];
        let mut offline = 0_i64;
        for status in statuses {
            offline += i64::from(status.offline_nodes.max(0));
            for (i, condition) in CONDITIONS.iter().enumerate() {
                if status
                    .condition(condition)
                    .is_some_and(|c| c.status == "True")
                {
                    counts[i] += 1;
                }
            }
        }
        for (condition, count) in CONDITIONS.iter().zip(counts) {
            self.pipelines.with_label_values(&[condition]).set(count);
        }
        self.offline_agents.set(offline);
    }

    /// Sets the fleet series from each pipeline's `status.fleet` (`namespace`, `name`,
    /// fleet); the series of pipelines not given are removed.
    pub fn observe_fleets<'a>(
        &self,
        fleets: impl IntoIterator<Item = (&'a str, &'a str, &'a FleetStatus)>,
    ) {
        self.fleet_agents.reset();
        self.fleet_backlog_bytes.reset();
        self.fleet_oldest_backlog.reset();
        for (namespace, name, fleet) in fleets {
            for (state, count) in [
                ("reporting", fleet.reporting),
                ("offline", fleet.offline),
                ("upstream_down", fleet.upstream_down),
                ("backlogged", fleet.backlogged),
            ] {
                self.fleet_agents
                    .with_label_values(&[namespace, name, state])
                    .set(i64::from(count));
            }
            self.fleet_backlog_bytes
                .with_label_values(&[namespace, name])
                .set(fleet.backlog_bytes);
            self.fleet_oldest_backlog
                .with_label_values(&[namespace, name])
                .set(fleet.oldest_backlog_seconds);
        }
    }

    /// The metrics in the Prometheus text format.
    pub fn encode(&self) -> Result<String, prometheus::Error> {
        let store = self.pipelines_source.read().ok().and_then(|s| s.clone());
        match store {
            Some(store) => {
                let state = store.state();
                let statuses: Vec<(String, String, EdgePipelineStatus)> = state
                    .iter()
                    .filter_map(|p| {
                        let namespace = p.metadata.namespace.clone().unwrap_or_default();
                        let name = p.metadata.name.clone().unwrap_or_default();
                        Some((namespace, name, p.status()?))
                    })
                    .collect();
                self.observe_fleets(statuses.iter().filter_map(|(ns, name, s)| {
                    Some((ns.as_str(), name.as_str(), s.fleet.as_ref()?))
                }));
                self.observe_pipelines(statuses.into_iter().map(|(_, _, status)| status));
            }
            None => self.observe_pipelines([]),
        }
        TextEncoder::new().encode_to_string(&self.registry.gather())
    }
}

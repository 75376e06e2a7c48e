//! The node's fleet record: keeps this agent's Lease (the contract is
//! [`edge_crds::fleet`]) up to date, so that the operator can tell in `status.fleet` which
//! nodes run the pipeline, whether their agents are alive, and how they are doing.
//!
//! Each write is one server-side apply (field manager `edge-agent`) of the whole record:
//! labels, the agent's state as annotations (read from its [`Metrics`]), and `renewTime`.
//! The first write goes out about a second after start, the next ones every interval
//! (±10% jitter). While the state is unchanged since the last write, every other turn is
//! skipped, so an idle agent writes once per two intervals, well within the lease's three.
//!
//! "Unchanged" compares every annotation except the age of the oldest queued record,
//! which is compared by its power of two: a backlog that only ages changes the state at
//! 1, 2, 4, 8… seconds, not at every turn. Times in annotations change only on events
//! (the upstream going up or down, a delivery), so they take part as they are.
//!
//! The record is a report, never a dependency: an unreachable or refusing API server is a
//! normal state (counted in `edge_agent_heartbeats_total{outcome="failed"}`, retried after
//! `min(interval · 2^(failures-1), 5 min)`, jittered), and nothing here touches ingest,
//! delivery, liveness or readiness. The token file is read before every write (the kubelet
//! rotates it); the client, which trusts the CA file's certificates and nothing else, is
//! rebuilt when that file changes.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use edge_crds::fleet::{self, annotation};
use prometheus::core::Collector;
use rand::Rng;
use serde_json::{Value, json};
use time::OffsetDateTime;
use time::format_description::BorrowedFormatItem;
use time::macros::format_description;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::config::AgentConfig;
use crate::runtime::diagnostics;
use crate::runtime::telemetry::Metrics;
pub use write::WriteError;
use write::Writer;

mod write;

/// The environment variable with the agent pod's namespace (the pipeline's).
pub const NAMESPACE_ENV: &str = "POD_NAMESPACE";
/// The label that [`fleet::RECORD_SELECTOR`] selects on, and its value.
const MANAGED_BY: (&str, &str) = ("app.kubernetes.io/managed-by", "edge-agent");
/// Longest wait after failed writes.
pub const MAX_BACKOFF: Duration = Duration::from_secs(300);
/// Longest interval taken (a longer one is cut to it): a day.
const MAX_INTERVAL_SECONDS: u64 = 86_400;
/// How often the metrics are looked at between writes: how precise `upstream-since` and
/// `last-sync` are.
const OBSERVE_EVERY: Duration = Duration::from_secs(1);

/// RFC 3339 in UTC to the second, for annotations.
const SECONDS: &[BorrowedFormatItem<'_>] =
    format_description!("[year]-[month]-[day]T[hour]:[minute]:[second]Z");
/// RFC 3339 in UTC to the microsecond: a Kubernetes `MicroTime` (`renewTime`).
const MICROSECONDS: &[BorrowedFormatItem<'_>] =
    format_description!("[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:6]Z");

/// Where and how often the agent writes its node's fleet record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Settings {
    /// The Lease's name ([`fleet::LEASE_ENV`]).
    pub lease: String,
    /// Its namespace, the agent pod's ([`NAMESPACE_ENV`]).
    pub namespace: String,
    /// The node the agent runs on: `holderIdentity` and [`fleet::NODE_LABEL`].
    pub node: String,
    /// The pipeline's name: [`fleet::PIPELINE_LABEL`].
    pub pipeline: String,
    /// The API server, `https://` without a trailing slash ([`fleet::API_ENV`]).
    pub api: String,
    /// The ServiceAccount token, read before every write ([`fleet::TOKEN_FILE_ENV`]).
    pub token_file: PathBuf,
    /// The only certificates trusted for the API server ([`fleet::CA_FILE_ENV`]).
    pub ca_file: PathBuf,
    /// Between writes ([`fleet::INTERVAL_ENV`]); the lease lasts
    /// [`fleet::OFFLINE_AFTER_INTERVALS`] of them.
    pub interval: Duration,
}

/// Why the agent keeps no fleet record.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum Disabled {
    #[error("{} is not set", fleet::LEASE_ENV)]
    NoLease,
    #[error("{} is set but {NAMESPACE_ENV} is not", fleet::LEASE_ENV)]
    NoNamespace,
    #[error("{variable}={value:?} is not a Kubernetes object name")]
    BadName {
        variable: &'static str,
        value: String,
    },
    #[error(
        "no API server: neither {} nor KUBERNETES_SERVICE_HOST is set",
        fleet::API_ENV
    )]
    NoApiServer,
    #[error("the API server {0:?} is not an https:// URL: the token is only sent over TLS")]
    NotHttps(String),
}

impl Settings {
    /// The settings of agent `node` of pipeline `pipeline` (its `metadata.name`) from the
    /// environment, which `env` looks up; unset and empty variables are the same.
    pub fn from_env(
        pipeline: &str,
        node: &str,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Self, Disabled> {
        let var = |name: &str| {
            env(name)
                .map(|v| v.trim().to_string())
                .filter(|v| !v.is_empty())
        };
        let lease = var(fleet::LEASE_ENV).ok_or(Disabled::NoLease)?;
        let namespace = var(NAMESPACE_ENV).ok_or(Disabled::NoNamespace)?;
        for (variable, value) in [(fleet::LEASE_ENV, &lease), (NAMESPACE_ENV, &namespace)] {
            if !is_object_name(value) {
                return Err(Disabled::BadName {
                    variable,
                    value: value.clone(),
                });
            }
        }
        let api = match var(fleet::API_ENV) {
            Some(url) => url,
            None => {
                let host = var("KUBERNETES_SERVICE_HOST").ok_or(Disabled::NoApiServer)?;
                let port = var("KUBERNETES_SERVICE_PORT").unwrap_or_else(|| "443".into());
                service_url(&host, &port)
            }
        };
        let credential = |variable: &str, file: &str| {
            var(variable).map_or_else(|| Path::new(fleet::CREDENTIALS_DIR).join(file), From::from)
        };
        Ok(Self {
            lease,
            namespace,
            node: node.to_string(),
            pipeline: pipeline.to_string(),
            api: https_base(&api)?,
            token_file: credential(fleet::TOKEN_FILE_ENV, "token"),
            ca_file: credential(fleet::CA_FILE_ENV, "ca.crt"),
            interval: interval(var(fleet::INTERVAL_ENV).as_deref()),
        })
    }

    /// Where the record is applied.
    pub fn url(&self) -> String {
        format!(
            "{}/apis/coordination.k8s.io/v1/namespaces/{}/leases/{}?fieldManager={}&force=true",
            self.api,
            self.namespace,
            self.lease,
            fleet::FIELD_MANAGER
        )
    }
}

/// A DNS subdomain name (RFC 1123), as Lease and namespace names are: safe in a URL path.
fn is_object_name(name: &str) -> bool {
    name.len() <= 253
        && name.split('.').all(|part| {
            !part.is_empty()
                && !part.starts_with('-')
                && !part.ends_with('-')
                && part
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        })
}

/// The in-cluster API server's URL, as `KUBERNETES_SERVICE_HOST` and `_PORT` give it.
fn service_url(host: &str, port: &str) -> String {
    if host.contains(':') && !host.starts_with('[') {
        format!("https://[{host}]:{port}")
    } else {
        format!("https://{host}:{port}")
    }
}

/// `url` without a trailing slash, if it is an `https://` URL with a host (and no query).
fn https_base(url: &str) -> Result<String, Disabled> {
    match reqwest::Url::parse(url) {
        Ok(u)
            if u.scheme() == "https"
                && u.host().is_some()
                && u.query().is_none()
                && u.fragment().is_none() =>
        {
            Ok(url.trim_end_matches('/').to_string())
        }
        _ => Err(Disabled::NotHttps(diagnostics::url(url))),
    }
}

/// The interval in `seconds` (unset: the default), at least a second and at most a day.
fn interval(seconds: Option<&str>) -> Duration {
    let default = fleet::DEFAULT_INTERVAL_SECONDS;
    let seconds = match seconds.map(str::parse::<u64>) {
        None => default,
        Some(Ok(s)) if (1..=MAX_INTERVAL_SECONDS).contains(&s) => s,
        Some(Ok(s)) => {
            let taken = s.clamp(1, MAX_INTERVAL_SECONDS);
            tracing::warn!("{}={s}: taking {taken} seconds", fleet::INTERVAL_ENV);
            taken
        }
        Some(Err(_)) => {
            tracing::warn!(
                value = seconds.unwrap_or_default(),
                "{} is not a number of seconds: taking {default}",
                fleet::INTERVAL_ENV
            );
            default
        }
    };
    Duration::from_secs(seconds)
}

/// Starts keeping the record of `config`'s node, as the process environment says
/// ([`Settings::from_env`]), until `stop`; `None` (and a log line saying why) without it.
pub fn start(
    config: &AgentConfig,
    metrics: &Arc<Metrics>,
    stop: &CancellationToken,
) -> Option<JoinHandle<()>> {
    match Settings::from_env(&config.name, &config.node, &|name| std::env::var(name).ok()) {
        Ok(settings) => {
            tracing::info!(
                lease = %settings.lease,
                namespace = %settings.namespace,
                api = %diagnostics::url(&settings.api),
                interval = ?settings.interval,
                "keeping the node's fleet record"
            );
            Some(spawn(settings, metrics.clone(), stop.clone()))
        }
        Err(Disabled::NoLease) => {
            tracing::debug!("no fleet record: {}", Disabled::NoLease);
            None
        }
        Err(why) => {
            tracing::warn!("no fleet record: {why}");
            None
        }
    }
}

/// Whether the API server would take the record `settings` names from this agent: one
/// server-side dry run (nothing is stored), for `edge-agent doctor`. `Err` says why not.
pub async fn probe(settings: Settings) -> Result<(), WriteError> {
    let body = record(&settings, &Annotations::new(), OffsetDateTime::now_utc());
    Writer::new(settings).dry_run(&body).await
}

/// Keeps the record `settings` names up to date with `metrics` until `stop`. Now is the
/// agent's start (the first `upstream-since`).
pub fn spawn(settings: Settings, metrics: Arc<Metrics>, stop: CancellationToken) -> JoinHandle<()> {
    let started = OffsetDateTime::now_utc();
    tokio::spawn(run(settings, metrics, stop, started))
}

async fn run(
    settings: Settings,
    metrics: Arc<Metrics>,
    stop: CancellationToken,
    started: OffsetDateTime,
) {
    let mut observed = Observed::new(Snapshot::of(&metrics), started);
    let mut schedule = Schedule::new(settings.interval);
    let mut writer = Writer::new(settings);
    let first = Duration::from_millis(rand::rng().random_range(500..=1000));
    let mut next = Instant::now() + first;
    let mut look = tokio::time::interval(OBSERVE_EVERY);
    look.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            biased;
            () = stop.cancelled() => return,
            () = tokio::time::sleep_until(next) => {}
            _ = look.tick() => {
                observed.observe(Snapshot::of(&metrics), OffsetDateTime::now_utc());
                continue;
            }
        }
        let now = OffsetDateTime::now_utc();
        observed.observe(Snapshot::of(&metrics), now);
        let annotations = observed.annotations();
        let state = comparable(&annotations);
        if schedule.writes(&state) {
            let body = record(&writer.settings, &annotations, now);
            let result = tokio::select! {
                biased;
                () = stop.cancelled() => return,
                result = writer.write(&body) => result,
            };
            match result {
                Ok(()) => {
                    metrics.heartbeats.with_label_values(&["ok"]).inc();
                    metrics.heartbeat_last_success.set(now.unix_timestamp());
                    if schedule.failures > 0 {
                        tracing::info!(
                            failures = schedule.failures,
                            "the node's fleet record is written again"
                        );
                    }
                    schedule.succeeded(state);
                }
                Err(e) => {
                    metrics.heartbeats.with_label_values(&["failed"]).inc();
                    if schedule.failures == 0 {
                        tracing::warn!(
                            lease = %writer.settings.lease,
                            error = %e,
                            "writing the node's fleet record failed; retrying with backoff"
                        );
                    } else {
                        tracing::debug!(failures = schedule.failures, error = %e, "writing the node's fleet record failed");
                    }
                    schedule.failed();
                }
            }
        }
        next = Instant::now() + schedule.next_wait();
    }
}

/// The agent's state as its metrics say it, at one moment.
#[derive(Clone, Debug, Default, PartialEq)]
struct Snapshot {
    upstream_up: bool,
    backlog_records: i64,
    backlog_bytes: i64,
    oldest_seconds: u64,
    synced: u64,
    dropped: u64,
    model_sha256: Option<String>,
    fallback: bool,
    /// The node's last fallback run on this queue: (seconds, end in unix seconds,
    /// another revision), when there was one.
    fallback_last: Option<(i64, i64, bool)>,
}

impl Snapshot {
    fn of(metrics: &Metrics) -> Self {
        let dropped = metrics
            .records_dropped
            .collect()
            .iter()
            .flat_map(|family| family.get_metric())
            .map(|m| m.get_counter().get_value() as u64)
            .sum();
        let model_sha256 = metrics
            .model_info
            .collect()
            .iter()
            .flat_map(|family| family.get_metric())
            .filter(|m| m.get_gauge().get_value() == 1.0)
            .flat_map(|m| m.get_label())
            .find(|l| l.name() == "sha256")
            .map(|l| l.value().to_string());
        Self {
            upstream_up: metrics.upstream_up.get() == 1,
            backlog_records: metrics.queue_records.get(),
            backlog_bytes: metrics.queue_bytes.get(),
            // A float to an integer saturates (and NaN is 0): never wraps.
            oldest_seconds: metrics.queue_oldest_age_seconds.get().floor() as u64,
            synced: metrics.records_synced.get(),
            dropped,
            model_sha256,
            fallback: metrics.fallback_active.get() == 1,
            fallback_last: (metrics.fallback_last_end.get() > 0).then(|| {
                (
                    metrics.fallback_last_seconds.get(),
                    metrics.fallback_last_end.get(),
                    metrics.fallback_last_outdated.get() == 1,
                )
            }),
        }
    }
}

/// Annotations by key, in a stable order.
type Annotations = BTreeMap<&'static str, String>;

/// What the task has seen of the agent: the last snapshot, and when the upstream's state
/// and the count of delivered records last changed.
#[derive(Debug)]
struct Observed {
    latest: Snapshot,
    upstream_since: OffsetDateTime,
    last_sync: Option<OffsetDateTime>,
}

impl Observed {
    /// The first snapshot, taken at the agent's start.
    fn new(first: Snapshot, started: OffsetDateTime) -> Self {
        Self {
            latest: first,
            upstream_since: started,
            last_sync: None,
        }
    }

    fn observe(&mut self, now: Snapshot, at: OffsetDateTime) {
        if now.upstream_up != self.latest.upstream_up {
            self.upstream_since = at;
        }
        if now.synced > self.latest.synced {
            self.last_sync = Some(at);
        }
        self.latest = now;
    }

    /// The record's annotations ([`fleet::annotation`]), all strings.
    fn annotations(&self) -> Annotations {
        let s = &self.latest;
        let mut a = Annotations::new();
        let upstream = if s.upstream_up { "up" } else { "down" };
        a.insert(annotation::UPSTREAM, upstream.into());
        a.insert(annotation::UPSTREAM_SINCE, rfc3339(self.upstream_since));
        a.insert(annotation::BACKLOG_RECORDS, s.backlog_records.to_string());
        a.insert(annotation::BACKLOG_BYTES, s.backlog_bytes.to_string());
        a.insert(annotation::OLDEST_SECONDS, s.oldest_seconds.to_string());
        if let Some(at) = self.last_sync {
            a.insert(annotation::LAST_SYNC, rfc3339(at));
        }
        a.insert(annotation::DROPPED_RECORDS, s.dropped.to_string());
        if let Some(sha) = &s.model_sha256 {
            a.insert(annotation::MODEL_SHA256, sha.clone());
        }
        a.insert(annotation::VERSION, env!("CARGO_PKG_VERSION").into());
        if s.fallback {
            a.insert(annotation::FALLBACK, "true".into());
        }
        if let Some((seconds, end, outdated)) = s.fallback_last {
            a.insert(annotation::FALLBACK_LAST_SECONDS, seconds.to_string());
            if let Ok(end) = OffsetDateTime::from_unix_timestamp(end) {
                a.insert(annotation::FALLBACK_LAST_END, rfc3339(end));
            }
            if outdated {
                a.insert(annotation::FALLBACK_LAST_OUTDATED, "true".into());
            }
        }
        a
    }
}

/// `annotations` as compared to tell a change (see the module doc): the oldest record's
/// age by its power of two.
fn comparable(annotations: &Annotations) -> Annotations {
    let mut state = annotations.clone();
    if let Some(age) = state.get_mut(annotation::OLDEST_SECONDS) {
        let seconds = age.parse::<u64>().unwrap_or_default();
        *age = (u64::BITS - seconds.leading_zeros()).to_string();
    }
    state
}

/// The record `settings` names, as applied: its labels, the agent's state as
/// `annotations`, renewed at `now`.
fn record(settings: &Settings, annotations: &Annotations, now: OffsetDateTime) -> Value {
    let lease_seconds = settings.interval.as_secs() * u64::from(fleet::OFFLINE_AFTER_INTERVALS);
    json!({
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": {
            "name": settings.lease,
            "namespace": settings.namespace,
            "labels": {
                (MANAGED_BY.0): MANAGED_BY.1,
                (fleet::PIPELINE_LABEL): settings.pipeline,
                (fleet::NODE_LABEL): settings.node,
            },
            "annotations": annotations,
        },
        "spec": {
            "holderIdentity": settings.node,
            "leaseDurationSeconds": lease_seconds,
            "renewTime": now.format(MICROSECONDS).unwrap_or_default(),
        },
    })
}

fn rfc3339(t: OffsetDateTime) -> String {
    t.format(SECONDS).unwrap_or_default()
}

/// When to write: the decisions of the loop, without the clock.
#[derive(Debug)]
struct Schedule {
    interval: Duration,
    /// Writes failed in a row.
    failures: u32,
    /// The state last written (see [`comparable`]).
    written: Option<Annotations>,
    /// Whether the last turn was skipped.
    skipped: bool,
}

impl Schedule {
    fn new(interval: Duration) -> Self {
        Self {
            interval,
            failures: 0,
            written: None,
            skipped: false,
        }
    }

    /// Whether this turn writes `state`: after a change or a failure, and every other
    /// turn while the state is as last written.
    fn writes(&mut self, state: &Annotations) -> bool {
        let unchanged = self.failures == 0 && self.written.as_ref() == Some(state);
        self.skipped = unchanged && !self.skipped;
        !self.skipped
    }

    fn succeeded(&mut self, state: Annotations) {
        self.failures = 0;
        self.written = Some(state);
    }

    fn failed(&mut self) {
        self.failures = self.failures.saturating_add(1);
    }

    /// The wait before the next turn: the interval, or the backoff after failures;
    /// jittered by ±10%, never above [`MAX_BACKOFF`] after a failure.
    fn next_wait(&self) -> Duration {
        let wait = jitter(backoff(self.interval, self.failures));
        if self.failures > 0 {
            wait.min(MAX_BACKOFF)
        } else {
            wait
        }
    }
}

/// The wait after `failures` failed writes in a row: the interval, doubled for every
/// failure after the first, at most [`MAX_BACKOFF`] (none: the interval).
fn backoff(interval: Duration, failures: u32) -> Duration {
    match failures {
        0 => interval,
        n => interval
            .saturating_mul(2u32.saturating_pow(n - 1))
            .min(MAX_BACKOFF),
    }
}

/// `wait` ±10%.
fn jitter(wait: Duration) -> Duration {
    wait.mul_f64(rand::rng().random_range(0.9..=1.1))
}

#[cfg(test)]
mod tests;

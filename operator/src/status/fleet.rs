//! `status.fleet`: the agents' own records ([`edge_crds::fleet`]) of one pipeline, read
//! into what an operator of a fleet looks at first: who is offline, whose upstream is
//! down, who has a backlog and how old it is, which models run where, and the few nodes
//! that need a look.
//!
//! An agent is *offline* when its record was not renewed within its lease duration (3
//! heartbeat intervals) or its node is NotReady; an offline agent's last figures still
//! count in the backlog totals (what was queued there is still queued), but it is neither
//! upstream-down nor backlogged: nothing is known of it now. An online agent is
//! *backlogged* when its oldest queued record waits longer than 2 intervals: a healthy
//! agent delivers within seconds.
//!
//! A node that ran the pipeline in fallback (its agent reports the last run) is listed
//! in `fallbackRuns` for 24 hours after the run ended.
//!
//! Everything here is a function of the records and the time, so identical records give
//! an identical status; times in reasons are instants (`since ...`), not ages, so a
//! status does not change by itself while nothing happens.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use edge_crds::fleet::{DEFAULT_INTERVAL_SECONDS, OFFLINE_AFTER_INTERVALS, annotation};
use edge_crds::status::{FallbackReport, FleetStatus, ModelCount, NodeReport};
use k8s_openapi::jiff::Timestamp;

use super::rollout::human;

/// At most this many nodes in `status.fleet.worst`.
pub const MAX_WORST: usize = 5;
/// At most this many models in `status.fleet.models` (the most common).
pub const MAX_MODELS: usize = 10;
/// Fallback runs ended longer ago than this are no longer reported.
pub const FALLBACK_HORIZON_SECONDS: i64 = 24 * 3600;

/// One agent's record as the operator reads it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AgentRecord {
    /// The node it reports for.
    pub node: String,
    /// When it was last renewed (seconds since the epoch).
    pub renewed: Option<i64>,
    /// The lease duration it was written with (3 heartbeat intervals).
    pub duration_seconds: Option<i64>,
    /// Whether its upstream is up (`None`: not reported).
    pub upstream_up: Option<bool>,
    /// Since when the upstream has been as reported (seconds since the epoch).
    pub upstream_since: Option<i64>,
    /// Records queued.
    pub backlog_records: i64,
    /// Bytes queued.
    pub backlog_bytes: i64,
    /// Age of the oldest queued record, in seconds.
    pub oldest_seconds: i64,
    /// Records dropped since the agent started.
    pub dropped_records: i64,
    /// SHA-256 of its model.
    pub model: Option<String>,
    /// The node's last fallback run: (seconds, end in seconds since the epoch, another
    /// revision).
    pub fallback_last: Option<(i64, i64, bool)>,
}

impl AgentRecord {
    /// The record of `node` from the Lease's `renewTime` and duration and its annotations
    /// (unparsable figures read as absent, or 0).
    pub fn from_lease(
        node: String,
        renewed: Option<i64>,
        duration_seconds: Option<i64>,
        annotations: &BTreeMap<String, String>,
    ) -> Self {
        let number = |key: &str| {
            annotations
                .get(key)
                .and_then(|v| v.parse::<i64>().ok())
                .unwrap_or(0)
                .max(0)
        };
        let time = |key: &str| {
            annotations
                .get(key)
                .and_then(|v| v.parse::<Timestamp>().ok())
                .map(|t| t.as_second())
        };
        Self {
            node,
            renewed,
            duration_seconds,
            upstream_up: match annotations.get(annotation::UPSTREAM).map(String::as_str) {
                Some("up") => Some(true),
                Some("down") => Some(false),
                _ => None,
            },
            upstream_since: time(annotation::UPSTREAM_SINCE),
            backlog_records: number(annotation::BACKLOG_RECORDS),
            backlog_bytes: number(annotation::BACKLOG_BYTES),
            oldest_seconds: number(annotation::OLDEST_SECONDS),
            dropped_records: number(annotation::DROPPED_RECORDS),
            model: annotations
                .get(annotation::MODEL_SHA256)
                .filter(|v| !v.is_empty())
                .cloned(),
            fallback_last: time(annotation::FALLBACK_LAST_END).map(|end| {
                (
                    number(annotation::FALLBACK_LAST_SECONDS),
                    end,
                    annotations
                        .get(annotation::FALLBACK_LAST_OUTDATED)
                        .is_some_and(|v| v == "true"),
                )
            }),
        }
    }

    /// The lease duration, or the default's.
    fn duration(&self) -> i64 {
        self.duration_seconds
            .filter(|d| *d > 0)
            .unwrap_or((DEFAULT_INTERVAL_SECONDS * u64::from(OFFLINE_AFTER_INTERVALS)) as i64)
    }

    /// When the record expires (the agent counts as offline after that).
    pub fn expires(&self) -> Option<i64> {
        self.renewed.map(|r| r.saturating_add(self.duration()))
    }
}

/// How one agent is, worst first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum State {
    Offline,
    UpstreamDown,
    Backlogged,
    Fine,
}

/// `status.fleet` of the records, `None` without any. `not_ready_nodes` are the nodes
/// that are NotReady or unreachable; `now` is in seconds since the epoch.
pub fn summarize(
    records: &[AgentRecord],
    not_ready_nodes: &BTreeSet<String>,
    now: i64,
) -> Option<FleetStatus> {
    if records.is_empty() {
        return None;
    }
    let mut fleet = FleetStatus {
        reporting: count(records.len()),
        ..FleetStatus::default()
    };
    let mut worst: Vec<(State, i64, NodeReport)> = Vec::new();
    let mut models: BTreeMap<&str, i32> = BTreeMap::new();
    for record in records {
        let expired = record.expires().is_none_or(|e| now > e);
        let node_down = not_ready_nodes.contains(&record.node);
        let interval = record.duration() / i64::from(OFFLINE_AFTER_INTERVALS);
        let state = if expired || node_down {
            State::Offline
        } else if record.upstream_up == Some(false) {
            State::UpstreamDown
        } else if record.backlog_records > 0 && record.oldest_seconds > 2 * interval {
            State::Backlogged
        } else {
            State::Fine
        };
        fleet.backlog_records = fleet.backlog_records.saturating_add(record.backlog_records);
        fleet.backlog_bytes = fleet.backlog_bytes.saturating_add(record.backlog_bytes);
        fleet.dropped_records = fleet.dropped_records.saturating_add(record.dropped_records);
        fleet.oldest_backlog_seconds = fleet.oldest_backlog_seconds.max(record.oldest_seconds);
        if let Some(model) = &record.model {
            *models.entry(model).or_default() += 1;
        }
        let reason = match state {
            State::Offline if node_down => "offline: node NotReady".to_string(),
            State::Offline => match record.renewed {
                Some(renewed) => format!("offline: last heartbeat {}", instant(renewed)),
                None => "offline: no heartbeat".to_string(),
            },
            State::UpstreamDown => match record.upstream_since {
                Some(since) => format!(
                    "upstream down since {}; backlog {}",
                    instant(since),
                    bytes(record.backlog_bytes)
                ),
                None => format!("upstream down; backlog {}", bytes(record.backlog_bytes)),
            },
            State::Backlogged => format!(
                "backlog {}, oldest {}",
                bytes(record.backlog_bytes),
                age(record.oldest_seconds)
            ),
            State::Fine => continue,
        };
        match state {
            State::Offline => fleet.offline += 1,
            State::UpstreamDown => fleet.upstream_down += 1,
            State::Backlogged => fleet.backlogged += 1,
            State::Fine => {}
        }
        let node = record.node.clone();
        worst.push((state, record.oldest_seconds, NodeReport { node, reason }));
    }
    // Worst state first; within one, the oldest backlog, then by name.
    worst.sort_by(|a, b| {
        (a.0, std::cmp::Reverse(a.1), &a.2.node).cmp(&(b.0, std::cmp::Reverse(b.1), &b.2.node))
    });
    fleet.worst = worst
        .into_iter()
        .take(MAX_WORST)
        .map(|(_, _, report)| report)
        .collect();
    let mut models: Vec<ModelCount> = models
        .into_iter()
        .map(|(sha256, nodes)| ModelCount {
            sha256: sha256.to_string(),
            nodes,
        })
        .collect();
    let mut fallback: Vec<(i64, FallbackReport)> = records
        .iter()
        .filter_map(|r| {
            let (seconds, end, outdated) = r.fallback_last?;
            (now - end <= FALLBACK_HORIZON_SECONDS).then(|| {
                let node = r.node.clone();
                let ended = instant(end);
                (
                    end,
                    FallbackReport {
                        node,
                        seconds,
                        ended,
                        outdated,
                    },
                )
            })
        })
        .collect();
    fallback.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.node.cmp(&b.1.node)));
    fleet.fallback_runs = fallback
        .into_iter()
        .take(MAX_WORST)
        .map(|(_, report)| report)
        .collect();
    models.sort_by(|a, b| b.nodes.cmp(&a.nodes).then(a.sha256.cmp(&b.sha256)));
    models.truncate(MAX_MODELS);
    fleet.models = models;
    fleet.backlog = bytes(fleet.backlog_bytes);
    if fleet.backlog_records > 0 {
        fleet.oldest_backlog = age(fleet.oldest_backlog_seconds);
    }
    Some(fleet)
}

/// The earliest time (seconds since the epoch) an online record of `records` expires:
/// when the pipeline must be looked at again for that agent to count as offline in time.
pub fn next_expiry(records: &[AgentRecord], now: i64) -> Option<i64> {
    records
        .iter()
        .filter_map(AgentRecord::expires)
        .filter(|e| *e >= now)
        .min()
}

fn count(n: usize) -> i32 {
    i32::try_from(n).unwrap_or(i32::MAX)
}

/// An instant as RFC 3339 to the second.
fn instant(seconds: i64) -> String {
    Timestamp::from_second(seconds).map_or_else(|_| seconds.to_string(), |t| t.to_string())
}

/// An age as `kubectl` prints one.
fn age(seconds: i64) -> String {
    human(Duration::from_secs(u64::try_from(seconds).unwrap_or(0)))
}

/// A size in binary units: `0 B`, `512 B`, `1.5 KiB`, `12.3 MiB`.
pub fn bytes(n: i64) -> String {
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    if n < 1024 {
        return format!("{} B", n.max(0));
    }
    let mut value = n as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_800_000_000;

    fn record(node: &str) -> AgentRecord {
        AgentRecord {
            node: node.to_string(),
            renewed: Some(NOW - 10),
            duration_seconds: Some(90),
            upstream_up: Some(true),
            upstream_since: Some(NOW - 3600),
            model: Some("aa".to_string()),
            ..AgentRecord::default()
        }
    }

    #[test]
    fn no_record_no_fleet() {
        assert_eq!(summarize(&[], &BTreeSet::new(), NOW), None);
    }

    #[test]
    fn each_agent_counts_once_in_its_worst_state() {
        let stale = AgentRecord {
            renewed: Some(NOW - 91),
            upstream_up: Some(false),
            ..record("stale")
        };
        let down = AgentRecord {
            upstream_up: Some(false),
            upstream_since: Some(NOW - 300),
            backlog_records: 10,
            backlog_bytes: 2048,
            oldest_seconds: 300,
            ..record("down")
        };
        let behind = AgentRecord {
            backlog_records: 5,
            backlog_bytes: 3 * 1024 * 1024,
            oldest_seconds: 61,
            model: Some("bb".to_string()),
            ..record("behind")
        };
        let fresh = AgentRecord {
            backlog_records: 5,
            backlog_bytes: 100,
            oldest_seconds: 60,
            ..record("fresh")
        };
        let unplugged = record("unplugged");
        let records = [stale, down, behind, fresh, unplugged];
        let not_ready = BTreeSet::from(["unplugged".to_string()]);
        let fleet = summarize(&records, &not_ready, NOW).unwrap();
        assert_eq!(fleet.reporting, 5);
        assert_eq!(fleet.offline, 2, "stale record and NotReady node");
        assert_eq!(
            fleet.upstream_down, 1,
            "a stale record's upstream is unknown"
        );
        assert_eq!(fleet.backlogged, 1, "60 s is within 2 intervals of 30 s");
        assert_eq!(fleet.backlog_records, 20);
        assert_eq!(fleet.backlog_bytes, 2048 + 3 * 1024 * 1024 + 100);
        assert_eq!(fleet.backlog, "3.0 MiB");
        assert_eq!(fleet.oldest_backlog_seconds, 300);
        assert_eq!(fleet.oldest_backlog, "5m");
        assert_eq!(
            fleet.models,
            vec![
                ModelCount {
                    sha256: "aa".to_string(),
                    nodes: 4
                },
                ModelCount {
                    sha256: "bb".to_string(),
                    nodes: 1
                }
            ]
        );
        let worst: Vec<(&str, &str)> = fleet
            .worst
            .iter()
            .map(|w| (w.node.as_str(), w.reason.as_str()))
            .collect();
        assert_eq!(
            worst,
            vec![
                ("stale", "offline: last heartbeat 2027-01-15T07:58:29Z"),
                ("unplugged", "offline: node NotReady"),
                (
                    "down",
                    "upstream down since 2027-01-15T07:55:00Z; backlog 2.0 KiB"
                ),
                ("behind", "backlog 3.0 MiB, oldest 1m1s"),
            ]
        );
    }

    #[test]
    fn at_most_five_worst_the_oldest_backlogs_first() {
        let records: Vec<AgentRecord> = (0..8)
            .map(|i| AgentRecord {
                backlog_records: 1,
                backlog_bytes: 1,
                oldest_seconds: 100 + i,
                ..record(&format!("n{i}"))
            })
            .collect();
        let fleet = summarize(&records, &BTreeSet::new(), NOW).unwrap();
        assert_eq!(fleet.backlogged, 8);
        let nodes: Vec<&str> = fleet.worst.iter().map(|w| w.node.as_str()).collect();
        assert_eq!(nodes, vec!["n7", "n6", "n5", "n4", "n3"]);
    }

    #[test]
    fn the_same_records_later_give_the_same_status_until_one_expires() {
        let records = [
            AgentRecord {
                upstream_up: Some(false),
                ..record("a")
            },
            record("b"),
        ];
        let at = |t| summarize(&records, &BTreeSet::new(), t);
        assert_eq!(at(NOW), at(NOW + 80));
        assert_eq!(next_expiry(&records, NOW), Some(NOW + 80));
        assert_eq!(at(NOW + 81).unwrap().offline, 2);
        assert_eq!(next_expiry(&records, NOW + 81), None);
    }

    #[test]
    fn a_record_is_read_from_its_annotations() {
        let annotations = BTreeMap::from(
            [
                (annotation::UPSTREAM, "down"),
                (annotation::UPSTREAM_SINCE, "2026-12-05T04:50:00Z"),
                (annotation::BACKLOG_RECORDS, "12"),
                (annotation::BACKLOG_BYTES, "4096"),
                (annotation::OLDEST_SECONDS, "75"),
                (annotation::DROPPED_RECORDS, "-3"),
                (annotation::MODEL_SHA256, "abc"),
            ]
            .map(|(k, v)| (k.to_string(), v.to_string())),
        );
        let record = AgentRecord::from_lease("n1".to_string(), Some(NOW), Some(6), &annotations);
        assert_eq!(record.upstream_up, Some(false));
        assert_eq!(
            record.upstream_since,
            Some(
                "2026-12-05T04:50:00Z"
                    .parse::<Timestamp>()
                    .unwrap()
                    .as_second()
            )
        );
        assert_eq!(
            (
                record.backlog_records,
                record.backlog_bytes,
                record.oldest_seconds
            ),
            (12, 4096, 75)
        );
        assert_eq!(record.dropped_records, 0, "a negative count reads as 0");
        assert_eq!(record.model.as_deref(), Some("abc"));
        assert_eq!(record.expires(), Some(NOW + 6));
    }

    #[test]
    fn fallback_runs_of_the_last_day_are_listed_most_recent_first() {
        let run = |node: &str, ended_ago: i64, outdated: bool| AgentRecord {
            fallback_last: Some((600, NOW - ended_ago, outdated)),
            ..record(node)
        };
        let records = [
            run("old", 25 * 3600, false),
            run("yesterday", 20 * 3600, true),
            run("today", 60, false),
            record("never"),
        ];
        let fleet = summarize(&records, &BTreeSet::new(), NOW).unwrap();
        let runs: Vec<(&str, i64, bool)> = fleet
            .fallback_runs
            .iter()
            .map(|r| (r.node.as_str(), r.seconds, r.outdated))
            .collect();
        assert_eq!(runs, vec![("today", 600, false), ("yesterday", 600, true)]);
        assert_eq!(fleet.fallback_runs[0].ended, "2027-01-15T07:59:00Z");
        assert_eq!(
            fleet.offline, 0,
            "a fallback run in the past is no problem now"
        );

        let annotations = BTreeMap::from(
            [
                (annotation::FALLBACK_LAST_SECONDS, "754"),
                (annotation::FALLBACK_LAST_END, "2026-12-05T04:30:00Z"),
                (annotation::FALLBACK_LAST_OUTDATED, "true"),
            ]
            .map(|(k, v)| (k.to_string(), v.to_string())),
        );
        let read = AgentRecord::from_lease("n".to_string(), Some(NOW), None, &annotations);
        let end = "2026-12-05T04:30:00Z"
            .parse::<Timestamp>()
            .unwrap()
            .as_second();
        assert_eq!(read.fallback_last, Some((754, end, true)));
    }

    #[test]
    fn sizes_read_like_kubectl_top() {
        assert_eq!(bytes(0), "0 B");
        assert_eq!(bytes(1023), "1023 B");
        assert_eq!(bytes(1536), "1.5 KiB");
        assert_eq!(bytes(5 * 1024 * 1024 * 1024), "5.0 GiB");
    }
}

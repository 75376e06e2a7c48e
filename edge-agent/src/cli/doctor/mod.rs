//! `edge-agent doctor`: every check a technician on site would otherwise do by hand, each
//! with `ok`, `warning` or `failed` and a one-line fix. The manifest, the data directory
//! and its filesystem, the queue file, the clock, the source broker, the upstream, the
//! node's fleet record (a server-side dry run), every certificate in use and the model. Read-only towards the agent: it can run beside a
//! running agent (`kubectl exec` into the pod; the pod's environment tells it where the
//! configuration and the data are), never takes over the agent's MQTT session and never
//! sends data upstream.
//!
//! Exit status: 0 when everything is ok, 1 with warnings, 2 with a failure.

mod local;
mod network;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::config::AgentConfig;

/// Environment variable the operator sets in agent pods: the pipeline file.
pub const CONFIG_ENV: &str = edge_crds::AGENT_CONFIG_ENV;
/// Environment variable the operator sets in agent pods: the data directory.
pub const DATA_DIR_ENV: &str = edge_crds::AGENT_DATA_DIR_ENV;

/// What `doctor` checks.
#[derive(Clone, Debug)]
pub struct Options {
    /// The pipeline file.
    pub config: PathBuf,
    /// The agent's data directory.
    pub data_dir: PathBuf,
    /// The node name the pipeline is resolved for.
    pub node: String,
    /// Limit of each network check.
    pub timeout: Duration,
}

/// How a check came out.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Nothing to do.
    Ok,
    /// Works now, but needs attention.
    Warning,
    /// Broken: the pipeline cannot deliver (or start) until it is fixed.
    Failed,
}

impl Status {
    fn label(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::Warning => "warning",
            Self::Failed => "failed",
        }
    }
}

/// One check's outcome.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Check {
    /// Which check (stable, for tools): `manifest`, `data-dir`, `queue`, `clock`,
    /// `source`, `upstream`, `fleet-record`, `certificates`, `model`.
    pub name: &'static str,
    /// Its outcome.
    pub status: Status,
    /// What was found.
    pub detail: String,
    /// What to do about it (empty when ok).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub fix: String,
    /// How long it took, in milliseconds.
    pub millis: u64,
}

impl Check {
    fn ok(name: &'static str, detail: impl Into<String>) -> Self {
        Self::new(name, Status::Ok, detail, "")
    }

    fn warning(name: &'static str, detail: impl Into<String>, fix: impl Into<String>) -> Self {
        Self::new(name, Status::Warning, detail, fix)
    }

    fn failed(name: &'static str, detail: impl Into<String>, fix: impl Into<String>) -> Self {
        Self::new(name, Status::Failed, detail, fix)
    }

    fn new(
        name: &'static str,
        status: Status,
        detail: impl Into<String>,
        fix: impl Into<String>,
    ) -> Self {
        Self {
            name,
            status,
            detail: detail.into(),
            fix: fix.into(),
            millis: 0,
        }
    }

    fn timed(mut self, started: Instant) -> Self {
        self.millis = started.elapsed().as_millis() as u64;
        self
    }
}

/// Every check's outcome.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    /// `namespace/name` of the pipeline (empty when the manifest could not be read).
    pub pipeline: String,
    /// The node checked for.
    pub node: String,
    /// The checks, in the order they ran.
    pub checks: Vec<Check>,
}

impl Report {
    /// The worst status.
    pub fn status(&self) -> Status {
        self.checks
            .iter()
            .map(|c| c.status)
            .max()
            .unwrap_or(Status::Ok)
    }

    /// 0 ok, 1 warnings, 2 failures.
    pub fn exit_code(&self) -> u8 {
        match self.status() {
            Status::Ok => 0,
            Status::Warning => 1,
            Status::Failed => 2,
        }
    }

    /// The report for a terminal: one line per check, its fix under it.
    pub fn text(&self) -> String {
        let mut out = String::new();
        if !self.pipeline.is_empty() {
            out.push_str(&format!(
                "edge-agent doctor: pipeline {} on node {}\n",
                self.pipeline, self.node
            ));
        }
        for c in &self.checks {
            out.push_str(&format!(
                "{:<8} {:<13} {}\n",
                c.status.label(),
                c.name,
                c.detail
            ));
            if !c.fix.is_empty() {
                out.push_str(&format!("{:<22} fix: {}\n", "", c.fix));
            }
        }
        let count = |s: Status| self.checks.iter().filter(|c| c.status == s).count();
        out.push_str(&format!(
            "{} ok, {} warning, {} failed\n",
            count(Status::Ok),
            count(Status::Warning),
            count(Status::Failed)
        ));
        out
    }

    /// The report for tools.
    pub fn json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_default()
    }
}

/// Runs every check.
pub fn run(options: &Options) -> Report {
    let started = Instant::now();
    let config = match AgentConfig::load(&options.config, &options.node) {
        Ok(config) => config,
        Err(e) => {
            let detail = format!("{}: {}", options.config.display(), one_line(&e.to_string()));
            let check = Check::failed(
                "manifest",
                detail,
                format!(
                    "fix the fields named above (`edge-agent check --config {}` lists every problem)",
                    options.config.display()
                ),
            )
            .timed(started);
            let mut checks = vec![check];
            checks.push(local::data_dir(&options.data_dir, None));
            return Report {
                pipeline: String::new(),
                node: options.node.clone(),
                checks,
            };
        }
    };
    let mut checks = vec![
        Check::ok(
            "manifest",
            format!(
                "{} is valid for node {}",
                options.config.display(),
                options.node
            ),
        )
        .timed(started),
    ];
    checks.push(local::data_dir(&options.data_dir, Some(&config)));
    checks.push(local::queue(&options.data_dir, &config));
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build();
    match runtime {
        Ok(rt) => {
            let (upstream, date) = rt.block_on(network::upstream(&config, options.timeout));
            checks.push(local::clock(date));
            checks.push(rt.block_on(network::source(&config, &options.data_dir, options.timeout)));
            checks.push(upstream);
            checks.push(rt.block_on(network::fleet_record(&config)));
            checks.push(network::certificates(&config));
            if let Some(model) = local::model(&config, &options.data_dir, &rt) {
                checks.push(model);
            }
        }
        Err(e) => checks.push(Check::failed(
            "runtime",
            format!("cannot start the async runtime: {e}"),
            "check the process limits (threads, file descriptors)",
        )),
    }
    Report {
        pipeline: config.pipeline.clone(),
        node: options.node.clone(),
        checks,
    }
}

/// The first lines of a multi-line message, joined.
fn one_line(text: &str) -> String {
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    match lines.len() {
        0 => String::new(),
        1..=3 => lines.join("; "),
        n => format!("{} (and {} more)", lines[..3].join("; "), n - 3),
    }
}

/// Bytes for people: `12.3 MiB`.
fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// A duration for people: `3h12m`, `45s`.
fn age(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m{:02}s", s / 60, s % 60),
        3600..86_400 => format!("{}h{:02}m", s / 3600, s % 3600 / 60),
        _ => format!("{}d{:02}h", s / 86_400, s % 86_400 / 3600),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_exit_code_is_the_worst_status() {
        let mut report = Report {
            pipeline: "a/b".into(),
            node: "n".into(),
            checks: vec![Check::ok("manifest", "fine")],
        };
        assert_eq!(report.exit_code(), 0);
        report.checks.push(Check::warning("queue", "old", "look"));
        assert_eq!(report.exit_code(), 1);
        report
            .checks
            .push(Check::failed("source", "down", "start it"));
        assert_eq!(report.exit_code(), 2);
        let text = report.text();
        assert!(text.contains("failed   source        down"), "{text}");
        assert!(text.contains("fix: start it"), "{text}");
        assert!(text.ends_with("1 ok, 1 warning, 1 failed\n"), "{text}");
        let json: serde_json::Value = serde_json::from_str(&report.json()).unwrap();
        assert_eq!(json["checks"][2]["status"], "failed");
        assert_eq!(json["checks"][0].get("fix"), None);
    }

    #[test]
    fn sizes_and_ages_read_well() {
        assert_eq!(bytes(512), "512 B");
        assert_eq!(bytes(3 * 1024 * 1024 + 300 * 1024), "3.3 MiB");
        assert_eq!(age(Duration::from_secs(45)), "45s");
        assert_eq!(age(Duration::from_secs(3 * 3600 + 12 * 60)), "3h12m");
        assert_eq!(age(Duration::from_secs(2 * 86_400 + 3600)), "2d01h");
        assert_eq!(one_line("a\n\n b\nc\nd\ne"), "a; b; c (and 2 more)");
    }
}

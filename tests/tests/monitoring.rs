//! The shipped alert rules and dashboard, checked with the real Prometheus tools:
//! `promtool check rules`, `promtool test rules` (every alert fires and stays quiet in its
//! unit tests), and the dashboard's structure.

use std::process::Command;

use edge_tests::{tool, workspace_root};

fn promtool(args: &[&str]) -> String {
    let out = Command::new(tool("promtool"))
        .args(args)
        .current_dir(workspace_root())
        .output()
        .expect("promtool runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "promtool {args:?} failed:\n{text}");
    text
}

#[test]
fn alert_rules_are_valid() {
    let out = promtool(&["check", "rules", "deploy/prometheus/edgepipe-rules.yaml"]);
    assert!(out.contains("SUCCESS"), "{out}");
}

#[test]
fn every_alert_fires_and_stays_quiet_in_its_unit_tests() {
    promtool(&[
        "test",
        "rules",
        "deploy/prometheus/edgepipe-rules.test.yaml",
    ]);
    // Each alert of the rules file must appear in the tests both firing and quiet.
    let rules =
        std::fs::read_to_string(workspace_root().join("deploy/prometheus/edgepipe-rules.yaml"))
            .unwrap();
    let tests = std::fs::read_to_string(
        workspace_root().join("deploy/prometheus/edgepipe-rules.test.yaml"),
    )
    .unwrap();
    let alerts: Vec<&str> = rules
        .lines()
        .filter_map(|l| {
            l.trim()
                .strip_prefix("- alert: ")
                .or_else(|| l.trim().strip_prefix("alert: "))
        })
        .map(str::trim)
        .collect();
    assert!(alerts.len() >= 8, "expected the 8 alerts, found {alerts:?}");
    for alert in alerts {
        let cases: Vec<&str> = tests
            .split("alertname: ")
            .skip(1)
            .filter(|c| c.starts_with(alert))
            .collect();
        assert!(
            cases.len() >= 2,
            "{alert}: needs a firing and a quiet test case"
        );
    }
}

#[test]
fn example_prometheus_config_is_valid() {
    promtool(&["check", "config", "deploy/prometheus/prometheus.yml"]);
}

#[test]
fn dashboard_has_the_promised_rows_and_variables() {
    let text =
        std::fs::read_to_string(workspace_root().join("deploy/grafana/edgepipe.json")).unwrap();
    let dash: serde_json::Value = serde_json::from_str(&text).expect("dashboard is JSON");
    let vars: Vec<&str> = dash["templating"]["list"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|v| v["name"].as_str())
        .collect();
    for v in ["datasource", "namespace", "pipeline", "instance"] {
        assert!(vars.contains(&v), "variable {v} missing: {vars:?}");
    }
    let rows: Vec<&str> = dash["panels"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["type"] == "row")
        .filter_map(|p| p["title"].as_str())
        .collect();
    for r in ["Flow", "Backlog", "Sync", "Inference", "Health", "Operator"] {
        assert!(
            rows.iter().any(|t| t.starts_with(r)),
            "row {r} missing: {rows:?}"
        );
    }
}

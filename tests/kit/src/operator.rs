//! The `edge-operator` binary run on the host against a test [`Cluster`], exactly as the
//! Helm chart configures it: the arguments and environment of the chart's Deployment as
//! the API server holds it, and the identity of the chart's ServiceAccount (a token from
//! the TokenRequest API), so RBAC is exactly what the chart grants.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use serde_json::Value;

use crate::cluster::Cluster;
use crate::process::Process;
use crate::{free_port, http_get, parse_metrics, poll, workspace_bin};

/// A running operator.
pub struct Operator {
    /// Its metrics/health port on 127.0.0.1.
    pub port: u16,
    /// The ServiceAccount it authenticates as: `system:serviceaccount:<ns>:<name>`.
    pub user: String,
    /// Its identity (POD_NAME): the Lease holder name and the Events' reporting instance.
    pub identity: String,
    process: Process,
}

impl Operator {
    /// Starts the operator of the Deployment `namespace/deployment` (installed by the
    /// chart) as its ServiceAccount, with the identity `identity`.
    pub fn from_deployment(
        cluster: &Cluster,
        namespace: &str,
        deployment: &str,
        identity: &str,
    ) -> Operator {
        let object = cluster.get_json(&["deployment", deployment, "-n", namespace]);
        let pod = &object["spec"]["template"]["spec"];
        let container = &pod["containers"][0];
        let account = pod["serviceAccountName"]
            .as_str()
            .expect("the chart's Deployment names a ServiceAccount");
        let kubeconfig = cluster.service_account_kubeconfig(namespace, account, 24);
        let port = free_port();
        let args: Vec<String> = strings(&container["args"])
            .into_iter()
            .map(|a| {
                if a.starts_with("--listen=") {
                    format!("--listen=127.0.0.1:{port}")
                } else {
                    a
                }
            })
            .collect();
        let mut command = Command::new(workspace_bin("edge-operator"));
        command
            .args(&args)
            .env("KUBECONFIG", &kubeconfig)
            .env("POD_NAME", identity)
            .env("POD_NAMESPACE", namespace);
        for var in container["env"].as_array().into_iter().flatten() {
            if let (Some(name), Some(value)) = (var["name"].as_str(), var["value"].as_str()) {
                command.env(name, value);
            }
        }
        let log = cluster.log_path(&format!("operator-{identity}"));
        let process = Process::spawn(&format!("edge-operator {identity}"), &command, &log);
        let operator = Operator {
            port,
            user: format!("system:serviceaccount:{namespace}:{account}"),
            identity: identity.to_string(),
            process,
        };
        poll(Duration::from_secs(60), "the operator's /livez", || {
            matches!(http_get(port, "/livez"), Some((200, _))).then_some(())
        });
        operator
    }

    /// Whether `/readyz` answers 200.
    pub fn ready(&self) -> bool {
        matches!(http_get(self.port, "/readyz"), Some((200, _)))
    }

    /// The operator's metrics, by series.
    pub fn metrics(&self) -> BTreeMap<String, f64> {
        http_get(self.port, "/metrics")
            .map(|(_, body)| parse_metrics(&body))
            .unwrap_or_default()
    }

    /// The sum of every series of metric `name`.
    pub fn metric_sum(&self, name: &str) -> f64 {
        self.metrics()
            .iter()
            .filter(|(series, _)| {
                series.as_str() == name || series.starts_with(&format!("{name}{{"))
            })
            .map(|(_, v)| v)
            .sum()
    }

    /// The operator's process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.process.pid()
    }

    /// kill -9: no chance to release the Lease.
    pub fn kill(&mut self) {
        self.process.signal("KILL");
        self.process.stop();
    }

    /// The operator's log file.
    pub fn log(&self) -> PathBuf {
        self.process.log().to_path_buf()
    }

    /// The last lines of its log.
    pub fn log_tail(&self, lines: usize) -> String {
        self.process.log_tail(lines)
    }
}

fn strings(value: &Value) -> Vec<String> {
    value
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|v| v.as_str().map(str::to_string))
        .collect()
}

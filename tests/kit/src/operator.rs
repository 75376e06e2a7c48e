//! The `edge-operator` binary run on the host against a test [`Cluster`], exactly as the
//! Helm chart configures it: the arguments and environment of the chart's Deployment as
//! the API server holds it, the files of the ConfigMaps it mounts (such as the tenant
//! policy), and the identity of the chart's ServiceAccount (a token from the
//! TokenRequest API), so RBAC is exactly what the chart grants.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
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
        let files = cluster.dir().join(format!("operator-{identity}-files"));
        let mounts = config_map_mounts(cluster, namespace, pod, container, &files);
        let args: Vec<String> = strings(&container["args"])
            .into_iter()
            .map(|a| {
                if a.starts_with("--listen=") {
                    return format!("--listen=127.0.0.1:{port}");
                }
                // A file of a mounted ConfigMap: the copy on the host.
                for (mount_path, host_dir) in &mounts {
                    let prefix = format!("={mount_path}/");
                    if let Some(at) = a.find(&prefix) {
                        return format!(
                            "{}={}/{}",
                            &a[..at],
                            host_dir.display(),
                            &a[at + prefix.len()..]
                        );
                    }
                }
                a
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
        crate::metrics::sum(&self.metrics(), name)
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

/// Writes the data of every ConfigMap the container mounts (as the cluster holds it) into
/// a directory under `files`, one per volume; returns each mount path with its copy.
fn config_map_mounts(
    cluster: &Cluster,
    namespace: &str,
    pod: &Value,
    container: &Value,
    files: &Path,
) -> Vec<(String, PathBuf)> {
    let mut out = vec![];
    for mount in container["volumeMounts"].as_array().into_iter().flatten() {
        let (Some(name), Some(mount_path)) = (mount["name"].as_str(), mount["mountPath"].as_str())
        else {
            continue;
        };
        let Some(config_map) = pod["volumes"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|v| v["name"] == name)
            .and_then(|v| v["configMap"]["name"].as_str())
        else {
            continue;
        };
        let object = cluster.get_json(&["configmap", config_map, "-n", namespace]);
        let dir = files.join(name);
        std::fs::create_dir_all(&dir).expect("directory for a mounted ConfigMap");
        for (key, value) in object["data"].as_object().into_iter().flatten() {
            std::fs::write(dir.join(key), value.as_str().unwrap_or_default())
                .expect("write a mounted ConfigMap's file");
        }
        out.push((mount_path.trim_end_matches('/').to_string(), dir));
    }
    out
}

fn strings(value: &Value) -> Vec<String> {
    value
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|v| v.as_str().map(str::to_string))
        .collect()
}

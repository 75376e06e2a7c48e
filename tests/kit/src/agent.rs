//! The `edge-agent` binary as tests run it: a config file and data directory of its own,
//! a log file, a free metrics port; kill -9, SIGTERM and restart on the same files; and
//! its `/metrics` parsed into series.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use crate::{free_port, parse_metrics, workspace_bin};

/// The agent binary, run with a config file and data directory of its own.
pub struct Agent {
    pub metrics_port: u16,
    pub data_dir: PathBuf,
    pub config: PathBuf,
    log: PathBuf,
    env: Vec<(String, String)>,
    child: Option<Child>,
    starts: usize,
    /// Runs `edge-agent fallback` on `data_dir` (its stored pipeline) instead of `run`.
    fallback: bool,
}

impl Agent {
    /// Writes `config_yaml` into `dir` and starts the agent on it.
    pub fn start(dir: &Path, config_yaml: &str) -> Self {
        Self::start_with_env(dir, config_yaml, &[])
    }

    /// Like [`Agent::start`], with extra environment variables (what the operator sets in
    /// the pod: `HOST_IP`, `NODE_NAME`, secret values).
    pub fn start_with_env(dir: &Path, config_yaml: &str, env: &[(&str, &str)]) -> Self {
        let mut agent = Self::prepare(dir, config_yaml, env);
        agent.restart();
        agent
    }

    /// Like [`Agent::start`], on the data directory `data_dir` (another agent's, to see
    /// two agents meet on one queue).
    pub fn start_on(dir: &Path, config_yaml: &str, data_dir: &Path) -> Self {
        let mut agent = Self::prepare(dir, config_yaml, &[]);
        agent.data_dir = data_dir.to_path_buf();
        agent.restart();
        agent
    }

    /// `edge-agent fallback --grace 0s` on `data_dir`: the node's fallback running the
    /// pipeline an agent stored there. Its log and files go to `dir`.
    pub fn start_fallback(dir: &Path, data_dir: &Path) -> Self {
        let mut agent = Self::prepare(dir, "", &[]);
        agent.data_dir = data_dir.to_path_buf();
        agent.config = data_dir.join("pipeline.yaml");
        agent.fallback = true;
        agent.restart();
        agent
    }

    fn prepare(dir: &Path, config_yaml: &str, env: &[(&str, &str)]) -> Self {
        let config = dir.join("pipeline.yaml");
        if !config_yaml.is_empty() {
            std::fs::write(&config, config_yaml).expect("write config");
        }
        Self {
            metrics_port: free_port(),
            data_dir: dir.join("data"),
            config,
            log: dir.join("agent.log"),
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            child: None,
            starts: 0,
            fallback: false,
        }
    }

    /// Starts the agent again (after a kill or a stop), on the same files.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "agent already running");
        self.starts += 1;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("agent log");
        let mut command = Command::new(workspace_bin("edge-agent"));
        if self.fallback {
            command.args(["fallback", "--grace", "0s"]);
        } else {
            command.arg("run").arg("--config").arg(&self.config);
        }
        command
            .arg("--data-dir")
            .arg(&self.data_dir)
            .arg("--listen")
            .arg(format!("127.0.0.1:{}", self.metrics_port));
        // The node name comes from NODE_NAME when the test sets it, as in a pod.
        if !self.env.iter().any(|(k, _)| k == "NODE_NAME") {
            command.arg("--node-name").arg("edge-test");
        }
        // RUST_LOG first, so a test (or a benchmark, which wants "error") may set its own.
        let child = command
            .env("RUST_LOG", "info,edge_agent=debug")
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn edge-agent");
        self.child = Some(child);
    }

    /// SIGKILL: no chance to flush anything.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM, then waits for the exit.
    pub fn terminate(&mut self) -> ExitStatus {
        let mut child = self.child.take().expect("agent running");
        let status = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .expect("kill -TERM");
        assert!(status.success());
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(status) = child.try_wait().expect("wait") {
                return status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("agent did not stop on SIGTERM:\n{}", self.log_text());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits for the agent to exit on its own (a refused start): its exit status.
    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let mut child = self.child.take().expect("agent running");
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = child.try_wait().expect("wait") {
                return status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!(
                    "agent still running after {timeout:?}:\n{}",
                    self.log_text()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Panics (with the agent's log) if the agent has exited.
    pub fn assert_running(&mut self) {
        if let Some(child) = self.child.as_mut()
            && let Ok(Some(status)) = child.try_wait()
        {
            panic!("agent exited with {status}:\n{}", self.log_text());
        }
    }

    /// The agent's process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The agent's peak resident memory so far (`VmHWM` of `/proc/<pid>/status`), bytes.
    pub fn peak_rss_bytes(&self) -> u64 {
        self.memory().peak
    }

    /// The agent's memory now, from `/proc/<pid>/status`.
    pub fn memory(&self) -> Memory {
        let pid = self.child.as_ref().expect("agent running").id();
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
                .unwrap_or_else(|| panic!("{name} in /proc/{pid}/status"))
        };
        Memory {
            peak: field("VmHWM") * 1024,
            resident: field("VmRSS") * 1024,
            anonymous: field("RssAnon") * 1024,
            file: field("RssFile") * 1024,
            threads: field("Threads"),
        }
    }

    /// The agent's log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// GET `path` on the agent's endpoint: (status, body), or `None` if not reachable.
    pub fn get(&self, path: &str) -> Option<(u16, String)> {
        http_get(self.metrics_port, path)
    }

    /// The agent's metrics, by series (`name{labels}` as exported).
    pub fn metrics(&mut self) -> BTreeMap<String, f64> {
        self.assert_running();
        self.get("/metrics")
            .map(|(_, body)| parse_metrics(&body))
            .unwrap_or_default()
    }

    /// One series' value (0 when absent).
    pub fn metric(&mut self, series: &str) -> f64 {
        self.metrics().get(series).copied().unwrap_or(0.0)
    }

    /// Waits for `/readyz` to answer 200.
    pub async fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            self.assert_running();
            if matches!(self.get("/readyz"), Some((200, _))) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "agent not ready:\n{}",
                self.log_text()
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// Waits until the agent's log contains `needle`.
    pub async fn wait_log(&mut self, needle: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let log = self.log_text();
            if log.contains(needle) {
                return log;
            }
            self.assert_running();
            assert!(
                Instant::now() < deadline,
                "{needle:?} not logged within {timeout:?}:\n{log}"
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// Waits until the series `series` reaches at least `value`.
    pub async fn wait_metric(&mut self, series: &str, value: f64, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let got = self.metric(series);
            if got >= value {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{series} = {got}, expected >= {value} within {timeout:?}\n{}",
                self.log_text()
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A bare HTTP/1.0 GET against 127.0.0.1.
pub fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").ok()?;
    let mut text = String::new();
    stream.read_to_string(&mut text).ok()?;
    let status = text.split_whitespace().nth(1)?.parse().ok()?;
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Some((status, body))
}

/// An agent's memory, bytes (threads: a count), from `/proc/<pid>/status`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Memory {
    /// Peak resident set so far (`VmHWM`).
    pub peak: u64,
    /// Resident set now (`VmRSS`).
    pub resident: u64,
    /// Anonymous (heap, stacks) part of it (`RssAnon`).
    pub anonymous: u64,
    /// File-backed part of it (`RssFile`: the binary's pages, mapped files).
    pub file: u64,
    /// Threads now.
    pub threads: u64,
}

impl std::fmt::Display for Memory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mib = |b: u64| b as f64 / 1048576.0;
        write!(
            f,
            "{:.1} MiB resident ({:.1} MiB anonymous, {:.1} MiB file-backed), {} threads; peak {:.1} MiB",
            mib(self.resident),
            mib(self.anonymous),
            mib(self.file),
            self.threads,
            mib(self.peak)
        )
    }
}

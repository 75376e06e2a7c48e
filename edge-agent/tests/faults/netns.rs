//! A network namespace of the test's own, joined to the host by a veth pair with
//! link-local addresses (169.254.x.1 on the host, .2 inside), and a receiver process
//! (`receiver.py`) listening inside it. The link can be cut and restored; dropping the
//! guard kills the receiver and deletes the namespace and the pair, also on panic.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::run_ok;

/// The receiver's own network namespace and the process in it.
pub struct CloudNamespace {
    name: String,
    host_if: String,
    inner_if: String,
    /// Address of the receiver, reachable from the host while the link is up.
    pub address: String,
    pub port: u16,
    dir: tempfile::TempDir,
    receiver: Option<Child>,
}

impl CloudNamespace {
    /// Creates the namespace and the link, and starts the receiver on port 8080 inside.
    pub fn start() -> Self {
        let id = std::process::id();
        let subnet = id % 250 + 1;
        let name = format!("epf-{id}");
        let host_if = format!("epfh{}", id % 100_000);
        let inner_if = format!("epfc{}", id % 100_000);
        // Leftovers of an earlier run with the same pid.
        let _ = Command::new("ip").args(["netns", "del", &name]).status();
        let _ = Command::new("ip").args(["link", "del", &host_if]).status();
        run_ok(Command::new("ip").args(["netns", "add", &name]));
        let mut ns = Self {
            name: name.clone(),
            host_if: host_if.clone(),
            inner_if: inner_if.clone(),
            address: format!("169.254.{subnet}.2"),
            port: 8080,
            dir: tempfile::tempdir().expect("tempdir"),
            receiver: None,
        };
        let ip = |args: &[&str]| run_ok(Command::new("ip").args(args));
        ip(&[
            "link", "add", &host_if, "type", "veth", "peer", "name", &inner_if,
        ]);
        ip(&["link", "set", &inner_if, "netns", &name]);
        ip(&[
            "addr",
            "add",
            &format!("169.254.{subnet}.1/30"),
            "dev",
            &host_if,
        ]);
        ip(&["link", "set", &host_if, "up"]);
        ip(&[
            "-n",
            &name,
            "addr",
            "add",
            &format!("{}/30", ns.address),
            "dev",
            &inner_if,
        ]);
        ip(&["-n", &name, "link", "set", &inner_if, "up"]);
        ip(&["-n", &name, "link", "set", "lo", "up"]);
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/faults/receiver.py");
        let log = std::fs::File::create(ns.dir.path().join("receiver.log")).expect("log");
        let child = Command::new("ip")
            .args(["netns", "exec", &name, "python3"])
            .arg(&script)
            .arg(&ns.address)
            .arg(ns.port.to_string())
            .arg(ns.dir.path())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start the receiver in the namespace (python3)");
        ns.receiver = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while !ns.dir.path().join("ready").exists() {
            assert!(
                Instant::now() < deadline,
                "the receiver did not start: {}",
                std::fs::read_to_string(ns.dir.path().join("receiver.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        ns
    }

    /// The sink URL of the receiver.
    pub fn url(&self) -> String {
        format!("http://{}:{}/ingest", self.address, self.port)
    }

    /// Cuts (`false`) or restores (`true`) the link at the receiver's end: the host keeps
    /// its route, packets are dropped, connections hang as on a cut cable (taking the
    /// host's end down instead would remove the route and send the traffic elsewhere).
    pub fn link(&self, up: bool) {
        let state = if up { "up" } else { "down" };
        run_ok(Command::new("ip").args(["-n", &self.name, "link", "set", &self.inner_if, state]));
    }

    /// From now on the receiver answers `status` (None: 200 and records).
    pub fn answer(&self, status: Option<u16>) {
        self.control("status", status.map(u64::from));
    }

    /// From now on the receiver waits this long before answering.
    pub fn delay(&self, delay: Option<Duration>) {
        self.control("delay_ms", delay.map(|d| d.as_millis() as u64));
    }

    fn control(&self, name: &str, value: Option<u64>) {
        let path: PathBuf = self.dir.path().join(name);
        match value {
            Some(v) => std::fs::write(&path, v.to_string()).expect("write control file"),
            None => {
                let _ = std::fs::remove_file(&path);
            }
        }
    }

    /// The records of every accepted request so far.
    pub fn accepted(&self) -> Vec<Value> {
        let text =
            std::fs::read_to_string(self.dir.path().join("accepted.jsonl")).unwrap_or_default();
        // Only complete lines: the last one may still be being written.
        let complete = text.rfind('\n').map_or("", |end| &text[..end]);
        complete
            .lines()
            .filter_map(|l| serde_json::from_str::<Vec<Value>>(l).ok())
            .flatten()
            .collect()
    }
}

impl Drop for CloudNamespace {
    fn drop(&mut self) {
        if let Some(mut child) = self.receiver.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = Command::new("ip")
            .args(["link", "del", &self.host_if])
            .status();
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

//! Helpers of the fault tests (`fault_*.rs`): a seeded random source whose seed is
//! printed, the soak switch (the restartable broker is the kit's `Mosquitto::persistent`),
//! readings identified by their message index, the exact-set check
//! "deduplicated by (node, seq), the receiver holds every index once and no seq carried
//! two different records", and guards that undo root-only setup (network namespaces,
//! tmpfs mounts) even when a test panics.

#![allow(dead_code)]

pub mod netns;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use rand::SeedableRng;
use rand::rngs::StdRng;
use serde_json::Value;

/// True when `EDGEPIPE_SOAK=1`: the long variants of the fault tests.
pub fn soak() -> bool {
    std::env::var("EDGEPIPE_SOAK").is_ok_and(|v| v == "1")
}

/// A random source seeded from `EDGEPIPE_FAULT_SEED` (or the clock); the seed is printed
/// so a failing run can be replayed.
pub fn seeded_rng(test: &str) -> StdRng {
    let seed = std::env::var("EDGEPIPE_FAULT_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| d.as_nanos() as u64)
        });
    eprintln!("{test}: EDGEPIPE_FAULT_SEED={seed}");
    StdRng::seed_from_u64(seed)
}

/// Fails with a clear message when not root: the test needs real namespaces or mounts.
pub fn require_root(test: &str) {
    let uid = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(1).map(str::to_owned))
        })
        .unwrap_or_default();
    assert_eq!(
        uid, "0",
        "{test} needs root (network namespaces, tmpfs mounts); run tests/run.sh as root"
    );
}

/// A reading whose value is its message index `i` (the identity checked at the receiver).
pub fn indexed_reading(i: u64) -> (String, String) {
    let device = format!("d{}", i % 7);
    let payload = format!(
        r#"{{"device_id":"{device}","value":{i},"timestamp":{}}}"#,
        1_795_608_000_000u64 + i
    );
    (format!("sensors/{device}/temperature"), payload)
}

/// The accepted records deduplicated by (node, seq): the message indices they carry, and
/// how many indices arrived under more than one seq (a redelivery after a crash between
/// commit and PUBACK: at-least-once, allowed). Panics if one seq carried two different
/// records.
pub fn indices_by_seq(records: &[Value]) -> (BTreeSet<u64>, usize) {
    let mut by_seq: BTreeMap<(String, u64), &Value> = BTreeMap::new();
    for r in records {
        let id = (
            r["node"].as_str().unwrap_or_default().to_string(),
            r["seq"].as_u64().expect("every record has a seq"),
        );
        if let Some(previous) = by_seq.insert(id.clone(), r) {
            assert_eq!(previous, r, "seq {id:?} was reused for a different record");
        }
    }
    let mut indices = BTreeSet::new();
    let mut redelivered = 0;
    for r in by_seq.values() {
        let i = r["value"].as_f64().expect("value") as u64;
        if !indices.insert(i) {
            redelivered += 1;
        }
    }
    (indices, redelivered)
}

/// Describes how `got` differs from `0..n`, for assertion messages.
pub fn difference(got: &BTreeSet<u64>, n: u64) -> String {
    let missing: Vec<u64> = (0..n).filter(|i| !got.contains(i)).take(20).collect();
    let extra: Vec<&u64> = got.iter().filter(|i| **i >= n).take(20).collect();
    format!(
        "{} of {n} indices; first missing {missing:?}; unexpected {extra:?}",
        got.len()
    )
}

/// The pid of the running agent whose command line names `config`.
pub fn agent_pid(config: &Path) -> Option<u32> {
    let needle = config.to_string_lossy().into_owned();
    std::fs::read_dir("/proc").ok()?.find_map(|e| {
        let e = e.ok()?;
        let pid: u32 = e.file_name().to_str()?.parse().ok()?;
        let cmdline = std::fs::read(e.path().join("cmdline")).ok()?;
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        (cmdline.contains("edge-agent run") && cmdline.contains(&needle)).then_some(pid)
    })
}

/// A `/proc/<pid>/status` field in kB (`VmRSS`, `VmHWM`).
pub fn status_kb(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find(|l| l.starts_with(field))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// A tmpfs mounted on a fresh temporary directory; unmounted on drop (also on panic).
pub struct Tmpfs {
    pub path: PathBuf,
    _dir: tempfile::TempDir,
}

impl Tmpfs {
    /// Mounts a tmpfs of `size` (`mount -o size=`, e.g. `2m`).
    pub fn mount(size: &str) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().to_path_buf();
        run_ok(
            Command::new("mount")
                .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
                .arg(&path),
        );
        Self { path, _dir: dir }
    }

    /// Grows (or shrinks) the mounted tmpfs in place.
    pub fn resize(&self, size: &str) {
        run_ok(
            Command::new("mount")
                .args(["-o", &format!("remount,size={size}")])
                .arg(&self.path),
        );
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.path).status();
    }
}

/// Runs `cmd` and panics with its output unless it succeeds.
pub fn run_ok(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Publishes readings `range` with QoS 1 through broker restarts: every reading not yet
/// acknowledged by the broker when the connection drops is published again on a new
/// connection, until the broker acknowledged them all. Paced at about `per_10ms` readings
/// per 10 ms so the stream spans the faults. Returns how many connections it took.
pub async fn publish_through_faults(
    port: u16,
    client: &str,
    range: std::ops::Range<u64>,
    per_10ms: u64,
) -> usize {
    use rumqttc::{AsyncClient, Event, Incoming, MqttOptions, Outgoing, QoS};
    use std::collections::{HashMap, VecDeque};

    let mut todo: Vec<u64> = range.collect();
    let mut connections = 0;
    let deadline = Instant::now() + Duration::from_secs(120);
    while !todo.is_empty() {
        assert!(
            Instant::now() < deadline,
            "publisher: {} readings left",
            todo.len()
        );
        connections += 1;
        let mut options = MqttOptions::new(format!("{client}-{connections}"), "127.0.0.1", port);
        options.set_inflight(200);
        let (mqtt, mut events) = AsyncClient::new(options, 256);
        let sending = todo.clone();
        let sender = tokio::spawn(async move {
            for (n, i) in sending.into_iter().enumerate() {
                let (topic, payload) = indexed_reading(i);
                if mqtt
                    .publish(topic, QoS::AtLeastOnce, false, payload)
                    .await
                    .is_err()
                {
                    return;
                }
                if per_10ms > 0 && n as u64 % per_10ms == per_10ms - 1 {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
        });
        let mut order: VecDeque<u64> = todo.iter().copied().collect();
        let mut inflight: HashMap<u16, u64> = HashMap::new();
        let mut acked = BTreeSet::new();
        while acked.len() < todo.len() {
            match tokio::time::timeout(Duration::from_secs(10), events.poll()).await {
                Ok(Ok(Event::Outgoing(Outgoing::Publish(pkid)))) => {
                    if let Some(i) = order.pop_front() {
                        inflight.insert(pkid, i);
                    }
                }
                Ok(Ok(Event::Incoming(Incoming::PubAck(ack)))) => {
                    if let Some(i) = inflight.remove(&ack.pkid) {
                        acked.insert(i);
                    }
                }
                Ok(Ok(_)) => {}
                Ok(Err(_)) | Err(_) => break,
            }
        }
        sender.abort();
        todo.retain(|i| !acked.contains(i));
        if !todo.is_empty() {
            // The broker is restarting: try again shortly.
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    connections
}

/// How long a phase may take: the soak variants move many times more data.
pub fn patience() -> Duration {
    Duration::from_secs(if soak() { 300 } else { 60 })
}

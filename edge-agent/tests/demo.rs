//! `edge-agent demo` as the real binary: a 10-second run exits 0 and its summary shows
//! readings in, everything forwarded delivered (nothing lost, no backlog), a cloud that
//! really was offline for a while, and anomalies found by the shipped model, each injected
//! spike raising exactly one local alert.

use std::collections::BTreeMap;
use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Runs the demo binary with `args`; returns (success, stdout, stderr).
fn demo(args: &[&str], timeout: Duration) -> (bool, String, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_edge-agent"))
        .arg("demo")
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn edge-agent demo");
    let mut stdout = child.stdout.take().expect("stdout");
    let mut stderr = child.stderr.take().expect("stderr");
    let out = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stdout.read_to_string(&mut s);
        s
    });
    let err = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the demo did not exit within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    (
        status.success(),
        out.join().unwrap_or_default(),
        err.join().unwrap_or_default(),
    )
}

/// The `key=value` pairs of the `summary` line.
fn summary(stdout: &str) -> BTreeMap<String, String> {
    let line = stdout
        .lines()
        .find(|l| l.starts_with("summary "))
        .unwrap_or_else(|| panic!("no summary line in:\n{stdout}"));
    line.split_whitespace()
        .skip(1)
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn number(summary: &BTreeMap<String, String>, key: &str) -> f64 {
    let raw = summary
        .get(key)
        .unwrap_or_else(|| panic!("no {key} in {summary:?}"));
    raw.trim_end_matches(['s', '%'])
        .parse()
        .unwrap_or_else(|_| panic!("{key}={raw} is not a number"))
}

#[test]
fn a_ten_second_demo_delivers_everything_through_an_outage() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (ok, stdout, stderr) = demo(
        &[
            "--duration",
            "10s",
            "--sensors",
            "5",
            "--rate",
            "10",
            "--data-dir",
            data.to_str().unwrap(),
        ],
        Duration::from_secs(60),
    );
    assert!(ok, "demo failed:\n{stdout}\n{stderr}");
    let s = summary(&stdout);
    let get = |k: &str| number(&s, k);

    assert!(get("readings_in") > 0.0, "{s:?}");
    assert!(get("readings_in") <= get("published"), "{s:?}");
    assert!(get("forwarded") > 0.0, "{s:?}");
    assert_eq!(get("delivered"), get("forwarded"), "{s:?}");
    assert_eq!(get("backlog"), 0.0, "{s:?}");
    assert_eq!(get("lost"), 0.0, "{s:?}");
    // Offline from 30% to 60% of the run.
    assert!((2.0..=5.0).contains(&get("cloud_offline")), "{s:?}");
    // The shipped model flags the injected spikes: each stays in the model's window for
    // 16 readings, so a spike is several anomaly records (all sent upstream) but one
    // alert episode, hence exactly one local alert.
    assert!(get("spikes") > 0.0, "{s:?}");
    assert!(get("anomalies") > get("spikes"), "{s:?}");
    assert_eq!(
        get("alerts"),
        get("spikes"),
        "one alert per injected spike: {s:?}"
    );
    assert!(get("bandwidth_saved") > 0.0, "{s:?}");

    // Not a terminal: one progress line per refresh; the outage shows, with records held
    // in the queue meanwhile.
    let progress: Vec<&str> = stdout.lines().filter(|l| l.starts_with('[')).collect();
    assert!(progress.len() >= 8, "{stdout}");
    assert!(
        progress
            .iter()
            .any(|l| l.contains("cloud=DOWN") && !l.contains("backlog=0 ")),
        "{stdout}"
    );
    assert!(data.join("anomaly_autoencoder.tflite").is_file());
    assert!(data.join("queue.db").is_file());
}

#[test]
fn out_of_range_flags_are_refused() {
    let (ok, _, stderr) = demo(&["--sensors", "0"], Duration::from_secs(20));
    assert!(!ok);
    assert!(
        stderr.contains("--sensors must be between 1 and 1000"),
        "{stderr}"
    );
}

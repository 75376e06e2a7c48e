//! The queue's limits through the real agent: `maxBytes` with `dropNewest` and
//! `dropOldest` (every missing record counted), `maxAge`, a batch the upstream rejects
//! (dead-lettered, listed, replayed once the upstream is fixed, purged; sync goes on),
//! refused credentials (paused, nothing
//! dead-lettered), and a corrupt queue file at start.

use crate::common;

use std::collections::BTreeSet;
use std::process::Command;
use std::time::Duration;

use common::*;

/// Readings published by the cap tests; each record is about 300 bytes (a device id of
/// 121 bytes, near the 128-byte limit), so the smallest queue (64 KiB) holds about 220.
const N: i64 = 400;

fn long_device() -> String {
    format!("d{}", "x".repeat(120))
}

/// Publishes N readings (values 0..N) into a 64 KiB queue while the upstream is down,
/// then brings the upstream up; returns the values that arrived and the drop count.
async fn fill_while_offline(when_full: &str, client_id: &str) -> (BTreeSet<i64>, f64) {
    let broker = Mosquitto::start();
    let mut receiver = Receiver::down();
    let dir = tempfile::tempdir().unwrap();
    prepare_session(broker.port, client_id, &[TOPIC]).await;
    let buffer = format!("{{maxBytes: 64Ki, whenFull: {when_full}, durability: os}}");
    let yaml = Pipeline {
        broker_port: broker.port,
        client_id,
        receiver_port: receiver.port,
        buffer: &buffer,
        batch_size: 5,
        ..Pipeline::default()
    }
    .yaml();
    let mut agent = Agent::start(dir.path(), &yaml);
    let mut publisher = Publisher::connect(broker.port, &format!("{client_id}-pub"));
    let device = long_device();
    publish_readings(&mut publisher, &device, 0..N).await;
    // Every message has an outcome (stored or dropped) once its unit completed.
    agent
        .wait_metric(
            &series("edge_agent_ingest_to_durable_seconds_count", &[]),
            N as f64,
            Duration::from_secs(15),
        )
        .await;
    let queued = agent.metric(&series("edge_agent_queue_bytes", &[]));
    assert!(
        queued > 60_000.0 && queued <= 65_536.0,
        "queue bytes {queued}: not full, or above maxBytes"
    );
    assert_eq!(
        agent.metric(&series("edge_agent_queue_capacity_bytes", &[])),
        65_536.0
    );
    let dropped = agent.metric(&series(
        "edge_agent_records_dropped_total",
        &[("reason", "queue_full")],
    ));
    receiver.resume().await;
    eventually(Duration::from_secs(15), "the queue drained", async || {
        (agent.metric(&series("edge_agent_queue_records", &[])) == 0.0
            && agent.metric(&series("edge_agent_records_synced_total", &[])) > 0.0)
            .then_some(())
    })
    .await;
    let got = values(&receiver.accepted());
    assert_eq!(
        agent.metric(&series(
            "edge_agent_records_dropped_total",
            &[("reason", "queue_full")]
        )),
        dropped,
        "nothing dropped after the upstream came back"
    );
    (got, dropped)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drop_newest_keeps_the_oldest_and_counts_every_record_it_refused() {
    let (got, dropped) = fill_while_offline("dropNewest", "agent-newest").await;
    assert!(dropped > 0.0, "64 KiB cannot hold {N} records");
    assert_eq!(
        got.len() as f64 + dropped,
        N as f64,
        "the drop counter equals the records missing"
    );
    let kept: BTreeSet<i64> = (0..got.len() as i64).collect();
    assert_eq!(got, kept, "dropNewest keeps the first readings");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drop_oldest_keeps_the_newest_and_counts_every_record_it_evicted() {
    let (got, dropped) = fill_while_offline("dropOldest", "agent-oldest").await;
    assert!(dropped > 0.0, "64 KiB cannot hold {N} records");
    assert_eq!(
        got.len() as f64 + dropped,
        N as f64,
        "the drop counter equals the records missing"
    );
    let kept: BTreeSet<i64> = (N - got.len() as i64..N).collect();
    assert_eq!(got, kept, "dropOldest keeps the last readings");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_older_than_max_age_are_dropped_and_counted() {
    let broker = Mosquitto::start();
    let receiver = Receiver::down();
    let (_dir, mut agent) = Pipeline {
        client_id: "agent-age",
        buffer: "{maxAge: 1s}",
        ..Pipeline::default()
    }
    .start_agent(&broker, receiver.port)
    .await;
    let mut publisher = Publisher::connect(broker.port, "agent-age-pub");
    publish_readings(&mut publisher, "a", 0..10).await;
    agent
        .wait_metric(
            &series("edge_agent_records_dropped_total", &[("reason", "max_age")]),
            10.0,
            Duration::from_secs(10),
        )
        .await;
    assert_eq!(agent.metric(&series("edge_agent_queue_records", &[])), 0.0);
    assert_eq!(
        agent.metric(&series("edge_agent_queue_oldest_age_seconds", &[])),
        0.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rejected_batch_is_dead_lettered_once_then_replayed_or_purged_while_the_agent_runs() {
    let broker = Mosquitto::start();
    let receiver = Receiver::start().await;
    receiver.rule(|records| {
        records
            .iter()
            .any(|r| r["device"] == "bad")
            .then_some(Reply::Status(400))
    });
    let dir = tempfile::tempdir().unwrap();
    prepare_session(broker.port, "agent-dead", &[TOPIC]).await;
    let yaml = Pipeline {
        broker_port: broker.port,
        client_id: "agent-dead",
        receiver_port: receiver.port,
        batch_size: 5,
        ..Pipeline::default()
    }
    .yaml();
    let mut agent = Agent::start(dir.path(), &yaml);
    let mut publisher = Publisher::connect(broker.port, "agent-dead-pub");
    for i in 0..20 {
        let device = if i == 7 { "bad" } else { "a" };
        publisher
            .send(
                &format!("sensors/{device}/temperature"),
                reading(device, i as f64, T0 + i),
            )
            .await;
    }
    publisher.flush().await;
    eventually(
        Duration::from_secs(15),
        "every record synced or dead-lettered",
        async || {
            let synced = agent.metric(&series("edge_agent_records_synced_total", &[]));
            let dead = agent.metric(&series(
                "edge_agent_records_dropped_total",
                &[("reason", "dead_letter")],
            ));
            (synced + dead >= 20.0).then_some(())
        },
    )
    .await;
    let requests = receiver.requests();
    let rejected: Vec<_> = requests.iter().filter(|r| r.status == 400).collect();
    assert_eq!(rejected.len(), 1, "the rejected batch is not retried");
    let dead = agent.metric(&series(
        "edge_agent_records_dropped_total",
        &[("reason", "dead_letter")],
    ));
    assert_eq!(dead, rejected[0].records.len() as f64);
    assert_eq!(
        agent.metric(&series(
            "edge_agent_sync_requests_total",
            &[("outcome", "rejected")]
        )),
        1.0
    );
    let mut all = values(&receiver.accepted());
    all.extend(values(&rejected[0].records));
    assert_eq!(
        all,
        (0..20).collect(),
        "each record was either accepted or dead-lettered"
    );

    // Sync goes on after the rejection.
    publish_readings(&mut publisher, "a", 20..25).await;
    eventually(
        Duration::from_secs(10),
        "later records synced",
        async || values(&receiver.accepted()).contains(&24).then_some(()),
    )
    .await;

    let out = Command::new(env!("CARGO_BIN_EXE_edge-agent"))
        .arg("dead-letters")
        .arg("--data-dir")
        .arg(&agent.data_dir)
        .output()
        .expect("edge-agent dead-letters");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    let seqs = rejected[0].seqs();
    let line = text
        .lines()
        .find(|l| l.contains(" 400 "))
        .unwrap_or_else(|| panic!("no dead letter listed:\n{text}"));
    assert!(
        line.contains(&format!("{}-{}", seqs[0], seqs[seqs.len() - 1])),
        "{line}"
    );
    assert!(line.contains("400 Bad Request"), "{line}");
    let id = line.split_whitespace().next().unwrap().to_string();
    assert_eq!(
        agent.metric(&series("edge_agent_dead_letter_records", &[])),
        seqs.len() as f64
    );

    // An unknown id changes nothing and says so.
    let (ok, text) = dead_letters(&agent.data_dir, &["replay", "--id", "999"]);
    assert!(!ok && text.contains("no dead letter with id 999"), "{text}");

    // The upstream is fixed: the batch is replayed while the agent runs, and each of its
    // records arrives once, under its own seq.
    receiver.rule(|_| None);
    let (ok, text) = dead_letters(&agent.data_dir, &["replay", "--id", &id]);
    assert!(ok, "{text}");
    assert!(
        text.contains(&format!("replayed 1 dead letters ({} records)", seqs.len())),
        "{text}"
    );
    eventually(
        Duration::from_secs(15),
        "the replayed records accepted",
        async || values(&receiver.accepted()).contains(&7).then_some(()),
    )
    .await;
    let accepted = receiver.accepted();
    let mut got: Vec<i64> = accepted
        .iter()
        .map(|r| r["seq"].as_i64().unwrap())
        .collect();
    got.sort_unstable();
    let distinct: BTreeSet<i64> = got.iter().copied().collect();
    assert_eq!(got.len(), distinct.len(), "no record twice: {got:?}");
    assert_eq!(values(&accepted), (0..25).collect(), "every reading once");
    assert!(seqs.iter().all(|s| distinct.contains(&(*s as i64))));
    eventually(
        Duration::from_secs(5),
        "the dead-letter gauge back at 0",
        async || {
            (agent.metric(&series("edge_agent_dead_letter_records", &[])) == 0.0).then_some(())
        },
    )
    .await;
    let (ok, text) = dead_letters(&agent.data_dir, &[]);
    assert!(ok && text.contains("no dead letters"), "{text}");

    // A batch rejected for good is purged.
    receiver.rule(|records| {
        records
            .iter()
            .any(|r| r["device"] == "bad")
            .then_some(Reply::Status(422))
    });
    publisher
        .send("sensors/bad/temperature", reading("bad", 30.0, T0 + 30))
        .await;
    publisher.flush().await;
    eventually(
        Duration::from_secs(15),
        "a second dead letter",
        async || (agent.metric(&series("edge_agent_dead_letter_records", &[])) > 0.0).then_some(()),
    )
    .await;
    let (ok, text) = dead_letters(&agent.data_dir, &["purge", "--all"]);
    assert!(ok && text.contains("purged 1 dead letters"), "{text}");
    eventually(
        Duration::from_secs(5),
        "the purge seen by the agent",
        async || (agent.metric(&series("edge_agent_dead_letter_bytes", &[])) == 0.0).then_some(()),
    )
    .await;
    agent.assert_running();
}

/// Runs `edge-agent dead-letters ARGS --data-dir DIR`; returns success and stdout+stderr.
fn dead_letters(dir: &std::path::Path, args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_edge-agent"))
        .arg("dead-letters")
        .args(args)
        .arg("--data-dir")
        .arg(dir)
        .output()
        .expect("edge-agent dead-letters");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// An expired token mid-backlog: the upstream answers 401 (then 403) to every batch until
/// it is "fixed". Nothing is dead-lettered, delivery pauses with upstream down, and once
/// the credentials work again every record arrives exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_credentials_pause_delivery_and_dead_letter_nothing() {
    let broker = Mosquitto::start();
    let receiver = Receiver::start().await;
    let refused = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let fixed = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (count, ok) = (refused.clone(), fixed.clone());
    receiver.rule(move |_| {
        if ok.load(std::sync::atomic::Ordering::SeqCst) {
            return None;
        }
        let n = count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Some(Reply::Status(if n % 2 == 0 { 401 } else { 403 }))
    });
    let (_dir, mut agent) = Pipeline {
        client_id: "agent-token",
        batch_size: 10,
        ..Pipeline::default()
    }
    .start_agent(&broker, receiver.port)
    .await;
    let mut publisher = Publisher::connect(broker.port, "agent-token-pub");
    publish_readings(&mut publisher, "a", 0..200).await;
    let failures = series("edge_agent_upstream_auth_failures_total", &[]);
    agent
        .wait_metric(&failures, 4.0, Duration::from_secs(15))
        .await;
    assert_eq!(agent.metric(&series("edge_agent_upstream_up", &[])), 0.0);
    assert_eq!(
        agent.metric(&series(
            "edge_agent_records_dropped_total",
            &[("reason", "dead_letter")]
        )),
        0.0
    );
    fixed.store(true, std::sync::atomic::Ordering::SeqCst);
    eventually(Duration::from_secs(20), "the whole backlog", async || {
        (values(&receiver.accepted()) == (0..200).collect()).then_some(())
    })
    .await;
    assert_eq!(receiver.accepted().len(), 200, "each record once");
    assert_eq!(
        agent.metric(&series(
            "edge_agent_records_dropped_total",
            &[("reason", "dead_letter")]
        )),
        0.0
    );
    assert_eq!(agent.metric(&series("edge_agent_upstream_up", &[])), 1.0);
    assert!(
        agent
            .log_text()
            .contains("the upstream refused the credentials"),
        "{}",
        agent.log_text()
    );
}

/// A backlog of a gigabyte (an outage's worth): the agent restarts on it ready without
/// reading the whole file, delivers it, and gives the disk space back once it is drained.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gigabyte_backlog_restarts_ready_at_once_and_gives_its_disk_back_once_drained() {
    use edge_agent::delivery::queue::{Store, StoreSettings};
    use edge_agent::record::{Reading, Record};
    let target: u64 = std::env::var("EDGEPIPE_BIG_BACKLOG_BYTES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1 << 30);
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let started = std::time::Instant::now();
    let settings = StoreSettings {
        pipeline: "factory/test".into(),
        node: "edge-test".into(),
        max_bytes: 4 << 30,
        max_dead_letter_bytes: 1 << 20,
        when_full: edge_crds::WhenFull::DropOldest,
        durability: edge_crds::Durability::Os,
        keys: Default::default(),
    };
    let mut store = Store::open(&data, settings).unwrap().store;
    let device = long_device();
    // Queued now: the backlog must not reach the default `maxAge` (7 days) while it
    // drains, whatever the date the test runs on.
    let now = edge_agent::runtime::clock::now_ms();
    let group: Vec<Record> = (0..20_000)
        .map(|i| {
            Record::reading(&Reading {
                device: device.clone(),
                topic: format!("sensors/{device}/temperature"),
                value: i as f64,
                timestamp_ms: now + i,
                received_ms: now + i,
            })
        })
        .collect();
    while store.stats().unwrap().bytes < target {
        store.append(&[&group], now).unwrap();
    }
    let backlog = store.stats().unwrap();
    store.close().unwrap();
    let file = std::fs::metadata(data.join("queue.db")).unwrap().len();
    eprintln!(
        "filled {} records, {} payload bytes, file {} bytes ({:.1}% over the payload) in {:.1?}",
        backlog.records,
        backlog.bytes,
        file,
        (file as f64 / backlog.bytes as f64 - 1.0) * 100.0,
        started.elapsed()
    );

    let broker = Mosquitto::start();
    let mut receiver = Receiver::down();
    receiver.forget_records();
    let yaml = Pipeline {
        broker_port: broker.port,
        client_id: "agent-big",
        receiver_port: receiver.port,
        buffer: "{maxBytes: 4Gi, durability: os}",
        batch_size: 5000,
        extra_sink: "      compression: none",
        ..Pipeline::default()
    }
    .yaml();
    let started = std::time::Instant::now();
    let mut agent = Agent::start(dir.path(), &yaml);
    agent.wait_ready().await;
    eprintln!("ready on a {file}-byte queue in {:.2?}", started.elapsed());
    assert_eq!(
        agent.metric(&series("edge_agent_queue_integrity_checks_total", &[])),
        0.0,
        "closed cleanly: the start does not read the whole file"
    );
    assert_eq!(
        agent.metric(&series("edge_agent_queue_records", &[])),
        backlog.records as f64,
        "the counters come from the file, not from a scan"
    );

    receiver.resume().await;
    eventually(
        Duration::from_secs(900),
        "the backlog drained",
        async || (agent.metric(&series("edge_agent_queue_records", &[])) == 0.0).then_some(()),
    )
    .await;
    assert_eq!(
        agent.metric(&series("edge_agent_records_synced_total", &[])),
        backlog.records as f64
    );
    eprintln!("drained in {:.1?}", started.elapsed());
    eventually(
        Duration::from_secs(300),
        "the disk space given back",
        async || {
            let on_disk = agent.metric(&series("edge_agent_queue_file_bytes", &[]));
            (on_disk > 0.0 && on_disk < (16 << 20) as f64).then_some(())
        },
    )
    .await;
    let db = std::fs::metadata(data.join("queue.db")).unwrap().len();
    eprintln!(
        "file {file} -> {db} bytes, {:.1?} after the start",
        started.elapsed()
    );
    assert!(db < 16 << 20, "{db}");

    // A kill -9 leaves the file unclean: the next start checks it (and it is small now).
    agent.kill();
    agent.restart();
    agent.wait_ready().await;
    assert_eq!(
        agent.metric(&series("edge_agent_queue_integrity_checks_total", &[])),
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_queue_file_is_moved_aside_and_the_agent_runs() {
    let broker = Mosquitto::start();
    let receiver = Receiver::start().await;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::write(
        data.join("queue.db"),
        b"definitely not an sqlite file ".repeat(100),
    )
    .unwrap();
    std::fs::write(data.join("queue.db-wal"), b"torn wal").unwrap();
    prepare_session(broker.port, "agent-corrupt", &[TOPIC]).await;
    let yaml = Pipeline {
        broker_port: broker.port,
        client_id: "agent-corrupt",
        receiver_port: receiver.port,
        ..Pipeline::default()
    }
    .yaml();
    let mut agent = Agent::start(dir.path(), &yaml);
    agent.wait_ready().await;
    assert_eq!(
        agent.metric(&series("edge_agent_queue_corruptions_total", &[])),
        1.0
    );
    let moved: Vec<String> = std::fs::read_dir(&data)
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("queue.db.corrupt-"))
        .collect();
    assert!(
        moved
            .iter()
            .any(|n| !n.ends_with("-wal") && !n.ends_with("-shm")),
        "the corrupt file is kept aside: {moved:?}"
    );
    assert!(agent.log_text().contains("corrupt"), "the event is logged");

    let mut publisher = Publisher::connect(broker.port, "agent-corrupt-pub");
    publish_readings(&mut publisher, "a", 0..10).await;
    eventually(
        Duration::from_secs(10),
        "readings synced from the fresh queue",
        async || (values(&receiver.accepted()).len() == 10).then_some(()),
    )
    .await;
}

//! End-to-end delivery through the real agent binary, a real Mosquitto broker and a real
//! HTTP receiver: the original significant-change scenario, an upstream outage with
//! retries, kill -9 during a QoS 1 stream, a clean SIGTERM, and a pipeline deleted and
//! created again under the same name (its queue set aside, or adopted when asked).

use crate::common;

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::Duration;

use common::*;
use edge_agent::record::format_timestamp_ms;
use edge_testkit::process::Process;
use serde_json::Value;

/// (device, timestamp, value) of a record or a published reading.
type Key = (String, String, String);

fn key(device: &str, ts_ms: i64, value: f64) -> Key {
    (
        device.to_string(),
        format_timestamp_ms(ts_ms),
        format!("{value}"),
    )
}

fn record_key(r: &Value) -> Key {
    let value = r["value"].as_f64().expect("value");
    (
        r["device"].as_str().expect("device").to_string(),
        r["timestamp"].as_str().expect("timestamp").to_string(),
        format!("{value}"),
    )
}

/// Accepted records deduplicated by (node, seq); panics if one seq carried two
/// different records.
fn dedupe_by_seq(records: &[Value]) -> BTreeMap<(String, u64), Key> {
    let mut by_seq = BTreeMap::new();
    for r in records {
        let id = (
            r["node"].as_str().expect("node").to_string(),
            r["seq"].as_u64().expect("seq"),
        );
        let k = record_key(r);
        if let Some(previous) = by_seq.insert(id.clone(), k.clone()) {
            assert_eq!(previous, k, "seq {id:?} was reused for a different record");
        }
    }
    by_seq
}

/// A deterministic pseudo-random sequence (no external crate, same on every run).
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        self.0 >> 33
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_original_scenario_sends_exactly_what_significant_change_implies() {
    let broker = Mosquitto::start();
    let receiver = Receiver::start().await;
    let (_dir, mut agent) = Pipeline {
        client_id: "agent-original",
        processors: "[{significantChange: {window: 10, threshold: 2.0}}]",
        batch_size: 200,
        ..Pipeline::default()
    }
    .start_agent(&broker, receiver.port)
    .await;

    // Values are multiples of 1/8 (exact in binary). The rule is evaluated here in exact
    // integer eighths: |n*v - sum| > 2*n  <=>  |v - mean| > 2, and a value that would land
    // exactly on the threshold is nudged, so float rounding cannot decide any case.
    let devices = ["t1", "t2", "t3", "t4", "t5"];
    let mut rng = Lcg(7);
    let mut windows: BTreeMap<&str, VecDeque<i64>> = BTreeMap::new();
    let mut expected = BTreeSet::new();
    let mut publisher = Publisher::connect(broker.port, "publisher-original");
    for i in 0..1000i64 {
        for d in devices {
            let window = windows.entry(d).or_default();
            let spike = rng.next().is_multiple_of(12);
            let mut eighths = 160 + (rng.next() % 16) as i64 - 8
                + if spike {
                    (rng.next() % 64) as i64 - 32
                } else {
                    0
                };
            let decide = |w: &VecDeque<i64>, v: i64| {
                let mut w = w.clone();
                w.push_back(v);
                if w.len() > 10 {
                    w.pop_front();
                }
                let n = w.len() as i64;
                let sum: i64 = w.iter().sum();
                ((n * v - sum).abs(), 2 * 8 * n)
            };
            while {
                let (diff, limit) = decide(window, eighths);
                diff == limit
            } {
                eighths += 1;
            }
            let (diff, limit) = decide(window, eighths);
            window.push_back(eighths);
            if window.len() > 10 {
                window.pop_front();
            }
            let value = eighths as f64 / 8.0;
            let ts = T0 + i * 1000;
            if diff > limit {
                expected.insert(key(d, ts, value));
            }
            publisher
                .send(&format!("sensors/{d}/temperature"), reading(d, value, ts))
                .await;
        }
    }
    publisher.flush().await;
    assert!(
        expected.len() > 100 && expected.len() < 4000,
        "a useful mix: {}",
        expected.len()
    );

    agent
        .wait_metric(
            &series("edge_agent_messages_received_total", &[]),
            5000.0,
            Duration::from_secs(30),
        )
        .await;
    let got = eventually(
        Duration::from_secs(20),
        "every expected record at the receiver",
        async || {
            let got: BTreeSet<Key> = dedupe_by_seq(&receiver.accepted()).into_values().collect();
            (got.len() >= expected.len()).then_some(got)
        },
    )
    .await;
    assert_eq!(
        got, expected,
        "the receiver got other records than the rule implies"
    );
    let filtered = agent.metric(&series(
        "edge_agent_records_filtered_total",
        &[("processor", "significant_change")],
    ));
    assert_eq!(filtered as usize, 5000 - expected.len());
    // The receiver holds the last batch before the agent has read the 2xx.
    let synced = eventually(Duration::from_secs(5), "every record synced", async || {
        let synced = agent.metric(&series("edge_agent_records_synced_total", &[])) as usize;
        (synced >= expected.len()).then_some(synced)
    })
    .await;
    assert_eq!(synced, expected.len());
    for r in receiver.accepted() {
        assert_eq!(r["pipeline"], "factory/test");
        assert_eq!(r["node"], "edge-test");
        assert_eq!(r["kind"], "reading");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outage_is_retried_with_the_same_key_and_everything_arrives_in_seq_order() {
    let broker = Mosquitto::start();
    let mut receiver = Receiver::down();
    let (_dir, mut agent) = Pipeline {
        client_id: "agent-outage",
        batch_size: 25,
        extra_sink: "      compression: gzip",
        ..Pipeline::default()
    }
    .start_agent(&broker, receiver.port)
    .await;
    agent.wait_ready().await;
    let mut publisher = Publisher::connect(broker.port, "publisher-outage");
    let mut expected = BTreeSet::new();
    for i in 0..100 {
        publisher
            .send("sensors/a/temperature", reading("a", i as f64, T0 + i))
            .await;
        expected.insert(key("a", T0 + i, i as f64));
    }
    publisher.flush().await;
    // The first half is durable and the upstream refuses connections.
    agent
        .wait_metric(
            &series("edge_agent_records_enqueued_total", &[("kind", "reading")]),
            100.0,
            Duration::from_secs(10),
        )
        .await;
    agent
        .wait_metric(
            &series("edge_agent_sync_requests_total", &[("outcome", "retry")]),
            3.0,
            Duration::from_secs(10),
        )
        .await;
    assert_eq!(agent.metric(&series("edge_agent_upstream_up", &[])), 0.0);
    assert_eq!(
        agent.get("/readyz").map(|r| r.0),
        Some(200),
        "readiness never depends on the upstream"
    );
    assert_eq!(
        agent.get("/livez").map(|r| r.0),
        Some(200),
        "liveness never depends on the upstream"
    );

    // Up again, failing at first.
    receiver.script([
        Reply::Status(503),
        Reply::Status(500),
        Reply::RetryAfter(429, 1),
    ]);
    receiver.resume().await;
    for i in 100..200 {
        publisher
            .send("sensors/a/temperature", reading("a", i as f64, T0 + i))
            .await;
        expected.insert(key("a", T0 + i, i as f64));
    }
    publisher.flush().await;
    let got = eventually(
        Duration::from_secs(20),
        "all 200 readings at the receiver",
        async || {
            let got: BTreeSet<Key> = dedupe_by_seq(&receiver.accepted()).into_values().collect();
            (got.len() >= 200).then_some(got)
        },
    )
    .await;
    assert_eq!(got, expected);

    let requests = receiver.requests();
    assert!(requests.iter().all(|r| r.gzip), "compression: gzip");
    // Bytes on the wire: every request the upstream received, none of the refused
    // connections of the outage.
    let received: usize = requests.iter().map(|r| r.bytes).sum();
    assert_eq!(
        agent.metric(&series("edge_agent_sent_bytes_total", &[])),
        received as f64,
        "edge_agent_sent_bytes_total counts what reached the upstream"
    );
    // Accepted batches arrive in seq order, without gaps between them.
    let seqs: Vec<u64> = requests
        .iter()
        .filter(|r| r.status == 200)
        .flat_map(|r| r.seqs())
        .collect();
    assert!(
        seqs.windows(2).all(|w| w[0] < w[1]),
        "not in seq order: {seqs:?}"
    );
    assert_eq!(seqs.len(), 200, "each record accepted once");
    // A key always names the same records; a failed batch is retried under its key.
    let mut by_key: BTreeMap<&str, Vec<u64>> = BTreeMap::new();
    for r in &requests {
        let seqs = by_key.entry(&r.key).or_insert_with(|| r.seqs());
        assert_eq!(*seqs, r.seqs(), "key {} carried different records", r.key);
        assert!(
            r.key.starts_with("factory/test/edge-test/"),
            "key {}",
            r.key
        );
    }
    for pair in requests.windows(2) {
        if pair[0].status != 200 {
            assert_eq!(
                pair[1].key, pair[0].key,
                "a failed batch was not retried as is"
            );
        }
    }
    let after_429 = requests
        .windows(2)
        .find(|p| p[0].status == 429)
        .expect("a 429 was answered");
    assert!(
        after_429[1].at.duration_since(after_429[0].at) >= Duration::from_millis(950),
        "Retry-After: 1 not honoured"
    );
    eventually(Duration::from_secs(5), "upstream up", async || {
        (agent.metric(&series("edge_agent_upstream_up", &[])) == 1.0).then_some(())
    })
    .await;
    assert!(agent.metric(&series("edge_agent_upstream_down_seconds_total", &[])) > 0.0);
    // The receiver holds a batch before the agent has read the 2xx and deleted it.
    let synced = eventually(Duration::from_secs(5), "200 records synced", async || {
        let synced = agent.metric(&series("edge_agent_records_synced_total", &[]));
        (synced >= 200.0).then_some(synced)
    })
    .await;
    assert_eq!(synced, 200.0, "every record counted as synced exactly once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_during_a_qos1_stream_loses_nothing_and_never_reuses_a_seq() {
    let broker = Mosquitto::start();
    let receiver = Receiver::start().await;
    let (_dir, mut agent) = Pipeline {
        client_id: "agent-kill",
        batch_size: 40,
        ..Pipeline::default()
    }
    .start_agent(&broker, receiver.port)
    .await;
    const N: i64 = 3000;
    let port = broker.port;
    let publishing = tokio::spawn(async move {
        let mut publisher = Publisher::connect(port, "publisher-kill");
        for i in 0..N {
            let device = format!("d{}", i % 7);
            publisher
                .send(
                    &format!("sensors/{device}/temperature"),
                    reading(&device, i as f64, T0 + i),
                )
                .await;
            if i % 100 == 99 {
                publisher.flush().await;
            }
        }
        publisher.flush().await;
    });
    let expected: BTreeSet<Key> = (0..N)
        .map(|i| key(&format!("d{}", i % 7), T0 + i, i as f64))
        .collect();
    for _ in 0..4 {
        // Let this run take in some messages, then kill it mid-stream.
        agent
            .wait_metric(
                &series("edge_agent_messages_received_total", &[]),
                150.0,
                Duration::from_secs(20),
            )
            .await;
        agent.kill();
        agent.restart();
    }
    publishing.await.expect("publisher");
    let got = eventually(
        Duration::from_secs(30),
        "every published reading at the receiver",
        async || {
            let got: BTreeSet<Key> = dedupe_by_seq(&receiver.accepted()).into_values().collect();
            (got.len() >= expected.len()).then_some(got)
        },
    )
    .await;
    assert_eq!(got.len(), expected.len());
    assert_eq!(
        got, expected,
        "deduplicated by seq, the readings are exactly those published"
    );
    agent.assert_running();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_cleanly_and_a_restart_picks_up_where_it_left() {
    let broker = Mosquitto::start();
    let mut receiver = Receiver::down();
    let dir = tempfile::tempdir().unwrap();
    prepare_session(broker.port, "agent-term", &[TOPIC]).await;
    let yaml = Pipeline {
        broker_port: broker.port,
        client_id: "agent-term",
        receiver_port: receiver.port,
        batch_size: 20,
        ..Pipeline::default()
    }
    .yaml();
    let mut agent = Agent::start(dir.path(), &yaml);
    let mut publisher = Publisher::connect(broker.port, "publisher-term");
    publish_readings(&mut publisher, "a", 0..300).await;
    agent
        .wait_metric(
            &series("edge_agent_messages_received_total", &[]),
            50.0,
            Duration::from_secs(10),
        )
        .await;
    let status = agent.terminate();
    assert!(
        status.success(),
        "exit status {status}:\n{}",
        agent.log_text()
    );
    assert!(agent.log_text().contains("stopped"));
    receiver.resume().await;
    agent.restart();
    let got = eventually(
        Duration::from_secs(20),
        "all 300 readings after the restart",
        async || {
            let got: BTreeSet<Key> = dedupe_by_seq(&receiver.accepted()).into_values().collect();
            (got.len() >= 300).then_some(got)
        },
    )
    .await;
    let expected: BTreeSet<Key> = (0..300).map(|i| key("a", T0 + i, i as f64)).collect();
    assert_eq!(got, expected);
}

/// The pipeline `factory/test` with `metadata.uid` set, as the operator renders it.
fn with_uid(yaml: &str, uid: &str) -> String {
    let plain = "metadata: {name: test, namespace: factory}";
    assert!(yaml.contains(plain));
    yaml.replace(
        plain,
        &format!("metadata: {{name: test, namespace: factory, uid: {uid}}}"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pipeline_created_again_under_the_same_name_sends_the_old_queue_only_when_asked() {
    const FIRST: &str = "7c0f3a52-0000-4000-8000-000000000001";
    const SECOND: &str = "7c0f3a52-0000-4000-8000-000000000002";
    const THIRD: &str = "7c0f3a52-0000-4000-8000-000000000003";
    let broker = Mosquitto::start();
    let mut receiver = Receiver::down();
    let dir = tempfile::tempdir().unwrap();
    prepare_session(broker.port, "agent-recreated", &[TOPIC]).await;
    let receiver_port = receiver.port;
    let pipeline = |buffer| {
        Pipeline {
            broker_port: broker.port,
            client_id: "agent-recreated",
            receiver_port,
            buffer,
            batch_size: 20,
            ..Pipeline::default()
        }
        .yaml()
    };
    let queued = series("edge_agent_queue_records", &[]);
    let set_aside = series("edge_agent_queues_set_aside_total", &[]);
    let mut publisher = Publisher::connect(broker.port, "publisher-recreated");

    // The first pipeline queues 100 readings while its upstream is down, then is deleted.
    let mut first = Agent::start(dir.path(), &with_uid(&pipeline("{}"), FIRST));
    publish_readings(&mut publisher, "a", 0..100).await;
    first
        .wait_metric(&queued, 100.0, Duration::from_secs(20))
        .await;
    assert!(first.terminate().success(), "{}", first.log_text());

    // Created again under the same name, with the upstream up: only its own readings go.
    receiver.resume().await;
    let mut second = Agent::start(dir.path(), &with_uid(&pipeline("{}"), SECOND));
    second.wait_ready().await;
    assert_eq!(second.metric(&set_aside), 1.0, "{}", second.log_text());
    publish_readings(&mut publisher, "b", 0..50).await;
    let devices = |receiver: &Receiver| -> BTreeMap<String, usize> {
        let mut by_device = BTreeMap::new();
        for key in dedupe_by_seq(&receiver.accepted()).into_values() {
            *by_device.entry(key.0).or_default() += 1;
        }
        by_device
    };
    // Records leave in seq order: once all 50 of the second pipeline's are in, any of the
    // first pipeline's (lower seqs) would have been sent before them.
    eventually(
        Duration::from_secs(20),
        "the second pipeline's 50 readings",
        async || (devices(&receiver).get("b") == Some(&50)).then_some(()),
    )
    .await;
    assert_eq!(
        devices(&receiver),
        BTreeMap::from([("b".to_string(), 50)]),
        "only the second pipeline's readings are sent"
    );
    let aside = second.data_dir.join(format!("queue.db.pipeline-{FIRST}"));
    assert!(
        aside.exists(),
        "the first pipeline's queue is kept on the node"
    );
    let kept: i64 = rusqlite::Connection::open(&aside)
        .unwrap()
        .query_row("SELECT count(*) FROM records", [], |r| r.get(0))
        .unwrap();
    assert_eq!(kept, 100, "everything the first pipeline queued is in it");
    let seqs: Vec<u64> = receiver
        .accepted()
        .iter()
        .filter_map(|r| r["seq"].as_u64())
        .collect();
    assert!(
        seqs.iter().all(|&s| s > 100),
        "sequence numbers keep rising past the set-aside queue's: {seqs:?}"
    );

    // The second pipeline queues 30 readings during an outage and is deleted; a third,
    // created with `adoptPreviousQueue`, sends them.
    receiver.stop().await;
    publish_readings(&mut publisher, "c", 0..30).await;
    second
        .wait_metric(&queued, 30.0, Duration::from_secs(20))
        .await;
    assert!(second.terminate().success(), "{}", second.log_text());
    receiver.resume().await;
    let mut third = Agent::start(
        dir.path(),
        &with_uid(&pipeline("{adoptPreviousQueue: true}"), THIRD),
    );
    eventually(
        Duration::from_secs(20),
        "the adopted queue's 30 readings",
        async || (devices(&receiver).get("c") == Some(&30)).then_some(()),
    )
    .await;
    assert_eq!(third.metric(&set_aside), 0.0);
    assert_eq!(
        devices(&receiver),
        BTreeMap::from([("b".to_string(), 50), ("c".to_string(), 30)])
    );
    third.assert_running();
}

/// Every byte of the files in `dir` (the queue's database, WAL and marks).
fn files_bytes(dir: &std::path::Path) -> Vec<u8> {
    let mut all = Vec::new();
    for entry in std::fs::read_dir(dir).expect("data dir") {
        let path = entry.expect("entry").path();
        if path.is_file() {
            all.extend(std::fs::read(path).expect("read queue file"));
        }
    }
    all
}

/// `buffer.encryption`, as a user runs it: a queue written with key `a` shows no reading
/// in its files (after a kill -9, WAL included), a wrong key stops the agent at start
/// with an error naming the key and destroys nothing, a rotation to key `b` keeps the
/// backlog sealed with `a` deliverable, and everything arrives once by seq.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_encrypted_queue_leaks_no_reading_survives_a_wrong_key_and_rotates() {
    let broker = Mosquitto::start();
    let mut receiver = Receiver::down();
    let dir = tempfile::tempdir().unwrap();
    let keys = tempfile::tempdir().unwrap();
    let key_file = |name: &str, contents: &[u8]| {
        let path = keys.path().join(name);
        std::fs::write(&path, contents).unwrap();
        path.display().to_string()
    };
    let key_a = key_file("a.hex", format!("{}\n", "5a".repeat(32)).as_bytes());
    let key_a_wrong = key_file("a-wrong.hex", "a5".repeat(32).as_bytes());
    let key_b = key_file("b.raw", &[0x3c; 32]);
    prepare_session(broker.port, "agent-sealed", &[TOPIC]).await;
    let receiver_port = receiver.port;
    let pipeline = |keys: &[(&str, &str)]| {
        let list: Vec<String> = keys
            .iter()
            .map(|(id, file)| format!("{{id: {id}, keyFrom: {{file: \"{file}\"}}}}"))
            .collect();
        let buffer = format!("{{encryption: {{keys: [{}]}}}}", list.join(", "));
        Pipeline {
            broker_port: broker.port,
            client_id: "agent-sealed",
            receiver_port,
            buffer: &buffer,
            batch_size: 40,
            ..Pipeline::default()
        }
        .yaml()
    };
    let queued = series("edge_agent_queue_records", &[]);
    // Distinctive values and a device id that would stand out in the file's bytes.
    let value = |i: i64| 7_340_000 + i * 7;
    const DEVICE: &str = "vault-door-4471";
    let topic = format!("sensors/{DEVICE}/temperature");

    let mut agent = Agent::start(dir.path(), &pipeline(&[("a", &key_a)]));
    agent.wait_ready().await;
    let mut publisher = Publisher::connect(broker.port, "publisher-sealed");
    for i in 0..200 {
        publisher
            .send(&topic, reading(DEVICE, value(i) as f64, T0 + i))
            .await;
    }
    publisher.flush().await;
    agent
        .wait_metric(&queued, 200.0, Duration::from_secs(20))
        .await;
    agent.kill();
    let disk = files_bytes(&agent.data_dir);
    assert!(
        disk.len() > 200 * 40,
        "the queue holds the readings ({} bytes)",
        disk.len()
    );
    let leaks: Vec<i64> = (0..200)
        .filter(|i| {
            let text = value(*i).to_string();
            disk.windows(text.len()).any(|w| w == text.as_bytes())
        })
        .collect();
    assert!(leaks.is_empty(), "values in clear on disk: {leaks:?}");
    assert!(
        !disk.windows(DEVICE.len()).any(|w| w == DEVICE.as_bytes()),
        "the device id is in clear on disk"
    );

    // The same id with other key material: refused at start, nothing moved or deleted.
    std::fs::write(&agent.config, pipeline(&[("a", &key_a_wrong)])).unwrap();
    agent.restart();
    let status = agent.wait_exit(Duration::from_secs(20));
    assert!(!status.success(), "a wrong key must stop the agent");
    let log = agent.log_text();
    assert!(
        log.contains("key `a`") && log.contains("buffer.encryption.keys"),
        "the error names the key and the field:\n{log}"
    );
    let names: Vec<String> = std::fs::read_dir(&agent.data_dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        names.iter().all(|n| !n.contains("corrupt")),
        "nothing set aside: {names:?}"
    );

    // Rotation: b seals from now on, a still opens the backlog.
    std::fs::write(&agent.config, pipeline(&[("b", &key_b), ("a", &key_a)])).unwrap();
    agent.restart();
    agent.wait_ready().await;
    for i in 200..300 {
        publisher
            .send(&topic, reading(DEVICE, value(i) as f64, T0 + i))
            .await;
    }
    publisher.flush().await;
    agent
        .wait_metric(&queued, 300.0, Duration::from_secs(20))
        .await;
    // While the upstream is down, the agent says why (one series).
    let last_error = |agent: &mut Agent| {
        agent
            .metrics()
            .into_iter()
            .filter(|(k, v)| k.starts_with("edge_agent_upstream_last_error_info{") && *v == 1.0)
            .map(|(k, _)| k)
            .collect::<Vec<_>>()
    };
    eventually(
        Duration::from_secs(10),
        "the upstream's last error",
        async || {
            let errors = last_error(&mut agent);
            (errors.len() == 1 && errors[0].contains("connection failed")).then_some(())
        },
    )
    .await;
    receiver.resume().await;
    let got = eventually(
        Duration::from_secs(30),
        "all 300 readings from the encrypted queue",
        async || {
            let got = dedupe_by_seq(&receiver.accepted());
            (got.len() >= 300).then_some(got)
        },
    )
    .await;
    let expected: BTreeSet<Key> = (0..300)
        .map(|i| key(DEVICE, T0 + i, value(i) as f64))
        .collect();
    assert_eq!(got.into_values().collect::<BTreeSet<Key>>(), expected);
    assert_eq!(
        receiver.accepted().len(),
        300,
        "each reading once: the wrong-key start sent nothing"
    );
    assert!(last_error(&mut agent).is_empty(), "no last error once up");
    // Drained: key a is no longer needed, and the agent starts without it.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while agent.metric(&queued) > 0.0 {
        assert!(std::time::Instant::now() < deadline, "the queue drains");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert_eq!(agent.terminate().code(), Some(0));
    std::fs::write(&agent.config, pipeline(&[("b", &key_b)])).unwrap();
    agent.restart();
    agent.wait_ready().await;
    assert!(
        agent.log_text().contains("queue key retired"),
        "{}",
        agent.log_text()
    );
}

/// Publishes `n` readings of ten devices (`h0`..`h9`, reading `i` has value `i`) as fast as
/// the publisher goes; returns the rate reached.
fn stream_readings(port: u16, client: &'static str, n: i64) -> tokio::task::JoinHandle<f64> {
    tokio::spawn(async move {
        let mut publisher = Publisher::connect(port, client);
        let started = std::time::Instant::now();
        for i in 0..n {
            let device = format!("h{}", i % 10);
            publisher
                .send(
                    &format!("sensors/{device}/temperature"),
                    reading(&device, i as f64, T0 + i),
                )
                .await;
        }
        publisher.flush().await;
        n as f64 / started.elapsed().as_secs_f64()
    })
}

fn streamed(n: i64) -> BTreeSet<Key> {
    (0..n)
        .map(|i| key(&format!("h{}", i % 10), T0 + i, i as f64))
        .collect()
}

/// Waits until the receiver holds every one of the `n` streamed readings, checks it holds
/// nothing else, and returns how many were stored twice (under two seqs).
async fn every_streamed_reading(receiver: &Receiver, n: i64, what: &str) -> usize {
    let got = eventually(Duration::from_secs(60), what, async || {
        let got = dedupe_by_seq(&receiver.accepted());
        let values: BTreeSet<Key> = got.values().cloned().collect();
        (values.len() >= n as usize).then_some(got)
    })
    .await;
    let values: BTreeSet<Key> = got.values().cloned().collect();
    assert_eq!(values, streamed(n));
    got.len() - values.len()
}

/// One writer per queue: a second agent on the same data directory (a misconfigured
/// hostPath) waits, serving nothing and connecting nowhere, while the first runs; after a
/// kill -9 of the first it takes the queue over and everything arrives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_agent_on_the_same_queue_waits_and_takes_over_after_a_kill_9() {
    let broker = Mosquitto::start();
    let receiver = Receiver::start().await;
    let (one, two) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    prepare_session(broker.port, "agent-twin", &[TOPIC]).await;
    let yaml = Pipeline {
        broker_port: broker.port,
        client_id: "agent-twin",
        receiver_port: receiver.port,
        batch_size: 200,
        ..Pipeline::default()
    }
    .yaml();
    let mut first = Agent::start(one.path(), &yaml);
    first.wait_ready().await;
    let mut second = Agent::start_on(two.path(), &yaml, &first.data_dir);
    eventually(
        Duration::from_secs(10),
        "the second agent to say it waits",
        async || {
            second
                .log_text()
                .contains("another agent holds the queue")
                .then_some(())
        },
    )
    .await;
    second.assert_running();
    assert!(
        second.get("/readyz").is_none(),
        "a waiting agent serves nothing"
    );

    const N: i64 = 6_000;
    let stream = stream_readings(broker.port, "publisher-twin", N);
    first
        .wait_metric(
            &series("edge_agent_messages_received_total", &[]),
            1_500.0,
            Duration::from_secs(30),
        )
        .await;
    // The first never lost its session to the waiting one.
    assert_eq!(
        first.metric(&series("edge_agent_mqtt_connections_total", &[])),
        1.0
    );
    first.kill();
    second.wait_ready().await;
    stream.await.unwrap();
    let twice =
        every_streamed_reading(&receiver, N, "every reading through the second agent").await;
    // Stored twice: at most what the broker had in flight at the kill (its window).
    assert!(twice <= 1000, "{twice} readings stored twice");
}

/// Node autonomy: the fallback runs the pipeline an agent stored in its data directory;
/// when the agent comes back under a stream (thousands of readings a second), the
/// fallback commits, acknowledges, releases the queue and exits, the agent takes over,
/// and every reading arrives exactly once: nothing lost, nothing stored twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fallback_hands_the_queue_over_under_a_stream_losing_and_duplicating_nothing() {
    fallback_then_agent("node", false).await;
}

/// The fallback killed -9 under the stream: the agent takes the queue over, nothing is
/// lost, and what is stored twice stays within the broker's in-flight window.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fallback_killed_under_a_stream_loses_nothing_to_the_agent_after_it() {
    fallback_then_agent("node-kill", true).await;
}

/// An armed agent (the chart's `agent.fallback`) keeps its pod environment beside the
/// queue for the node's fallback; the same agent unarmed removes it, which makes the
/// installed unit inert (its condition needs the snapshot).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_armed_agent_keeps_its_pod_environment_and_an_unarmed_one_removes_it() {
    let broker = Mosquitto::start();
    let receiver = Receiver::start().await;
    let files = tempfile::tempdir().unwrap();
    let yaml = Pipeline {
        broker_port: broker.port,
        client_id: "agent-armed",
        receiver_port: receiver.port,
        ..Pipeline::default()
    }
    .yaml();
    let mut armed = Agent::start_with_env(
        files.path(),
        &yaml,
        &[
            ("EDGEPIPE_FALLBACK", "armed"),
            ("NODE_NAME", "edge-7"),
            ("HOST_IP", "192.0.2.7"),
        ],
    );
    armed.wait_ready().await;
    let snapshot = armed.data_dir.join("fallback-snapshot/env.json");
    let env: BTreeMap<String, String> =
        serde_json::from_slice(&std::fs::read(&snapshot).expect("the snapshot")).unwrap();
    assert_eq!(env.get("NODE_NAME").map(String::as_str), Some("edge-7"));
    assert_eq!(env.get("HOST_IP").map(String::as_str), Some("192.0.2.7"));
    assert_eq!(armed.terminate().code(), Some(0));

    let mut unarmed = Agent::start_on(files.path(), &yaml, &armed.data_dir);
    unarmed.wait_ready().await;
    assert!(
        !armed.data_dir.join("fallback-snapshot").exists(),
        "an unarmed agent removes the snapshot"
    );
    assert!(armed.data_dir.join("pipeline.yaml").exists());
    assert_eq!(unarmed.terminate().code(), Some(0));
}

async fn fallback_then_agent(name: &'static str, kill: bool) {
    let broker = Mosquitto::start();
    let receiver = Receiver::start().await;
    let (pod_files, fallback_files) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let client_id = format!("agent-{name}");
    prepare_session(broker.port, &client_id, &[TOPIC]).await;
    let yaml = Pipeline {
        broker_port: broker.port,
        client_id: &client_id,
        receiver_port: receiver.port,
        batch_size: 500,
        ..Pipeline::default()
    }
    .yaml();
    // The agent runs once: it keeps its pipeline in the data directory.
    let mut pod = Agent::start(pod_files.path(), &yaml);
    pod.wait_ready().await;
    assert_eq!(pod.terminate().code(), Some(0));
    let data = pod.data_dir.clone();
    assert_eq!(
        std::fs::read_to_string(data.join("pipeline.yaml")).unwrap(),
        yaml,
        "the stored pipeline is the one the agent ran"
    );

    // The node came up without its control plane: the fallback runs the stored pipeline.
    let mut fallback = Agent::start_fallback(fallback_files.path(), &data);
    fallback.wait_ready().await;
    assert_eq!(
        fallback.metric(&series("edge_agent_fallback_active", &[])),
        1.0
    );
    const N: i64 = 40_000;
    let publisher: &'static str = if kill {
        "publisher-node-kill"
    } else {
        "publisher-node"
    };
    let stream = stream_readings(broker.port, publisher, N);
    fallback
        .wait_metric(
            &series("edge_agent_messages_received_total", &[]),
            10_000.0,
            Duration::from_secs(30),
        )
        .await;
    if kill {
        fallback.kill();
        // The pipeline changed meanwhile: the agent runs a newer revision than the
        // fallback did.
        std::fs::write(
            &pod.config,
            yaml.replace("batchSize: 500", "batchSize: 400"),
        )
        .unwrap();
        pod.restart();
    } else {
        // The agent's pod starts: it asks for the queue and gets it.
        pod.restart();
        let status = fallback.wait_exit(Duration::from_secs(30));
        assert!(status.success(), "the fallback exits 0 after a handover");
        assert!(
            fallback.log_text().contains("stopping to hand it over"),
            "{}",
            fallback.log_text()
        );
    }
    pod.wait_ready().await;
    // The agent says the node ran in fallback, when it stopped, and whether it ran
    // another revision.
    assert!(
        pod.log_text()
            .contains("the node ran this queue in fallback"),
        "{}",
        pod.log_text()
    );
    let end = pod.metric(&series(
        "edge_agent_fallback_last_end_timestamp_seconds",
        &[],
    ));
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    assert!(
        end > now - 120.0 && end <= now + 1.0,
        "fallback ended at {end}"
    );
    assert_eq!(
        pod.metric(&series("edge_agent_fallback_last_outdated", &[])),
        if kill { 1.0 } else { 0.0 }
    );
    assert_eq!(pod.metric(&series("edge_agent_fallback_active", &[])), 0.0);
    let rate = stream.await.unwrap();
    eprintln!("published {N} readings at {rate:.0}/s");
    let twice = every_streamed_reading(&receiver, N, "every reading after the fallback").await;
    if kill {
        assert!(twice <= 1000, "{twice} readings stored twice");
    } else {
        assert_eq!(twice, 0, "no reading stored twice after a handover");
    }
}

/// `sink.rateLimit` on a metered link: a backlog drains at the configured rate, not at
/// the link's. Checked on what the receiver got and when: by any moment, the bytes
/// received since the first request stay within the burst plus the rate times the time
/// since (plus one request in flight), and the agent counts the time it waited.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rate_limited_sink_drains_a_backlog_at_the_configured_rate() {
    const RATE: usize = 16 * 1024;
    let broker = Mosquitto::start();
    let mut receiver = Receiver::down();
    let (_dir, mut agent) = Pipeline {
        client_id: "agent-metered",
        batch_size: 20,
        sink_settings: "    rateLimit: {bytesPerSecond: 16Ki, burst: 8Ki}\n",
        ..Pipeline::default()
    }
    .start_agent(&broker, receiver.port)
    .await;
    agent.wait_ready().await;
    assert_eq!(
        agent.metric(&series("edge_agent_sink_rate_limit_bytes_per_second", &[])),
        RATE as f64
    );
    const N: i64 = 600;
    let stream = stream_readings(broker.port, "publisher-metered", N);
    stream.await.unwrap();
    agent
        .wait_metric(
            &series("edge_agent_queue_records", &[]),
            N as f64,
            Duration::from_secs(20),
        )
        .await;
    let drain = series("edge_agent_queue_drain_seconds", &[]);
    assert_eq!(
        agent.metric(&drain),
        f64::INFINITY,
        "nothing delivered yet: no estimate"
    );
    receiver.resume().await;
    // Half way through, the estimate of the time left is checked against the time the
    // rest then takes.
    let (estimate, at_half) = eventually(
        Duration::from_secs(120),
        "half the backlog through",
        async || {
            let estimate = agent.metric(&drain);
            (receiver.accepted().len() as i64 >= N / 2)
                .then_some((estimate, std::time::Instant::now()))
        },
    )
    .await;
    let twice = every_streamed_reading(&receiver, N, "the backlog through the cap").await;
    assert_eq!(twice, 0);
    let left = (receiver.requests().last().unwrap().at - at_half).as_secs_f64();
    eprintln!("half way: {estimate:.1} s to drain expected, {left:.1} s taken");
    assert!(
        estimate.is_finite() && estimate >= left / 2.0 && estimate <= left * 2.0,
        "{estimate} s expected half way, {left:.1} s taken"
    );
    eventually(
        Duration::from_secs(10),
        "no estimate once drained",
        async || (agent.metric(&drain) == 0.0).then_some(()),
    )
    .await;

    let requests: Vec<_> = receiver
        .requests()
        .into_iter()
        .filter(|r| r.status == 200)
        .collect();
    let total: usize = requests.iter().map(|r| r.bytes).sum();
    let first = requests[0].at;
    assert_within_cap(&requests, 8 * 1024, RATE as f64);
    let took = (requests.last().unwrap().at - first).as_secs_f64();
    eprintln!(
        "{total} bytes in {took:.1} s: {:.0} B/s",
        total as f64 / took
    );
    assert!(
        agent.metric(&series("edge_agent_sink_throttled_seconds_total", &[])) > 1.0,
        "the agent waited for the cap"
    );
}

/// A window of `sink.rateLimit.schedule` with a cap of 0, holding the current time and
/// ending at the next minute: nothing goes out while it lasts (the receiver is up, the
/// readings queued, the agent waiting on the cap), and everything goes once it ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scheduled_window_of_zero_holds_the_queue_until_it_ends() {
    let second_of_day = |now: std::time::SystemTime| {
        now.duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() % 86_400
    };
    // At least 20 s of the window left once the agent runs.
    while second_of_day(std::time::SystemTime::now()) % 60 > 30 {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let second = second_of_day(std::time::SystemTime::now());
    let minute = |m: u64| format!("{:02}:{:02}", (m / 60) % 24, m % 60);
    let (from, to) = (
        minute((second / 60 + 1439) % 1440),
        minute((second / 60 + 1) % 1440),
    );
    let window_ends = std::time::Instant::now() + Duration::from_secs(60 - second % 60);
    let broker = Mosquitto::start();
    let receiver = Receiver::start().await;
    let rate_limit = format!(
        "    rateLimit:\n      bytesPerSecond: 1Mi\n      schedule:\n        - {{from: \"{from}\", to: \"{to}\", bytesPerSecond: \"0\"}}\n"
    );
    let (_dir, mut agent) = Pipeline {
        client_id: "agent-scheduled",
        batch_size: 20,
        sink_settings: &rate_limit,
        ..Pipeline::default()
    }
    .start_agent(&broker, receiver.port)
    .await;
    agent.wait_ready().await;
    const N: i64 = 100;
    stream_readings(broker.port, "publisher-scheduled", N)
        .await
        .unwrap();
    let cap = series("edge_agent_sink_rate_limit_bytes_per_second", &[]);
    let throttled = series("edge_agent_sink_throttled_seconds_total", &[]);
    agent
        .wait_metric(
            &series("edge_agent_queue_records", &[]),
            N as f64,
            Duration::from_secs(20),
        )
        .await;
    // Until just before the window ends: the cap reads 0, the sink waits, nothing arrives.
    while std::time::Instant::now() + Duration::from_secs(3) < window_ends {
        assert_eq!(agent.metric(&cap), 0.0, "the window's cap");
        assert!(
            receiver.requests().is_empty(),
            "sent in a window of 0: {:?}",
            receiver.requests().len()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(
        agent.metric(&throttled) > 5.0,
        "the sink waited on the window"
    );
    let twice = every_streamed_reading(&receiver, N, "the queue once the window ended").await;
    assert_eq!(twice, 0);
    assert!(
        receiver.requests()[0].at >= window_ends - Duration::from_secs(1),
        "the first request left before the window ended"
    );
    assert_eq!(agent.metric(&cap), 1048576.0, "the cap outside the window");
}

/// A thin link after an outage: 100 sensors at 1 Hz behind a 64 kbit/s [`Link`], cut for
/// a minute, then restored. Anomalies queued during the outage all arrive before any
/// reading of the backlog; readings published once the agent is through again arrive
/// within a few seconds while the backlog drains behind them; what the agent sends stays within its cap
/// plus the burst; every reading arrives exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_an_outage_on_a_thin_link_anomalies_and_live_readings_overtake_the_backlog() {
    const DEVICES: usize = 100;
    const OUTAGE: usize = 60;
    const AFTER: usize = 40;
    // (device, second) of a spike: every window of 16 holding one is an anomaly.
    const SPIKES: [(usize, usize); 4] = [(3, 20), (50, 40), (7, OUTAGE + 8), (60, OUTAGE + 18)];
    let broker = Mosquitto::start();
    let receiver = Receiver::start().await;
    let link = Link::start(receiver.port, scenario::LINK).await;
    link.cut();
    let model = workspace_root().join("tests/models/anomaly_autoencoder.tflite");
    let yaml = scenario::thin_link_pipeline(broker.port, "agent-thin", &model, "v1", link.port);
    let dir = tempfile::tempdir().unwrap();
    let mut agent = Agent::start(dir.path(), &yaml);
    agent.wait_ready().await;

    let base_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let second_of: BTreeMap<String, usize> = (0..OUTAGE + AFTER)
        .map(|t| (format_timestamp_ms(base_ms + t as i64 * 1000), t))
        .collect();
    let mut publisher = Publisher::connect(broker.port, "publisher-thin");
    let started = tokio::time::Instant::now();
    let mut published_at = Vec::new();
    let mut restored_at = None;
    for t in 0..OUTAGE + AFTER {
        // One second per round of readings: the pace of the sensors, not a wait for a result.
        tokio::time::sleep_until(started + Duration::from_secs(t as u64)).await;
        if t == OUTAGE {
            link.restore();
            restored_at = Some(std::time::Instant::now());
        }
        published_at.push(std::time::Instant::now());
        for d in 0..DEVICES {
            let value = scenario::sensor_value(d, t, SPIKES.contains(&(d, t)));
            publisher
                .send(
                    &format!("sensors/s{d}/temperature"),
                    scenario::sensor_payload(d, value, base_ms + t as i64 * 1000),
                )
                .await;
        }
    }
    publisher.flush().await;
    let restored_at = restored_at.unwrap();

    let total = DEVICES * (OUTAGE + AFTER);
    eventually(
        Duration::from_secs(180),
        "every reading delivered",
        async || {
            let readings = receiver
                .accepted()
                .iter()
                .filter(|r| r["kind"] == "reading")
                .count();
            (readings >= total).then_some(())
        },
    )
    .await;

    // Exactly once by (node, seq), and every reading there.
    let requests: Vec<Request> = receiver
        .requests()
        .into_iter()
        .filter(|r| r.status == 200)
        .collect();
    let mut seen = BTreeSet::new();
    for r in requests.iter().flat_map(|r| &r.records) {
        let id = (r["node"].to_string(), r["seq"].as_u64().expect("seq"));
        assert!(seen.insert(id), "delivered twice: {r}");
    }
    let second = |r: &Value| second_of[r["timestamp"].as_str().expect("timestamp")];
    let readings: BTreeSet<(String, usize)> = requests
        .iter()
        .flat_map(|r| &r.records)
        .filter(|r| r["kind"] == "reading")
        .map(|r| (r["device"].as_str().unwrap().to_string(), second(r)))
        .collect();
    assert_eq!(readings.len(), total, "every reading, once");

    // Every anomaly of the outage before the first reading of the backlog.
    let first_backlog = requests
        .iter()
        .position(|q| {
            q.records
                .iter()
                .any(|r| r["kind"] == "reading" && second(r) < OUTAGE)
        })
        .expect("the backlog arrived");
    let anomalies: Vec<(usize, String, usize)> = requests
        .iter()
        .enumerate()
        .flat_map(|(i, q)| q.records.iter().map(move |r| (i, r)))
        .filter(|(_, r)| r["kind"] == "anomaly")
        .map(|(i, r)| (i, r["device"].as_str().unwrap().to_string(), second(r)))
        .collect();
    for (d, t) in SPIKES {
        assert!(
            anomalies
                .iter()
                .any(|(_, dev, s)| *dev == format!("s{d}") && *s == t),
            "the spike of s{d} at {t} s is an anomaly: {anomalies:?}"
        );
    }
    for (i, device, t) in &anomalies {
        if *t < OUTAGE {
            assert!(
                *i < first_backlog,
                "the anomaly of {device} at {t} s came in request {i}, the backlog from {first_backlog}"
            );
        }
    }

    // Live readings: a bounded delay, while the backlog was still draining. The agent
    // learns that the link is back from its first request that gets through: what was
    // published before then waited through the outage like the rest of the backlog.
    let back = requests[0].at;
    let last_backlog = requests
        .iter()
        .rev()
        .find(|q| {
            q.records
                .iter()
                .any(|r| r["kind"] == "reading" && second(r) < OUTAGE)
        })
        .unwrap()
        .at;
    let mut delays: Vec<f64> = Vec::new();
    let mut overtaking = 0;
    for q in &requests {
        for r in q.records.iter().filter(|r| r["kind"] == "reading") {
            let t = second(r);
            if published_at[t] > back {
                delays.push((q.at - published_at[t]).as_secs_f64());
                overtaking += usize::from(q.at < last_backlog);
            }
        }
    }
    delays.sort_by(f64::total_cmp);
    let pct = |p: f64| delays[((delays.len() - 1) as f64 * p) as usize];
    let drained = (last_backlog - restored_at).as_secs_f64();
    eprintln!(
        "backlog drained {drained:.1} s after the link returned; live readings: p50 {:.2} s, p99 {:.2} s, max {:.2} s; {overtaking} overtook the backlog",
        pct(0.5),
        pct(0.99),
        pct(1.0)
    );
    assert!(pct(1.0) < 8.0, "a live reading took {:.1} s", pct(1.0));
    assert!(
        overtaking >= 10 * DEVICES,
        "only {overtaking} live readings arrived before the backlog's last ({drained:.1} s)"
    );

    assert_within_cap(&requests, scenario::BURST as usize, scenario::RATE as f64);
}

/// What the receiver got stays within a cap: by the arrival of any request, the bytes
/// received since the first request are at most the burst plus the rate times the time
/// since (plus the largest request, which may be in flight when the bucket refills).
fn assert_within_cap(requests: &[Request], burst: usize, bytes_per_second: f64) {
    let largest = requests.iter().map(|r| r.bytes).max().unwrap_or(0);
    let first = requests[0].at;
    let mut received = 0usize;
    for r in requests {
        received += r.bytes;
        let allowed = (burst + largest) as f64 + (r.at - first).as_secs_f64() * bytes_per_second;
        assert!(
            received as f64 <= allowed,
            "{received} bytes by {:?}, the cap allows {allowed:.0}",
            r.at - first
        );
    }
}

/// Agents on one stream, one per sink variant, each syncing to its own receiver: the test
/// pipeline (batches of 100) with a variant's lines added under `spec.sink` and under
/// `spec.sink.http`.
struct Variants {
    receivers: Vec<Receiver>,
    _agents: Vec<Agent>,
    _dirs: Vec<tempfile::TempDir>,
}

impl Variants {
    /// Starts one receiver and agent per `(label, sink lines, http lines)`, each ready.
    async fn start(broker: &Mosquitto, what: &str, variants: &[(&str, String, String)]) -> Self {
        let mut v = Variants {
            receivers: Vec::new(),
            _agents: Vec::new(),
            _dirs: Vec::new(),
        };
        for (label, sink, http) in variants {
            let receiver = Receiver::start().await;
            let client = format!("agent-{what}-{label}");
            let (dir, mut agent) = Pipeline {
                client_id: &client,
                batch_size: 100,
                extra_sink: http,
                sink_settings: &format!("{sink}\n"),
                ..Pipeline::default()
            }
            .start_agent(broker, receiver.port)
            .await;
            agent.wait_ready().await;
            v._agents.push(agent);
            v.receivers.push(receiver);
            v._dirs.push(dir);
        }
        v
    }
}

/// What `receiver` accepted, in `seq` order.
fn by_seq(receiver: &Receiver) -> Vec<Value> {
    let mut records = receiver.accepted();
    records.sort_by_key(|r| r["seq"].as_u64());
    records
}

/// `sink.format: v2` and `v3` end to end: three agents on the same stream, writing v1,
/// v2 and v3, deliver the same records (the receiver reads v2 and v3 back into v1 records
/// as `deploy/wire-format.md` says), every request says its format, v2 takes less than
/// half of v1's bytes and v3 less than half of v2's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_compact_formats_carry_the_same_records_in_fewer_bytes() {
    const N: i64 = 1000;
    const FORMATS: [&str; 3] = ["v1", "v2", "v3"];
    let broker = Mosquitto::start();
    let formats = FORMATS.map(|f| (f, format!("    format: {f}"), String::new()));
    let variants = Variants::start(&broker, "format", &formats).await;
    let receivers = &variants.receivers;
    stream_readings(broker.port, "publisher-formats", N)
        .await
        .unwrap();
    for (format, receiver) in FORMATS.iter().zip(receivers) {
        let what = format!("every reading in {format}");
        assert_eq!(every_streamed_reading(receiver, N, &what).await, 0);
    }

    let header = |q: &Request| q.headers.get("edgepipe-format").cloned();
    let mut bytes = Vec::new();
    for (format, receiver) in FORMATS.iter().zip(receivers) {
        assert_eq!(
            by_seq(receiver),
            by_seq(&receivers[0]),
            "the same records in {format}"
        );
        let expected = (*format != "v1").then(|| format.to_string());
        assert!(receiver.requests().iter().all(|q| header(q) == expected));
        bytes.push(receiver.requests().iter().map(|q| q.bytes).sum::<usize>());
    }
    let (b1, b2, b3) = (bytes[0], bytes[1], bytes[2]);
    eprintln!(
        "{N} readings: v1 {b1} bytes, v2 {b2} bytes ({:.2}), v3 {b3} bytes ({:.2})",
        b2 as f64 / b1 as f64,
        b3 as f64 / b1 as f64
    );
    assert!(b2 * 2 < b1, "v2 {b2} bytes, v1 {b1}");
    assert!(b3 * 2 < b2, "v3 {b3} bytes, v2 {b2}");
}

/// `compression: zstd`: two agents on the same stream, gzip and zstd, deliver the same
/// records; every zstd request says `Content-Encoding: zstd`, and takes a small part of the
/// uncompressed bytes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zstd_carries_the_same_records_as_gzip() {
    const N: i64 = 1000;
    let broker = Mosquitto::start();
    let compressions =
        ["gzip", "zstd"].map(|c| (c, String::new(), format!("      compression: {c}")));
    let variants = Variants::start(&broker, "compression", &compressions).await;
    let receivers = &variants.receivers;
    stream_readings(broker.port, "publisher-compression", N)
        .await
        .unwrap();
    for (compression, receiver) in ["gzip", "zstd"].iter().zip(receivers) {
        let what = format!("every reading with {compression}");
        assert_eq!(every_streamed_reading(receiver, N, &what).await, 0);
        assert!(receiver.requests().iter().all(|q| {
            q.headers.get("content-encoding").map(String::as_str) == Some(compression)
        }));
    }
    assert_eq!(by_seq(&receivers[1]), by_seq(&receivers[0]));
    let wire = |r: &Receiver| r.requests().iter().map(|q| q.bytes).sum::<usize>();
    let plain: usize = receivers[1]
        .accepted()
        .iter()
        .map(|r| serde_json::to_vec(r).unwrap().len() + 1)
        .sum();
    let (gz, zs) = (wire(&receivers[0]), wire(&receivers[1]));
    eprintln!(
        "{N} readings: about {plain} bytes of JSON, gzip {gz} ({:.3}), zstd {zs} ({:.3})",
        gz as f64 / plain as f64,
        zs as f64 / plain as f64
    );
    assert!(zs * 4 < plain, "zstd {zs} bytes of about {plain}");
}

/// `deploy/receivers/receiver.py`, the example receiver of the wire formats, on a free
/// port; what it prints (one JSON record a line) goes to its log.
struct ExampleReceiver {
    port: u16,
    process: Process,
    _dir: tempfile::TempDir,
}

impl ExampleReceiver {
    async fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let mut command = std::process::Command::new(tool("python3"));
        command
            .arg(workspace_root().join("deploy/receivers/receiver.py"))
            .args(["--port", &port.to_string()]);
        let process = Process::spawn("receiver.py", &command, &dir.path().join("receiver.log"));
        let log = process.log().to_path_buf();
        eventually(
            Duration::from_secs(20),
            "receiver.py listening",
            async || {
                std::fs::read_to_string(&log)
                    .ok()
                    .filter(|l| l.contains("listening on"))
            },
        )
        .await;
        Self {
            port,
            process,
            _dir: dir,
        }
    }

    /// The records it printed.
    fn records(&self) -> Vec<Value> {
        std::fs::read_to_string(self.process.log())
            .unwrap_or_default()
            .lines()
            .filter(|l| l.starts_with('{'))
            .map(|l| serde_json::from_str(l).expect("a printed record is JSON"))
            .collect()
    }
}

/// The example receiver reads what real agents send in every format (v1, v2 gzipped, v3)
/// and prints the records the test receiver gets from a v1 agent on the same stream:
/// fractional readings, values no short decimal holds, in the same order by `seq`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_example_receiver_reads_every_format() {
    const N: i64 = 600;
    let broker = Mosquitto::start();
    let reference = Receiver::start().await;
    let mut examples = Vec::new();
    let mut agents = Vec::new();
    let mut dirs = Vec::new();
    for (i, (format, gzip)) in [
        ("v1", false),
        ("v1", true),
        ("v2", true),
        ("v3", false),
        ("v3", false),
    ]
    .into_iter()
    .enumerate()
    {
        // The first agent feeds the reference; the others one example receiver each.
        let port = if i == 0 {
            reference.port
        } else {
            let example = ExampleReceiver::start().await;
            let port = example.port;
            examples.push((format, example));
            port
        };
        let client = format!("agent-example-{i}");
        let (dir, mut agent) = Pipeline {
            client_id: &client,
            batch_size: 64,
            extra_sink: if gzip { "      compression: gzip" } else { "" },
            sink_settings: &format!("    format: {format}\n"),
            ..Pipeline::default()
        }
        .start_agent(&broker, port)
        .await;
        agent.wait_ready().await;
        agents.push(agent);
        dirs.push(dir);
    }
    let mut publisher = Publisher::connect(broker.port, "publisher-example");
    for i in 0..N {
        let device = format!("x{}", i % 7);
        // Three decimals, as sensors send them; every 50th a value that needs all 17
        // digits (v3 writes its column as doubles); one far beyond any decimal.
        let value = match i {
            _ if i == N / 2 => 1e21,
            _ if i % 50 == 49 => i as f64 / 3.0,
            _ => ((i as f64 * 0.013 - 4.0) * 1000.0).round() / 1000.0,
        };
        publisher
            .send(
                &format!("sensors/{device}/temperature"),
                reading(&device, value, T0 + i * 250),
            )
            .await;
    }
    publisher.flush().await;

    let expected = eventually(
        Duration::from_secs(60),
        "every reading at the reference",
        async || {
            let mut got = reference.accepted();
            got.sort_by_key(|r| r["seq"].as_u64());
            got.dedup_by_key(|r| r["seq"].as_u64());
            (got.len() == N as usize).then_some(got)
        },
    )
    .await;
    for (format, example) in &examples {
        let printed = eventually(
            Duration::from_secs(60),
            "every reading printed",
            async || {
                let mut printed = example.records();
                printed.sort_by_key(|r| r["seq"].as_u64());
                (printed.len() >= N as usize).then_some(printed)
            },
        )
        .await;
        assert_eq!(printed, expected, "records printed from {format}");
    }
}

//! Fault tests of the agent's disk (issue 8): F3 the queue on a tiny tmpfs that really
//! runs out of space (ENOSPC), under each `whenFull` policy; F4 a torn WAL and a scribbled
//! database file. Root only (mount); the tmpfs is unmounted by a guard even on panic.

use crate::common;
use crate::faults;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use common::*;
use faults::*;
use rand::Rng;

const TOPIC: &str = "sensors/+/temperature";

/// Every `edge_agent_records_dropped_total` series, summed.
fn dropped_total(agent: &mut Agent) -> f64 {
    edge_testkit::metrics::sum(&agent.metrics(), "edge_agent_records_dropped_total")
}

/// Asserts `/livez` answers 200 (the agent is up and not stuck).
fn assert_live(agent: &mut Agent, when: &str) {
    agent.assert_running();
    let live = agent.get("/livez");
    assert!(
        matches!(live, Some((200, _))),
        "{when}: /livez answered {live:?}\n{}",
        agent.log_text()
    );
}

/// Fills a 1 MiB tmpfs with the receiver down until commits fail with ENOSPC, then
/// brings the receiver back: the agent stays live throughout, and every reading is
/// either at the receiver or counted as dropped, exactly.
async fn disk_full_counts_exactly(when_full: &str, client: &str) {
    require_root("F3");
    // Enough that drops outpace the acknowledgements by far: with fewer than about 12k
    // readings the (now fixed) ingest/acknowledgement deadlock never showed, and the drain
    // stall on a full disk showed only at this size.
    let n: u64 = if soak() { 100_000 } else { 40_000 };
    let disk = Tmpfs::mount("1m");
    let broker = Mosquitto::persistent();
    let mut receiver = Receiver::down();
    let dir = tempfile::tempdir().expect("tempdir");
    prepare_session(broker.port, client, &[TOPIC]).await;
    let buffer = format!("{{maxBytes: 64Mi, whenFull: {when_full}}}");
    let yaml = Pipeline {
        broker_port: broker.port,
        client_id: client,
        receiver_port: receiver.port,
        batch_size: 500,
        buffer: &buffer,
        ..Pipeline::default()
    }
    .yaml();
    let mut agent = Agent::start(dir.path(), &yaml);
    // The queue lives on the tmpfs.
    agent.kill();
    agent.data_dir = disk.path.join("data");
    agent.restart();
    agent.wait_ready().await;
    publish_through_faults(broker.port, &format!("{client}-pub"), 0..n, 0).await;
    let received = series("edge_agent_messages_received_total", &[]);
    let deadline = Instant::now() + patience();
    while agent.metric(&received) < n as f64 {
        assert_live(&mut agent, "filling the disk");
        assert!(
            Instant::now() < deadline,
            "the agent took in {} of {n} readings\n{}",
            agent.metric(&received),
            agent.log_text()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let disk_full = agent.metric(&series(
        "edge_agent_records_dropped_total",
        &[("reason", "disk_full")],
    ));
    assert!(
        disk_full > 0.0,
        "the 1 MiB disk filled up and records were dropped as disk_full\n{}",
        agent.log_text()
    );
    receiver.resume().await;
    let deadline = Instant::now() + patience();
    loop {
        assert_live(&mut agent, "draining after the disk was full");
        let (got, _) = indices_by_seq(&receiver.accepted());
        let dropped = dropped_total(&mut agent);
        let queued = agent.metric(&series("edge_agent_queue_records", &[]));
        if queued == 0.0 && got.len() as f64 + dropped >= n as f64 {
            assert_eq!(
                dropped,
                (n - got.len() as u64) as f64,
                "{when_full}: the drop counters equal the readings missing at the receiver ({})",
                difference(&got, n)
            );
            eprintln!(
                "f3 {when_full}: {} delivered, {dropped} dropped (disk_full {disk_full})",
                got.len()
            );
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{when_full}: {} delivered + {dropped} dropped of {n}, {queued} still queued\n{}",
            got.len(),
            agent.log_text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn f3_a_full_disk_under_drop_newest_keeps_the_agent_up_and_counts_every_drop() {
    disk_full_counts_exactly("dropNewest", "agent-f3-newest").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn f3_a_full_disk_under_drop_oldest_keeps_the_agent_up_and_counts_every_drop() {
    disk_full_counts_exactly("dropOldest", "agent-f3-oldest").await;
}

/// F3 `dropOldest` again and again: the drain used to stall about once in 20 runs, when
/// new records took the reserve space released for it. New records now wait for the
/// reserve to be back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn f3_the_drain_of_a_full_disk_never_stalls_in_eight_runs() {
    for run in 0..8 {
        disk_full_counts_exactly("dropOldest", &format!("agent-f3-again-{run}")).await;
    }
}

/// F3 `block`: on a full disk the agent stops acknowledging, the broker's persistent
/// session holds the rest, and once the disk grows everything arrives, nothing dropped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn f3_a_full_disk_under_block_leaves_the_data_at_the_broker_until_space_frees() {
    require_root("F3");
    let n: u64 = if soak() { 100_000 } else { 40_000 };
    let disk = Tmpfs::mount("1m");
    let broker = Mosquitto::persistent();
    let mut receiver = Receiver::down();
    let dir = tempfile::tempdir().expect("tempdir");
    prepare_session(broker.port, "agent-f3-block", &[TOPIC]).await;
    let yaml = Pipeline {
        broker_port: broker.port,
        client_id: "agent-f3-block",
        receiver_port: receiver.port,
        batch_size: 500,
        buffer: "{maxBytes: 64Mi, whenFull: block}",
        ..Pipeline::default()
    }
    .yaml();
    let mut agent = Agent::start(dir.path(), &yaml);
    agent.kill();
    agent.data_dir = disk.path.join("data");
    agent.restart();
    agent.wait_ready().await;
    // Every reading is acknowledged by the broker: it holds what the agent cannot take.
    publish_through_faults(broker.port, "agent-f3-block-pub", 0..n, 0).await;
    let enqueued = series("edge_agent_records_enqueued_total", &[("kind", "reading")]);
    // The agent stops taking readings once the disk is full, and stays live.
    let mut last = -1.0;
    let mut stable_since = Instant::now();
    let deadline = Instant::now() + patience();
    loop {
        assert_live(&mut agent, "blocked on a full disk");
        let now = agent.metric(&enqueued);
        if now != last {
            last = now;
            stable_since = Instant::now();
        } else if stable_since.elapsed() > Duration::from_secs(3) {
            break;
        }
        assert!(Instant::now() < deadline, "the queue never stopped growing");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        last < n as f64,
        "a 1 MiB disk cannot hold {n} readings, yet {last} were enqueued"
    );
    assert_eq!(dropped_total(&mut agent), 0.0, "block never drops");
    eprintln!("f3 block: {last} of {n} readings stored before the disk filled");
    // Space frees: the tmpfs grows, the upstream comes back.
    disk.resize("64m");
    receiver.resume().await;
    let deadline = Instant::now() + patience();
    loop {
        assert_live(&mut agent, "recovering");
        let (got, _) = indices_by_seq(&receiver.accepted());
        if got.len() as u64 >= n {
            assert_eq!(
                got,
                (0..n).collect::<BTreeSet<_>>(),
                "{}",
                difference(&got, n)
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "after space freed: {}\n{}",
            difference(&got, n),
            agent.log_text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(dropped_total(&mut agent), 0.0, "block never drops");
}

/// Kills the agent with records committed in the WAL, damages the files with `damage`,
/// and checks the restart: the agent runs and keeps ingesting, the damage is either
/// recovered (the readings before it still arrive) or the file is moved aside and
/// counted, and no seq is ever reused. Returns the corruption counter.
async fn damaged_queue_recovers(
    client: &str,
    durability: &str,
    damage: impl FnOnce(&std::path::Path),
) -> f64 {
    let broker = Mosquitto::start();
    let mut receiver = Receiver::start().await;
    let (_dir, mut agent) = Pipeline {
        client_id: client,
        batch_size: 100,
        buffer: &format!("{{durability: {durability}}}"),
        ..Pipeline::default()
    }
    .start_agent(&broker, receiver.port)
    .await;
    agent.wait_ready().await;
    // Phase 1 is synced; phase 2 waits in the queue (its WAL) when the agent dies.
    publish_through_faults(broker.port, &format!("{client}-1"), 0..500, 0).await;
    eventually(Duration::from_secs(20), "phase 1 synced", async || {
        (indices_by_seq(&receiver.accepted()).0.len() == 500).then_some(())
    })
    .await;
    receiver.stop().await;
    publish_through_faults(broker.port, &format!("{client}-2"), 500..1000, 0).await;
    agent
        .wait_metric(
            &series("edge_agent_records_enqueued_total", &[("kind", "reading")]),
            1000.0,
            Duration::from_secs(20),
        )
        .await;
    agent.kill();
    // The highest seq assigned so far, read from a copy (closing a connection on the
    // original would checkpoint its WAL away).
    let max_seq_before = {
        let copy = tempfile::tempdir().expect("tempdir");
        for suffix in ["", "-wal"] {
            let from = agent.data_dir.join(format!("queue.db{suffix}"));
            if from.exists() {
                std::fs::copy(&from, copy.path().join(format!("queue.db{suffix}")))
                    .expect("copy the queue");
            }
        }
        let conn = rusqlite::Connection::open(copy.path().join("queue.db")).expect("open");
        let max: i64 = conn
            .query_row("SELECT max(seq) FROM records", [], |r| r.get(0))
            .expect("max seq");
        max as u64
    };
    damage(&agent.data_dir);
    agent.restart();
    agent.wait_ready().await;
    receiver.resume().await;
    publish_through_faults(broker.port, &format!("{client}-3"), 1000..1500, 0).await;
    let records = eventually(Duration::from_secs(20), "phase 3 synced", async || {
        let all = receiver.accepted();
        let (got, _) = indices_by_seq(&all);
        ((1000..1500).all(|i| got.contains(&i))).then_some(all)
    })
    .await;
    let (got, _) = indices_by_seq(&records);
    assert!((0..500).all(|i| got.contains(&i)));
    let new_seqs: Vec<u64> = records
        .iter()
        .filter(|r| r["value"].as_f64().is_some_and(|v| v >= 1000.0))
        .filter_map(|r| r["seq"].as_u64())
        .collect();
    assert!(
        new_seqs.iter().all(|s| *s > max_seq_before),
        "records after the damage reuse a seq at or below {max_seq_before}: min {:?}",
        new_seqs.iter().min()
    );
    let corruptions = agent.metric(&series("edge_agent_queue_corruptions_total", &[]));
    let phase2 = (500..1000).filter(|i| got.contains(i)).count();
    eprintln!(
        "f4 {client}: corruption counter {corruptions}; {phase2} of 500 queued readings recovered"
    );
    corruptions
}

/// F4: the WAL torn at a random offset, as after a power cut that lost its last writes
/// (`durability: os`, where that may happen): recovered up to the tear, the agent keeps
/// ingesting, and new records get seqs above every one handed out before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn f4_a_torn_wal_is_recovered_and_the_agent_keeps_ingesting() {
    let mut rng = seeded_rng("f4");
    let cut: f64 = rng.random_range(0.0..1.0);
    damaged_queue_recovers("agent-f4-wal", "os", |data| {
        let wal = data.join("queue.db-wal");
        let len = std::fs::metadata(&wal).map(|m| m.len()).unwrap_or(0);
        assert!(len > 0, "the agent left a WAL behind");
        let at = (len as f64 * cut) as u64;
        eprintln!("f4: tearing the {len}-byte WAL at {at}");
        let file = std::fs::OpenOptions::new()
            .write(true)
            .open(&wal)
            .expect("open the WAL");
        file.set_len(at).expect("truncate the WAL");
    })
    .await;
}

/// F4: the headers of the database and of its WAL scribbled over (with an intact WAL,
/// SQLite reads page 1 from it and the damage is invisible): moved aside, counted, a
/// fresh queue starts above every seq handed out before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn f4_a_scribbled_queue_file_is_moved_aside_counted_and_the_agent_keeps_ingesting() {
    let corruptions = damaged_queue_recovers("agent-f4-header", "fsync", |data| {
        use std::io::{Seek, SeekFrom, Write};
        for name in ["queue.db", "queue.db-wal"] {
            let mut file = std::fs::OpenOptions::new()
                .write(true)
                .open(data.join(name))
                .expect("open the queue file");
            file.seek(SeekFrom::Start(0)).expect("seek");
            file.write_all(&[0xA5; 100]).expect("scribble");
        }
    })
    .await;
    assert_eq!(corruptions, 1.0, "the corruption is counted once");
}

//! Tests of the queue on real SQLite files in temporary directories: `seq` across
//! restarts and corrupt files, caps, batches, dead letters, expiry, the writer's
//! acknowledgement ordering, and a property test against an in-memory model.

use std::collections::VecDeque;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use edge_crds::{Durability, WhenFull};
use proptest::prelude::*;

use super::dead::Selection;
use super::seal::{Keyring, SealError};
use super::seq::{HWM_FILE, SEQ_BLOCK};
use super::store::DB_FILE;
use super::*;
use crate::record::{Lane, Reading, Record, UpstreamRecord};

fn settings(max_bytes: u64, when_full: WhenFull, durability: Durability) -> StoreSettings {
    StoreSettings {
        pipeline: "factory/line1".into(),
        node: "edge-1".into(),
        max_bytes,
        max_dead_letter_bytes: max_bytes / 4,
        when_full,
        durability,
        keys: Default::default(),
    }
}

fn record(device: &str, value: f64) -> Record {
    Record::reading(&Reading {
        device: device.into(),
        topic: format!("sensors/{device}/temperature"),
        value,
        timestamp_ms: 1_795_608_000_000,
        received_ms: 1_795_608_000_000,
    })
}

/// Bytes one reading of device `t1` takes in the queue (its upstream JSON).
fn one_record_bytes() -> u64 {
    serde_json::to_vec(&UpstreamRecord::new(
        "factory/line1",
        "edge-1",
        1,
        &record("t1", 1.0),
    ))
    .unwrap()
    .len() as u64
}

fn open(dir: &Path, s: StoreSettings) -> Store {
    Store::open(dir, s).unwrap().store
}

fn seqs(batch: &Batch) -> Vec<u64> {
    batch.records.iter().map(|r| r.seq).collect()
}

fn decode(batch: &Batch) -> Vec<UpstreamRecord> {
    serde_json::from_slice(&batch.json_array()).unwrap()
}

#[test]
fn records_come_back_in_order_with_their_seq_and_identity() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = open(
        dir.path(),
        settings(1 << 20, WhenFull::DropOldest, Durability::Fsync),
    );
    let a = [record("t1", 1.0), record("t2", 2.0)];
    let b = [record("t3", 3.0)];
    let report = s.append(&[&a, &[], &b], 1000).unwrap();
    assert_eq!(
        report.outcomes,
        vec![
            UnitOutcome::Stored { records: 2 },
            UnitOutcome::Stored { records: 0 },
            UnitOutcome::Stored { records: 1 }
        ]
    );
    let batch = s.take_batch(10, true).unwrap().unwrap();
    assert_eq!(seqs(&batch), vec![1, 2, 3]);
    let up = decode(&batch);
    assert_eq!(up[2].device, "t3");
    assert_eq!(up[2].seq, 3);
    assert_eq!(up[0].pipeline, "factory/line1");
    assert_eq!(up[0].node, "edge-1");
    assert_eq!(s.stats().unwrap().records, 3);
    assert_eq!(s.ack(&batch).unwrap(), 3);
    assert_eq!(s.stats().unwrap(), QueueStats::default());
    assert!(s.take_batch(10, true).unwrap().is_none());
}

#[test]
fn seq_is_never_reused_across_restarts_even_when_the_queue_drained() {
    let dir = tempfile::tempdir().unwrap();
    let st = settings(1 << 20, WhenFull::DropOldest, Durability::Fsync);
    let mut s = open(dir.path(), st.clone());
    s.append(&[&[record("t1", 1.0), record("t1", 2.0)]], 1)
        .unwrap();
    let batch = s.take_batch(10, true).unwrap().unwrap();
    s.ack(&batch).unwrap();
    drop(s);
    let mut s = open(dir.path(), st.clone());
    assert_eq!(s.next_seq(), 3, "continues after the drained records");
    s.append(&[&[record("t1", 3.0)]], 2).unwrap();
    let batch = s.take_batch(10, true).unwrap().unwrap();
    assert_eq!(seqs(&batch), vec![3]);
}

#[test]
fn with_os_durability_a_restart_continues_above_every_reserved_seq() {
    let dir = tempfile::tempdir().unwrap();
    let st = settings(1 << 20, WhenFull::DropOldest, Durability::Os);
    let mut s = open(dir.path(), st.clone());
    s.append(&[&[record("t1", 1.0)]], 1).unwrap();
    drop(s);
    let s = open(dir.path(), st);
    assert!(
        s.next_seq() > SEQ_BLOCK,
        "a power cut may have lost commits: skip the reserved block"
    );
}

#[test]
fn a_corrupt_file_is_moved_aside_and_seq_continues_above_the_old_ones() {
    let dir = tempfile::tempdir().unwrap();
    let st = settings(1 << 20, WhenFull::DropOldest, Durability::Fsync);
    let mut s = open(dir.path(), st.clone());
    s.append(&[&[record("t1", 1.0), record("t1", 2.0)]], 1)
        .unwrap();
    drop(s);
    std::fs::write(
        dir.path().join(DB_FILE),
        b"this is not a database, it is garbage".repeat(200),
    )
    .unwrap();
    let opened = Store::open(dir.path(), st).unwrap();
    let (aside, why) = opened.moved_aside.expect("moved aside");
    assert!(
        aside
            .file_name()
            .unwrap()
            .to_string_lossy()
            .starts_with("queue.db.corrupt-")
    );
    assert!(aside.exists());
    assert!(!why.is_empty());
    let mut s = opened.store;
    assert_eq!(s.stats().unwrap().records, 0);
    s.append(&[&[record("t1", 3.0)]], 2).unwrap();
    let batch = s.take_batch(10, true).unwrap().unwrap();
    assert!(
        batch.first_seq > 2,
        "seq {} reused after a reset",
        batch.first_seq
    );
}

#[test]
fn a_corrupt_file_without_a_mark_starts_seq_from_the_clock() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join(DB_FILE), b"garbage".repeat(1000)).unwrap();
    let s = Store::open(
        dir.path(),
        settings(1 << 20, WhenFull::DropOldest, Durability::Fsync),
    )
    .unwrap();
    assert!(s.moved_aside.is_some());
    assert!(s.store.next_seq() > 1_600_000_000_000_000);
    assert!(dir.path().join(HWM_FILE).exists());
}

#[test]
fn a_damaged_page_fails_quick_check_and_is_moved_aside() {
    let dir = tempfile::tempdir().unwrap();
    let st = settings(1 << 22, WhenFull::DropOldest, Durability::Fsync);
    let mut s = open(dir.path(), st.clone());
    let unit: Vec<Record> = (0..2000).map(|i| record("t1", i as f64)).collect();
    s.append(&[&unit], 1).unwrap();
    drop(s);
    // Checkpointed on close: overwrite the middle of the file, keeping the header valid.
    let path = dir.path().join(DB_FILE);
    let mut bytes = std::fs::read(&path).unwrap();
    assert!(bytes.len() > 64 * 1024, "database unexpectedly small");
    for b in &mut bytes[8192..40960] {
        *b = 0xA5;
    }
    std::fs::write(&path, bytes).unwrap();
    let opened = Store::open(dir.path(), st).unwrap();
    assert!(opened.moved_aside.is_some(), "damage not detected");
    assert!(opened.store.next_seq() > 2000);
}

#[test]
fn drop_newest_rejects_what_does_not_fit_and_keeps_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let one = one_record_bytes();
    let mut s = open(
        dir.path(),
        settings(one * 3 + one / 2, WhenFull::DropNewest, Durability::Os),
    );
    let r = [record("t1", 1.0)];
    let report = s.append(&[&r, &r, &r, &r, &r], 1).unwrap();
    assert_eq!(
        report.outcomes[..3],
        [UnitOutcome::Stored { records: 1 }; 3]
    );
    assert_eq!(
        report.outcomes[3..],
        [UnitOutcome::Dropped { records: 1 }; 2]
    );
    let batch = s.take_batch(10, true).unwrap().unwrap();
    assert_eq!(seqs(&batch), vec![1, 2, 3], "the oldest are kept");
}

#[test]
fn drop_oldest_evicts_the_oldest_to_make_room() {
    let dir = tempfile::tempdir().unwrap();
    let one = one_record_bytes();
    let mut s = open(
        dir.path(),
        settings(one * 3 + one / 2, WhenFull::DropOldest, Durability::Os),
    );
    let r = [record("t1", 1.0)];
    let report = s.append(&[&r, &r, &r, &r, &r], 1).unwrap();
    assert_eq!(report.outcomes, vec![UnitOutcome::Stored { records: 1 }; 5]);
    assert_eq!(report.evicted, 2);
    let batch = s.take_batch(10, true).unwrap().unwrap();
    assert_eq!(seqs(&batch), vec![3, 4, 5], "the newest are kept");
    assert!(s.stats().unwrap().bytes <= one * 3 + one / 2);
}

#[test]
fn block_leaves_what_does_not_fit_uncommitted() {
    let dir = tempfile::tempdir().unwrap();
    let one = one_record_bytes();
    let mut s = open(
        dir.path(),
        settings(one * 2 + one / 2, WhenFull::Block, Durability::Os),
    );
    let r = [record("t1", 1.0)];
    let report = s.append(&[&r, &r, &r, &r], 1).unwrap();
    assert_eq!(
        report.outcomes,
        vec![
            UnitOutcome::Stored { records: 1 },
            UnitOutcome::Stored { records: 1 },
            UnitOutcome::Blocked,
            UnitOutcome::Blocked
        ]
    );
    assert_eq!(s.stats().unwrap().records, 2);
    assert_eq!(s.next_seq(), 3, "nothing was handed out to blocked records");
}

#[test]
fn a_partial_batch_keeps_its_range_until_acknowledged_even_across_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let st = settings(1 << 20, WhenFull::DropOldest, Durability::Fsync);
    let mut s = open(dir.path(), st.clone());
    s.append(&[&[record("t1", 1.0), record("t1", 2.0)]], 1)
        .unwrap();
    assert!(
        s.take_batch(5, false).unwrap().is_none(),
        "not a full batch yet"
    );
    let first = s.take_batch(5, true).unwrap().unwrap();
    assert_eq!(seqs(&first), vec![1, 2]);
    s.append(&[&[record("t1", 3.0), record("t1", 4.0)]], 2)
        .unwrap();
    let again = s.take_batch(5, true).unwrap().unwrap();
    assert_eq!(again, first, "a retry sends exactly the same batch");
    drop(s);
    let mut s = open(dir.path(), st);
    let after_restart = s.take_batch(5, false).unwrap().unwrap();
    assert_eq!(
        Batch {
            backlog: false,
            ..after_restart.clone()
        },
        first,
        "the same batch, now part of the backlog"
    );
    assert!(after_restart.backlog);
    s.ack(&after_restart).unwrap();
    let next = s.take_batch(5, true).unwrap().unwrap();
    assert_eq!(seqs(&next), vec![3, 4]);
}

#[test]
fn dead_letters_are_kept_listed_and_out_of_the_queue() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = open(
        dir.path(),
        settings(1 << 20, WhenFull::DropOldest, Durability::Fsync),
    );
    s.append(
        &[
            &[record("t1", 1.0), record("t2", 2.0)],
            &[record("t3", 3.0)],
        ],
        1,
    )
    .unwrap();
    let batch = s.take_batch(2, false).unwrap().unwrap();
    let done = s.dead_letter(&batch, 400, "bad record", 1234).unwrap();
    assert_eq!(
        done,
        DeadLettered {
            records: 2,
            overflow_records: 0
        }
    );
    let next = s.take_batch(10, true).unwrap().unwrap();
    assert_eq!(seqs(&next), vec![3], "sync continues with the next batch");
    let conn = dead::open(dir.path(), false).unwrap().unwrap();
    let listed = dead::list(&conn).unwrap();
    let body_len = batch.json_array().len() as u64;
    assert_eq!(
        listed,
        vec![DeadLetter {
            id: 1,
            at_ms: 1234,
            first_seq: 1,
            last_seq: 2,
            records: 2,
            bytes: body_len,
            status: 400,
            reason: "bad record".into()
        }]
    );
    assert_eq!(s.dead_letters().unwrap(), listed);
    let stats = s.stats().unwrap();
    assert_eq!(
        stats.dead_letters,
        DeadLetterStats {
            batches: 1,
            records: 2,
            bytes: body_len
        }
    );
    let body = dead::body(&conn, 1, &Keyring::default()).unwrap().unwrap();
    let up: Vec<UpstreamRecord> = serde_json::from_slice(&body).unwrap();
    assert_eq!(up.len(), 2);
    drop(s);
    let s = open(
        dir.path(),
        settings(1 << 20, WhenFull::DropOldest, Durability::Fsync),
    );
    assert_eq!(s.next_seq(), 4, "dead-lettered seqs are not reused");
    assert_eq!(s.stats().unwrap().dead_letters, stats.dead_letters);
}

/// `edge-agent dead-letters replay` runs next to the agent: its own connection, one
/// transaction; the agent's store notices and recounts.
#[test]
fn a_replay_from_another_process_puts_the_records_back_under_their_seq() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = open(
        dir.path(),
        settings(1 << 20, WhenFull::DropOldest, Durability::Fsync),
    );
    let values: Vec<Record> = (0..5).map(|i| record("t1", i as f64)).collect();
    s.append(&[&values], 1).unwrap();
    let rejected = s.take_batch(2, false).unwrap().unwrap();
    s.dead_letter(&rejected, 422, "schema", 2).unwrap();
    let sent = s.take_batch(1, false).unwrap().unwrap();
    s.ack(&sent).unwrap();
    let before = s.stats().unwrap();
    assert_eq!((before.records, before.dead_letters.records), (2, 2));

    let mut cli = dead::open(dir.path(), true).unwrap().unwrap();
    let done = dead::replay(&mut cli, Selection::All, 99, &Keyring::default()).unwrap();
    assert_eq!((done.batches, done.records), (1, 2));
    assert!(dead::list(&cli).unwrap().is_empty());

    assert!(
        s.refresh().unwrap(),
        "the store sees the other connection's commit"
    );
    assert!(!s.refresh().unwrap(), "and recounts once");
    let after = s.stats().unwrap();
    assert_eq!(after.records, 4);
    assert_eq!(
        after.bytes,
        before.bytes
            + rejected
                .records
                .iter()
                .map(|r| r.body.len() as u64)
                .sum::<u64>()
    );
    assert_eq!(after.dead_letters, DeadLetterStats::default());
    assert_eq!(
        after.oldest_ms,
        Some(99),
        "enqueued at the replay: maxAge counts from it"
    );
    let again = s.take_batch(10, true).unwrap().unwrap();
    assert_eq!(
        seqs(&again),
        vec![1, 2, 4, 5],
        "the replayed records go first"
    );
    assert_eq!(&again.records[..2], &rejected.records[..], "byte for byte");
    assert_eq!(s.next_seq(), 6);
}

#[test]
fn a_purge_from_another_process_frees_the_dead_letters_room() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = open(
        dir.path(),
        settings(1 << 20, WhenFull::DropOldest, Durability::Os),
    );
    for i in 0..3 {
        s.append(&[&[record("t1", i as f64)]], 1).unwrap();
        let b = s.take_batch(1, false).unwrap().unwrap();
        s.dead_letter(&b, 400, "no", 1).unwrap();
    }
    let mut cli = dead::open(dir.path(), true).unwrap().unwrap();
    let ids: Vec<i64> = dead::list(&cli).unwrap().iter().map(|l| l.id).collect();
    assert_eq!(ids, vec![1, 2, 3]);
    let done = dead::purge(&mut cli, Selection::Ids(&[1, 3, 42])).unwrap();
    assert_eq!(
        (done.batches, done.records),
        (2, 2),
        "an unknown id is skipped"
    );
    s.refresh().unwrap();
    assert_eq!(s.stats().unwrap().dead_letters.batches, 1);
    assert_eq!(s.dead_letters().unwrap()[0].id, 2);
}

#[test]
fn dead_letters_count_against_max_bytes_and_the_oldest_overflow() {
    let dir = tempfile::tempdir().unwrap();
    let one = one_record_bytes();
    // Room for 10 records; dead letters may hold 2 one-record batches (+2 bytes each).
    let mut st = settings(10 * one + 5, WhenFull::DropNewest, Durability::Os);
    st.max_dead_letter_bytes = 2 * (one + 2) + 1;
    let mut s = open(dir.path(), st);
    let mut overflowed = 0;
    for i in 0..3 {
        s.append(&[&[record("t1", i as f64)]], 1).unwrap();
        let b = s.take_batch(1, false).unwrap().unwrap();
        overflowed += s.dead_letter(&b, 400, "no", 1).unwrap().overflow_records;
    }
    assert_eq!(overflowed, 1, "the third dead letter pushed the first out");
    let kept: Vec<u64> = s
        .dead_letters()
        .unwrap()
        .iter()
        .map(|l| l.first_seq)
        .collect();
    assert_eq!(kept, vec![2, 3]);
    // Room left for records: 10 records' worth minus what the dead letters hold.
    let many: Vec<Record> = (0..10).map(|i| record("t1", i as f64)).collect();
    let units: Vec<&[Record]> = many.chunks(1).collect();
    let report = s.append(&units, 1).unwrap();
    let stored = report
        .outcomes
        .iter()
        .filter(|o| matches!(o, UnitOutcome::Stored { .. }))
        .count();
    assert_eq!(stored, 7, "{:?}", report.outcomes);
    let stats = s.stats().unwrap();
    assert!(stats.bytes + stats.dead_letters.bytes <= 10 * one + 5);
}

#[test]
fn a_cleanly_closed_file_opens_without_the_integrity_check() {
    let dir = tempfile::tempdir().unwrap();
    let st = settings(1 << 24, WhenFull::DropOldest, Durability::Os);
    let opened = Store::open(dir.path(), st.clone()).unwrap();
    assert!(opened.checked, "a new file is checked (it has no mark)");
    let mut s = opened.store;
    let many: Vec<Record> = (0..100).map(|i| record("t1", i as f64)).collect();
    s.append(&[&many], 1).unwrap();
    let stats = s.stats().unwrap();
    s.close().unwrap();

    let opened = Store::open(dir.path(), st.clone()).unwrap();
    assert!(!opened.checked, "closed cleanly: no full read of the file");
    assert_eq!(
        opened.store.stats().unwrap(),
        stats,
        "the counters come from meta"
    );
    assert_eq!(
        opened.store.next_seq(),
        101,
        "closed cleanly: nothing lost, no gap"
    );
    drop(opened);
    let opened = Store::open(dir.path(), st).unwrap();
    assert!(
        opened.checked,
        "dropped without close, as a crash would: checked"
    );
    assert_eq!(opened.store.stats().unwrap(), stats);
}

#[test]
fn a_drained_queue_gives_its_disk_space_back() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = open(
        dir.path(),
        settings(1 << 30, WhenFull::DropOldest, Durability::Os),
    );
    let group: Vec<Record> = (0..1000).map(|i| record("t1", i as f64)).collect();
    for _ in 0..100 {
        s.append(&[&group], 1).unwrap();
    }
    s.checkpoint().unwrap();
    let full = s.file_bytes();
    assert!(full > 15 << 20, "{full}");
    while let Some(b) = s.take_batch(5000, true).unwrap() {
        s.ack(&b).unwrap();
    }
    s.checkpoint().unwrap();
    assert_eq!(s.file_bytes(), full, "deleting alone keeps the pages");
    let given = s.shrink(Duration::from_secs(60)).unwrap();
    assert!(given > 0);
    let after = s.file_bytes();
    assert!(after < 2 << 20, "{full} -> {after}");
    assert_eq!(
        s.shrink(Duration::from_secs(60)).unwrap(),
        0,
        "a little free space is kept for the next commits"
    );
    s.append(&[&group], 1).unwrap();
    assert_eq!(s.stats().unwrap().records, 1000);
}

#[test]
fn a_file_from_before_shrinking_is_converted_once_empty() {
    let dir = tempfile::tempdir().unwrap();
    let st = settings(1 << 30, WhenFull::DropOldest, Durability::Fsync);
    let mut s = open(dir.path(), st.clone());
    // As an older agent left it: no auto-vacuum.
    s.conn_for_tests()
        .execute_batch("PRAGMA auto_vacuum = NONE; VACUUM;")
        .unwrap();
    let auto = |s: &Store| -> i64 {
        s.conn_for_tests()
            .query_row("PRAGMA auto_vacuum", [], |r| r.get(0))
            .unwrap()
    };
    assert_eq!(auto(&s), 0);
    s.append(&[&[record("t1", 1.0)]], 1).unwrap();
    drop(s);
    let mut s = open(dir.path(), st.clone());
    assert_eq!(auto(&s), 0, "not while records wait");
    let b = s.take_batch(10, true).unwrap().unwrap();
    s.ack(&b).unwrap();
    drop(s);
    let s = open(dir.path(), st);
    assert_eq!(auto(&s), 2, "incremental once empty");
    assert_eq!(s.next_seq(), 2);
}

#[test]
fn records_older_than_the_cutoff_expire_oldest_first() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = open(
        dir.path(),
        settings(1 << 24, WhenFull::DropOldest, Durability::Os),
    );
    let old: Vec<Record> = (0..1200).map(|i| record("t1", i as f64)).collect();
    s.append(&[&old], 1_000).unwrap();
    s.append(&[&[record("t1", 0.5)]], 5_000).unwrap();
    assert_eq!(s.stats().unwrap().oldest_ms, Some(1_000));
    assert_eq!(s.expire(2_000).unwrap(), 1200);
    let stats = s.stats().unwrap();
    assert_eq!(stats.records, 1);
    assert_eq!(stats.oldest_ms, Some(5_000));
    assert_eq!(s.expire(2_000).unwrap(), 0);
}

#[test]
fn the_dead_letter_commands_find_no_queue_in_an_empty_directory() {
    let dir = tempfile::tempdir().unwrap();
    assert!(dead::open(dir.path(), true).unwrap().is_none());
    assert!(!dir.path().join(store::DB_FILE).exists(), "nothing created");
}

fn writer_config(dir: &Path, max_bytes: u64, when_full: WhenFull) -> QueueConfig {
    QueueConfig {
        dir: dir.to_path_buf(),
        store: settings(max_bytes, when_full, Durability::Fsync),
        max_age: Duration::from_secs(3600),
        owner: None,
        adopt_previous: false,
    }
}

#[tokio::test]
async fn completions_resolve_after_commit_in_submission_order() {
    let dir = tempfile::tempdir().unwrap();
    let metrics = Arc::new(crate::runtime::telemetry::Metrics::new("factory/line1").unwrap());
    let health = Arc::new(crate::runtime::health::Health::new(Duration::from_secs(30)));
    let (queue, done) = Queue::start(
        writer_config(dir.path(), 1 << 20, WhenFull::DropOldest),
        metrics.clone(),
        health.clone(),
    )
    .await
    .unwrap();
    assert_eq!(
        health.ready(),
        Err(vec!["source broker not connected"]),
        "queue is open"
    );
    let mut waits = Vec::new();
    for i in 0..200 {
        let records = if i % 2 == 0 {
            vec![record("t1", i as f64)]
        } else {
            vec![]
        };
        waits.push(queue.submit(records, Instant::now()).await.unwrap());
    }
    for w in waits {
        assert_eq!(w.await.unwrap(), Committed::Stored);
    }
    assert_eq!(
        metrics
            .records_enqueued
            .with_label_values(&["reading"])
            .get(),
        100
    );
    assert_eq!(metrics.ingest_to_durable.get_sample_count(), 200);
    let batch = queue
        .take_batch(1000, true, Prefer::Backlog)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(batch.records.len(), 100);
    assert_eq!(metrics.queue_records.get(), 100);
    queue.ack(batch).await.unwrap();
    drop(queue);
    done.shutdown().await;
    assert_eq!(metrics.queue_records.get(), 0);
}

#[tokio::test]
async fn under_block_a_message_is_acknowledged_only_once_space_frees() {
    let dir = tempfile::tempdir().unwrap();
    let one = one_record_bytes();
    let metrics = Arc::new(crate::runtime::telemetry::Metrics::new("factory/line1").unwrap());
    let health = Arc::new(crate::runtime::health::Health::new(Duration::from_secs(30)));
    let (queue, done) = Queue::start(
        writer_config(dir.path(), one * 2 + one / 2, WhenFull::Block),
        metrics.clone(),
        health,
    )
    .await
    .unwrap();
    let a = queue
        .submit(vec![record("t1", 1.0)], Instant::now())
        .await
        .unwrap();
    let b = queue
        .submit(vec![record("t1", 2.0)], Instant::now())
        .await
        .unwrap();
    let mut c = queue
        .submit(vec![record("t1", 3.0)], Instant::now())
        .await
        .unwrap();
    assert_eq!(a.await.unwrap(), Committed::Stored);
    assert_eq!(b.await.unwrap(), Committed::Stored);
    // A round trip through the writer proves it has seen `c` and kept it pending.
    let batch = queue
        .take_batch(1, false, Prefer::Backlog)
        .await
        .unwrap()
        .unwrap();
    assert!(
        c.try_recv().is_err(),
        "acknowledged while the queue is full"
    );
    queue.ack(batch).await.unwrap();
    assert_eq!(c.await.unwrap(), Committed::Stored);
    assert_eq!(
        metrics
            .records_dropped
            .with_label_values(&["queue_full"])
            .get(),
        0
    );
    done.shutdown().await;
    assert!(matches!(
        queue.take_batch(1, true, Prefer::Backlog).await,
        Err(QueueError::Stopped)
    ));
}

#[test]
fn a_full_disk_fails_the_commit_without_changing_anything() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = open(
        dir.path(),
        settings(1 << 30, WhenFull::DropOldest, Durability::Os),
    );
    s.append(&[&[record("t1", 1.0)]], 1).unwrap();
    s.limit_growth(2).unwrap();
    let big: Vec<Record> = (0..2000).map(|i| record("t1", i as f64)).collect();
    let before = (s.next_seq(), s.stats().unwrap());
    let err = s.append(&[&big], 2).expect_err("the file cannot grow");
    assert!(err.is_transient(), "{err}");
    assert_eq!(
        (s.next_seq(), s.stats().unwrap()),
        before,
        "nothing half-committed"
    );
    s.limit_growth(100_000).unwrap();
    s.append(&[&big], 3).unwrap();
    let batch = s.take_batch(5000, true).unwrap().unwrap();
    assert_eq!(batch.records.len(), 2001);
    assert_eq!(seqs(&batch)[1], 2, "the failed commit used no seq");
}

#[tokio::test]
async fn the_writer_retries_a_failing_disk_then_drops_and_counts_at_once_while_full() {
    let dir = tempfile::tempdir().unwrap();
    let metrics = Arc::new(crate::runtime::telemetry::Metrics::new("factory/line1").unwrap());
    let health = Arc::new(crate::runtime::health::Health::new(Duration::from_secs(30)));
    let path = dir.path().to_path_buf();
    let opener = move || {
        let store = Store::open(
            &path,
            settings(1 << 30, WhenFull::DropOldest, Durability::Os),
        )?
        .store;
        store.limit_growth(2)?;
        Ok((store, None))
    };
    let (queue, control) =
        Queue::start_with(opener, Duration::from_secs(3600), metrics.clone(), health)
            .await
            .unwrap();
    let big: Vec<Record> = (0..2000).map(|i| record("t1", i as f64)).collect();
    let started = Instant::now();
    let done = queue.submit(big, Instant::now()).await.unwrap();
    assert_eq!(
        done.await.unwrap(),
        Committed::Dropped,
        "acknowledged as dropped, not lost silently"
    );
    assert!(
        started.elapsed() >= Duration::from_millis(1400),
        "retried with backoff first"
    );
    assert_eq!(
        metrics
            .records_dropped
            .with_label_values(&["disk_full"])
            .get(),
        2000
    );
    // The disk proved full: the next unit that does not fit gets one attempt, no backoff.
    let again: Vec<Record> = (0..2000).map(|i| record("t2", i as f64)).collect();
    let started = Instant::now();
    let done = queue.submit(again, Instant::now()).await.unwrap();
    assert_eq!(done.await.unwrap(), Committed::Dropped);
    assert!(
        started.elapsed() < Duration::from_millis(1400),
        "dropped without the backoff: {:?}",
        started.elapsed()
    );
    assert_eq!(
        metrics
            .records_dropped
            .with_label_values(&["disk_full"])
            .get(),
        4000
    );
    // A small unit still fits: the writer keeps going.
    let small = queue
        .submit(vec![record("t1", 1.0)], Instant::now())
        .await
        .unwrap();
    assert_eq!(small.await.unwrap(), Committed::Stored);
    control.shutdown().await;
}

/// One step of the model test.
#[derive(Clone, Debug)]
enum Op {
    Append(Vec<u8>),
    SendOk(usize),
    SendRejected(usize),
    Reopen,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => proptest::collection::vec(0u8..4, 0..4).prop_map(Op::Append),
        2 => (1usize..6).prop_map(Op::SendOk),
        1 => (1usize..6).prop_map(Op::SendRejected),
        1 => Just(Op::Reopen),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, .. ProptestConfig::default() })]

    /// The queue behaves like a bounded FIFO of (seq, record) with the chosen full
    /// policy; seq only grows; every record is either queued, synced, dropped or
    /// dead-lettered, and the counts add up.
    #[test]
    fn the_queue_matches_a_simple_model(
        ops in proptest::collection::vec(op(), 1..40),
        drop_oldest in any::<bool>(),
        cap_records in 2u64..8,
    ) {
        let dir = tempfile::tempdir().unwrap();
        let size_of = |seq: u64, v: u8| {
            serde_json::to_vec(&UpstreamRecord::new("factory/line1", "edge-1", seq, &record("t1", v as f64))).unwrap().len() as u64
        };
        let when_full = if drop_oldest { WhenFull::DropOldest } else { WhenFull::DropNewest };
        let max_bytes = cap_records * size_of(1, 0) + 10;
        let st = settings(max_bytes, when_full, Durability::Os);
        let mut store = open(dir.path(), st.clone());
        let mut model: VecDeque<(u64, u8, u64)> = VecDeque::new();
        // Dead letters: (records, body bytes), oldest first.
        let mut dead_model: VecDeque<(u64, u64)> = VecDeque::new();
        let dead_cap = st.max_dead_letter_bytes;
        let mut last_seq = 0u64;
        let (mut total, mut synced, mut dropped, mut dead) = (0u64, 0u64, 0u64, 0u64);
        for op in ops {
            match op {
                Op::Append(values) => {
                    let records: Vec<Record> = values.iter().map(|v| record("t1", *v as f64)).collect();
                    let first = store.next_seq();
                    let report = store.append(&[&records], 1).unwrap();
                    total += records.len() as u64;
                    let sizes: Vec<u64> = values.iter().enumerate().map(|(i, v)| size_of(first + i as u64, *v)).collect();
                    let need: u64 = sizes.iter().sum();
                    let mut bytes: u64 = model.iter().map(|m| m.2).sum();
                    let room = max_bytes.saturating_sub(dead_model.iter().map(|d| d.1).sum());
                    let fits = bytes + need <= room;
                    match report.outcomes[0] {
                        UnitOutcome::Stored { .. } => {
                            prop_assert!(fits || (drop_oldest && need <= room));
                            let mut evicted = 0;
                            while bytes + need > room {
                                let (_, _, s) = model.pop_front().expect("model evicts as much as the store");
                                bytes -= s;
                                evicted += 1;
                            }
                            prop_assert_eq!(report.evicted, evicted);
                            dropped += evicted;
                            for (i, (v, s)) in values.iter().zip(sizes).enumerate() {
                                let seq = first + i as u64;
                                prop_assert!(seq > last_seq);
                                last_seq = seq;
                                model.push_back((seq, *v, s));
                            }
                        }
                        UnitOutcome::Dropped { records } => {
                            prop_assert!(!fits && (!drop_oldest || need > room));
                            prop_assert_eq!(store.next_seq(), first, "a dropped unit uses no seq");
                            dropped += records;
                        }
                        UnitOutcome::Blocked => prop_assert!(false, "no block policy here"),
                    }
                }
                Op::SendOk(limit) | Op::SendRejected(limit) => {
                    let Some(batch) = store.take_batch(limit, true).unwrap() else {
                        prop_assert!(model.is_empty());
                        continue;
                    };
                    let got = seqs(&batch);
                    prop_assert!(got.len() <= limit);
                    let expected: Vec<u64> = model.iter().take_while(|m| m.0 <= batch.last_seq).map(|m| m.0).collect();
                    prop_assert_eq!(&got, &expected);
                    if matches!(op, Op::SendOk(_)) {
                        synced += store.ack(&batch).unwrap();
                    } else {
                        let done = store.dead_letter(&batch, 400, "rejected", 1).unwrap();
                        dead += done.records;
                        let payload: u64 = model.iter().take(got.len()).map(|m| m.2).sum();
                        dead_model.push_back((got.len() as u64, payload + got.len() as u64 + 1));
                        let mut overflow = 0;
                        while dead_model.iter().map(|d| d.1).sum::<u64>() > dead_cap {
                            overflow += dead_model.pop_front().map_or(0, |d| d.0);
                        }
                        prop_assert_eq!(done.overflow_records, overflow);
                    }
                    for _ in &got {
                        model.pop_front();
                    }
                }
                Op::Reopen => {
                    drop(store);
                    store = open(dir.path(), st.clone());
                    prop_assert!(store.next_seq() > last_seq);
                }
            }
            let stats = store.stats().unwrap();
            prop_assert_eq!(stats.records, model.len() as u64);
            prop_assert_eq!(stats.bytes, model.iter().map(|m| m.2).sum::<u64>());
            let dead_stats = stats.dead_letters;
            prop_assert_eq!(dead_stats.records, dead_model.iter().map(|d| d.0).sum::<u64>());
            prop_assert_eq!(dead_stats.bytes, dead_model.iter().map(|d| d.1).sum::<u64>());
            // A dead letter's body is its records plus the brackets and commas of a JSON
            // array; their payload and the queued records stay within maxBytes.
            let dead_payload = dead_stats.bytes - dead_stats.records - dead_stats.batches;
            prop_assert!(stats.bytes + dead_payload <= max_bytes);
            prop_assert_eq!(total, model.len() as u64 + synced + dropped + dead);
        }
    }
}

fn change(key: &str, value: Option<&[u8]>) -> StateChange {
    StateChange {
        key: key.into(),
        value: value.map(<[u8]>::to_vec),
    }
}

/// State changes and deliveries commit with their units, the last value per key wins,
/// a unit left uncommitted under `block` writes nothing, and state of another
/// configuration is discarded at load.
#[test]
fn state_and_deliveries_commit_with_their_units() {
    let dir = tempfile::tempdir().unwrap();
    let one = one_record_bytes();
    let mut s = open(
        dir.path(),
        settings(2 * one + 1, WhenFull::Block, Durability::Fsync),
    );
    assert_eq!(s.load_state(7).unwrap().rows, vec![]);
    let r = [record("t1", 1.0)];
    let (a1, a2, b1) = (
        [change("p/a", Some(b"1"))],
        [change("p/a", Some(b"2")), change("i/a", Some(b"w"))],
        [change("p/b", Some(b"1"))],
    );
    let d1 = DeliveryId::of(1, "s/a", b"x");
    let units = [
        UnitRef {
            records: &r,
            state: &a1,
            delivery: d1,
        },
        UnitRef {
            records: &r,
            state: &a2,
            delivery: DeliveryId::of(2, "s/a", b"y"),
        },
        // Does not fit under block: its state and delivery stay out.
        UnitRef {
            records: &r,
            state: &b1,
            delivery: DeliveryId::of(3, "s/b", b"z"),
        },
    ];
    let report = s.append_units(&units, 1).unwrap();
    assert_eq!(report.outcomes[2], UnitOutcome::Blocked);
    assert!(s.delivered(d1.unwrap()).unwrap());
    assert!(
        !s.delivered(DeliveryId::of(1, "s/a", b"other").unwrap())
            .unwrap(),
        "same id, other message"
    );
    assert!(
        !s.delivered(DeliveryId::of(3, "s/b", b"z").unwrap())
            .unwrap(),
        "blocked: not in"
    );
    drop(s);

    let mut s = open(
        dir.path(),
        settings(1 << 20, WhenFull::Block, Durability::Fsync),
    );
    let saved = s.load_state(7).unwrap();
    assert_eq!(saved.rows.len(), 2);
    let order: Vec<&str> = saved.rows.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(order, ["p/a", "i/a"], "in the order of their last change");
    let mut keys: Vec<&str> = saved.rows.iter().map(|(k, _)| k.as_str()).collect();
    keys.sort_unstable();
    assert_eq!(keys, ["i/a", "p/a"]);
    assert!(
        saved.rows.contains(&("p/a".into(), b"2".to_vec())),
        "the last value wins"
    );
    // An eviction deletes.
    s.append_units(
        &[UnitRef {
            records: &[],
            state: &[change("p/a", None)],
            delivery: None,
        }],
        2,
    )
    .unwrap();
    let keys: Vec<String> = s
        .load_state(7)
        .unwrap()
        .rows
        .into_iter()
        .map(|(k, _)| k)
        .collect();
    assert_eq!(keys, ["i/a"]);
    // Another configuration: discarded.
    let other = s.load_state(8).unwrap();
    assert!(other.discarded && other.rows.is_empty());
    assert!(!s.load_state(8).unwrap().discarded);
}

fn keyring(keys: &[(&str, u8)]) -> Keyring {
    Keyring::new(
        keys.iter()
            .map(|(id, b)| (id.to_string(), vec![*b; super::seal::KEY_LEN]))
            .collect(),
    )
    .unwrap()
}

fn sealed(keys: &[(&str, u8)]) -> StoreSettings {
    StoreSettings {
        keys: keyring(keys),
        ..settings(1 << 20, WhenFull::DropOldest, Durability::Fsync)
    }
}

/// Every byte of the queue's files (database and WAL).
fn file_bytes(dir: &Path) -> Vec<u8> {
    let mut all = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_file() {
            all.extend(std::fs::read(path).unwrap());
        }
    }
    all
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// With `buffer.encryption`, no reading's value, device, state or dead letter appears in
/// the queue's files; everything comes back after a restart with the key.
#[test]
fn an_encrypted_queue_shows_no_reading_on_disk_and_reads_back_with_its_key() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = open(dir.path(), sealed(&[("a", 1)]));
    let r = [record("boiler-7", 8642.1357), record("boiler-7", 9753.2468)];
    let state = [change("p/x", Some(br#"{"last":1357.8642}"#))];
    s.append_units(
        &[UnitRef {
            records: &r,
            state: &state,
            delivery: None,
        }],
        1,
    )
    .unwrap();
    let rejected = s.take_batch(1, false).unwrap().unwrap();
    s.dead_letter(&rejected, 400, "no", 2).unwrap();
    s.close().unwrap();
    let disk = file_bytes(dir.path());
    for secret in [
        &b"8642.1357"[..],
        b"9753.2468",
        b"boiler-7",
        b"1357.8642",
        b"factory/line1",
    ] {
        assert!(
            !contains(&disk, secret),
            "{:?} is in the queue's files",
            String::from_utf8_lossy(secret)
        );
    }

    let mut s = open(dir.path(), sealed(&[("a", 1)]));
    let up = decode(&s.take_batch(10, true).unwrap().unwrap());
    assert_eq!(
        (up.len(), up[0].device.as_str(), up[0].seq),
        (1, "boiler-7", 2)
    );
    let saved = s.load_state(0).unwrap();
    assert!(saved.rows.is_empty(), "fingerprint 0 was never saved");
    drop(s);
    let conn = dead::open(dir.path(), true).unwrap().unwrap();
    let body = dead::body(&conn, 1, &keyring(&[("a", 1)]))
        .unwrap()
        .unwrap();
    let dead_up: Vec<UpstreamRecord> = serde_json::from_slice(&body).unwrap();
    assert_eq!(dead_up[0].seq, 1);
    // Without the key the file is refused before anything is read.
    assert!(matches!(
        Keyring::default().check(&conn),
        Err(SealError::MissingKey(id)) if id == "a"
    ));
}

/// Saved state is sealed and restored.
#[test]
fn sealed_state_comes_back_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = open(dir.path(), sealed(&[("a", 1)]));
    s.load_state(7).unwrap();
    let r = [record("t1", 1.0)];
    let state = [change("p/x", Some(br#"{"last":42.4242}"#))];
    s.append_units(
        &[UnitRef {
            records: &r,
            state: &state,
            delivery: None,
        }],
        1,
    )
    .unwrap();
    s.close().unwrap();
    assert!(!contains(&file_bytes(dir.path()), b"42.4242"));
    let mut s = open(dir.path(), sealed(&[("a", 1)]));
    assert_eq!(
        s.load_state(7).unwrap().rows,
        vec![("p/x".to_string(), br#"{"last":42.4242}"#.to_vec())]
    );
}

/// A new key takes over for new records while the old one still reads the backlog; once
/// nothing sealed with the old key is left, it may be removed from the configuration.
#[test]
fn rotation_keeps_the_backlog_readable_and_retires_the_old_key() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = open(dir.path(), sealed(&[("a", 1)]));
    s.append(&[&[record("t1", 1.0)]], 1).unwrap();
    drop(s);
    let mut s = open(dir.path(), sealed(&[("b", 2), ("a", 1)]));
    s.append(&[&[record("t1", 2.0)]], 2).unwrap();
    drop(s);
    // Without key a, the backlog it sealed cannot be read: refused at start.
    assert!(matches!(
        Store::open(dir.path(), sealed(&[("b", 2)])),
        Err(QueueError::Seal(SealError::MissingKey(id))) if id == "a"
    ));
    let mut s = open(dir.path(), sealed(&[("b", 2), ("a", 1)]));
    let batch = s.take_batch(10, true).unwrap().unwrap();
    assert_eq!(
        decode(&batch).iter().map(|r| r.seq).collect::<Vec<_>>(),
        vec![1, 2]
    );
    // The first record, sealed with a, is acknowledged; the second (b) stays.
    let first = Batch {
        first_seq: 1,
        last_seq: 1,
        records: batch.records[..1].to_vec(),
        ..batch.clone()
    };
    s.ack(&first).unwrap();
    drop(s);
    let mut s = open(dir.path(), sealed(&[("b", 2)]));
    let rest = s.take_batch(10, true).unwrap().unwrap();
    assert_eq!(seqs(&rest), vec![2]);
}

/// A wrong key (same id, other bytes) stops the open with an error naming the key, and
/// destroys nothing: the right key reads everything afterwards.
#[test]
fn a_wrong_key_is_refused_at_open_and_the_file_stays_intact() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = open(dir.path(), sealed(&[("a", 1)]));
    s.append(&[&[record("t1", 1.0), record("t1", 2.0)]], 1)
        .unwrap();
    s.close().unwrap();
    let err = Store::open(dir.path(), sealed(&[("a", 9)]))
        .err()
        .expect("a wrong key is refused");
    assert!(matches!(err, QueueError::Seal(SealError::WrongKey(ref id)) if id == "a"));
    assert!(err.to_string().contains("buffer.encryption.keys"), "{err}");
    // Encryption switched off with sealed records left: refused too.
    assert!(matches!(
        Store::open(
            dir.path(),
            settings(1 << 20, WhenFull::DropOldest, Durability::Fsync)
        ),
        Err(QueueError::Seal(SealError::MissingKey(_)))
    ));
    let names: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        !names.iter().any(|n| n.contains("corrupt")),
        "nothing set aside: {names:?}"
    );
    let mut s = open(dir.path(), sealed(&[("a", 1)]));
    assert_eq!(seqs(&s.take_batch(10, true).unwrap().unwrap()), vec![1, 2]);
}

/// A plain queue switched to encryption keeps its plain backlog readable and seals what
/// comes next; a record changed on disk fails authentication: it is dropped and counted,
/// not sent, and the queue goes on.
#[test]
fn switching_encryption_on_keeps_the_plain_backlog_and_tampering_is_caught() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = open(
        dir.path(),
        settings(1 << 20, WhenFull::DropOldest, Durability::Fsync),
    );
    s.append(&[&[record("t1", 1.0)]], 1).unwrap();
    drop(s);
    let mut s = open(dir.path(), sealed(&[("a", 1)]));
    s.append(&[&[record("t1", 2.0)]], 2).unwrap();
    let batch = s.take_batch(10, true).unwrap().unwrap();
    assert_eq!(seqs(&batch), vec![1, 2]);
    let conn = s.conn_for_tests();
    let mut body: Vec<u8> = conn
        .query_row("SELECT body FROM records WHERE seq = 2", [], |r| r.get(0))
        .unwrap();
    *body.last_mut().unwrap() ^= 0x40;
    conn.execute("UPDATE records SET body = ?1 WHERE seq = 2", [body])
        .unwrap();
    s.ack(&Batch {
        first_seq: 1,
        last_seq: 1,
        records: batch.records[..1].to_vec(),
        ..batch.clone()
    })
    .unwrap();
    // The changed record is dropped and counted; the queue goes on.
    assert!(s.take_batch(10, true).unwrap().is_none());
    assert_eq!(s.take_unreadable(), 1);
    assert_eq!(s.stats().unwrap().records, 0);
    s.append(&[&[record("t1", 3.0)]], 3).unwrap();
    assert_eq!(seqs(&s.take_batch(10, true).unwrap().unwrap()), vec![3]);
}

/// Encryption switched off with only saved state sealed: the queue opens, the sealed state
/// is discarded (as after a change of the processors) and the key retired.
#[test]
fn switching_encryption_off_discards_sealed_state_and_keeps_going() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = open(dir.path(), sealed(&[("a", 1)]));
    s.load_state(7).unwrap();
    let r = [record("t1", 1.0)];
    let state = [change("p/x", Some(b"{}"))];
    s.append_units(
        &[UnitRef {
            records: &r,
            state: &state,
            delivery: None,
        }],
        1,
    )
    .unwrap();
    let batch = s.take_batch(10, true).unwrap().unwrap();
    s.ack(&batch).unwrap();
    drop(s);
    let plain = settings(1 << 20, WhenFull::DropOldest, Durability::Fsync);
    let mut s = open(dir.path(), plain.clone());
    assert!(
        s.load_state(7).unwrap().rows.is_empty(),
        "sealed state discarded"
    );
    drop(s);
    // The key is retired: nothing refers to it any more.
    let conn = dead::open(dir.path(), false).unwrap().unwrap();
    assert!(Keyring::default().check(&conn).unwrap().is_empty());
}

fn urgent(device: &str, value: f64) -> Record {
    Record {
        urgent: true,
        ..record(device, value)
    }
}

/// A dead-lettered urgent batch is urgent again once replayed: it goes ahead of the
/// routine records that waited meanwhile, as an urgent batch; a routine one stays routine.
#[test]
fn a_replayed_dead_letter_keeps_its_lane() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = open(
        dir.path(),
        settings(1 << 20, WhenFull::DropOldest, Durability::Fsync),
    );
    s.append(&[&[urgent("t2", 100.0)], &[record("t1", 1.0)]], 1)
        .unwrap();
    let anomaly = s.take_batch(10, false).unwrap().unwrap();
    assert_eq!((anomaly.lane, seqs(&anomaly)), (Lane::Urgent, vec![1]));
    s.dead_letter(&anomaly, 422, "schema", 2).unwrap();
    let reading = s.take_batch(10, true).unwrap().unwrap();
    assert_eq!((reading.lane, seqs(&reading)), (Lane::Routine, vec![2]));
    s.dead_letter(&reading, 422, "schema", 3).unwrap();
    let waiting: Vec<Record> = (0..3).map(|i| record("t1", f64::from(i))).collect();
    s.append(&[&waiting], 4).unwrap();

    let mut cli = dead::open(dir.path(), true).unwrap().unwrap();
    let done = dead::replay(&mut cli, Selection::All, 99, &Keyring::default()).unwrap();
    assert_eq!((done.batches, done.records), (2, 2));
    assert!(s.refresh().unwrap());
    let first = s.take_batch(10, false).unwrap().unwrap();
    assert_eq!((first.lane, seqs(&first)), (Lane::Urgent, vec![1]));
    assert_eq!(first.records, anomaly.records, "byte for byte");
    s.ack(&first).unwrap();
    let rest = s.take_batch(10, true).unwrap().unwrap();
    assert_eq!((rest.lane, seqs(&rest)), (Lane::Routine, vec![2, 3, 4, 5]));
}

#[test]
fn urgent_records_go_first_and_a_routine_range_around_them_leaves_them_alone() {
    let dir = tempfile::tempdir().unwrap();
    let st = settings(1 << 20, WhenFull::DropOldest, Durability::Fsync);
    let mut s = open(dir.path(), st.clone());
    let routine: Vec<Record> = (0..5).map(|i| record("t1", f64::from(i))).collect();
    s.append(&[&routine, &[urgent("t2", 100.0)], &[record("t1", 5.0)]], 1)
        .unwrap();

    let first = s.take_batch(10, false).unwrap().unwrap();
    assert_eq!((first.lane, seqs(&first)), (Lane::Urgent, vec![6]));
    // Taken but not acknowledged: a restart sends the same urgent batch again.
    drop(s);
    let mut s = open(dir.path(), st);
    let again = s.take_batch(10, false).unwrap().unwrap();
    assert_eq!(again, first);
    assert_eq!(s.ack(&again).unwrap(), 1);

    let rest = s.take_batch(10, true).unwrap().unwrap();
    assert_eq!(rest.lane, Lane::Routine);
    assert_eq!(seqs(&rest), vec![1, 2, 3, 4, 5, 7]);
    assert_eq!((rest.first_seq, rest.last_seq), (1, 7));
    assert_eq!(s.ack(&rest).unwrap(), 6);
    assert_eq!(s.stats().unwrap(), QueueStats::default());

    // A routine range acknowledged while an urgent record inside it waits keeps it.
    s.append(
        &[&[record("t1", 1.0), urgent("t2", 1.0), record("t1", 2.0)]],
        2,
    )
    .unwrap();
    let urgent_batch = s.take_batch(10, true).unwrap().unwrap();
    let routine_range = Batch {
        lane: Lane::Routine,
        first_seq: 8,
        last_seq: 10,
        records: Vec::new(),
        backlog: false,
    };
    s.unpin_for_test(Lane::Routine);
    assert_eq!(s.ack(&routine_range).unwrap(), 2);
    assert_eq!(s.stats().unwrap().records, 1);
    assert_eq!(
        s.take_batch(10, true).unwrap().unwrap().records,
        urgent_batch.records
    );
    s.ack(&urgent_batch).unwrap();

    // A routine batch waiting to be sent again (unchanged, under its key) lets an urgent
    // record pass, then comes back as it was.
    s.append(&[&[record("t1", 1.0), record("t1", 2.0)]], 3)
        .unwrap();
    let waiting = s.take_batch(10, true).unwrap().unwrap();
    s.append(&[&[urgent("t2", 1.0), record("t1", 3.0)]], 4)
        .unwrap();
    let passing = s.take_batch(10, true).unwrap().unwrap();
    assert_eq!((passing.lane, seqs(&passing)), (Lane::Urgent, vec![13]));
    s.ack(&passing).unwrap();
    assert_eq!(s.take_batch(10, true).unwrap().unwrap(), waiting);
}

#[test]
fn live_records_go_ahead_of_the_backlog_which_still_drains_oldest_first() {
    let dir = tempfile::tempdir().unwrap();
    let st = settings(1 << 20, WhenFull::DropOldest, Durability::Fsync);
    let mut s = open(dir.path(), st.clone());
    let outage: Vec<Record> = (0..6).map(|i| record("t1", f64::from(i))).collect();
    s.append(&[&outage], 1).unwrap();
    s.mark_backlog();
    let live: Vec<Record> = (0..3).map(|i| record("t2", f64::from(i))).collect();
    s.append(&[&live], 2).unwrap();

    let b = s
        .take_batch_preferring(2, false, Prefer::Live)
        .unwrap()
        .unwrap();
    assert_eq!((seqs(&b), b.backlog), (vec![7, 8], false));
    s.ack(&b).unwrap();
    // One live record is not a full batch: the backlog goes, oldest first.
    let b = s
        .take_batch_preferring(2, false, Prefer::Live)
        .unwrap()
        .unwrap();
    assert_eq!((seqs(&b), b.backlog), (vec![1, 2], true));
    s.ack(&b).unwrap();
    // Its flush interval passed: the partial live batch goes.
    let b = s
        .take_batch_preferring(2, true, Prefer::Live)
        .unwrap()
        .unwrap();
    assert_eq!((seqs(&b), b.backlog), (vec![9], false));
    s.ack(&b).unwrap();
    // Preferring the backlog takes it even when live ones wait.
    s.append(&[&[record("t2", 9.0), record("t2", 9.0)]], 3)
        .unwrap();
    let b = s
        .take_batch_preferring(2, false, Prefer::Backlog)
        .unwrap()
        .unwrap();
    assert_eq!((seqs(&b), b.backlog), (vec![3, 4], true));
    s.ack(&b).unwrap();

    // After a restart everything queued is backlog, and the backlog's tail goes however
    // short it is.
    drop(s);
    let mut s = open(dir.path(), st);
    s.append(&[&[record("t3", 1.0)]], 4).unwrap();
    let b = s
        .take_batch_preferring(3, false, Prefer::Live)
        .unwrap()
        .unwrap();
    assert_eq!((seqs(&b), b.backlog), (vec![5, 6, 10], true));
    s.ack(&b).unwrap();
    let b = s
        .take_batch_preferring(3, false, Prefer::Backlog)
        .unwrap()
        .unwrap();
    assert_eq!((seqs(&b), b.backlog), (vec![11, 12], true));
    s.ack(&b).unwrap();
    assert!(
        s.take_batch_preferring(3, false, Prefer::Live)
            .unwrap()
            .is_none()
    );
    s.append(&[&[record("t3", 1.0)]], 5).unwrap();
    assert!(
        s.take_batch_preferring(3, false, Prefer::Live)
            .unwrap()
            .is_none(),
        "a live record waits for a full batch or the flush interval"
    );
}

#[test]
fn a_file_from_before_lanes_opens_and_its_pinned_batch_is_routine() {
    let dir = tempfile::tempdir().unwrap();
    let st = settings(1 << 20, WhenFull::DropOldest, Durability::Fsync);
    let mut s = open(dir.path(), st.clone());
    s.append(
        &[&[record("t1", 1.0), record("t1", 2.0), record("t1", 3.0)]],
        1,
    )
    .unwrap();
    s.close().unwrap();
    let conn = rusqlite::Connection::open(dir.path().join(DB_FILE)).unwrap();
    conn.execute_batch(
        "DROP INDEX records_urgent;
         ALTER TABLE records DROP COLUMN lane;
         INSERT INTO meta (key, value) VALUES ('batch_first', 1), ('batch_last', 2);",
    )
    .unwrap();
    drop(conn);

    let mut s = open(dir.path(), st);
    let b = s.take_batch(10, true).unwrap().unwrap();
    assert_eq!((b.lane, seqs(&b)), (Lane::Routine, vec![1, 2]));
    s.ack(&b).unwrap();
    s.append(&[&[urgent("t2", 1.0)]], 2).unwrap();
    let b = s.take_batch(10, true).unwrap().unwrap();
    assert_eq!((b.lane, seqs(&b)), (Lane::Urgent, vec![4]));
}

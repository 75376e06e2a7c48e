//! Dead letters: batches the upstream rejected for their content, kept in the queue file
//! until someone replays or purges them, within `buffer.maxDeadLetterBytes`.
//!
//! Replay puts a dead letter's records back into the queue under their own `seq`: they
//! rejoin it at their original place (before anything newer) and go upstream with the
//! same identity. Purge deletes dead letters. Each is one transaction on the file, so
//! `edge-agent dead-letters replay|purge` works from another process while the agent runs;
//! the agent notices a change made by another connection (`PRAGMA data_version`) and
//! recounts what it keeps in memory.

use std::path::Path;

use rusqlite::{Connection, OpenFlags, OptionalExtension, Transaction, params};
use serde::Deserialize;
use serde_json::value::RawValue;

use super::file::{add_counts, has_column};
use super::seal::{Keyring, Kind};
use super::store::{Batch, DB_FILE, QueueError};

/// A batch the sink rejected, kept for inspection and replay.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeadLetter {
    /// Its id (what `dead-letters replay --id` takes).
    pub id: i64,
    /// When it was dead-lettered (unix ms).
    pub at_ms: i64,
    /// First `seq`.
    pub first_seq: u64,
    /// Last `seq`.
    pub last_seq: u64,
    /// Number of records.
    pub records: u64,
    /// Bytes of its body.
    pub bytes: u64,
    /// HTTP status (0 when not HTTP).
    pub status: u16,
    /// Why the sink rejected it (start of the response body).
    pub reason: String,
}

/// How much the dead letters hold.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DeadLetterStats {
    /// Dead-lettered batches.
    pub batches: u64,
    /// Records in them.
    pub records: u64,
    /// Bytes of their bodies (what counts against `maxBytes`).
    pub bytes: u64,
}

/// Which dead letters an operation applies to.
#[derive(Clone, Copy, Debug)]
pub enum Selection<'a> {
    /// Every dead letter.
    All,
    /// The dead letters with these ids (unknown ids are skipped).
    Ids(&'a [i64]),
}

/// What a replay or purge did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Handled {
    /// Dead letters replayed or purged.
    pub batches: u64,
    /// Records in them.
    pub records: u64,
}

/// What [`insert`] did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Inserted {
    /// Bytes of the new dead letter.
    pub bytes: u64,
    /// The oldest dead letters deleted to stay within the cap (possibly the new one).
    pub overflow: Handled,
}

pub(super) fn stats(conn: &Connection) -> Result<DeadLetterStats, QueueError> {
    let (batches, records, bytes): (i64, i64, i64) = conn.query_row(
        "SELECT count(*), coalesce(sum(records), 0), coalesce(sum(length(body)), 0)
         FROM dead_letters",
        [],
        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
    )?;
    Ok(DeadLetterStats {
        batches: batches.max(0) as u64,
        records: records.max(0) as u64,
        bytes: bytes.max(0) as u64,
    })
}

/// Why and when the upstream rejected a batch.
#[derive(Clone, Copy)]
pub(super) struct Rejection<'a> {
    /// HTTP status (0 for an MQTT sink).
    pub status: u16,
    /// The upstream's answer.
    pub reason: &'a str,
    /// When (unix ms).
    pub at_ms: i64,
}

/// Stores `batch` (whose `records` rows the caller deletes) as a dead letter, sealed with
/// `keys`, then deletes the oldest dead letters while they hold more than `cap` bytes.
pub(super) fn insert(
    tx: &Transaction<'_>,
    batch: &Batch,
    records: u64,
    rejection: &Rejection<'_>,
    cap: u64,
    keys: &Keyring,
) -> Result<Inserted, QueueError> {
    let Rejection {
        status,
        reason,
        at_ms: now_ms,
    } = *rejection;
    let json = batch.json_array();
    let body = keys.seal(Kind::DeadLetter, &json)?;
    tx.execute(
        "INSERT INTO dead_letters (at_ms, first_seq, last_seq, records, status, reason, body, lane)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
        params![
            now_ms,
            batch.first_seq as i64,
            batch.last_seq as i64,
            records as i64,
            status,
            reason,
            body.as_ref(),
            batch.lane as i64
        ],
    )?;
    let mut held = stats(tx)?;
    let mut overflow = Handled::default();
    while held.bytes > cap {
        let oldest: Option<(i64, i64, i64)> = tx
            .query_row(
                "SELECT id, records, length(body) FROM dead_letters ORDER BY id LIMIT 1",
                [],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .ok();
        let Some((id, n, size)) = oldest else { break };
        tx.execute("DELETE FROM dead_letters WHERE id = ?1", [id])?;
        overflow.batches += 1;
        overflow.records += n.max(0) as u64;
        held.bytes = held.bytes.saturating_sub(size.max(0) as u64);
    }
    Ok(Inserted {
        bytes: body.len() as u64,
        overflow,
    })
}

/// Every dead letter, oldest first.
pub fn list(conn: &Connection) -> Result<Vec<DeadLetter>, QueueError> {
    let mut stmt = conn.prepare(
        "SELECT id, at_ms, first_seq, last_seq, records, length(body), status, reason
         FROM dead_letters ORDER BY id",
    )?;
    let rows = stmt.query_map([], |r| {
        Ok(DeadLetter {
            id: r.get(0)?,
            at_ms: r.get(1)?,
            first_seq: r.get::<_, i64>(2)? as u64,
            last_seq: r.get::<_, i64>(3)? as u64,
            records: r.get::<_, i64>(4)?.max(0) as u64,
            bytes: r.get::<_, i64>(5)?.max(0) as u64,
            status: r.get(6)?,
            reason: r.get(7)?,
        })
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// The body (JSON array of upstream records) of a dead letter, opened with `keys` when
/// it was sealed.
pub fn body(conn: &Connection, id: i64, keys: &Keyring) -> Result<Option<Vec<u8>>, QueueError> {
    let stored: Option<Vec<u8>> = conn
        .query_row("SELECT body FROM dead_letters WHERE id = ?1", [id], |r| {
            r.get(0)
        })
        .optional()?;
    match stored {
        Some(stored) => Ok(Some(keys.open(Kind::DeadLetter, &stored)?.into_owned())),
        None => Ok(None),
    }
}

/// Puts the selected dead letters' records back into the queue under their own `seq` and
/// in their lane (an urgent batch's records are urgent again), enqueued now so `maxAge`
/// counts from the replay, and deletes the dead letters, in one transaction. A record
/// whose `seq` is already queued is not duplicated.
pub fn replay(
    conn: &mut Connection,
    which: Selection<'_>,
    now_ms: i64,
    keys: &Keyring,
) -> Result<Handled, QueueError> {
    let tx = conn.transaction()?;
    let mut done = Handled::default();
    // A file no agent with lanes has opened yet has neither column: every record is
    // routine there.
    let lanes = has_column(&tx, "records", "lane")? && has_column(&tx, "dead_letters", "lane")?;
    for id in selected(&tx, which)? {
        let Some(body) = body(&tx, id, keys)? else {
            continue;
        };
        let lane: i64 = if lanes {
            tx.query_row("SELECT lane FROM dead_letters WHERE id = ?1", [id], |r| {
                r.get(0)
            })?
        } else {
            0
        };
        let records = split(&body).map_err(|source| QueueError::DeadLetterBody { id, source })?;
        {
            let mut insert = tx.prepare_cached(if lanes {
                "INSERT OR IGNORE INTO records (seq, enqueued_ms, size, body, lane)
                 VALUES (?1, ?2, ?3, ?4, ?5)"
            } else {
                "INSERT OR IGNORE INTO records (seq, enqueued_ms, size, body)
                 VALUES (?1, ?2, ?3, ?4)"
            })?;
            for (seq, record) in &records {
                let stored = keys.seal(Kind::Record, record)?;
                let size = stored.len() as i64;
                let n = if lanes {
                    insert.execute(params![*seq as i64, now_ms, size, stored.as_ref(), lane])?
                } else {
                    insert.execute(params![*seq as i64, now_ms, size, stored.as_ref()])?
                } as u64;
                done.records += n;
                if n > 0 {
                    add_counts(&tx, 1, stored.len() as u64)?;
                }
            }
        }
        tx.execute("DELETE FROM dead_letters WHERE id = ?1", [id])?;
        done.batches += 1;
    }
    tx.commit()?;
    Ok(done)
}

/// Deletes the selected dead letters in one transaction.
pub fn purge(conn: &mut Connection, which: Selection<'_>) -> Result<Handled, QueueError> {
    let tx = conn.transaction()?;
    let mut done = Handled::default();
    for id in selected(&tx, which)? {
        let n: Option<i64> = tx
            .query_row(
                "DELETE FROM dead_letters WHERE id = ?1 RETURNING records",
                [id],
                |r| r.get(0),
            )
            .optional()?;
        let Some(n) = n else { continue };
        done.batches += 1;
        done.records += n.max(0) as u64;
    }
    tx.commit()?;
    Ok(done)
}

/// Opens the queue file in `dir` for the `dead-letters` commands, next to a running agent;
/// `None` when there is no queue there.
pub fn open(dir: &Path, write: bool) -> Result<Option<Connection>, QueueError> {
    let path = dir.join(DB_FILE);
    if !path.exists() {
        return Ok(None);
    }
    let flags = if write {
        OpenFlags::SQLITE_OPEN_READ_WRITE
    } else {
        OpenFlags::SQLITE_OPEN_READ_ONLY
    };
    let conn = Connection::open_with_flags(&path, flags)?;
    // The agent's commits are short; wait for one instead of failing.
    conn.busy_timeout(std::time::Duration::from_secs(10))?;
    Ok(Some(conn))
}

fn selected(tx: &Transaction<'_>, which: Selection<'_>) -> Result<Vec<i64>, QueueError> {
    match which {
        Selection::Ids(ids) => Ok(ids.to_vec()),
        Selection::All => {
            let mut stmt = tx.prepare("SELECT id FROM dead_letters ORDER BY id")?;
            let ids = stmt.query_map([], |r| r.get(0))?;
            Ok(ids.collect::<Result<_, _>>()?)
        }
    }
}

/// The records of a batch body: each one's `seq` and its JSON, byte for byte.
fn split(body: &[u8]) -> Result<Vec<(u64, &[u8])>, serde_json::Error> {
    #[derive(Deserialize)]
    struct Seq {
        seq: u64,
    }
    let raw: Vec<&RawValue> = serde_json::from_slice(body)?;
    raw.into_iter()
        .map(|r| {
            let Seq { seq } = serde_json::from_str(r.get())?;
            Ok((seq, r.get().as_bytes()))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_body_splits_into_its_records_byte_for_byte() {
        let body = br#"[{"seq":7,"v":1.5},{"b":[1,2],"seq":8}]"#;
        let got = split(body).unwrap();
        assert_eq!(
            got,
            vec![
                (7, &br#"{"seq":7,"v":1.5}"#[..]),
                (8, &br#"{"b":[1,2],"seq":8}"#[..])
            ]
        );
        assert!(split(b"[{\"v\":1}]").is_err(), "a record without seq");
        assert!(split(b"not json").is_err());
    }
}

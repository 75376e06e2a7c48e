//! A read-only look at a queue file for `edge-agent doctor`, safe beside a running agent:
//! integrity, backlog, dead letters and whether the configured keys open it. Nothing is
//! written (the file is opened read-only).

use std::path::Path;

use rusqlite::{Connection, OpenFlags};

use super::dead::{self, DeadLetterStats};
use super::seal::{Keyring, SealError};
use super::store::{DB_FILE, QueueError, files_bytes};

/// What a queue file holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Inspection {
    /// `PRAGMA quick_check` said `ok`; otherwise its first line.
    pub integrity: Result<(), String>,
    /// Records queued.
    pub records: u64,
    /// Their stored bytes.
    pub bytes: u64,
    /// When the oldest was enqueued (unix ms).
    pub oldest_ms: Option<i64>,
    /// Dead letters kept.
    pub dead_letters: DeadLetterStats,
    /// The keys that sealed something in it (checked against the configured ones).
    pub keys: Vec<String>,
    /// The file's size on disk, WAL included.
    pub file_bytes: u64,
}

/// Inspects `<dir>/queue.db`: `None` when there is no queue yet. A key problem (wrong or
/// missing key) is an error, as it is for the agent.
pub fn inspect(dir: &Path, keys: &Keyring) -> Result<Option<Inspection>, QueueError> {
    let path = dir.join(DB_FILE);
    if !path.exists() {
        return Ok(None);
    }
    let conn = Connection::open_with_flags(&path, OpenFlags::SQLITE_OPEN_READ_ONLY)?;
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    let check: String = conn.query_row("PRAGMA quick_check", [], |r| r.get(0))?;
    let integrity = if check == "ok" {
        Ok(())
    } else {
        Err(check.lines().next().unwrap_or_default().to_string())
    };
    let key_ids = keys.check(&conn).map_err(|e| match e {
        SealError::Sqlite(e) => QueueError::Sqlite(e),
        other => QueueError::Seal(other),
    })?;
    let (records, bytes): (i64, i64) = conn.query_row(
        "SELECT count(*), coalesce(sum(size), 0) FROM records",
        [],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )?;
    let oldest_ms: Option<i64> = conn
        .query_row(
            "SELECT enqueued_ms FROM records ORDER BY seq LIMIT 1",
            [],
            |r| r.get(0),
        )
        .or_else(|e| match e {
            rusqlite::Error::QueryReturnedNoRows => Ok(None),
            e => Err(e),
        })?;
    let file_bytes = files_bytes(&path);
    Ok(Some(Inspection {
        integrity,
        records: records.max(0) as u64,
        bytes: bytes.max(0) as u64,
        oldest_ms,
        dead_letters: dead::stats(&conn)?,
        keys: key_ids,
        file_bytes,
    }))
}

//! The queue's SQLite file itself: opening it with the pragmas durability needs, checking
//! it (`PRAGMA quick_check`) and creating its schema, reading the next `seq` it implies,
//! and moving a corrupt file aside so a fresh queue can start.

use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use edge_crds::Durability;
use rusqlite::{Connection, OptionalExtension};

use super::store::{DB_FILE, QueueError};

/// Database schema version (`PRAGMA user_version`).
const SCHEMA_VERSION: i64 = 1;
/// Pages written to the WAL before it is checkpointed (128 KiB with 4 KiB pages).
const WAL_AUTOCHECKPOINT_PAGES: i64 = 32;
/// Bytes the WAL file keeps after a checkpoint.
const WAL_SIZE_LIMIT: i64 = 1024 * 1024;

/// Opens the file, sets it up and checks it; any sign of corruption is an error.
pub(super) fn open_checked(path: &Path, durability: Durability) -> Result<Connection, QueueError> {
    let conn = Connection::open(path)?;
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    let check: String = conn.query_row("PRAGMA quick_check", [], |r| r.get(0))?;
    if check != "ok" {
        return Err(QueueError::Corrupt(check));
    }
    let mode: String = conn.query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(QueueError::Corrupt(format!("journal mode {mode}")));
    }
    let sync = match durability {
        Durability::Fsync => "FULL",
        Durability::Os => "NORMAL",
    };
    conn.pragma_update(None, "synchronous", sync)?;
    // 1 MiB of page cache: appends touch the table's last pages and the drain its first
    // ones, so a larger cache only costs memory on a small node (B5).
    conn.pragma_update(None, "cache_size", -1024)?;
    // A small WAL, checkpointed often, whose file keeps its space between checkpoints: on
    // a full disk a delete still fits into the WAL's existing space and its checkpoint
    // only rewrites existing pages, so the queue can always drain.
    conn.pragma_update(None, "wal_autocheckpoint", WAL_AUTOCHECKPOINT_PAGES)?;
    conn.pragma_update(None, "journal_size_limit", WAL_SIZE_LIMIT)?;
    let version: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    match version {
        0 => {
            conn.execute_batch(
                "BEGIN;
                 CREATE TABLE IF NOT EXISTS records (
                     seq INTEGER PRIMARY KEY,
                     enqueued_ms INTEGER NOT NULL,
                     size INTEGER NOT NULL,
                     body BLOB NOT NULL);
                 CREATE TABLE IF NOT EXISTS dead_letters (
                     id INTEGER PRIMARY KEY AUTOINCREMENT,
                     at_ms INTEGER NOT NULL,
                     first_seq INTEGER NOT NULL,
                     last_seq INTEGER NOT NULL,
                     records INTEGER NOT NULL,
                     status INTEGER NOT NULL,
                     reason TEXT NOT NULL,
                     body BLOB NOT NULL);
                 CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
                 PRAGMA user_version = 1;
                 COMMIT;",
            )?;
        }
        SCHEMA_VERSION => {}
        other => {
            return Err(QueueError::Corrupt(format!(
                "unknown schema version {other}"
            )));
        }
    }
    Ok(conn)
}

/// The next `seq` according to the database alone.
pub(super) fn stored_next_seq(conn: &Connection) -> Result<u64, QueueError> {
    let meta: Option<i64> = conn
        .query_row("SELECT value FROM meta WHERE key = 'next_seq'", [], |r| {
            r.get(0)
        })
        .optional()?;
    let max_record: Option<i64> =
        conn.query_row("SELECT max(seq) FROM records", [], |r| r.get(0))?;
    let max_dead: Option<i64> =
        conn.query_row("SELECT max(last_seq) FROM dead_letters", [], |r| r.get(0))?;
    let next = [meta, max_record.map(|s| s + 1), max_dead.map(|s| s + 1)]
        .into_iter()
        .flatten()
        .max()
        .unwrap_or(1);
    Ok(next.max(1) as u64)
}

/// Renames the database and its WAL and shared-memory files to
/// `queue.db.corrupt-<unix seconds>[-wal|-shm]`; returns the new database path.
pub(super) fn move_aside(path: &Path) -> Result<PathBuf, QueueError> {
    let ts = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let mut aside = path.with_file_name(format!("{DB_FILE}.corrupt-{ts}"));
    let mut n = 1;
    while aside.exists() {
        aside = path.with_file_name(format!("{DB_FILE}.corrupt-{ts}.{n}"));
        n += 1;
    }
    for suffix in ["", "-wal", "-shm"] {
        let from = PathBuf::from(format!("{}{suffix}", path.display()));
        if from.exists() {
            let to = PathBuf::from(format!("{}{suffix}", aside.display()));
            std::fs::rename(&from, &to).map_err(|source| QueueError::Io { path: from, source })?;
        }
    }
    Ok(aside)
}

pub(super) fn unix_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(1, |d| d.as_micros() as u64)
}

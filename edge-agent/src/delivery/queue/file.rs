//! The queue's SQLite file itself: opening it with the pragmas durability needs, checking
//! it (`PRAGMA quick_check`, only after an unclean shutdown: it reads the whole file) and
//! creating its schema, the counters and marks it keeps in `meta`, the next `seq` it
//! implies, and moving a corrupt file aside so a fresh queue can start.

use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use edge_crds::Durability;
use rusqlite::{Connection, OptionalExtension};

use super::store::{DB_FILE, QueueError};

/// Database schema version (`PRAGMA user_version`): 2 added the processors' state and the
/// deliveries committed (see `super::state`).
const SCHEMA_VERSION: i64 = 2;
/// The version of a file that holds sealed values (`buffer.encryption`): the same tables
/// plus `queue_keys`. An agent older than encryption treats it as unknown and sets the
/// file aside instead of sending sealed bytes upstream.
const SEALED_SCHEMA_VERSION: i64 = 3;

/// The tables version 2 added.
const SCHEMA_V2: &str = "CREATE TABLE IF NOT EXISTS state (
                     key TEXT PRIMARY KEY,
                     touched INTEGER NOT NULL,
                     value BLOB NOT NULL);
                 CREATE INDEX IF NOT EXISTS state_touched ON state (touched);
                 CREATE TABLE IF NOT EXISTS deliveries (
                     pkid INTEGER PRIMARY KEY,
                     hash INTEGER NOT NULL);";
/// Pages written to the WAL before it is checkpointed (128 KiB with 4 KiB pages).
const WAL_AUTOCHECKPOINT_PAGES: i64 = 32;
/// Bytes the WAL file keeps after a checkpoint.
const WAL_SIZE_LIMIT: i64 = 1024 * 1024;

/// An open queue file.
pub(super) struct OpenFile {
    /// The connection, set up.
    pub conn: Connection,
    /// Whether the integrity check ran (the last shutdown was not clean).
    pub checked: bool,
}

/// Opens the file, sets it up and, unless it was closed cleanly, checks it; any sign of
/// corruption is an error. The file counts as open (not cleanly closed) until
/// [`mark_clean`].
pub(super) fn open_checked(path: &Path, durability: Durability) -> Result<OpenFile, QueueError> {
    let conn = Connection::open(path)?;
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    let checked = !closed_cleanly(&conn);
    if checked {
        let check: String = conn.query_row("PRAGMA quick_check", [], |r| r.get(0))?;
        if check != "ok" {
            return Err(QueueError::Corrupt(check));
        }
    }
    let tables: i64 = conn.query_row("SELECT count(*) FROM sqlite_master", [], |r| r.get(0))?;
    if tables == 0 {
        // Only possible before the first table: lets the file shrink as the queue drains.
        conn.pragma_update(None, "auto_vacuum", "INCREMENTAL")?;
    }
    let mode: String = conn.query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(QueueError::Corrupt(format!("journal mode {mode}")));
    }
    let sync = match durability {
        Durability::Fsync => "FULL",
        Durability::Os => "NORMAL",
    };
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
            migrate_to_v2(&conn)?;
        }
        1 => migrate_to_v2(&conn)?,
        SCHEMA_VERSION | SEALED_SCHEMA_VERSION => {}
        other => {
            return Err(QueueError::Corrupt(format!(
                "unknown schema version {other}"
            )));
        }
    }
    ensure_lanes(&conn)?;
    // Open from here on until closed cleanly; this mark must reach the disk whatever the
    // durability, or a power cut could skip the next check.
    conn.pragma_update(None, "synchronous", "FULL")?;
    set_meta(&conn, CLEAN_KEY, 0)?;
    conn.pragma_update(None, "synchronous", sync)?;
    Ok(OpenFile { conn, checked })
}

/// Adds the records' lane (see [`crate::record::Lane`]) to a file from before lanes, with
/// the index of urgent records, and the lane of each dead letter (a replay puts its
/// records back in it). Older agents read such a file as before (they send every lane in
/// `seq` order), so the schema version stays.
fn ensure_lanes(conn: &Connection) -> Result<(), QueueError> {
    if !has_column(conn, "records", "lane")? {
        conn.execute_batch(
            "BEGIN;
             ALTER TABLE records ADD COLUMN lane INTEGER NOT NULL DEFAULT 0;
             CREATE INDEX IF NOT EXISTS records_urgent ON records (seq) WHERE lane = 1;
             COMMIT;",
        )?;
    }
    if !has_column(conn, "dead_letters", "lane")? {
        conn.execute(
            "ALTER TABLE dead_letters ADD COLUMN lane INTEGER NOT NULL DEFAULT 0",
            [],
        )?;
    }
    Ok(())
}

/// Whether `table` has `column` (a file written by an older agent may not).
pub(super) fn has_column(conn: &Connection, table: &str, column: &str) -> Result<bool, QueueError> {
    Ok(conn.query_row(
        "SELECT count(*) > 0 FROM pragma_table_info(?1) WHERE name = ?2",
        [table, column],
        |r| r.get(0),
    )?)
}

fn migrate_to_v2(conn: &Connection) -> Result<(), QueueError> {
    conn.execute_batch(&format!(
        "BEGIN; {SCHEMA_V2} PRAGMA user_version = {SCHEMA_VERSION}; COMMIT;"
    ))?;
    Ok(())
}

/// Marks the file as holding sealed values (see [`SEALED_SCHEMA_VERSION`]).
pub(super) fn mark_sealed(conn: &Connection) -> Result<(), QueueError> {
    conn.pragma_update(None, "user_version", SEALED_SCHEMA_VERSION)?;
    Ok(())
}

/// `meta` key of the clean-shutdown mark.
const CLEAN_KEY: &str = "clean_shutdown";

fn closed_cleanly(conn: &Connection) -> bool {
    conn.query_row("SELECT value FROM meta WHERE key = ?1", [CLEAN_KEY], |r| {
        r.get::<_, i64>(0)
    })
    .is_ok_and(|v| v == 1)
}

/// Marks the file closed cleanly: the next open skips the integrity check. The last
/// write before closing.
pub(super) fn mark_clean(conn: &Connection) -> Result<(), QueueError> {
    conn.pragma_update(None, "synchronous", "FULL")?;
    set_meta(conn, CLEAN_KEY, 1)
}

pub(super) fn set_meta(conn: &Connection, key: &str, value: i64) -> Result<(), QueueError> {
    conn.execute(
        "INSERT INTO meta (key, value) VALUES (?1, ?2)
         ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        rusqlite::params![key, value],
    )?;
    Ok(())
}

/// Records and payload bytes queued, as kept in `meta` by every transaction that changes
/// them (counted once, by a scan, for a file that has no counters yet).
pub(super) fn load_counts(conn: &Connection) -> Result<(u64, u64), QueueError> {
    let get = |key: &str| -> Result<Option<i64>, QueueError> {
        Ok(conn
            .query_row("SELECT value FROM meta WHERE key = ?1", [key], |r| r.get(0))
            .optional()?)
    };
    if let (Some(records), Some(bytes)) = (get("records")?, get("bytes")?) {
        return Ok((records.max(0) as u64, bytes.max(0) as u64));
    }
    let (records, bytes): (i64, i64) = conn.query_row(
        "SELECT count(*), coalesce(sum(size), 0) FROM records",
        [],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )?;
    save_counts(conn, records.max(0) as u64, bytes.max(0) as u64)?;
    Ok((records.max(0) as u64, bytes.max(0) as u64))
}

/// Stores the counters; called inside each transaction that changes the records.
pub(super) fn save_counts(conn: &Connection, records: u64, bytes: u64) -> Result<(), QueueError> {
    conn.execute(
        "INSERT INTO meta (key, value) VALUES ('records', ?1), ('bytes', ?2)
         ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        rusqlite::params![
            records.min(i64::MAX as u64) as i64,
            bytes.min(i64::MAX as u64) as i64
        ],
    )?;
    Ok(())
}

/// Adds to the counters (for another process's change: `dead-letters replay`).
pub(super) fn add_counts(conn: &Connection, records: u64, bytes: u64) -> Result<(), QueueError> {
    conn.execute(
        "UPDATE meta SET value = value + CASE key WHEN 'records' THEN ?1 ELSE ?2 END
         WHERE key IN ('records', 'bytes')",
        rusqlite::params![records as i64, bytes as i64],
    )?;
    Ok(())
}

/// Gives the pages freed by drained records back to the file system, in steps, for at most
/// `budget`; does nothing while they are few (they are reused by the next commits anyway).
/// Returns the pages given back.
pub(super) fn shrink(conn: &Connection, budget: std::time::Duration) -> Result<u64, QueueError> {
    let started = std::time::Instant::now();
    let pragma = |name: &str| -> Result<i64, QueueError> {
        Ok(conn.query_row(&format!("PRAGMA {name}"), [], |r| r.get(0))?)
    };
    if pragma("auto_vacuum")? != 2 {
        return Ok(0);
    }
    let pages = pragma("page_count")?;
    let free = pragma("freelist_count")?;
    if free < SHRINK_MIN_FREE_PAGES.max(pages / 4) {
        return Ok(0);
    }
    let mut given = 0u64;
    let mut left = free;
    while left > SHRINK_KEEP_FREE_PAGES && started.elapsed() < budget {
        let step = (left - SHRINK_KEEP_FREE_PAGES).min(SHRINK_STEP_PAGES);
        conn.execute_batch(&format!("PRAGMA incremental_vacuum({step})"))?;
        let now = pragma("freelist_count")?;
        given += (left - now).max(0) as u64;
        if now >= left {
            break;
        }
        left = now;
    }
    Ok(given)
}

/// Free pages below which the file is left as it is (4 MiB with 4 KiB pages).
const SHRINK_MIN_FREE_PAGES: i64 = 1024;
/// Free pages kept for the next commits (1 MiB).
const SHRINK_KEEP_FREE_PAGES: i64 = 256;
/// Pages given back per transaction (4 MiB): keeps each step's WAL small.
const SHRINK_STEP_PAGES: i64 = 1024;

/// Turns on incremental auto-vacuum for a file created before it existed; it takes a
/// `VACUUM`, so only while the queue is empty (cheap then). Returns whether it did.
pub(super) fn enable_shrinking(conn: &Connection) -> Result<bool, QueueError> {
    let mode: i64 = conn.query_row("PRAGMA auto_vacuum", [], |r| r.get(0))?;
    if mode == 2 {
        return Ok(false);
    }
    conn.pragma_update(None, "auto_vacuum", "INCREMENTAL")?;
    conn.execute_batch("VACUUM")?;
    Ok(true)
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

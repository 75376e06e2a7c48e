//! The queue's SQLite file: synchronous, single-owner code that the queue's writer thread
//! drives (and that tests drive directly on real files in temporary directories).
//!
//! One table of records in `seq` order (each stored as its upstream JSON, sealed when
//! `buffer.encryption` is on: see [`super::seal`]), one of
//! dead-lettered batches (see [`super::dead`]), one of small counters. `seq` is assigned here: strictly
//! increasing and never reused, across restarts and across a corrupt file being replaced,
//! thanks to a high-water mark kept beside the database (see [`super::seq`]).

use std::path::{Path, PathBuf};

use edge_crds::{Durability, WhenFull};
use rusqlite::{Connection, ErrorCode, OptionalExtension, params};

use super::dead::{self, DeadLetter, DeadLetterStats, Inserted};
use super::file::{
    OpenFile, enable_shrinking, load_counts, mark_clean, mark_sealed, move_aside, open_checked,
    save_counts, shrink, stored_next_seq, unix_micros,
};
use super::seal::{Keyring, Kind, SealError};
use super::seq::SeqCeiling;
use super::state::{self, SavedState};
use crate::record::{DeliveryId, StateChange};
use crate::record::{Lane, Record, UpstreamRecord};

/// File name of the queue database inside the data directory.
pub const DB_FILE: &str = "queue.db";
/// Rows read per step when making room or expiring.
const SCAN_CHUNK: i64 = 512;

/// Why the queue failed.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    #[error("queue database: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("queue directory {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("queue database is corrupt: {0}")]
    Corrupt(String),
    #[error("queue database is corrupt: dead letter {id}: its body: {source}")]
    DeadLetterBody {
        id: i64,
        #[source]
        source: serde_json::Error,
    },
    #[error("encoding a record: {0}")]
    Encode(#[from] serde_json::Error),
    #[error("the queue has stopped")]
    Stopped,
    #[error(transparent)]
    Seal(#[from] SealError),
}

impl QueueError {
    /// True for errors a retry may get past: a full disk, an I/O error, a busy file.
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Sqlite(e) => matches!(
                e.sqlite_error_code(),
                Some(
                    ErrorCode::DiskFull
                        | ErrorCode::SystemIoFailure
                        | ErrorCode::DatabaseBusy
                        | ErrorCode::DatabaseLocked
                        | ErrorCode::OutOfMemory
                )
            ),
            Self::Io { .. } => true,
            _ => false,
        }
    }

    /// True when SQLite ran out of space (`SQLITE_FULL`).
    pub fn is_disk_full(&self) -> bool {
        matches!(self, Self::Sqlite(e) if e.sqlite_error_code() == Some(ErrorCode::DiskFull))
    }

    pub(super) fn is_corruption(&self) -> bool {
        match self {
            Self::Corrupt(_) | Self::DeadLetterBody { .. } => true,
            Self::Sqlite(e) => matches!(
                e.sqlite_error_code(),
                Some(ErrorCode::DatabaseCorrupt | ErrorCode::NotADatabase)
            ),
            _ => false,
        }
    }
}

/// How the store is opened.
#[derive(Clone, Debug)]
pub struct StoreSettings {
    /// `namespace/name`, written into every record.
    pub pipeline: String,
    /// Node name, written into every record.
    pub node: String,
    /// Cap on stored payload bytes: records and dead letters.
    pub max_bytes: u64,
    /// Cap on the dead letters' bytes (within `max_bytes`).
    pub max_dead_letter_bytes: u64,
    /// What to do when the cap is reached.
    pub when_full: WhenFull,
    /// `fsync` (`synchronous=FULL`) or `os` (`synchronous=NORMAL`).
    pub durability: Durability,
    /// `buffer.encryption`: the keys that seal what is stored (none: stored in clear).
    pub keys: Keyring,
}

/// What happened to one unit (the records of one message) in [`Store::append`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UnitOutcome {
    /// Committed.
    Stored { records: u64 },
    /// Dropped because the queue was full (`dropNewest`, or a unit larger than the cap).
    Dropped { records: u64 },
    /// Not committed: the queue is full and the policy is `block`. This unit and every
    /// later one of the same call were left untouched.
    Blocked,
}

/// What one [`Store::append`] did.
#[derive(Debug, Default)]
pub struct AppendReport {
    /// One entry per submitted unit, in order.
    pub outcomes: Vec<UnitOutcome>,
    /// Oldest records deleted to make room (`dropOldest`).
    pub evicted: u64,
}

/// What [`Store::dead_letter`] did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DeadLettered {
    /// Records moved to the dead letters.
    pub records: u64,
    /// Records of older dead letters deleted to keep within `max_dead_letter_bytes` (the
    /// new one's too when it alone is larger).
    pub overflow_records: u64,
}

/// A stored record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredRecord {
    /// Its sequence number.
    pub seq: u64,
    /// Its upstream JSON.
    pub body: Vec<u8>,
}

/// A run of records of one lane, sent upstream as one request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Batch {
    /// The lane its records wait in.
    pub lane: Lane,
    /// First `seq` of the batch's range.
    pub first_seq: u64,
    /// Last `seq` of the batch's range.
    pub last_seq: u64,
    /// The records of the lane still in the queue within the range, in `seq` order.
    pub records: Vec<StoredRecord>,
    /// Routine records queued before the backlog mark (see [`Store::mark_backlog`]).
    pub backlog: bool,
}

/// Which routine records [`Store::take_batch`] takes first when both the backlog
/// (records queued before the last [`Store::mark_backlog`]) and live records wait.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Prefer {
    /// The backlog, oldest first: records go in `seq` order.
    Backlog,
    /// Live records, oldest first among them; the backlog goes when no live batch is
    /// ready.
    Live,
}

impl Batch {
    /// The records as one JSON array.
    pub fn json_array(&self) -> Vec<u8> {
        let len = self.records.iter().map(|r| r.body.len() + 1).sum::<usize>() + 2;
        let mut out = Vec::with_capacity(len);
        out.push(b'[');
        for (i, r) in self.records.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            out.extend_from_slice(&r.body);
        }
        out.push(b']');
        out
    }
}

/// Size and age of what is queued.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct QueueStats {
    /// Records queued.
    pub records: u64,
    /// Payload bytes queued.
    pub bytes: u64,
    /// When the oldest record was enqueued (unix ms).
    pub oldest_ms: Option<i64>,
    /// What the dead letters hold.
    pub dead_letters: DeadLetterStats,
}

/// The result of [`Store::open`].
pub struct Opened {
    /// The open store.
    pub store: Store,
    /// Where a corrupt file was moved, with the error that showed it was corrupt.
    pub moved_aside: Option<(PathBuf, String)>,
    /// Whether the file was checked for integrity (only after an unclean shutdown).
    pub checked: bool,
}

/// The queue database.
pub struct Store {
    conn: Connection,
    settings: StoreSettings,
    ceiling: SeqCeiling,
    next_seq: u64,
    records: u64,
    bytes: u64,
    dead: DeadLetterStats,
    /// `PRAGMA data_version` when the counters above were last read from the file: it
    /// changes when another connection (`edge-agent dead-letters`) commits.
    data_version: i64,
    /// The `touched` of the last state written.
    state_clock: i64,
    /// Records dropped as unreadable, not yet reported.
    unreadable: u64,
    /// Routine records below this `seq` are the backlog.
    live_from: u64,
}

/// One unit for [`Store::append_units`].
#[derive(Clone, Copy, Debug)]
pub struct UnitRef<'a> {
    /// Its records.
    pub records: &'a [Record],
    /// The state changes of the reading it holds.
    pub state: &'a [StateChange],
    /// The MQTT delivery it came from.
    pub delivery: Option<DeliveryId>,
}

impl Store {
    /// Opens (or creates) `<dir>/queue.db`. A corrupt file is moved aside to
    /// `queue.db.corrupt-<unix seconds>` (with its `-wal` and `-shm`) and a fresh queue is
    /// opened; `seq` still continues above every value ever handed out.
    pub fn open(dir: &Path, settings: StoreSettings) -> Result<Opened, QueueError> {
        std::fs::create_dir_all(dir).map_err(|source| QueueError::Io {
            path: dir.to_path_buf(),
            source,
        })?;
        let path = dir.join(DB_FILE);
        let existed = path.exists();
        let mut ceiling = SeqCeiling::load(dir)?;
        let (OpenFile { conn, checked }, moved_aside) =
            match open_checked(&path, settings.durability) {
                Ok(file) => (file, None),
                Err(e) if e.is_corruption() => {
                    let aside = move_aside(&path)?;
                    (
                        open_checked(&path, settings.durability)?,
                        Some((aside, e.to_string())),
                    )
                }
                Err(e) => return Err(e),
            };
        settings.keys.verify(&conn, (unix_micros() / 1000) as i64)?;
        if settings.keys.is_enabled() {
            mark_sealed(&conn)?;
        }
        let stored_next = stored_next_seq(&conn)?;
        let fresh = !existed || moved_aside.is_some();
        let next_seq = match (fresh, ceiling.value()) {
            // A database that survived: continue after it. With `os` durability the last
            // commits of an unclean shutdown may have been lost with the page cache, so
            // start above everything ever reserved instead.
            (false, Some(c)) if settings.durability == Durability::Os && checked => {
                stored_next.max(c)
            }
            (false, _) => stored_next,
            (true, Some(c)) => c.max(1),
            // Nothing to continue from after a corrupt file without a mark: the clock in
            // microseconds is above any sequence handed out at the usual rates.
            (true, None) if moved_aside.is_some() => unix_micros(),
            (true, None) => 1,
        };
        ceiling.reserve_through(next_seq)?;
        let (records, bytes) = load_counts(&conn)?;
        if records == 0 {
            match enable_shrinking(&conn) {
                Ok(true) => tracing::info!("the queue file now gives space back as it drains"),
                Ok(false) => {}
                Err(e) => tracing::warn!(error = %e, "enabling the queue file to shrink"),
            }
        }
        let dead = dead::stats(&conn)?;
        let data_version = conn.query_row("PRAGMA data_version", [], |r| r.get(0))?;
        let state_clock = state::clock(&conn)?;
        Ok(Opened {
            store: Self {
                conn,
                settings,
                ceiling,
                next_seq,
                records,
                bytes,
                dead,
                data_version,
                state_clock,
                unreadable: 0,
                // Whatever waits at start waited through the restart.
                live_from: next_seq,
            },
            moved_aside,
            checked,
        })
    }

    /// Recounts records and dead letters if another process changed the file (a
    /// `dead-letters replay` or `purge`); returns whether it did.
    pub fn refresh(&mut self) -> Result<bool, QueueError> {
        let version: i64 = self
            .conn
            .query_row("PRAGMA data_version", [], |r| r.get(0))?;
        if version == self.data_version {
            return Ok(false);
        }
        (self.records, self.bytes) = load_counts(&self.conn)?;
        self.dead = dead::stats(&self.conn)?;
        self.data_version = version;
        Ok(true)
    }

    /// The connection, for tests that set the file up as older agents left it.
    #[cfg(test)]
    pub(crate) fn conn_for_tests(&self) -> &Connection {
        &self.conn
    }

    /// Caps the file at its current size plus `pages` more pages, so commits beyond it
    /// fail as on a full disk.
    #[cfg(test)]
    pub(crate) fn limit_growth(&self, pages: i64) -> Result<(), QueueError> {
        let current: i64 = self.conn.query_row("PRAGMA page_count", [], |r| r.get(0))?;
        self.conn
            .pragma_update(None, "max_page_count", current + pages)?;
        Ok(())
    }

    /// Gives space freed by drained records back to the file system, for at most `budget`
    /// (see [`super::file`]); returns the pages given back.
    pub fn shrink(&self, budget: std::time::Duration) -> Result<u64, QueueError> {
        let pages = shrink(&self.conn, budget)?;
        if pages > 0 {
            self.checkpoint()?;
        }
        Ok(pages)
    }

    /// Bytes the queue's files take on disk (the database and its WAL).
    pub fn file_bytes(&self) -> u64 {
        self.conn
            .path()
            .map_or(0, |path| files_bytes(Path::new(path)))
    }

    /// Marks the file closed cleanly (the next start skips the integrity check) and
    /// closes it. Call only when nothing else will be written.
    pub fn close(self) -> Result<(), QueueError> {
        self.checkpoint()?;
        mark_clean(&self.conn)?;
        self.conn.close().map_err(|(_, e)| QueueError::Sqlite(e))
    }

    /// Copies the WAL into the database file and truncates it. On a full disk this gives
    /// the space of the WAL (and of deleted records) back, so deletes and later commits
    /// can succeed again.
    pub fn checkpoint(&self) -> Result<(), QueueError> {
        self.conn
            .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))?;
        Ok(())
    }

    /// The settings the store was opened with.
    pub fn settings(&self) -> &StoreSettings {
        &self.settings
    }

    /// The `seq` the next record will get.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// Records and bytes queued, and the oldest record's enqueue time.
    pub fn stats(&self) -> Result<QueueStats, QueueError> {
        let oldest_ms = self
            .conn
            .query_row(
                "SELECT enqueued_ms FROM records ORDER BY seq LIMIT 1",
                [],
                |r| r.get(0),
            )
            .optional()?;
        Ok(QueueStats {
            records: self.records,
            bytes: self.bytes,
            oldest_ms,
            dead_letters: self.dead,
        })
    }

    /// Commits `units` (each the records of one message) in one transaction, applying
    /// `maxBytes` (less what the dead letters hold) and `whenFull` unit by unit in order.
    /// On error nothing is committed.
    pub fn append(&mut self, units: &[&[Record]], now_ms: i64) -> Result<AppendReport, QueueError> {
        let units: Vec<UnitRef<'_>> = units
            .iter()
            .map(|records| UnitRef {
                records,
                state: &[],
                delivery: None,
            })
            .collect();
        self.append_units(&units, now_ms)
    }

    /// [`Store::append`] of units with their state changes and deliveries: those of every
    /// unit stored or dropped (not of those left uncommitted under `block`) are written in
    /// the same transaction as the records.
    pub fn append_units(
        &mut self,
        units: &[UnitRef<'_>],
        now_ms: i64,
    ) -> Result<AppendReport, QueueError> {
        self.refresh()?;
        let mut changes = state::Pending::default();
        let mut report = AppendReport::default();
        let mut next_seq = self.next_seq;
        let mut records = self.records;
        let mut bytes = self.bytes;
        let max = self.settings.max_bytes.saturating_sub(self.dead.bytes);
        let tx = self.conn.transaction()?;
        {
            let mut insert = tx.prepare_cached(
                "INSERT INTO records (seq, enqueued_ms, size, body, lane) VALUES (?1, ?2, ?3, ?4, ?5)",
            )?;
            for unit in units {
                let mut bodies = Vec::with_capacity(unit.records.len());
                let mut seq = next_seq;
                for record in unit.records {
                    let up = UpstreamRecord::new(
                        &self.settings.pipeline,
                        &self.settings.node,
                        seq,
                        record,
                    );
                    let json = serde_json::to_vec(&up)?;
                    let body = self.settings.keys.seal(Kind::Record, &json)?.into_owned();
                    bodies.push((seq, body, record.lane()));
                    seq += 1;
                }
                let size: u64 = bodies.iter().map(|(_, b, _)| b.len() as u64).sum();
                let n = bodies.len() as u64;
                if bytes + size > max {
                    match self.settings.when_full {
                        WhenFull::Block => {
                            let left = units.len() - report.outcomes.len();
                            report
                                .outcomes
                                .extend(std::iter::repeat_n(UnitOutcome::Blocked, left));
                            break;
                        }
                        WhenFull::DropNewest => {
                            report.outcomes.push(UnitOutcome::Dropped { records: n });
                            changes.add(unit.state, unit.delivery);
                            continue;
                        }
                        WhenFull::DropOldest if size > max => {
                            report.outcomes.push(UnitOutcome::Dropped { records: n });
                            changes.add(unit.state, unit.delivery);
                            continue;
                        }
                        WhenFull::DropOldest => {
                            let (r, b) = evict_oldest(&tx, bytes + size - max)?;
                            report.evicted += r;
                            records -= r.min(records);
                            bytes -= b.min(bytes);
                        }
                    }
                }
                for (seq, body, lane) in &bodies {
                    insert.execute(params![
                        *seq as i64,
                        now_ms,
                        body.len() as i64,
                        body,
                        *lane as i64
                    ])?;
                }
                next_seq = seq;
                records += n;
                bytes += size;
                report.outcomes.push(UnitOutcome::Stored { records: n });
                changes.add(unit.state, unit.delivery);
            }
        }
        let mut clock = self.state_clock;
        changes.write(&tx, &mut clock, &self.settings.keys)?;
        if next_seq != self.next_seq {
            tx.execute(
                "INSERT INTO meta (key, value) VALUES ('next_seq', ?1)
                 ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                params![next_seq as i64],
            )?;
            self.ceiling.reserve_through(next_seq)?;
        }
        save_counts(&tx, records, bytes)?;
        tx.commit()?;
        self.state_clock = clock;
        self.next_seq = next_seq;
        self.records = records;
        self.bytes = bytes;
        Ok(report)
    }

    /// The batch to send next, oldest first: see [`Store::take_batch_preferring`].
    pub fn take_batch(
        &mut self,
        limit: usize,
        allow_partial: bool,
    ) -> Result<Option<Batch>, QueueError> {
        self.take_batch_preferring(limit, allow_partial, Prefer::Backlog)
    }

    /// The batch to send next:
    /// 1. the urgent batch already being sent (each lane's range is kept across restarts
    ///    so every retry carries the same records and key);
    /// 2. else the oldest urgent records, however few;
    /// 3. else the routine batch already being sent;
    /// 4. else routine records, the part `prefer` names first: the oldest (however few
    ///    while they start in the backlog, which nothing joins; else `limit` of them, or
    ///    fewer when `allow_partial`), or the oldest live ones (likewise `limit`, or fewer
    ///    when `allow_partial`).
    ///
    /// The returned batch is remembered as the one being sent until [`Store::ack`] or
    /// [`Store::dead_letter`].
    pub fn take_batch_preferring(
        &mut self,
        limit: usize,
        allow_partial: bool,
        prefer: Prefer,
    ) -> Result<Option<Batch>, QueueError> {
        self.refresh()?;
        if let Some(batch) = self.pinned_batch(Lane::Urgent)? {
            return Ok(Some(batch));
        }
        let limit = limit.max(1);
        if self.records > 0 {
            let urgent = self.read_range(Lane::Urgent, 0, u64::MAX, limit as i64)?;
            if !urgent.is_empty() {
                return self.pin(Lane::Urgent, urgent, false);
            }
        }
        if let Some(batch) = self.pinned_batch(Lane::Routine)? {
            return Ok(Some(batch));
        }
        if self.records == 0 {
            return Ok(None);
        }
        let order = match prefer {
            Prefer::Backlog => [Prefer::Backlog, Prefer::Live],
            Prefer::Live => [Prefer::Live, Prefer::Backlog],
        };
        let mut records = Vec::new();
        for part in order {
            records = match part {
                Prefer::Backlog => self.oldest_routine(limit, allow_partial)?,
                Prefer::Live => self.live_routine(limit, allow_partial)?,
            };
            if !records.is_empty() {
                break;
            }
        }
        let backlog = records.first().is_some_and(|r| r.seq < self.live_from);
        self.pin(Lane::Routine, records, backlog)
    }

    /// The oldest routine records: however few while they start in the backlog (nothing
    /// joins it), else `limit` of them, or fewer when `allow_partial`.
    fn oldest_routine(
        &mut self,
        limit: usize,
        allow_partial: bool,
    ) -> Result<Vec<StoredRecord>, QueueError> {
        let backlog = self.live_from > 1 && self.has_backlog()?;
        if !allow_partial && !backlog && (self.records as usize) < limit {
            // No full batch can be there (the common case while records trickle in).
            return Ok(Vec::new());
        }
        let records = self.read_range(Lane::Routine, 0, u64::MAX, limit as i64)?;
        Ok(if backlog || allow_partial || records.len() >= limit {
            records
        } else {
            Vec::new()
        })
    }

    /// The oldest live routine records: `limit` of them, or fewer when `allow_partial`.
    fn live_routine(
        &mut self,
        limit: usize,
        allow_partial: bool,
    ) -> Result<Vec<StoredRecord>, QueueError> {
        if !allow_partial && (self.records as usize) < limit {
            return Ok(Vec::new());
        }
        let records = self.read_range(Lane::Routine, self.live_from, u64::MAX, limit as i64)?;
        Ok(if allow_partial || records.len() >= limit {
            records
        } else {
            Vec::new()
        })
    }

    /// Whether routine records older than the backlog mark wait.
    fn has_backlog(&self) -> Result<bool, QueueError> {
        Ok(self.conn.query_row(
            "SELECT EXISTS (SELECT 1 FROM records WHERE seq < ?1 AND lane = 0)",
            [self.live_from as i64],
            |r| r.get(0),
        )?)
    }

    /// Marks every routine record queued so far as the backlog: from now on records
    /// queued later are live (see [`Prefer`]). The sink marks it when the upstream fails,
    /// so what arrives after the link returns can go ahead of what waited through the
    /// outage.
    pub fn mark_backlog(&mut self) {
        self.live_from = self.next_seq;
    }

    /// The batch of `lane` being sent, if any of its records are still queued (else it is
    /// forgotten).
    fn pinned_batch(&mut self, lane: Lane) -> Result<Option<Batch>, QueueError> {
        let Some((first, last)) = self.pinned(lane)? else {
            return Ok(None);
        };
        let records = self.read_range(lane, first, last, i64::MAX)?;
        if records.is_empty() {
            self.unpin(lane)?;
            return Ok(None);
        }
        Ok(Some(Batch {
            lane,
            first_seq: first,
            last_seq: last,
            records,
            backlog: lane == Lane::Routine && first < self.live_from,
        }))
    }

    /// Remembers `records` as the batch of `lane` being sent.
    fn pin(
        &mut self,
        lane: Lane,
        records: Vec<StoredRecord>,
        backlog: bool,
    ) -> Result<Option<Batch>, QueueError> {
        let (Some(first), Some(last)) = (records.first(), records.last()) else {
            return Ok(None);
        };
        let batch = Batch {
            lane,
            first_seq: first.seq,
            last_seq: last.seq,
            records,
            backlog,
        };
        let (first_key, last_key) = pin_keys(lane);
        self.conn.execute(
            "INSERT INTO meta (key, value) VALUES (?1, ?2), (?3, ?4)
             ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            params![
                first_key,
                batch.first_seq as i64,
                last_key,
                batch.last_seq as i64
            ],
        )?;
        Ok(Some(batch))
    }

    /// Deletes a batch the sink accepted; returns how many records were deleted.
    pub fn ack(&mut self, batch: &Batch) -> Result<u64, QueueError> {
        self.delete_records(
            Some(batch.lane),
            batch.first_seq,
            batch.last_seq,
            Some(batch.lane),
        )
    }

    /// Deletes the records of `first..=last` (of `lane`, or all) in one transaction with
    /// the counters (and the range of the batch of `unpin` being sent); returns how many
    /// were deleted.
    fn delete_records(
        &mut self,
        lane: Option<Lane>,
        first: u64,
        last: u64,
        unpin: Option<Lane>,
    ) -> Result<u64, QueueError> {
        let tx = self.conn.transaction()?;
        let (n, b) = delete_range(&tx, lane, first, last)?;
        if let Some(lane) = unpin {
            unpin_in(&tx, lane)?;
        }
        commit_removal(tx, &mut self.records, &mut self.bytes, (n, b))?;
        Ok(n)
    }

    /// Moves a batch the sink rejected to the dead-letter table, then keeps the dead
    /// letters within `max_dead_letter_bytes` by deleting the oldest.
    pub fn dead_letter(
        &mut self,
        batch: &Batch,
        status: u16,
        reason: &str,
        now_ms: i64,
    ) -> Result<DeadLettered, QueueError> {
        let tx = self.conn.transaction()?;
        let (n, b) = delete_range(&tx, Some(batch.lane), batch.first_seq, batch.last_seq)?;
        let cap = self.settings.max_dead_letter_bytes;
        let rejection = dead::Rejection {
            status,
            reason,
            at_ms: now_ms,
        };
        let Inserted { overflow, .. } =
            dead::insert(&tx, batch, n, &rejection, cap, &self.settings.keys)?;
        unpin_in(&tx, batch.lane)?;
        let held = dead::stats(&tx)?;
        commit_removal(tx, &mut self.records, &mut self.bytes, (n, b))?;
        self.dead = held;
        Ok(DeadLettered {
            records: n,
            overflow_records: overflow.records,
        })
    }

    /// Deletes records enqueued before `cutoff_ms` (oldest first); returns how many.
    pub fn expire(&mut self, cutoff_ms: i64) -> Result<u64, QueueError> {
        let mut total = 0;
        loop {
            let tx = self.conn.transaction()?;
            let rows: Vec<(i64, i64, i64)> = {
                let mut stmt = tx.prepare_cached(
                    "SELECT seq, enqueued_ms, size FROM records ORDER BY seq LIMIT ?1",
                )?;
                stmt.query_map([SCAN_CHUNK], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
                    .collect::<Result<_, _>>()?
            };
            let expired: Vec<_> = rows
                .iter()
                .take_while(|(_, at, _)| *at < cutoff_ms)
                .collect();
            let Some(last) = expired.last() else {
                return Ok(total);
            };
            let n = tx.execute("DELETE FROM records WHERE seq <= ?1", [last.0])? as u64;
            let b: i64 = expired.iter().map(|(_, _, s)| *s).sum();
            let b = b.max(0) as u64;
            commit_removal(tx, &mut self.records, &mut self.bytes, (n, b))?;
            total += n;
            if expired.len() < rows.len() || rows.len() < SCAN_CHUNK as usize {
                return Ok(total);
            }
        }
    }

    /// The per-device state committed with the units, least recently changed first, if it
    /// belongs to the configuration with `fingerprint`; otherwise it is deleted.
    pub fn load_state(&mut self, fingerprint: i64) -> Result<SavedState, QueueError> {
        state::load(&mut self.conn, fingerprint, &self.settings.keys)
    }

    /// Whether the unit of this MQTT delivery is already committed.
    pub fn delivered(&self, id: DeliveryId) -> Result<bool, QueueError> {
        state::delivered(&self.conn, id)
    }

    /// Every dead-lettered batch, oldest first.
    pub fn dead_letters(&self) -> Result<Vec<DeadLetter>, QueueError> {
        dead::list(&self.conn)
    }

    fn pinned(&self, lane: Lane) -> Result<Option<(u64, u64)>, QueueError> {
        let get = |key: &str| -> Result<Option<i64>, QueueError> {
            Ok(self
                .conn
                .query_row("SELECT value FROM meta WHERE key = ?1", [key], |r| r.get(0))
                .optional()?)
        };
        let (first, last) = pin_keys(lane);
        Ok(match (get(first)?, get(last)?) {
            (Some(f), Some(l)) if f <= l => Some((f as u64, l as u64)),
            _ => None,
        })
    }

    #[cfg(test)]
    pub(super) fn unpin_for_test(&self, lane: Lane) {
        self.unpin(lane).unwrap();
    }

    fn unpin(&self, lane: Lane) -> Result<(), QueueError> {
        unpin_in(&self.conn, lane)
    }

    /// The records of `lane` in `first..=last` (at most `limit`), opened. A record that
    /// fails authentication (changed on disk) cannot be sent: it is deleted and counted
    /// (see [`Store::take_unreadable`]) instead of wedging the queue.
    fn read_range(
        &mut self,
        lane: Lane,
        first: u64,
        last: u64,
        limit: i64,
    ) -> Result<Vec<StoredRecord>, QueueError> {
        let rows: Vec<(u64, Vec<u8>)> = {
            // `lane = 1` in these words lets SQLite use the partial index of urgent
            // records; routine ones are read along the table itself.
            let sql = match lane {
                Lane::Urgent => {
                    "SELECT seq, body FROM records WHERE lane = 1 AND seq BETWEEN ?1 AND ?2 ORDER BY seq LIMIT ?3"
                }
                Lane::Routine => {
                    "SELECT seq, body FROM records WHERE seq BETWEEN ?1 AND ?2 AND lane = 0 ORDER BY seq LIMIT ?3"
                }
            };
            let mut stmt = self.conn.prepare_cached(sql)?;
            let rows = stmt.query_map(
                params![first as i64, last.min(i64::MAX as u64) as i64, limit],
                |r| Ok((r.get::<_, i64>(0)? as u64, r.get::<_, Vec<u8>>(1)?)),
            )?;
            rows.collect::<Result<_, _>>()?
        };
        let mut out = Vec::with_capacity(rows.len());
        for (seq, stored) in rows {
            let plain = match self.settings.keys.open(Kind::Record, &stored) {
                Ok(std::borrow::Cow::Owned(plain)) => Some(plain),
                Ok(std::borrow::Cow::Borrowed(_)) => None,
                Err(e @ (SealError::Tampered { .. } | SealError::Malformed)) => {
                    tracing::error!(seq, error = %e, "dropping a queued record that cannot be read");
                    self.unreadable += self.delete_records(None, seq, seq, None)?;
                    continue;
                }
                Err(e) => return Err(e.into()),
            };
            out.push(StoredRecord {
                seq,
                body: plain.unwrap_or(stored),
            });
        }
        Ok(out)
    }

    /// Records dropped because they could not be read since the last call.
    pub fn take_unreadable(&mut self) -> u64 {
        std::mem::take(&mut self.unreadable)
    }
}

/// Bytes the queue file at `db` and its WAL take on disk (0 for what does not exist).
pub fn files_bytes(db: &Path) -> u64 {
    let wal = format!("{}-wal", db.display());
    [db, Path::new(&wal)]
        .iter()
        .filter_map(|p| std::fs::metadata(p).ok())
        .map(|m| m.len())
        .sum()
}

/// Deletes the oldest records until at least `need` bytes are freed (or the table is
/// empty); returns (records, bytes) deleted.
fn evict_oldest(conn: &Connection, need: u64) -> Result<(u64, u64), QueueError> {
    let mut freed = 0u64;
    let mut deleted = 0u64;
    while freed < need {
        let rows: Vec<(i64, i64)> = {
            let mut stmt =
                conn.prepare_cached("SELECT seq, size FROM records ORDER BY seq LIMIT ?1")?;
            stmt.query_map([SCAN_CHUNK], |r| Ok((r.get(0)?, r.get(1)?)))?
                .collect::<Result<_, _>>()?
        };
        if rows.is_empty() {
            break;
        }
        let mut upto = None;
        for (seq, size) in &rows {
            freed += (*size).max(0) as u64;
            deleted += 1;
            upto = Some(*seq);
            if freed >= need {
                break;
            }
        }
        if let Some(seq) = upto {
            conn.execute("DELETE FROM records WHERE seq <= ?1", [seq])?;
        }
    }
    Ok((deleted, freed))
}

/// The `meta` keys of the range of the batch of a lane being sent. Each lane has its
/// own, so urgent records can go while a routine batch waits to be sent again unchanged
/// (the routine keys are those of files from before lanes).
fn pin_keys(lane: Lane) -> (&'static str, &'static str) {
    match lane {
        Lane::Routine => ("batch_first", "batch_last"),
        Lane::Urgent => ("urgent_first", "urgent_last"),
    }
}

/// Forgets the batch of `lane` being sent.
fn unpin_in(conn: &Connection, lane: Lane) -> Result<(), QueueError> {
    let (first, last) = pin_keys(lane);
    conn.execute(
        "DELETE FROM meta WHERE key IN (?1, ?2)",
        params![first, last],
    )?;
    Ok(())
}

/// Saves the counters less the `removed` (records, bytes) in `tx` and commits it; then
/// takes them off `records` and `bytes`, which stay as they were if the commit fails.
fn commit_removal(
    tx: rusqlite::Transaction<'_>,
    records: &mut u64,
    bytes: &mut u64,
    (n, b): (u64, u64),
) -> Result<(), QueueError> {
    save_counts(&tx, records.saturating_sub(n), bytes.saturating_sub(b))?;
    tx.commit()?;
    *records -= n.min(*records);
    *bytes -= b.min(*bytes);
    Ok(())
}

/// Deletes the records of a range (of `lane`, or all); returns (records, bytes) deleted.
fn delete_range(
    conn: &Connection,
    lane: Option<Lane>,
    first: u64,
    last: u64,
) -> Result<(u64, u64), QueueError> {
    // -1 matches every lane.
    let lane = lane.map_or(-1, |l| l as i64);
    let (n, b): (i64, i64) = conn.query_row(
        "SELECT count(*), coalesce(sum(size), 0) FROM records
         WHERE seq BETWEEN ?1 AND ?2 AND (?3 = -1 OR lane = ?3)",
        params![first as i64, last as i64, lane],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )?;
    conn.execute(
        "DELETE FROM records WHERE seq BETWEEN ?1 AND ?2 AND (?3 = -1 OR lane = ?3)",
        params![first as i64, last as i64, lane],
    )?;
    Ok((n.max(0) as u64, b.max(0) as u64))
}

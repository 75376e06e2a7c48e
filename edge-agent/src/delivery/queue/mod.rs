//! The durable on-node queue: records wait here, in a SQLite file, until the sink has
//! them acknowledged upstream.
//!
//! All SQLite work runs on one dedicated thread (the writer) that owns the [`Store`]. The
//! ingest side submits one [`Unit`] per MQTT message (its records, possibly none) and gets
//! a completion that resolves only after the transaction holding them is committed, so
//! the message is acknowledged to the broker only once its outcome is durable. Units that
//! arrive while a commit is running share the next transaction (group commit). The sink
//! side takes the oldest batch and deletes it only after the upstream accepted it.
//!
//! Caps: `maxBytes` with `whenFull` (`dropOldest` and `dropNewest` count `queue_full`
//! drops; `block` stops committing, hence acknowledging, until space frees), and `maxAge`
//! (expired records are deleted and counted as `max_age`). A failing disk never crashes
//! the agent: commits are retried with backoff, and after a few failures the records are
//! dropped and counted as `disk_full` (under `block` they are retried until they fit).
//! Once a disk has proved full that way, each later group gets one attempt: stored if it
//! fits, else dropped at once, so ingest keeps its pace (and the broker its memory) while
//! the sink cannot drain. That lasts until the queue frees space (a batch delivered,
//! dead-lettered or expired) or for [`DISK_FULL_HOLD`], whichever comes first.
//! These decisions are a pure state machine (`commit`); the writer performs them.

mod commit;
pub mod dead;
mod drain;
mod file;
pub mod inspect;
pub mod owner;
pub mod reserve;
pub mod seal;
pub mod seq;
pub mod state;
pub mod store;
#[cfg(test)]
mod tests;

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use edge_crds::WhenFull;
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;

pub use commit::DISK_FULL_HOLD;
pub use dead::{DeadLetter, DeadLetterStats};
pub use state::SavedState;
pub use store::{
    AppendReport, Batch, DeadLettered, Prefer, QueueError, QueueStats, Store, StoreSettings,
    StoredRecord, UnitOutcome, UnitRef,
};

use self::commit::{Attempt, CommitPolicy, Decision};
use self::drain::DrainRate;
use self::reserve::Reserve;
use crate::record::{DeliveryId, Record, StateChange, UnitContent};
use crate::runtime::clock::now_ms;
use crate::runtime::health::{Health, Loop};
use crate::runtime::telemetry::Metrics;

/// Units waiting for the writer. When commits fall behind, ingest waits for room here,
/// and the source stops reading once its byte budget is spent.
const APPEND_CAPACITY: usize = 2048;
/// Requests from the sink waiting for the writer.
const COMMAND_CAPACITY: usize = 16;
/// Most units committed in one transaction.
const MAX_GROUP: usize = 4096;
/// Records after which a group stops growing: keeps every transaction (and so the WAL
/// between checkpoints) small next to the reserve space.
const MAX_GROUP_RECORDS: usize = 512;
/// How long a small group waits for more units before committing.
const LINGER: Duration = Duration::from_millis(2);
/// How often the writer wakes up when idle (heartbeat, gauges, retries).
const TICK: Duration = Duration::from_secs(1);
/// Time per tick spent giving drained space back to the file system.
const SHRINK_BUDGET: Duration = Duration::from_millis(100);
/// The same once the queue is empty.
const SHRINK_BUDGET_IDLE: Duration = Duration::from_millis(400);

/// How the queue is set up.
#[derive(Clone, Debug)]
pub struct QueueConfig {
    /// Data directory holding `queue.db` and `seq.hwm`.
    pub dir: PathBuf,
    /// Store settings (caps, durability, record identity).
    pub store: StoreSettings,
    /// Records older than this are dropped.
    pub max_age: Duration,
    /// The uid of the pipeline the queue belongs to (see [`owner`]); `None` for a
    /// pipeline without one (a manifest written by hand): no ownership check.
    pub owner: Option<String>,
    /// Send a queue another pipeline of the same name left instead of setting it aside.
    pub adopt_previous: bool,
}

/// What became of a submitted unit. Either way the MQTT message may be acknowledged.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Committed {
    /// Its records are durable.
    Stored,
    /// Its records were dropped and counted (queue full, or a failing disk).
    Dropped,
}

/// The records derived from one MQTT message, on their way to the writer.
pub struct Unit {
    records: Vec<Record>,
    state: Vec<StateChange>,
    delivery: Option<DeliveryId>,
    received: Instant,
    done: oneshot::Sender<Committed>,
}

impl Unit {
    fn new(content: UnitContent, received: Instant, done: oneshot::Sender<Committed>) -> Self {
        Self {
            records: content.records,
            state: content.state,
            delivery: content.delivery,
            received,
            done,
        }
    }
}

enum Command {
    TakeBatch {
        limit: usize,
        allow_partial: bool,
        prefer: Prefer,
        reply: oneshot::Sender<Result<Option<Batch>, QueueError>>,
    },
    MarkBacklog,
    Ack {
        batch: Batch,
        reply: oneshot::Sender<Result<u64, QueueError>>,
    },
    DeadLetter {
        batch: Batch,
        status: u16,
        reason: String,
        reply: oneshot::Sender<Result<DeadLettered, QueueError>>,
    },
    LoadState {
        fingerprint: i64,
        reply: oneshot::Sender<Result<SavedState, QueueError>>,
    },
    Delivered {
        id: DeliveryId,
        reply: oneshot::Sender<Result<bool, QueueError>>,
    },
}

/// A handle to the queue. Clones share the writer, which runs until every handle is
/// dropped or [`WriterControl::shutdown`].
#[derive(Clone)]
pub struct Queue {
    appends: mpsc::Sender<Unit>,
    commands: mpsc::Sender<Command>,
    stats: watch::Receiver<QueueStats>,
}

/// Room for one unit in the writer's channel (see [`Queue::reserve`]).
pub struct SubmitPermit<'a>(mpsc::Permit<'a, Unit>);

impl SubmitPermit<'_> {
    /// Submits what one message commits, like [`Queue::submit`].
    pub fn submit(
        self,
        content: impl Into<UnitContent>,
        received: Instant,
    ) -> oneshot::Receiver<Committed> {
        let (done, rx) = oneshot::channel();
        self.0.send(Unit::new(content.into(), received, done));
        rx
    }
}

/// Stops the writer thread.
pub struct WriterControl {
    done: oneshot::Receiver<()>,
    shutdown: CancellationToken,
}

impl WriterControl {
    /// Asks the writer to commit what it has already received (within the caps; what does
    /// not fit under `block` stays unacknowledged), close the file and stop; waits for it.
    /// Later requests fail with [`QueueError::Stopped`].
    pub async fn shutdown(self) {
        self.shutdown.cancel();
        let _ = self.done.await;
    }
}

impl Queue {
    /// Starts the writer thread, which opens (or repairs) the queue in `config.dir`.
    pub async fn start(
        config: QueueConfig,
        metrics: Arc<Metrics>,
        health: Arc<Health>,
    ) -> Result<(Self, WriterControl), QueueError> {
        let max_age = config.max_age;
        let opener_metrics = metrics.clone();
        let opener = move || {
            let store = open(&config, &opener_metrics)?;
            Ok((store, Some(Reserve::new(&config.dir))))
        };
        Self::start_with(opener, max_age, metrics, health).await
    }

    /// Starts the writer thread on the store `open` returns (run on that thread).
    async fn start_with(
        open: impl FnOnce() -> Result<(Store, Option<Reserve>), QueueError> + Send + 'static,
        max_age: Duration,
        metrics: Arc<Metrics>,
        health: Arc<Health>,
    ) -> Result<(Self, WriterControl), QueueError> {
        let (appends_tx, appends_rx) = mpsc::channel(APPEND_CAPACITY);
        let (commands_tx, commands_rx) = mpsc::channel(COMMAND_CAPACITY);
        let (opened_tx, opened_rx) = oneshot::channel();
        let (done_tx, done_rx) = oneshot::channel();
        let shutdown = CancellationToken::new();
        let shutdown_writer = shutdown.clone();
        std::thread::Builder::new()
            .name("queue-writer".into())
            .spawn(move || {
                let (opened, reserve) = match open() {
                    Ok(opened) => opened,
                    Err(e) => {
                        let _ = opened_tx.send(Err(e));
                        return;
                    }
                };
                let stats = opened.stats().unwrap_or_default();
                let (stats_tx, stats_rx) = watch::channel(stats);
                health.set_queue_open(true);
                let _ = opened_tx.send(Ok(stats_rx));
                let runtime = match tokio::runtime::Builder::new_current_thread()
                    .enable_time()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        tracing::error!(error = %e, "queue writer runtime");
                        health.set_queue_open(false);
                        return;
                    }
                };
                let policy = CommitPolicy::new(opened.settings().when_full == WhenFull::Block);
                let writer = Writer {
                    store: opened,
                    reserve,
                    metrics,
                    health,
                    stats: stats_tx,
                    pending: VecDeque::new(),
                    policy,
                    max_age,
                    last_expire: Instant::now(),
                    drain: DrainRate::default(),
                };
                writer.publish_stats();
                runtime.block_on(writer.run(appends_rx, commands_rx, shutdown_writer));
                let _ = done_tx.send(());
            })
            .map_err(|source| QueueError::Io {
                path: PathBuf::from("queue-writer thread"),
                source,
            })?;
        let stats = opened_rx.await.map_err(|_| QueueError::Stopped)??;
        Ok((
            Self {
                appends: appends_tx,
                commands: commands_tx,
                stats,
            },
            WriterControl {
                done: done_rx,
                shutdown,
            },
        ))
    }

    /// Submits the records of one message. The returned receiver resolves once they are
    /// committed (or dropped and counted); it errors if the agent stops first, in which case
    /// the message must not be acknowledged.
    pub async fn submit(
        &self,
        content: impl Into<UnitContent>,
        received: Instant,
    ) -> Result<oneshot::Receiver<Committed>, QueueError> {
        let (done, rx) = oneshot::channel();
        self.appends
            .send(Unit::new(content.into(), received, done))
            .await
            .map_err(|_| QueueError::Stopped)?;
        Ok(rx)
    }

    /// The per-device state committed so far, least recently changed first, if it belongs
    /// to the configuration with `fingerprint` (see [`Store::load_state`]).
    pub async fn load_state(&self, fingerprint: i64) -> Result<SavedState, QueueError> {
        self.request(|reply| Command::LoadState { fingerprint, reply })
            .await
    }

    /// Whether the unit of this MQTT delivery is already committed (a redelivery).
    pub async fn delivered(&self, id: DeliveryId) -> Result<bool, QueueError> {
        self.request(|reply| Command::Delivered { id, reply }).await
    }

    /// Waits for room in the writer's channel; the permit then submits without waiting.
    /// Cancelling the wait loses nothing.
    pub async fn reserve(&self) -> Result<SubmitPermit<'_>, QueueError> {
        let permit = self
            .appends
            .reserve()
            .await
            .map_err(|_| QueueError::Stopped)?;
        Ok(SubmitPermit(permit))
    }

    /// The batch to send next (see [`Store::take_batch_preferring`]).
    pub async fn take_batch(
        &self,
        limit: usize,
        allow_partial: bool,
        prefer: Prefer,
    ) -> Result<Option<Batch>, QueueError> {
        self.request(|reply| Command::TakeBatch {
            limit,
            allow_partial,
            prefer,
            reply,
        })
        .await
    }

    /// Marks what is queued as the backlog (see [`Store::mark_backlog`]).
    pub async fn mark_backlog(&self) -> Result<(), QueueError> {
        self.commands
            .send(Command::MarkBacklog)
            .await
            .map_err(|_| QueueError::Stopped)
    }

    /// Deletes a batch the sink accepted; returns how many records were deleted.
    pub async fn ack(&self, batch: Batch) -> Result<u64, QueueError> {
        self.request(|reply| Command::Ack { batch, reply }).await
    }

    /// Moves a rejected batch to the dead-letter table (see [`Store::dead_letter`]).
    pub async fn dead_letter(
        &self,
        batch: Batch,
        status: u16,
        reason: String,
    ) -> Result<DeadLettered, QueueError> {
        self.request(|reply| Command::DeadLetter {
            batch,
            status,
            reason,
            reply,
        })
        .await
    }

    /// The latest queue statistics; `changed()` on the receiver wakes on every change.
    pub fn stats(&self) -> watch::Receiver<QueueStats> {
        self.stats.clone()
    }

    async fn request<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<Result<T, QueueError>>) -> Command,
    ) -> Result<T, QueueError> {
        let (tx, rx) = oneshot::channel();
        self.commands
            .send(make(tx))
            .await
            .map_err(|_| QueueError::Stopped)?;
        rx.await.map_err(|_| QueueError::Stopped)?
    }
}

fn open(config: &QueueConfig, metrics: &Metrics) -> Result<Store, QueueError> {
    if let Some(uid) = &config.owner {
        claim(config, uid, metrics)?;
    }
    let started = Instant::now();
    let opened = Store::open(&config.dir, config.store.clone())?;
    if opened.checked {
        tracing::info!(
            seconds = started.elapsed().as_secs_f64(),
            "checked the queue file's integrity: it was new or not closed cleanly"
        );
    }
    metrics
        .queue_integrity_checks
        .inc_by(u64::from(opened.checked));
    if let Some((aside, why)) = &opened.moved_aside {
        tracing::error!(
            moved_to = %aside.display(),
            error = %why,
            "the queue file was corrupt: moved it aside and started a fresh queue"
        );
        metrics.queue_corruptions.inc();
    }
    metrics
        .queue_capacity_bytes
        .set(config.store.max_bytes.min(i64::MAX as u64) as i64);
    Ok(opened.store)
}

/// Makes the queue directory the pipeline `uid`'s, and says what became of a queue
/// another pipeline of the same name left there.
fn claim(config: &QueueConfig, uid: &str, metrics: &Metrics) -> Result<(), QueueError> {
    match owner::claim(&config.dir, uid, config.adopt_previous)? {
        owner::Claim::Owned | owner::Claim::Claimed => {}
        owner::Claim::Adopted { previous } => tracing::warn!(
            previous_uid = %previous,
            "adopting the queue a deleted pipeline of the same name left on this node \
             (buffer.adoptPreviousQueue): its records are sent"
        ),
        owner::Claim::SetAside {
            previous,
            path,
            records,
        } => {
            metrics.queues_set_aside.inc();
            tracing::warn!(
                previous_uid = %previous,
                moved_to = %path.as_deref().map(|p| p.display().to_string()).unwrap_or_default(),
                records = records.map(|n| n.to_string()).unwrap_or_else(|| "unknown".into()),
                "the queue on this node belongs to a deleted pipeline of the same name: \
                 set it aside (kept, never sent) and started an empty queue; set \
                 buffer.adoptPreviousQueue to send such a queue instead"
            );
        }
    }
    Ok(())
}

struct Writer {
    store: Store,
    /// Space given back to SQLite when the disk is full.
    reserve: Option<Reserve>,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
    stats: watch::Sender<QueueStats>,
    /// Units received but not committed yet, in order.
    pending: VecDeque<Unit>,
    /// What to do with them after each attempt (retry, hold, drop).
    policy: CommitPolicy,
    max_age: Duration,
    last_expire: Instant,
    /// Records acknowledged upstream lately, for the expected time to drain.
    drain: DrainRate,
}

impl Writer {
    async fn run(
        mut self,
        mut appends: mpsc::Receiver<Unit>,
        mut commands: mpsc::Receiver<Command>,
        shutdown: CancellationToken,
    ) {
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let (mut appends_open, mut commands_open) = (true, true);
        while appends_open || commands_open {
            self.health.beat(Loop::Writer);
            let retry_at = self.policy.retry_at().map(tokio::time::Instant::from_std);
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => break,
                cmd = commands.recv(), if commands_open => match cmd {
                    Some(cmd) => self.handle(cmd),
                    None => commands_open = false,
                },
                unit = appends.recv(), if appends_open && self.pending.is_empty() => match unit {
                    Some(unit) => {
                        self.pending.push_back(unit);
                        gather(&mut appends, &mut self.pending).await;
                        self.commit_pending();
                    }
                    None => appends_open = false,
                },
                _ = sleep_until(retry_at), if retry_at.is_some() => self.commit_pending(),
                _ = tick.tick() => self.on_tick(),
            }
        }
        // Finish what was received: one last group commit.
        appends.close();
        while let Ok(unit) = appends.try_recv() {
            self.pending.push_back(unit);
        }
        if !self.pending.is_empty() {
            self.commit_pending();
        }
        if !self.pending.is_empty() {
            tracing::info!(
                messages = self.pending.len(),
                "stopping with uncommitted messages; they stay unacknowledged at the broker"
            );
        }
        self.pending.clear();
        self.health.set_queue_open(false);
        if let Err(e) = self.store.close() {
            tracing::warn!(error = %e, "closing the queue file; the next start checks it");
        }
    }

    fn handle(&mut self, cmd: Command) {
        match cmd {
            Command::TakeBatch {
                limit,
                allow_partial,
                prefer,
                reply,
            } => {
                // Taking a batch records its range on disk; on a full disk it needs the
                // reserve like a delete does, or the queue could never drain.
                let result = self
                    .with_space(|store| store.take_batch_preferring(limit, allow_partial, prefer));
                let unreadable = self.store.take_unreadable();
                if unreadable > 0 {
                    self.metrics.dropped("unreadable", unreadable);
                }
                let _ = reply.send(result);
            }
            Command::Ack { batch, reply } => {
                let result = self.with_space(|store| store.ack(&batch));
                if let Ok(n) = &result {
                    self.drain.delivered(Instant::now(), *n);
                }
                let _ = reply.send(result);
                self.after_space_freed();
            }
            Command::DeadLetter {
                batch,
                status,
                reason,
                reply,
            } => {
                let result =
                    self.with_space(|store| store.dead_letter(&batch, status, &reason, now_ms()));
                let _ = reply.send(result);
                self.after_space_freed();
            }
            Command::MarkBacklog => self.store.mark_backlog(),
            Command::LoadState { fingerprint, reply } => {
                let _ = reply.send(self.store.load_state(fingerprint));
            }
            Command::Delivered { id, reply } => {
                // A redelivery that overtakes its first delivery still waiting here is not
                // recognised: processed twice rather than acknowledged before its commit.
                let _ = reply.send(self.store.delivered(id));
            }
        }
    }

    /// Runs a drain step (taking a batch, a delete); if the disk was full, gives SQLite the
    /// reserve space, checkpoints the WAL and runs it once more. Draining is what frees
    /// space, so it gets the reserve; commits of new records do not.
    fn with_space<T>(
        &mut self,
        mut op: impl FnMut(&mut Store) -> Result<T, QueueError>,
    ) -> Result<T, QueueError> {
        match op(&mut self.store) {
            Err(e) if e.is_disk_full() => {
                if let Some(reserve) = self.reserve.as_mut()
                    && reserve.release()
                {
                    tracing::warn!("the disk is full: released the queue's reserve space to drain");
                }
                self.checkpoint();
                op(&mut self.store)
            }
            other => other,
        }
    }

    fn checkpoint(&self) {
        if let Err(e) = self.store.checkpoint() {
            tracing::debug!(error = %e, "checkpoint on a full disk");
        }
    }

    fn after_space_freed(&mut self) {
        self.policy.space_freed();
        self.try_held();
    }

    /// Tries the units held for space again (which publishes the statistics), or only
    /// publishes the statistics when none are held.
    fn try_held(&mut self) {
        if self.policy.is_held() {
            self.commit_pending();
        } else {
            self.publish_stats();
        }
    }

    fn on_tick(&mut self) {
        match self.store.refresh() {
            Ok(true) => {
                tracing::info!(
                    "the queue file was changed by another process (dead letters replayed or purged): recounted"
                );
                self.policy.space_freed();
            }
            Ok(false) => {}
            Err(e) => tracing::warn!(error = %e, "checking the queue file for changes"),
        }
        if !self.policy.is_failing()
            && let Some(reserve) = self.reserve.as_mut()
        {
            reserve.restore();
        }
        if self.policy.is_settled() {
            // Drained to nothing: the writer has little else to do.
            let idle = self.pending.is_empty() && self.stats.borrow().records == 0;
            let budget = if idle {
                SHRINK_BUDGET_IDLE
            } else {
                SHRINK_BUDGET
            };
            match self.store.shrink(budget) {
                Ok(0) => {}
                Ok(pages) => tracing::debug!(pages, "gave drained space back"),
                Err(e) => tracing::warn!(error = %e, "shrinking the queue file"),
            }
        }
        self.metrics
            .queue_file_bytes
            .set(self.store.file_bytes().min(i64::MAX as u64) as i64);
        let every = (self.max_age / 10).clamp(Duration::from_millis(500), Duration::from_secs(60));
        if self.last_expire.elapsed() >= every {
            self.last_expire = Instant::now();
            let cutoff =
                now_ms().saturating_sub(self.max_age.as_millis().min(i64::MAX as u128) as i64);
            match self.with_space(|store| store.expire(cutoff)) {
                Ok(0) => {}
                Ok(n) => {
                    tracing::warn!(records = n, "dropped records older than maxAge");
                    self.metrics.dropped("max_age", n);
                    self.policy.space_freed();
                }
                Err(e) => tracing::warn!(error = %e, "expiring old records"),
            }
        }
        self.try_held();
    }

    /// Commits as many pending units as the policy allows, completing each; what is left
    /// waits as the [`CommitPolicy`] decides.
    fn commit_pending(&mut self) {
        if self.pending.is_empty() {
            self.policy.idle();
            return;
        }
        let now = Instant::now();
        if self.reserve.as_ref().is_some_and(Reserve::in_use) {
            // The drain is using the reserve on a full disk: new records would take its
            // space and stall it, so they are treated as on a full disk until it is back.
            let step = self.policy.next(Attempt::Refused, now);
            if step.report {
                tracing::warn!(
                    "the disk is full and the drain is using the queue's reserve: new records are not committed until it is back (dropped as disk_full, or left at the broker under block)"
                );
            }
            if step.decision == Decision::Hold {
                return;
            }
            self.drop_pending();
        } else {
            let units: Vec<UnitRef<'_>> = self
                .pending
                .iter()
                .map(|u| UnitRef {
                    records: &u.records,
                    state: &u.state,
                    delivery: u.delivery,
                })
                .collect();
            match self.store.append_units(&units, now_ms()) {
                Ok(report) => {
                    let blocked = self.complete(report);
                    self.policy.next(Attempt::Committed { blocked }, now);
                }
                Err(e) => self.failed(&e, now),
            }
        }
        self.publish_stats();
    }

    /// Completes the units a commit settled, in order; returns whether some were left
    /// waiting for space (`block`).
    fn complete(&mut self, report: AppendReport) -> bool {
        if report.evicted > 0 {
            self.metrics.dropped("queue_full", report.evicted);
        }
        for outcome in report.outcomes {
            let committed = match outcome {
                UnitOutcome::Blocked => return true,
                UnitOutcome::Stored { .. } => Committed::Stored,
                UnitOutcome::Dropped { records } => {
                    self.metrics.dropped("queue_full", records);
                    Committed::Dropped
                }
            };
            let Some(unit) = self.pending.pop_front() else {
                continue;
            };
            if committed == Committed::Stored {
                for record in &unit.records {
                    self.metrics
                        .records_enqueued
                        .with_label_values(&[record.kind.as_str()])
                        .inc();
                }
            }
            self.metrics
                .ingest_to_durable
                .observe(unit.received.elapsed().as_secs_f64());
            let _ = unit.done.send(committed);
        }
        false
    }

    /// Performs what the policy decides after the commit failed with `e`.
    fn failed(&mut self, e: &QueueError, now: Instant) {
        let disk_full = e.is_disk_full();
        let step = self.policy.next(Attempt::Failed { disk_full }, now);
        let attempts = match step.decision {
            Decision::Retry { attempts, .. } | Decision::Drop { attempts } => attempts,
            Decision::Done | Decision::Hold => 0,
        };
        if step.report {
            tracing::warn!(error = %e, attempts, "committing to the queue failed");
            if disk_full {
                self.checkpoint();
            }
        }
        if let Decision::Drop { .. } = step.decision {
            if step.report {
                let n: usize = self.pending.iter().map(|u| u.records.len()).sum();
                tracing::error!(records = n, error = %e, "dropping records the queue cannot store; while the disk stays full, new records are dropped at once (counted as disk_full)");
            }
            self.drop_pending();
        }
    }

    /// Drops every pending unit, counted as `disk_full`.
    fn drop_pending(&mut self) {
        let n: usize = self.pending.iter().map(|u| u.records.len()).sum();
        self.metrics.dropped("disk_full", n as u64);
        for unit in self.pending.drain(..) {
            let _ = unit.done.send(Committed::Dropped);
        }
    }

    fn publish_stats(&self) {
        let stats = match self.store.stats() {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "reading queue statistics");
                return;
            }
        };
        let gauge = |g: &prometheus::IntGauge, v: u64| g.set(v.min(i64::MAX as u64) as i64);
        gauge(&self.metrics.queue_records, stats.records);
        gauge(&self.metrics.queue_bytes, stats.bytes);
        let age = stats
            .oldest_ms
            .map_or(0.0, |t| (now_ms() - t).max(0) as f64 / 1000.0);
        self.metrics.queue_oldest_age_seconds.set(age);
        self.metrics
            .queue_drain_seconds
            .set(self.drain.seconds(Instant::now(), stats.records));
        gauge(
            &self.metrics.dead_letter_records,
            stats.dead_letters.records,
        );
        gauge(&self.metrics.dead_letter_bytes, stats.dead_letters.bytes);
        self.stats.send_if_modified(|old| {
            let changed = *old != stats;
            *old = stats;
            changed
        });
    }
}

/// Adds the units already waiting (up to [`MAX_GROUP`] units or [`MAX_GROUP_RECORDS`]
/// records) to `group`, waiting up to [`LINGER`] once for more when the group is small.
async fn gather(appends: &mut mpsc::Receiver<Unit>, group: &mut VecDeque<Unit>) {
    let mut lingered = false;
    let mut records: usize = group.iter().map(|u| u.records.len()).sum();
    while group.len() < MAX_GROUP && records < MAX_GROUP_RECORDS {
        let unit = match appends.try_recv() {
            Ok(unit) => unit,
            Err(_) if lingered || group.len() >= 64 => return,
            Err(_) => {
                lingered = true;
                match tokio::time::timeout(LINGER, appends.recv()).await {
                    Ok(Some(unit)) => unit,
                    _ => return,
                }
            }
        };
        records += unit.records.len();
        group.push_back(unit);
    }
}

async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

//! Sync: the loop that takes the next batch from the queue, sends it upstream and
//! deletes it only once the upstream accepted it.
//!
//! Which batch is next: urgent records (anomalies, classifications, readings that crossed
//! a threshold) before routine ones; among routine ones, with `sink.backlog.order:
//! liveFirst`, records queued since the upstream last failed before the backlog that waited
//! through the outage, which keeps its share of the bytes (see [`Drain`]). Each part goes
//! oldest first.
//!
//! Two sinks: [`http`] (POST a JSON array to an ingest API) and [`mqtt`] (publish it with
//! QoS 1 to an upstream broker). A sink only does the I/O: it sends a batch once and says
//! what came of it as an [`Outcome`]. This loop applies every outcome the same way: the
//! batch is acknowledged or dead-lettered in the queue, or sent again after a capped
//! exponential backoff with full jitter (or the upstream's `Retry-After`); the upstream's
//! state, the pauses and the metrics are kept here. An unreachable upstream is a normal
//! state at the edge: it never stops ingest and never fails liveness.

pub mod http;
pub mod mqtt;
mod outcome;
mod pace;
pub mod schedule;
pub mod wire;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

pub use self::outcome::{Outcome, Payload, Sent};
pub use self::pace::{Drain, TokenBucket};
use self::schedule::RateSchedule;
use crate::delivery::queue::{Batch, Queue, QueueError};
use crate::record::Lane;
use crate::runtime::backoff::backoff;
use crate::runtime::health::{Health, Loop};
use crate::runtime::telemetry::Metrics;

/// How often a waiting sync loop beats its heartbeat.
const BEAT: Duration = Duration::from_secs(1);
/// Pause before retrying a queue write that failed (a full disk).
const QUEUE_RETRY: Duration = Duration::from_millis(500);
/// Failed attempts logged: the first, then every this many.
const LOG_EVERY: u32 = 10;

/// The configured sink.
pub enum Sink {
    /// An HTTP ingest API.
    Http(Box<http::HttpSink>),
    /// An upstream MQTT broker.
    Mqtt(Box<mqtt::MqttSink>),
}

impl Sink {
    /// Records per batch at most, and how long a partial batch may wait.
    fn batching(&self) -> (usize, Duration) {
        match self {
            Self::Http(s) => (s.settings.batch_size, s.settings.flush_interval),
            Self::Mqtt(s) => (s.settings.batch_size, s.settings.flush_interval),
        }
    }

    /// The first and the largest retry delay.
    fn backoff(&self) -> (Duration, Duration) {
        match self {
            Self::Http(s) => (s.settings.initial_backoff, s.settings.max_backoff),
            Self::Mqtt(_) => (mqtt::INITIAL_BACKOFF, mqtt::MAX_BACKOFF),
        }
    }

    /// What the logs call the upstream, and its URL (redacted).
    fn upstream(&self) -> (&'static str, String) {
        match self {
            Self::Http(s) => (
                "upstream",
                crate::runtime::diagnostics::url(&s.settings.url),
            ),
            Self::Mqtt(s) => (
                "upstream broker",
                crate::runtime::diagnostics::url(&s.settings.url),
            ),
        }
    }

    /// `batch` as it goes on the wire.
    fn encode(&self, batch: &Batch) -> Payload {
        match self {
            Self::Http(s) => s.encode(batch),
            Self::Mqtt(s) => s.encode(batch),
        }
    }

    /// Sends `payload` (`batch` on the wire) once.
    async fn send(&mut self, batch: &Batch, payload: &Payload) -> Sent {
        match self {
            Self::Http(s) => s.send(batch, payload).await,
            Self::Mqtt(s) => s.send(payload).await,
        }
    }

    /// Resolves when new credentials are there to be taken (never without them).
    async fn credentials_changed(&mut self) {
        match self {
            Self::Http(s) => s.updates.changed().await,
            Self::Mqtt(s) => s.updates.changed().await,
        }
    }
}

/// What one delivery attempt came to.
#[derive(Debug, PartialEq, Eq)]
pub enum Delivery {
    /// The batch left the queue (accepted, or dead-lettered).
    Done,
    /// The batch stays and is sent again: re-read from the queue, so the retry carries
    /// its range's records minus any the queue dropped meanwhile (`dropOldest`,
    /// `maxAge`), under the same key.
    Retry,
}

/// The sync loop was asked to stop (or the queue stopped) in the middle of a batch; the
/// batch stays in the queue.
#[derive(Debug)]
pub struct Stopped;

/// What the sync loop works with besides the sink.
pub struct SyncContext {
    /// The queue batches come from.
    queue: Queue,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
    /// Cancelled at shutdown.
    stop: CancellationToken,
    upstream: std::sync::Mutex<UpstreamClock>,
    /// `sink.rateLimit`, when set.
    limit: std::sync::Mutex<Option<Limit>>,
    /// `sink.backlog`.
    drain: Drain,
}

/// `sink.rateLimit`: the bucket, and the cap it runs at by time of day.
#[derive(Debug)]
struct Limit {
    bucket: TokenBucket,
    schedule: RateSchedule,
}

impl SyncContext {
    /// A context; the upstream counts as up until a request fails.
    pub fn new(
        queue: Queue,
        metrics: Arc<Metrics>,
        health: Arc<Health>,
        stop: CancellationToken,
    ) -> Self {
        metrics.upstream_up.set(1);
        Self {
            queue,
            metrics,
            health,
            stop,
            upstream: std::sync::Mutex::new(UpstreamClock { down_since: None }),
            limit: std::sync::Mutex::new(None),
            drain: Drain::default(),
        }
    }

    /// Drains a backlog as `sink.backlog` says.
    pub fn with_backlog(mut self, spec: &edge_crds::BacklogDrain) -> Self {
        self.drain = Drain::new(
            spec.order == edge_crds::BacklogOrder::LiveFirst,
            spec.share_percent
                .unwrap_or(edge_crds::BacklogDrain::DEFAULT_SHARE_PERCENT),
        );
        self
    }

    /// Caps what the sink sends (`sink.rateLimit`): at `schedule`'s cap for the time of
    /// day, with `burst`.
    pub fn with_rate_limit(self, schedule: RateSchedule, burst: u64) -> Self {
        let (rate, _) = schedule.at(RateSchedule::second_of_day_now());
        self.set_rate_gauge(rate);
        *self.limit.lock().unwrap_or_else(|p| p.into_inner()) = Some(Limit {
            bucket: TokenBucket::new(rate, burst),
            schedule,
        });
        self
    }

    fn set_rate_gauge(&self, rate: u64) {
        self.metrics
            .sink_rate_limit
            .set(rate.min(i64::MAX as u64) as i64);
    }

    /// Waits until `bytes` may go out under `sink.rateLimit` (at once without one); the
    /// wait counts in `edge_agent_sink_throttled_seconds_total`. A wait ends early when the
    /// cap changes with the time of day; under a cap of 0 it lasts until the cap changes.
    async fn throttle(&self, bytes: usize) -> Result<(), Stopped> {
        loop {
            let wait = {
                let mut limit = self.limit.lock().unwrap_or_else(|p| p.into_inner());
                let Some(limit) = limit.as_mut() else {
                    return Ok(());
                };
                let now = Instant::now();
                let (rate, change) = limit.schedule.at(RateSchedule::second_of_day_now());
                self.set_rate_gauge(rate);
                if rate == 0 {
                    change
                } else {
                    limit.bucket.set_rate(rate, now);
                    limit.bucket.take(bytes, now).min(change)
                }
            };
            if wait.is_zero() {
                return Ok(());
            }
            // In steps, so the throttled time counts as it passes and a long wait (a
            // window of 0) sees a new cap as soon as it applies.
            let started = Instant::now();
            let result = self.pause(wait.min(BEAT)).await;
            self.metrics
                .sink_throttled_seconds
                .inc_by(started.elapsed().as_secs_f64());
            result?;
        }
    }

    /// Gives back what [`SyncContext::throttle`] took for bytes that never went out.
    fn refund(&self, bytes: usize) {
        if let Some(Limit { bucket, .. }) = self
            .limit
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_mut()
        {
            bucket.refund(bytes);
        }
    }

    /// Records whether the upstream answered (up) or not (down), and accumulates the time
    /// spent down in `edge_agent_upstream_down_seconds_total`.
    fn upstream(&self, up: bool) {
        let now = Instant::now();
        let mut clock = self.upstream.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(since) = clock.down_since.take() {
            self.metrics
                .upstream_down_seconds
                .inc_by((now - since).as_secs_f64());
        }
        if !up {
            clock.down_since = Some(now);
        }
        self.metrics.upstream_up.set(i64::from(up));
        if up {
            self.metrics.upstream_last_error.reset();
        }
    }

    /// Records why the upstream failed (`edge_agent_upstream_last_error_info`): one
    /// series, its text cut to 120 characters and stripped of control characters.
    fn upstream_failed(&self, reason: &str) {
        let text: String = reason
            .chars()
            .map(|c| if c.is_control() { ' ' } else { c })
            .take(120)
            .collect();
        let last = &self.metrics.upstream_last_error;
        if last.with_label_values(&[&text]).get() == 1 {
            return;
        }
        last.reset();
        last.with_label_values(&[&text]).set(1);
    }

    /// Sleeps `delay` (beating, and adding to the down time), unless stopped first.
    async fn pause(&self, delay: Duration) -> Result<(), Stopped> {
        let until = Instant::now() + delay;
        loop {
            self.health.beat(Loop::Sync);
            let step = until.saturating_duration_since(Instant::now()).min(BEAT);
            if step.is_zero() {
                return Ok(());
            }
            tokio::select! {
                _ = self.stop.cancelled() => return Err(Stopped),
                _ = tokio::time::sleep(step) => {}
            }
            let down = self
                .upstream
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .down_since
                .is_some();
            if down {
                self.upstream(false);
            }
        }
    }

    /// Runs a queue write the upstream's answer calls for (`doing` it, for the log) until
    /// it succeeds: a failing write (a full disk) is retried in place, since the upstream
    /// has decided and the batch must leave the queue.
    async fn until_written<T, F>(
        &self,
        doing: &str,
        mut write: impl FnMut() -> F,
    ) -> Result<T, Stopped>
    where
        F: Future<Output = Result<T, QueueError>>,
    {
        let mut failures = 0u32;
        loop {
            match write().await {
                Ok(done) => return Ok(done),
                Err(QueueError::Stopped) => return Err(Stopped),
                Err(e) => {
                    if failures.is_multiple_of(LOG_EVERY) {
                        tracing::error!(error = %e, "{doing}; will retry");
                    }
                    failures = failures.saturating_add(1);
                    self.pause(QUEUE_RETRY).await?;
                }
            }
        }
    }

    /// Deletes an accepted batch and counts it as synced.
    async fn ack(&self, batch: Batch) -> Result<(), Stopped> {
        let n = self
            .until_written("deleting a synced batch", || self.queue.ack(batch.clone()))
            .await?;
        self.metrics.records_synced.inc_by(n);
        Ok(())
    }

    /// Moves a rejected batch to the dead letters and counts its records as dropped.
    async fn dead_letter(&self, batch: Batch, status: u16, reason: String) -> Result<(), Stopped> {
        let (first, last) = (batch.first_seq, batch.last_seq);
        let done = self
            .until_written("dead-lettering a batch", || {
                self.queue
                    .dead_letter(batch.clone(), status, reason.clone())
            })
            .await?;
        let n = done.records;
        tracing::warn!(status, first, last, records = n, %reason, "upstream rejected a batch: dead-lettered (edge-agent dead-letters replay sends it again)");
        self.metrics.dropped("dead_letter", n);
        if done.overflow_records > 0 {
            tracing::warn!(
                records = done.overflow_records,
                "deleted the oldest dead letters to keep within buffer.maxDeadLetterBytes"
            );
            self.metrics
                .dead_letter_overflow
                .inc_by(done.overflow_records);
        }
        Ok(())
    }
}

struct UpstreamClock {
    down_since: Option<Instant>,
}

/// Runs `sink` until `ctx.stop` is cancelled: full batches as soon as they are there, a
/// partial batch at most once per flush interval.
pub async fn run(mut sink: Sink, ctx: SyncContext) {
    let (batch_size, flush) = sink.batching();
    let batch_size = batch_size.max(1);
    let mut stats = ctx.queue.stats();
    let mut flush_due = Instant::now() + flush;
    let mut attempt = 0u32;
    let mut drain = ctx.drain.clone();
    loop {
        ctx.health.beat(Loop::Sync);
        if ctx.stop.is_cancelled() {
            return;
        }
        let allow_partial = Instant::now() >= flush_due;
        // Changes from here on wake the wait below.
        stats.mark_unchanged();
        let prefer = drain.prefer();
        match ctx
            .queue
            .take_batch(batch_size, allow_partial, prefer)
            .await
        {
            Ok(Some(batch)) => {
                let (lane, backlog) = (batch.lane, batch.backlog);
                let bytes: u64 = batch.records.iter().map(|r| r.body.len() as u64).sum();
                match deliver(&mut sink, batch, attempt, &ctx).await {
                    Ok(Delivery::Done) => {
                        attempt = 0;
                        drain.sent(lane, backlog, bytes);
                        // A partial routine batch restarts the wait for the next one;
                        // urgent batches do not hold routine ones back.
                        if lane == Lane::Routine {
                            flush_due = Instant::now() + flush;
                        }
                    }
                    Ok(Delivery::Retry) => {
                        attempt = attempt.saturating_add(1);
                        // What arrives from now on is live once the upstream is back.
                        drain.restart();
                        if ctx.queue.mark_backlog().await.is_err() {
                            return;
                        }
                    }
                    Err(Stopped) => return,
                }
            }
            Ok(None) => {
                let has_records = stats.borrow().records > 0;
                tokio::select! {
                    _ = ctx.stop.cancelled() => return,
                    changed = stats.changed() => if changed.is_err() { return },
                    _ = tokio::time::sleep_until(flush_due), if has_records => {}
                    _ = tokio::time::sleep(BEAT) => {}
                }
            }
            Err(QueueError::Stopped) => return,
            Err(e) => {
                tracing::warn!(error = %e, "reading a batch from the queue");
                if ctx.pause(BEAT).await.is_err() {
                    return;
                }
            }
        }
    }
}

/// Sends `batch` once (within `sink.rateLimit`) and applies what came of it.
async fn deliver(
    sink: &mut Sink,
    batch: Batch,
    attempt: u32,
    ctx: &SyncContext,
) -> Result<Delivery, Stopped> {
    let payload = sink.encode(&batch);
    let bytes = payload.body.len();
    ctx.throttle(bytes).await?;
    let started = Instant::now();
    let sent = tokio::select! {
        _ = ctx.stop.cancelled() => return Err(Stopped),
        sent = sink.send(&batch, &payload) => sent,
    };
    if sent.on_wire {
        ctx.metrics.sent_bytes.inc_by(bytes as u64);
    } else {
        ctx.refund(bytes);
    }
    ctx.metrics
        .sync_duration
        .observe(started.elapsed().as_secs_f64());
    apply(sink, batch, attempt, sent.outcome, ctx).await
}

/// Applies the outcome of the `attempt`th send of `batch`: the batch leaves the queue
/// (acknowledged, or dead-lettered), or stays and is sent again after the upstream's
/// `Retry-After` or the backoff; new credentials end that wait, they may be what the
/// upstream waited for.
async fn apply(
    sink: &mut Sink,
    batch: Batch,
    attempt: u32,
    outcome: Outcome,
    ctx: &SyncContext,
) -> Result<Delivery, Stopped> {
    let requests = &ctx.metrics.sync_requests;
    match outcome {
        Outcome::Accepted => {
            requests.with_label_values(&["success"]).inc();
            ctx.upstream(true);
            tracing::debug!(
                first = batch.first_seq,
                last = batch.last_seq,
                records = batch.records.len(),
                "batch synced"
            );
            ctx.ack(batch).await?;
            Ok(Delivery::Done)
        }
        Outcome::Rejected { status, reason } => {
            requests.with_label_values(&["rejected"]).inc();
            ctx.upstream(true);
            ctx.dead_letter(batch, status, reason).await?;
            Ok(Delivery::Done)
        }
        failed => {
            requests.with_label_values(&["retry"]).inc();
            ctx.upstream(false);
            ctx.upstream_failed(&failed.last_error());
            let logged = attempt == 0 || attempt.is_multiple_of(LOG_EVERY);
            let reason = failed.reason();
            if let Outcome::Unauthorized { status, .. } = &failed {
                ctx.metrics.upstream_auth_failures.inc();
                if logged {
                    tracing::error!(status, %reason, "the upstream refused the credentials: delivery paused, nothing is dead-lettered; fix the token or certificate");
                }
            }
            let (initial, max) = sink.backoff();
            let delay = failed
                .retry_after()
                .unwrap_or_else(|| backoff(attempt, initial, max));
            if logged {
                let (upstream, url) = sink.upstream();
                let (first, last) = (batch.first_seq, batch.last_seq);
                tracing::warn!(%url, first, last, attempt, %reason, retry_in = ?delay, "{upstream} unavailable, will retry");
            }
            tokio::select! {
                r = ctx.pause(delay) => r?,
                () = sink.credentials_changed() => {}
            }
            Ok(Delivery::Retry)
        }
    }
}

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
//! QoS 1 to an upstream broker). Both retry the same batch with capped exponential backoff
//! and full jitter while the upstream is unreachable, which at the edge is a normal state:
//! it never stops ingest and never fails liveness.

pub mod http;
pub mod mqtt;
pub mod schedule;
pub mod wire;

use std::sync::Arc;
use std::time::Duration;

use rand::Rng;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use self::schedule::RateSchedule;
use crate::http::{Health, Loop};
use crate::queue::{Batch, Prefer, Queue, QueueError};
use crate::record::Lane;
use crate::telemetry::Metrics;

/// How often a waiting sync loop beats its heartbeat.
const BEAT: Duration = Duration::from_secs(1);
/// Pause before retrying a queue write that failed (a full disk).
const QUEUE_RETRY: Duration = Duration::from_millis(500);

/// The configured sink.
pub enum Sink {
    /// An HTTP ingest API.
    Http(Box<http::HttpSink>),
    /// An upstream MQTT broker.
    Mqtt(Box<mqtt::MqttSink>),
}

impl Sink {
    fn batch_size(&self) -> usize {
        match self {
            Self::Http(s) => s.batch_size(),
            Self::Mqtt(s) => s.batch_size(),
        }
    }

    fn flush_interval(&self) -> Duration {
        match self {
            Self::Http(s) => s.flush_interval(),
            Self::Mqtt(s) => s.flush_interval(),
        }
    }

    async fn deliver(
        &mut self,
        batch: Batch,
        attempt: u32,
        ctx: &SyncContext,
    ) -> Result<Delivery, Stopped> {
        match self {
            Self::Http(s) => s.deliver(batch, attempt, ctx).await,
            Self::Mqtt(s) => s.deliver(batch, attempt, ctx).await,
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

/// What a sink needs besides its own connection.
pub struct SyncContext {
    /// The queue batches come from.
    pub queue: Queue,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Heartbeats.
    pub health: Arc<Health>,
    /// Cancelled at shutdown.
    pub stop: CancellationToken,
    upstream: std::sync::Mutex<UpstreamClock>,
    /// `sink.rateLimit`, when set.
    limit: std::sync::Mutex<Option<Limit>>,
    /// `sink.backlog`.
    drain: Drain,
}

/// `sink.backlog` as the sync loop applies it: which part of the routine records to ask
/// the queue for first, by what each part was sent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Drain {
    live_first: bool,
    share_percent: u64,
    live_bytes: u64,
    backlog_bytes: u64,
}

impl Drain {
    /// Live first, the backlog with `share_percent` of the bytes while both wait; or,
    /// without `live_first`, oldest first.
    pub fn new(live_first: bool, share_percent: u8) -> Self {
        Self {
            live_first,
            share_percent: u64::from(share_percent.min(100)),
            live_bytes: 0,
            backlog_bytes: 0,
        }
    }

    /// What to ask for next.
    pub fn prefer(&self) -> Prefer {
        let total = self.live_bytes + self.backlog_bytes;
        if !self.live_first || self.backlog_bytes * 100 < self.share_percent * total {
            Prefer::Backlog
        } else {
            Prefer::Live
        }
    }

    /// Counts a delivered batch.
    pub fn sent(&mut self, lane: Lane, backlog: bool, bytes: u64) {
        match (lane, backlog) {
            (Lane::Urgent, _) => {}
            (Lane::Routine, true) => self.backlog_bytes += bytes,
            (Lane::Routine, false) => self.live_bytes += bytes,
        }
    }

    /// Forgets what was sent (a new backlog begins).
    pub fn restart(&mut self) {
        self.live_bytes = 0;
        self.backlog_bytes = 0;
    }
}

impl Default for Drain {
    fn default() -> Self {
        Self::new(true, edge_crds::BacklogDrain::DEFAULT_SHARE_PERCENT)
    }
}

/// `sink.rateLimit`: the bucket, and the cap it runs at by time of day.
#[derive(Debug)]
struct Limit {
    bucket: TokenBucket,
    schedule: RateSchedule,
}

/// A token bucket of bytes: `rate` per second, at most `burst` saved up. It may go into
/// debt for one item larger than the burst, which the following items pay for.
#[derive(Debug)]
pub struct TokenBucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    /// A full bucket.
    pub fn new(bytes_per_second: u64, burst: u64) -> Self {
        let burst = burst.max(1) as f64;
        Self {
            rate: bytes_per_second.max(1) as f64,
            burst,
            tokens: burst,
            last: Instant::now(),
        }
    }

    /// Runs at `bytes_per_second` from `now` on (what was saved up at the old rate stays,
    /// within the burst).
    pub fn set_rate(&mut self, bytes_per_second: u64, now: Instant) {
        self.refill(now);
        self.rate = bytes_per_second.max(1) as f64;
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        self.last = now;
    }

    /// How long to wait before `bytes` may go (zero: now, and they are taken).
    pub fn take(&mut self, bytes: usize, now: Instant) -> Duration {
        self.refill(now);
        // An item larger than the burst goes once the bucket is full.
        let need = (bytes as f64).min(self.burst);
        if self.tokens >= need {
            self.tokens -= bytes as f64;
            Duration::ZERO
        } else {
            Duration::from_secs_f64((need - self.tokens) / self.rate)
        }
    }

    /// Gives back `bytes` taken for something that never went out.
    pub fn refund(&mut self, bytes: usize) {
        self.tokens = (self.tokens + bytes as f64).min(self.burst);
    }
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
    pub async fn throttle(&self, bytes: usize) -> Result<(), Stopped> {
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
    pub fn refund(&self, bytes: usize) {
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
    pub fn upstream(&self, up: bool) {
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
    pub fn upstream_failed(&self, reason: &str) {
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
    pub async fn pause(&self, delay: Duration) -> Result<(), Stopped> {
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

    /// Deletes an accepted batch and counts it as synced. A failing delete (a full disk)
    /// is retried in place: the upstream has the batch, it must leave the queue.
    pub async fn accepted(&self, batch: Batch) -> Result<(), Stopped> {
        let mut failures = 0u32;
        loop {
            match self.queue.ack(batch.clone()).await {
                Ok(n) => {
                    self.metrics.records_synced.inc_by(n);
                    return Ok(());
                }
                Err(QueueError::Stopped) => return Err(Stopped),
                Err(e) => {
                    if failures.is_multiple_of(10) {
                        tracing::error!(error = %e, "deleting a synced batch; will retry");
                    }
                    failures = failures.saturating_add(1);
                    self.pause(QUEUE_RETRY).await?;
                }
            }
        }
    }

    /// Moves a rejected batch to the dead letters and counts its records as dropped,
    /// retrying in place while the queue cannot write.
    pub async fn rejected(&self, batch: Batch, status: u16, reason: String) -> Result<(), Stopped> {
        let (first, last) = (batch.first_seq, batch.last_seq);
        let mut failures = 0u32;
        loop {
            match self
                .queue
                .dead_letter(batch.clone(), status, reason.clone())
                .await
            {
                Ok(done) => {
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
                    return Ok(());
                }
                Err(QueueError::Stopped) => return Err(Stopped),
                Err(e) => {
                    if failures.is_multiple_of(10) {
                        tracing::error!(error = %e, "dead-lettering a batch; will retry");
                    }
                    failures = failures.saturating_add(1);
                    self.pause(QUEUE_RETRY).await?;
                }
            }
        }
    }
}

struct UpstreamClock {
    down_since: Option<Instant>,
}

/// Runs `sink` until `ctx.stop` is cancelled: full batches as soon as they are there, a
/// partial batch at most once per flush interval.
pub async fn run(mut sink: Sink, ctx: SyncContext) {
    let batch_size = sink.batch_size().max(1);
    let flush = sink.flush_interval();
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
                match sink.deliver(batch, attempt, &ctx).await {
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

/// Capped exponential backoff with full jitter: a random delay between `initial` and
/// `min(max, initial * 2^attempt)`.
pub fn backoff(attempt: u32, initial: Duration, max: Duration) -> Duration {
    let ceiling = initial
        .saturating_mul(2u32.saturating_pow(attempt.min(31)))
        .min(max);
    let floor = initial.min(ceiling);
    if ceiling <= floor {
        return ceiling;
    }
    rand::rng().random_range(floor..=ceiling)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bucket_holds_the_rate_over_time_and_lets_one_large_item_through() {
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let mut bucket = TokenBucket {
            rate: 1000.0,
            burst: 500.0,
            tokens: 500.0,
            last: t0,
        };
        assert_eq!(bucket.take(400, at(0)), Duration::ZERO, "within the burst");
        // 100 left: 300 more need 200 ms.
        assert_eq!(bucket.take(300, at(0)), Duration::from_millis(200));
        assert_eq!(bucket.take(300, at(200)), Duration::ZERO);
        // Larger than the burst: waits for a full bucket (500 ms), then goes into debt.
        assert_eq!(bucket.take(2000, at(200)), Duration::from_millis(500));
        assert_eq!(bucket.take(2000, at(700)), Duration::ZERO);
        // The debt (1500 bytes) is paid before the next 100 go: 1.6 s.
        assert_eq!(bucket.take(100, at(700)), Duration::from_millis(1600));
        // A refund never fills beyond the burst.
        bucket.refund(10_000);
        assert_eq!(bucket.tokens, 500.0);
    }

    #[test]
    fn the_backlog_keeps_its_share_of_the_bytes_while_live_batches_are_ready() {
        let mut d = Drain::new(true, 20);
        assert_eq!(d.prefer(), Prefer::Live);
        d.sent(Lane::Routine, false, 800);
        assert_eq!(d.prefer(), Prefer::Backlog, "0 of 800 bytes is below 20%");
        d.sent(Lane::Routine, true, 100);
        assert_eq!(d.prefer(), Prefer::Backlog, "100 of 900");
        d.sent(Lane::Routine, true, 100);
        assert_eq!(d.prefer(), Prefer::Live, "200 of 1000");
        d.sent(Lane::Urgent, false, 10_000);
        assert_eq!(d.prefer(), Prefer::Live, "urgent batches take no share");
        d.sent(Lane::Routine, false, 1);
        d.restart();
        assert_eq!(
            d.prefer(),
            Prefer::Live,
            "a new backlog starts the shares again"
        );

        let mut none = Drain::new(true, 0);
        none.sent(Lane::Routine, false, 1 << 20);
        assert_eq!(none.prefer(), Prefer::Live);
        let oldest = Drain::new(false, 20);
        assert_eq!(oldest.prefer(), Prefer::Backlog);
    }

    #[test]
    fn backoff_grows_is_capped_and_jittered() {
        let (i, m) = (Duration::from_millis(100), Duration::from_secs(2));
        for attempt in 0..40 {
            let d = backoff(attempt, i, m);
            assert!(d >= i && d <= m, "attempt {attempt}: {d:?}");
            let cap = (i * 2u32.pow(attempt.min(20))).min(m);
            assert!(d <= cap, "attempt {attempt}: {d:?} above {cap:?}");
        }
        let spread: std::collections::BTreeSet<_> = (0..50).map(|_| backoff(10, i, m)).collect();
        assert!(spread.len() > 1, "no jitter");
        assert_eq!(backoff(3, m, i), i, "a max below initial wins");
    }
}

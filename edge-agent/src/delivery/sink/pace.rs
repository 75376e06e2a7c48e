//! How the sync loop paces what it sends: the token bucket behind `sink.rateLimit`, and
//! the shares of `sink.backlog` (which part of the routine records goes next while a
//! backlog drains). Pure: the instants and the bytes sent are passed in.

use std::time::Duration;

use tokio::time::Instant;

use crate::delivery::queue::Prefer;
use crate::record::Lane;

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
}

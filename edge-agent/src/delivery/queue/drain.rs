//! The queue's expected time to drain: the records waiting, over the rate at which
//! records were acknowledged upstream recently. Pure: the writer feeds it acknowledgements
//! and asks at its ticks, with the instants passed in.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// How far back acknowledgements count towards the rate.
pub const WINDOW: Duration = Duration::from_secs(30);

/// Records acknowledged upstream, by when.
#[derive(Debug, Default)]
pub struct DrainRate {
    acks: VecDeque<(Instant, u64)>,
}

impl DrainRate {
    /// `records` were acknowledged upstream at `at`.
    pub fn delivered(&mut self, at: Instant, records: u64) {
        if records > 0 {
            self.acks.push_back((at, records));
        }
        self.forget_before(at);
    }

    /// Seconds to send `waiting` records at the recent rate: 0 when nothing waits,
    /// infinite when nothing was acknowledged within [`WINDOW`] (a link down, a sink
    /// refusing) or only one batch was, which tells no rate.
    ///
    /// The rate runs from the first acknowledgement in the window to `at`: the records
    /// acknowledged after the first over that time. It falls as `at` moves on with no
    /// more acknowledgements, so a stalled drain shows a growing estimate.
    pub fn seconds(&self, at: Instant, waiting: u64) -> f64 {
        if waiting == 0 {
            return 0.0;
        }
        let mut recent = self
            .acks
            .iter()
            .filter(|&&(t, _)| at.saturating_duration_since(t) <= WINDOW);
        let Some(&(first, _)) = recent.next() else {
            return f64::INFINITY;
        };
        let after_first: u64 = recent.map(|&(_, n)| n).sum();
        let span = at.saturating_duration_since(first).as_secs_f64();
        if after_first == 0 || span <= 0.0 {
            return f64::INFINITY;
        }
        waiting as f64 * span / after_first as f64
    }

    fn forget_before(&mut self, at: Instant) {
        while let Some(&(t, _)) = self.acks.front() {
            if at.saturating_duration_since(t) <= WINDOW {
                break;
            }
            self.acks.pop_front();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(secs: f64) -> Duration {
        Duration::from_secs_f64(secs)
    }

    #[test]
    fn nothing_waiting_drains_at_once_and_nothing_delivered_never() {
        let t0 = Instant::now();
        let mut rate = DrainRate::default();
        assert_eq!(rate.seconds(t0, 0), 0.0);
        assert_eq!(rate.seconds(t0, 10), f64::INFINITY);
        // One batch tells no rate.
        rate.delivered(t0, 100);
        assert_eq!(rate.seconds(t0 + s(1.0), 10), f64::INFINITY);
    }

    #[test]
    fn a_steady_drain_gives_waiting_over_its_rate() {
        let t0 = Instant::now();
        let mut rate = DrainRate::default();
        // 100 records a second for 10 s.
        for i in 0..=10 {
            rate.delivered(t0 + s(f64::from(i)), 100);
        }
        let eta = rate.seconds(t0 + s(10.0), 5_000);
        assert!((eta - 50.0).abs() < 1e-9, "{eta}");
    }

    #[test]
    fn a_stalled_drain_shows_a_growing_estimate_then_none() {
        let t0 = Instant::now();
        let mut rate = DrainRate::default();
        for i in 0..=10 {
            rate.delivered(t0 + s(f64::from(i)), 100);
        }
        let at_10 = rate.seconds(t0 + s(10.0), 1_000);
        let at_20 = rate.seconds(t0 + s(20.0), 1_000);
        assert!(at_20 > at_10 * 1.9, "{at_10} then {at_20}");
        // Past the window, nothing delivered: no estimate.
        assert_eq!(rate.seconds(t0 + s(41.0), 1_000), f64::INFINITY);
    }

    #[test]
    fn only_the_window_counts() {
        let t0 = Instant::now();
        let mut rate = DrainRate::default();
        // Fast long ago, slow now: 1,000 a second, then 10 a second from t0 + 100 s.
        for i in 0..=10 {
            rate.delivered(t0 + s(f64::from(i)), 1_000);
        }
        for i in 0..=30 {
            rate.delivered(t0 + s(100.0 + f64::from(i)), 10);
        }
        let eta = rate.seconds(t0 + s(130.0), 100);
        assert!((eta - 10.0).abs() < 0.5, "{eta}");
    }
}

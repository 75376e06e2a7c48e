//! Caps by time of day (`sink.rateLimit.schedule`): which cap holds at a moment of the UTC
//! day, and for how long. Pure: the moment is passed in.

use std::time::Duration;

use edge_crds::spec::RateLimit;

/// Seconds in a day.
const DAY: u32 = 86_400;

/// A window of the day with its own cap.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Window {
    /// Start, minutes since midnight UTC.
    pub from: u16,
    /// End (not included), minutes since midnight UTC; below `from` past midnight.
    pub to: u16,
    /// Bytes per second in it; 0 sends nothing.
    pub bytes_per_second: u64,
}

impl Window {
    fn holds(&self, second: u32) -> bool {
        let (from, to) = (u32::from(self.from) * 60, u32::from(self.to) * 60);
        if from < to {
            (from..to).contains(&second)
        } else {
            second >= from || second < to
        }
    }
}

/// The cap at each moment of the day: the first window that holds it, else the base.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RateSchedule {
    /// The cap outside every window.
    pub base: u64,
    /// The windows, first match wins.
    pub windows: Vec<Window>,
}

impl RateSchedule {
    /// The schedule of `limit`, and its burst (default: one second at the base cap).
    /// `limit` is validated at load: every size and time of day parses.
    pub fn of(limit: &RateLimit) -> (Self, u64) {
        let base = limit.bytes_per_second.to_bytes().unwrap_or(u64::MAX);
        let burst = limit
            .burst
            .as_ref()
            .and_then(|b| b.to_bytes().ok())
            .unwrap_or(base);
        let windows = limit
            .schedule
            .iter()
            .filter_map(|w| {
                let (from, to) = w.minutes()?;
                Some(Window {
                    from,
                    to,
                    bytes_per_second: w.bytes_per_second.to_bytes().ok()?,
                })
            })
            .collect();
        (Self { base, windows }, burst)
    }

    /// The cap at `second` of the UTC day (0..86,400), and how long until the next window
    /// starts or ends (when the cap may change; a day when nothing changes).
    pub fn at(&self, second: u32) -> (u64, Duration) {
        let second = second % DAY;
        let rate = self
            .windows
            .iter()
            .find(|w| w.holds(second))
            .map_or(self.base, |w| w.bytes_per_second);
        let next = self
            .windows
            .iter()
            .flat_map(|w| [w.from, w.to])
            .map(|minute| (u32::from(minute) * 60 + DAY - second - 1) % DAY + 1)
            .min()
            .unwrap_or(DAY);
        (rate, Duration::from_secs(u64::from(next)))
    }

    /// The second of the UTC day now.
    pub fn second_of_day_now() -> u32 {
        (crate::runtime::clock::now_ms() / 1000).rem_euclid(i64::from(DAY)) as u32
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hm(h: u32, m: u32) -> u32 {
        (h * 60 + m) * 60
    }

    fn schedule() -> RateSchedule {
        RateSchedule {
            base: 64_000,
            windows: vec![
                // Business hours: a trickle.
                Window {
                    from: 8 * 60,
                    to: 18 * 60,
                    bytes_per_second: 2_000,
                },
                // Nothing while the site's backup runs, past midnight.
                Window {
                    from: 23 * 60,
                    to: 60,
                    bytes_per_second: 0,
                },
                // Overlaps the first: never reached from 08:00 to 09:00.
                Window {
                    from: 7 * 60,
                    to: 9 * 60,
                    bytes_per_second: 500,
                },
            ],
        }
    }

    #[test]
    fn the_first_window_holding_the_moment_sets_the_cap_else_the_base() {
        let s = schedule();
        assert_eq!(s.at(hm(12, 0)).0, 2_000);
        assert_eq!(s.at(hm(8, 0)).0, 2_000, "from is included");
        assert_eq!(s.at(hm(18, 0)).0, 64_000, "to is not");
        assert_eq!(s.at(hm(7, 30)).0, 500);
        assert_eq!(s.at(hm(8, 30)).0, 2_000, "the first match wins");
        assert_eq!(s.at(hm(23, 30)).0, 0);
        assert_eq!(s.at(hm(0, 59)).0, 0, "past midnight");
        assert_eq!(s.at(hm(1, 0)).0, 64_000);
        assert_eq!(s.at(hm(20, 0)).0, 64_000);
    }

    #[test]
    fn the_next_change_is_the_nearest_boundary_ahead() {
        let s = schedule();
        assert_eq!(s.at(hm(12, 0)).1, Duration::from_secs(6 * 3600), "18:00");
        assert_eq!(s.at(hm(20, 0)).1, Duration::from_secs(3 * 3600), "23:00");
        assert_eq!(s.at(hm(23, 30)).1, Duration::from_secs(90 * 60), "01:00");
        assert_eq!(s.at(hm(8, 0)).1, Duration::from_secs(3600), "09:00");
        // On a boundary, the next one is ahead, not now.
        assert_eq!(s.at(hm(18, 0)).1, Duration::from_secs(5 * 3600));
        assert_eq!(s.at(hm(18, 0) - 1).1, Duration::from_secs(1));
        let none = RateSchedule {
            base: 1,
            windows: Vec::new(),
        };
        assert_eq!(none.at(0), (1, Duration::from_secs(86_400)));
    }
}

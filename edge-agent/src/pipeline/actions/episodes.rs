//! Alert episodes: when an action publishes, decided per device without any I/O.
//!
//! An episode starts when the trigger's condition becomes true for a device ([`Signal::Fire`])
//! and no episode of that device is open: that reading publishes the alert. Further readings
//! that still fire publish nothing. The episode ends once the clearing condition
//! ([`Signal::Clear`]) has held for `clearAfter` readings in a row; a reading between the
//! two ([`Signal::Hold`], inside the hysteresis band) breaks such a run. A `cooldown` keeps
//! a device from starting a new episode within that time of its last start. Single events
//! (image classifications) never stay open: each one is an alert, subject to the cooldown.
//!
//! The state of at most `maxDevices` devices is kept; a new device beyond that takes the
//! place of the least recently seen one, whose open episode is forgotten (it can alert
//! again; its `resolved` message is never sent).

use std::time::{Duration, Instant};

use crate::pipeline::process::devices::{DeviceTable, Touch};

/// What one reading says about a device's alarm.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Signal {
    /// The trigger's condition holds (score above the threshold, value beyond a limit).
    Fire,
    /// Neither firing nor clear: inside the hysteresis band.
    Hold,
    /// The clearing condition holds (score at or below `clearBelow`, value back inside
    /// the limits by the `hysteresis` margin).
    Clear,
}

/// Why a firing reading published nothing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Suppressed {
    /// The device's episode is already open: it alerted when it started.
    Episode,
    /// The device's last episode started less than `cooldown` ago.
    Cooldown,
}

impl Suppressed {
    /// Every reason, as metric label values.
    pub const ALL: [Suppressed; 2] = [Suppressed::Episode, Suppressed::Cooldown];

    /// The label value in `edge_agent_actions_suppressed_total{reason}`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Episode => "episode",
            Self::Cooldown => "cooldown",
        }
    }
}

/// What to publish for one reading.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Nothing to publish.
    Nothing,
    /// An episode starts: publish the alert.
    Start,
    /// The open episode, started by a reading with this timestamp (unix ms), ends.
    Resolve { started_ms: i64 },
    /// The reading fired, but publishes nothing.
    Suppressed(Suppressed),
}

/// How the episodes of one action behave.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rules {
    /// Clearing readings in a row that end an episode (at least 1).
    pub clear_after: u32,
    /// No new episode of a device within this time of its last start.
    pub cooldown: Duration,
    /// Each firing reading is an episode of its own (classifications): nothing to clear.
    pub single_events: bool,
}

impl Default for Rules {
    fn default() -> Self {
        Self {
            clear_after: 1,
            cooldown: Duration::ZERO,
            single_events: false,
        }
    }
}

/// One device's episode state.
#[derive(Clone, Debug, Default)]
struct DeviceEpisode {
    /// Timestamp (unix ms) of the reading that started the open episode.
    open: Option<i64>,
    /// When the device's last episode started.
    last_start: Option<Instant>,
    /// Clearing readings in a row so far.
    clear_streak: u32,
}

/// The episodes of one action, for every tracked device.
pub struct Episodes {
    rules: Rules,
    devices: DeviceTable<DeviceEpisode>,
}

impl Episodes {
    /// Episodes under `rules` for at most `max_devices` devices.
    pub fn new(rules: Rules, max_devices: usize) -> Self {
        Self {
            rules: Rules {
                clear_after: rules.clear_after.max(1),
                ..rules
            },
            devices: DeviceTable::new(max_devices),
        }
    }

    /// Decides what a reading of `device` (received at `at`, timestamped `timestamp_ms`)
    /// that says `signal` publishes.
    pub fn observe(
        &mut self,
        device: &str,
        signal: Signal,
        at: Instant,
        timestamp_ms: i64,
    ) -> Decision {
        // Only a firing reading makes a device worth tracking: a quiet device never
        // evicts one in alarm.
        if signal != Signal::Fire && self.devices.find(device).is_none() {
            return Decision::Nothing;
        }
        let slot = match self.devices.touch(device, DeviceEpisode::default) {
            Touch::Known(slot) | Touch::Added(slot) => slot,
            Touch::Evicted(slot, _) => {
                if let Some((_, state)) = self.devices.get_mut(slot) {
                    *state = DeviceEpisode::default();
                }
                slot
            }
        };
        let Some((_, state)) = self.devices.get_mut(slot) else {
            return Decision::Nothing;
        };
        match signal {
            Signal::Fire => {
                state.clear_streak = 0;
                if state.open.is_some() {
                    return Decision::Suppressed(Suppressed::Episode);
                }
                if let Some(last) = state.last_start
                    && at.saturating_duration_since(last) < self.rules.cooldown
                {
                    return Decision::Suppressed(Suppressed::Cooldown);
                }
                state.last_start = Some(at);
                if !self.rules.single_events {
                    state.open = Some(timestamp_ms);
                }
                Decision::Start
            }
            Signal::Hold => {
                state.clear_streak = 0;
                Decision::Nothing
            }
            Signal::Clear => {
                let Some(started_ms) = state.open else {
                    return Decision::Nothing;
                };
                state.clear_streak += 1;
                if state.clear_streak < self.rules.clear_after {
                    return Decision::Nothing;
                }
                state.open = None;
                state.clear_streak = 0;
                Decision::Resolve { started_ms }
            }
        }
    }

    /// Number of devices whose episode state is kept.
    pub fn devices(&self) -> usize {
        self.devices.len()
    }
}

/// The signal of an anomaly score: above `threshold` fires, at or below `clear_below`
/// clears, in between holds.
pub fn score_signal(score: f64, threshold: f64, clear_below: f64) -> Signal {
    if score > threshold {
        Signal::Fire
    } else if score <= clear_below {
        Signal::Clear
    } else {
        Signal::Hold
    }
}

/// The signal of a reading at `margin` inside the threshold processors' limits (negative:
/// beyond one): beyond fires, at least `hysteresis` inside clears, in between holds.
pub fn margin_signal(margin: f64, hysteresis: f64) -> Signal {
    if margin < 0.0 {
        Signal::Fire
    } else if margin >= hysteresis {
        Signal::Clear
    } else {
        Signal::Hold
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Decision::{Nothing, Resolve, Start};
    use Signal::*;

    /// Feeds `signals` of one device one second apart; returns the decisions.
    fn run(episodes: &mut Episodes, device: &str, signals: &[Signal]) -> Vec<Decision> {
        let t0 = Instant::now();
        signals
            .iter()
            .enumerate()
            .map(|(i, s)| {
                episodes.observe(device, *s, t0 + Duration::from_secs(i as u64), i as i64)
            })
            .collect()
    }

    fn starts(decisions: &[Decision]) -> usize {
        decisions.iter().filter(|d| **d == Start).count()
    }

    #[test]
    fn a_run_of_firing_readings_is_one_episode_and_clears_once() {
        let mut e = Episodes::new(Rules::default(), 10);
        let d = run(&mut e, "t1", &[Clear, Fire, Fire, Fire, Clear, Clear, Fire]);
        assert_eq!(
            d,
            [
                Nothing,
                Start,
                Decision::Suppressed(Suppressed::Episode),
                Decision::Suppressed(Suppressed::Episode),
                Resolve { started_ms: 1 },
                Nothing,
                Start,
            ]
        );
    }

    #[test]
    fn hysteresis_holds_the_episode_open_until_the_clearing_condition() {
        // A score wavering around the threshold: 0.85, 0.75, 0.82, 0.7, 0.81, then 0.4.
        let (threshold, clear_below) = (0.8, 0.5);
        let scores = [0.85, 0.75, 0.82, 0.7, 0.81, 0.4, 0.3];
        let signals: Vec<Signal> = scores
            .iter()
            .map(|s| score_signal(*s, threshold, clear_below))
            .collect();
        assert_eq!(signals, [Fire, Hold, Fire, Hold, Fire, Clear, Clear]);
        let mut e = Episodes::new(Rules::default(), 10);
        let d = run(&mut e, "t1", &signals);
        assert_eq!(starts(&d), 1, "{d:?}");
        assert_eq!(d[5], Resolve { started_ms: 0 });
        // Without hysteresis the same scores are three episodes.
        let plain: Vec<Signal> = scores
            .iter()
            .map(|s| score_signal(*s, threshold, threshold))
            .collect();
        let mut e = Episodes::new(Rules::default(), 10);
        assert_eq!(starts(&run(&mut e, "t1", &plain)), 3);
    }

    #[test]
    fn clear_after_needs_that_many_clearing_readings_in_a_row() {
        let rules = Rules {
            clear_after: 3,
            ..Rules::default()
        };
        let mut e = Episodes::new(rules, 10);
        let d = run(
            &mut e,
            "t1",
            &[
                Fire, Clear, Clear, Hold, Clear, Clear, Fire, Clear, Clear, Clear,
            ],
        );
        assert_eq!(starts(&d), 1, "{d:?}");
        assert_eq!(d.iter().filter(|d| matches!(d, Resolve { .. })).count(), 1);
        assert_eq!(d[9], Resolve { started_ms: 0 });
    }

    #[test]
    fn the_threshold_margin_clears_only_past_the_hysteresis() {
        // above: 100, hysteresis: 5 -> margin = 100 - value.
        let values = [101.0, 99.0, 102.0, 96.0, 95.0, 101.0];
        let signals: Vec<Signal> = values
            .iter()
            .map(|v| margin_signal(100.0 - v, 5.0))
            .collect();
        assert_eq!(signals, [Fire, Hold, Fire, Hold, Clear, Fire]);
        let mut e = Episodes::new(Rules::default(), 10);
        let d = run(&mut e, "t1", &signals);
        assert_eq!(d[0], Start);
        assert_eq!(d[4], Resolve { started_ms: 0 });
        assert_eq!(d[5], Start);
        // A value exactly at the limit does not fire (the processor passes strictly above).
        assert_eq!(margin_signal(0.0, 0.0), Clear);
    }

    #[test]
    fn the_cooldown_suppresses_new_episodes_then_lets_the_next_reading_alert() {
        let rules = Rules {
            cooldown: Duration::from_secs(10),
            ..Rules::default()
        };
        let mut e = Episodes::new(rules, 10);
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        assert_eq!(e.observe("t1", Fire, at(0), 0), Start);
        assert_eq!(e.observe("t1", Clear, at(1), 1), Resolve { started_ms: 0 });
        assert_eq!(
            e.observe("t1", Fire, at(5), 5),
            Decision::Suppressed(Suppressed::Cooldown)
        );
        // Another device is not held back by t1's cooldown.
        assert_eq!(e.observe("t2", Fire, at(5), 5), Start);
        // Still in alarm when the cooldown is over: the next firing reading alerts.
        assert_eq!(e.observe("t1", Fire, at(10), 10), Start);
        assert_eq!(
            e.observe("t1", Fire, at(11), 11),
            Decision::Suppressed(Suppressed::Episode)
        );
    }

    #[test]
    fn single_events_alert_each_time_unless_cooling_down() {
        let mut e = Episodes::new(
            Rules {
                single_events: true,
                ..Rules::default()
            },
            10,
        );
        assert_eq!(starts(&run(&mut e, "cam", &[Fire, Fire, Fire])), 3);
        let mut e = Episodes::new(
            Rules {
                single_events: true,
                cooldown: Duration::from_secs(2),
                ..Rules::default()
            },
            10,
        );
        // One second apart: 0 and 2 alert, 1 and 3 are cooling down.
        let d = run(&mut e, "cam", &[Fire, Fire, Fire, Fire]);
        assert_eq!(
            d,
            [
                Start,
                Decision::Suppressed(Suppressed::Cooldown),
                Start,
                Decision::Suppressed(Suppressed::Cooldown)
            ]
        );
    }

    #[test]
    fn state_is_bounded_and_quiet_devices_are_not_tracked() {
        let mut e = Episodes::new(Rules::default(), 2);
        let t = Instant::now();
        for i in 0..100 {
            assert_eq!(e.observe(&format!("quiet{i}"), Clear, t, 0), Nothing);
            assert_eq!(e.observe(&format!("quiet{i}"), Hold, t, 0), Nothing);
        }
        assert_eq!(e.devices(), 0);
        assert_eq!(e.observe("a", Fire, t, 0), Start);
        assert_eq!(e.observe("b", Fire, t, 0), Start);
        // c evicts a, the least recently seen: a's episode is forgotten.
        assert_eq!(e.observe("c", Fire, t, 0), Start);
        assert_eq!(e.devices(), 2);
        assert_eq!(e.observe("a", Fire, t, 0), Start);
        // a evicted b; b's clear finds no episode.
        assert_eq!(e.observe("b", Clear, t, 0), Nothing);
        assert_eq!(
            e.observe("c", Fire, t, 0),
            Decision::Suppressed(Suppressed::Episode)
        );
    }
}

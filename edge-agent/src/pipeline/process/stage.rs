//! The filtering stages (`significantChange`, `deadband`, `range`, `threshold`): each is a
//! pure decision "does this reading pass?" over the reading and the device's state for
//! that stage.

use std::collections::VecDeque;

use crate::record::Reading;

/// Largest ring buffer allocated up front for a significant-change window; longer
/// windows grow as values arrive.
const PREALLOCATED_VALUES: usize = 64;

/// A filtering stage, built from the spec.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Stage {
    /// Pass when |value - mean of the last `window` values, the new one included| > `threshold`.
    SignificantChange { window: usize, threshold: f64 },
    /// Pass when the value moved more than the band away from the last passed value, or
    /// `max_silence_ms` elapsed (receive time) since it passed.
    Deadband {
        band: Band,
        max_silence_ms: Option<i64>,
    },
    /// Pass when `min <= value <= max` (absent bounds are infinite).
    Range { min: f64, max: f64 },
    /// Pass when `value > above` or `value < below` (absent bounds are infinite).
    Threshold { above: f64, below: f64 },
}

/// The width of a dead band.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) enum Band {
    /// In the value's unit.
    Absolute(f64),
    /// In percent of the last passed value.
    Percent(f64),
}

/// A device's state for one stage.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub(crate) enum StageState {
    /// Stages that keep nothing.
    Stateless,
    /// The device's last `window` values, oldest first.
    Recent(VecDeque<f64>),
    /// The last passed value and its receive time.
    LastPassed(Option<(f64, i64)>),
}

impl StageState {
    /// Whether this state can belong to `stage` (a restored state is checked with it).
    pub(crate) fn fits(&self, stage: &Stage) -> bool {
        matches!(
            (self, stage.initial_state()),
            (Self::Stateless, Self::Stateless)
                | (Self::Recent(_), Self::Recent(_))
                | (Self::LastPassed(_), Self::LastPassed(_))
        )
    }

    /// Forgets everything, keeping allocations (a slot handed to another device).
    pub(crate) fn reset(&mut self) {
        match self {
            Self::Stateless => {}
            Self::Recent(values) => values.clear(),
            Self::LastPassed(last) => *last = None,
        }
    }
}

impl Stage {
    /// Whether the stage keeps per-device state.
    pub(crate) fn is_stateful(&self) -> bool {
        matches!(self, Self::SignificantChange { .. } | Self::Deadband { .. })
    }

    /// The state of a device that has not been seen yet.
    pub(crate) fn initial_state(&self) -> StageState {
        match self {
            Self::SignificantChange { window, .. } => StageState::Recent(VecDeque::with_capacity(
                (*window).min(PREALLOCATED_VALUES) + 1,
            )),
            Self::Deadband { .. } => StageState::LastPassed(None),
            Self::Range { .. } | Self::Threshold { .. } => StageState::Stateless,
        }
    }

    /// Decides whether `r` passes, updating the device's `state`.
    ///
    /// `state` is always the one [`Stage::initial_state`] made for this stage; a
    /// mismatched state (impossible by construction) lets the reading pass.
    pub(crate) fn passes(&self, state: &mut StageState, r: &Reading) -> bool {
        match (self, state) {
            (Self::SignificantChange { window, threshold }, StageState::Recent(values)) => {
                significant_change(values, *window, *threshold, r.value)
            }
            (
                Self::Deadband {
                    band,
                    max_silence_ms,
                },
                StageState::LastPassed(last),
            ) => deadband(last, *band, *max_silence_ms, r),
            (Self::Range { min, max }, _) => *min <= r.value && r.value <= *max,
            (Self::Threshold { above, below }, _) => r.value > *above || r.value < *below,
            _ => true,
        }
    }
}

/// The original EdgeProcessor rule: append the value to the last `window` values
/// (dropping the oldest), take their mean, pass when |value - mean| > threshold.
///
/// The mean is summed oldest to newest every time, as the original does, so decisions
/// at the boundary are the same bit for bit (a running sum would drift).
fn significant_change(
    values: &mut VecDeque<f64>,
    window: usize,
    threshold: f64,
    value: f64,
) -> bool {
    values.push_back(value);
    while values.len() > window {
        values.pop_front();
    }
    let sum: f64 = values.iter().sum();
    let mean = sum / values.len() as f64;
    (value - mean).abs() > threshold
}

fn deadband(
    last: &mut Option<(f64, i64)>,
    band: Band,
    max_silence_ms: Option<i64>,
    r: &Reading,
) -> bool {
    let pass = match *last {
        None => true,
        Some((last_value, last_ms)) => {
            let width = match band {
                Band::Absolute(a) => a,
                Band::Percent(p) => p / 100.0 * last_value.abs(),
            };
            (r.value - last_value).abs() > width
                || max_silence_ms
                    .is_some_and(|silence| r.received_ms.saturating_sub(last_ms) >= silence)
        }
    };
    if pass {
        *last = Some((r.value, r.received_ms));
    }
    pass
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn at(value: f64, received_ms: i64) -> Reading {
        Reading {
            device: "d".into(),
            topic: "t".into(),
            value,
            timestamp_ms: received_ms,
            received_ms,
        }
    }

    fn run(stage: &Stage, readings: &[(f64, i64)]) -> Vec<bool> {
        let mut state = stage.initial_state();
        readings
            .iter()
            .map(|&(v, ms)| stage.passes(&mut state, &at(v, ms)))
            .collect()
    }

    fn values(vs: &[f64]) -> Vec<(f64, i64)> {
        vs.iter().map(|&v| (v, 0)).collect()
    }

    #[test]
    fn significant_change_first_reading_never_passes() {
        let stage = Stage::SignificantChange {
            window: 10,
            threshold: 0.0,
        };
        assert_eq!(run(&stage, &values(&[1e9])), [false]);
    }

    #[test]
    fn significant_change_includes_the_new_value_in_the_mean() {
        let stage = Stage::SignificantChange {
            window: 3,
            threshold: 2.0,
        };
        // [20] -> 0; [20,20] -> 0; [20,20,26] mean 22, |26-22| = 4 > 2 pass;
        // [20,26,23] mean 23, 0; [26,23,17] mean 22, 5 > 2 pass; [23,17,20] mean 20, 0;
        // [17,20,23] mean 20, |23-20| = 3 > 2 pass; [20,23,23] mean 22, 1.
        assert_eq!(
            run(
                &stage,
                &values(&[20.0, 20.0, 26.0, 23.0, 17.0, 20.0, 23.0, 23.0])
            ),
            [false, false, true, false, true, false, true, false]
        );
        // Exactly the threshold does not pass: [0,4] mean 2, |4-2| = 2.
        assert_eq!(run(&stage, &values(&[0.0, 4.0])), [false, false]);
    }

    #[test]
    fn deadband_absolute_and_percent() {
        let abs = Stage::Deadband {
            band: Band::Absolute(0.5),
            max_silence_ms: None,
        };
        assert_eq!(
            run(&abs, &values(&[10.0, 10.4, 10.5, 10.6, 10.1, 10.09])),
            [true, false, false, true, false, true]
        );
        let pct = Stage::Deadband {
            band: Band::Percent(10.0),
            max_silence_ms: None,
        };
        assert_eq!(
            run(&pct, &values(&[100.0, 109.0, 111.0, 122.0, 0.0, 0.0, 0.1])),
            [true, false, true, false, true, false, true]
        );
    }

    #[test]
    fn deadband_heartbeat_after_max_silence() {
        let stage = Stage::Deadband {
            band: Band::Absolute(1.0),
            max_silence_ms: Some(5_000),
        };
        let readings = [
            (1.0, 0),
            (1.0, 4_999),
            (1.0, 5_000),
            (1.0, 9_999),
            (1.0, 10_000),
        ];
        assert_eq!(run(&stage, &readings), [true, false, true, false, true]);
    }

    #[test]
    fn range_is_inclusive_and_threshold_strict() {
        let range = Stage::Range {
            min: -1.0,
            max: 1.0,
        };
        assert_eq!(
            run(&range, &values(&[-1.0, 1.0, -1.01, 1.01, 0.0])),
            [true, true, false, false, true]
        );
        let threshold = Stage::Threshold {
            above: 100.0,
            below: 0.0,
        };
        assert_eq!(
            run(&threshold, &values(&[100.0, 100.5, 0.0, -0.5, 50.0])),
            [false, true, false, true, false]
        );
    }

    /// The original Python, transcribed: a list, `append`, `pop(0)`, `sum / len`.
    fn python_edge_processor(
        buffer: &mut Vec<f64>,
        size: usize,
        threshold: f64,
        value: f64,
    ) -> bool {
        buffer.push(value);
        if buffer.len() > size {
            buffer.remove(0);
        }
        let avg = buffer.iter().sum::<f64>() / buffer.len() as f64;
        (value - avg).abs() > threshold
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2_000))]

        /// Integer values make |value - mean| == threshold common, so the boundary is
        /// exercised, not only the easy cases.
        #[test]
        fn significant_change_matches_the_original(
            window in 1usize..12,
            threshold in prop_oneof![Just(0.0), Just(1.0), Just(2.0), 0.0f64..5.0],
            seq in prop::collection::vec(prop_oneof![-10i32..10i32, -1000i32..1000], 0..200),
        ) {
            let stage = Stage::SignificantChange { window, threshold };
            let mut state = stage.initial_state();
            let mut buffer = Vec::new();
            for v in seq {
                let v = f64::from(v) / 2.0;
                let expected = python_edge_processor(&mut buffer, window, threshold, v);
                prop_assert_eq!(stage.passes(&mut state, &at(v, 0)), expected);
            }
        }

        #[test]
        fn deadband_matches_its_definition(
            absolute in prop::option::of(0.1f64..3.0),
            percent in 1.0f64..50.0,
            silence in prop::option::of(1i64..100),
            seq in prop::collection::vec((-20i32..20, 0i64..30), 0..100),
        ) {
            let band = absolute.map_or(Band::Percent(percent), Band::Absolute);
            let stage = Stage::Deadband { band, max_silence_ms: silence };
            let mut state = stage.initial_state();
            let mut last: Option<(f64, i64)> = None;
            let mut now = 0i64;
            for (v, dt) in seq {
                now += dt;
                let v = f64::from(v) / 4.0;
                let expected = match last {
                    None => true,
                    Some((lv, lt)) => {
                        let width = absolute.unwrap_or(percent / 100.0 * lv.abs());
                        (v - lv).abs() > width || silence.is_some_and(|s| now - lt >= s)
                    }
                };
                if expected {
                    last = Some((v, now));
                }
                prop_assert_eq!(stage.passes(&mut state, &at(v, now)), expected);
            }
        }

        #[test]
        fn range_and_threshold_match_their_definitions(
            a in -100.0f64..100.0,
            b in -100.0f64..100.0,
            v in prop_oneof![-150.0f64..150.0, Just(-100.0), Just(100.0)],
        ) {
            let (min, max) = (a.min(b), a.max(b));
            prop_assert_eq!(run(&Stage::Range { min, max }, &[(v, 0)])[0], min <= v && v <= max);
            prop_assert_eq!(run(&Stage::Range { min, max: f64::INFINITY }, &[(v, 0)])[0], min <= v);
            prop_assert_eq!(
                run(&Stage::Threshold { above: max, below: min }, &[(v, 0)])[0],
                v > max || v < min
            );
            prop_assert_eq!(
                run(&Stage::Threshold { above: a, below: f64::NEG_INFINITY }, &[(v, 0)])[0],
                v > a
            );
        }
    }
}

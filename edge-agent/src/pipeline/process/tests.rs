//! Tests of the whole chain: stage order, per-device state, aggregate windows by the
//! clock, eviction.

use std::collections::{BTreeMap, HashMap};

use edge_crds::units::Duration;
use edge_crds::{
    Aggregate, AggregateFunction, Deadband, Processor, Range, SignificantChange, Threshold,
};
use proptest::prelude::*;

use super::*;
use crate::record::RecordKind;

fn reading(device: &str, value: f64, received_ms: i64) -> Reading {
    Reading {
        device: device.into(),
        topic: format!("sensors/{device}/t"),
        value,
        timestamp_ms: received_ms - 5,
        received_ms,
    }
}

fn sc(window: u32, threshold: f64) -> Processor {
    Processor {
        significant_change: Some(SignificantChange { window, threshold }),
        ..Processor::default()
    }
}

fn deadband(absolute: f64) -> Processor {
    Processor {
        deadband: Some(Deadband {
            absolute: Some(absolute),
            percent: None,
            max_silence: None,
        }),
        ..Processor::default()
    }
}

fn range(min: f64, max: f64) -> Processor {
    Processor {
        range: Some(Range {
            min: Some(min),
            max: Some(max),
        }),
        ..Processor::default()
    }
}

fn above(x: f64) -> Processor {
    Processor {
        threshold: Some(Threshold {
            above: Some(x),
            below: None,
        }),
        ..Processor::default()
    }
}

fn aggregate(window: &str, functions: &[AggregateFunction]) -> Processor {
    Processor {
        aggregate: Some(Aggregate {
            window: Duration::new(window),
            functions: functions.to_vec(),
        }),
        ..Processor::default()
    }
}

const ALL_FUNCTIONS: [AggregateFunction; 6] = [
    AggregateFunction::Mean,
    AggregateFunction::Min,
    AggregateFunction::Max,
    AggregateFunction::Count,
    AggregateFunction::Sum,
    AggregateFunction::Last,
];

#[test]
fn no_processors_pass_everything_without_state() {
    let mut p = Processors::new(&[], 10).unwrap();
    let r = reading("d", 1.0, 0);
    let out = p.apply(&r);
    assert_eq!(out.records, [Record::reading(&r)]);
    assert_eq!(
        (out.filtered_by, out.threshold_crossed, out.evicted_devices),
        (None, false, 0)
    );
    assert_eq!((p.devices(), p.next_deadline_ms()), (0, None));
}

#[test]
fn the_first_stage_that_drops_a_reading_is_reported_and_later_stages_do_not_see_it() {
    let mut p = Processors::new(&[range(0.0, 100.0), deadband(1.0), above(50.0)], 10).unwrap();
    assert_eq!(
        p.apply(&reading("d", 10.0, 0)).filtered_by,
        Some("threshold")
    );
    assert_eq!(p.apply(&reading("d", 200.0, 1)).filtered_by, Some("range"));
    // 200 never reached the deadband: its last passed value is still 10.
    assert_eq!(
        p.apply(&reading("d", 10.5, 2)).filtered_by,
        Some("deadband")
    );
    let out = p.apply(&reading("d", 60.0, 3));
    assert_eq!(
        (out.filtered_by, out.threshold_crossed, out.records.len()),
        (None, true, 1)
    );
    assert_eq!(out.records[0].kind, RecordKind::Reading);
}

#[test]
fn threshold_crossed_is_reported_even_when_a_later_stage_drops_the_reading() {
    let mut p = Processors::new(&[above(100.0), deadband(5.0)], 10).unwrap();
    assert!(p.apply(&reading("d", 101.0, 0)).threshold_crossed);
    let out = p.apply(&reading("d", 102.0, 1));
    assert_eq!(
        (out.threshold_crossed, out.filtered_by),
        (true, Some("deadband"))
    );
}

#[test]
fn state_is_per_device() {
    let mut p = Processors::new(&[sc(3, 2.0)], 10).unwrap();
    for d in ["a", "b"] {
        assert_eq!(
            p.apply(&reading(d, 20.0, 0)).filtered_by,
            Some("significant_change")
        );
    }
    // b's 30 is judged against b's own history only.
    assert_eq!(p.apply(&reading("b", 30.0, 1)).records.len(), 1);
    assert_eq!(
        p.apply(&reading("a", 20.0, 1)).filtered_by,
        Some("significant_change")
    );
    assert_eq!(p.devices(), 2);
}

#[test]
fn aggregate_windows_close_by_the_clock() {
    let mut p = Processors::new(&[aggregate("1s", &ALL_FUNCTIONS)], 10).unwrap();
    for (v, ms) in [(1.0, 10_100), (3.0, 10_500), (2.0, 10_999)] {
        let out = p.apply(&reading("d", v, ms));
        assert_eq!((out.records.len(), out.filtered_by), (0, None), "absorbed");
    }
    assert_eq!(p.next_deadline_ms(), Some(11_000));
    assert!(p.tick(10_999).is_empty());
    let closed = p.tick(11_000);
    assert_eq!(closed.len(), 1);
    let r = &closed[0];
    assert_eq!(
        (r.kind, r.device.as_str(), r.topic.as_str()),
        (RecordKind::Aggregate, "d", "sensors/d/t")
    );
    assert_eq!((r.value, r.timestamp_ms), (Some(2.0), 10_000));
    let expected: BTreeMap<String, f64> = [
        ("mean", 2.0),
        ("min", 1.0),
        ("max", 3.0),
        ("count", 3.0),
        ("sum", 6.0),
        ("last", 2.0),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    assert_eq!(r.stats.as_ref(), Some(&expected));
    assert_eq!(
        (p.next_deadline_ms(), p.tick(i64::MAX).len()),
        (None, 0),
        "emitted once"
    );
}

#[test]
fn a_reading_in_a_later_window_closes_the_open_one() {
    let mut p = Processors::new(&[aggregate("1s", &[AggregateFunction::Count])], 10).unwrap();
    p.apply(&reading("d", 1.0, 500));
    p.apply(&reading("d", 1.0, 900));
    let out = p.apply(&reading("d", 7.0, 3_200));
    assert_eq!(out.records.len(), 1);
    assert_eq!(out.records[0].timestamp_ms, 0);
    assert_eq!(out.records[0].stats.as_ref().map(|s| s["count"]), Some(2.0));
    assert_eq!(p.next_deadline_ms(), Some(4_000));
    // A reading stamped before the open window (clock stepped back) joins it.
    assert!(p.apply(&reading("d", 9.0, 2_000)).records.is_empty());
    let closed = p.tick(4_000);
    assert_eq!(closed[0].stats.as_ref().map(|s| s["count"]), Some(2.0));
    assert_eq!(closed[0].timestamp_ms, 3_000);
}

#[test]
fn filters_before_an_aggregate_decide_what_it_absorbs() {
    let mut p = Processors::new(
        &[range(0.0, 10.0), aggregate("1s", &[AggregateFunction::Max])],
        10,
    )
    .unwrap();
    p.apply(&reading("d", 5.0, 0));
    assert_eq!(p.apply(&reading("d", 50.0, 1)).filtered_by, Some("range"));
    assert_eq!(p.tick(1_000)[0].stats.as_ref().map(|s| s["max"]), Some(5.0));
}

#[test]
fn eviction_is_counted_and_flushes_the_open_window() {
    let mut p = Processors::new(&[aggregate("1m", &[AggregateFunction::Count])], 2).unwrap();
    p.apply(&reading("a", 1.0, 0));
    p.apply(&reading("b", 1.0, 1));
    p.apply(&reading("a", 1.0, 2));
    let out = p.apply(&reading("c", 1.0, 3));
    assert_eq!(out.evicted_devices, 1);
    assert_eq!(
        out.records.len(),
        1,
        "b's partial window is emitted, not lost"
    );
    assert_eq!(
        (out.records[0].device.as_str(), out.records[0].kind),
        ("b", RecordKind::Aggregate)
    );
    assert_eq!(p.devices(), 2);
    let mut closed: Vec<(String, f64)> = p
        .tick(60_000)
        .into_iter()
        .map(|r| (r.device, r.stats.map_or(0.0, |s| s["count"])))
        .collect();
    closed.sort_by(|x, y| x.0.cmp(&y.0));
    assert_eq!(closed, [("a".to_string(), 2.0), ("c".to_string(), 1.0)]);
}

#[test]
fn an_evicted_device_starts_afresh() {
    let mut p = Processors::new(&[sc(2, 0.5)], 1).unwrap();
    p.apply(&reading("a", 0.0, 0));
    assert_eq!(p.apply(&reading("a", 10.0, 1)).records.len(), 1);
    assert_eq!(p.apply(&reading("b", 0.0, 2)).evicted_devices, 1);
    let out = p.apply(&reading("a", 50.0, 3));
    assert_eq!(
        (out.evicted_devices, out.filtered_by),
        (1, Some("significant_change")),
        "a first reading again"
    );
}

#[test]
fn invalid_chains_are_refused() {
    let cases: [(Vec<Processor>, usize, &str); 7] = [
        (
            vec![Processor::default()],
            1,
            "spec.processors[0]: exactly one",
        ),
        (
            vec![aggregate("1s", &ALL_FUNCTIONS), range(0.0, 1.0)],
            1,
            "spec.processors[0].aggregate: must be the last processor",
        ),
        (
            vec![aggregate("soon", &ALL_FUNCTIONS)],
            1,
            "spec.processors[0].aggregate.window: ",
        ),
        (
            vec![range(0.0, 1.0), aggregate("10us", &ALL_FUNCTIONS)],
            1,
            "spec.processors[1].aggregate.window: must be at least 1ms",
        ),
        (
            vec![aggregate("1s", &[])],
            1,
            "spec.processors[0].aggregate.functions",
        ),
        (
            vec![sc(0, 1.0)],
            1,
            "spec.processors[0].significantChange.window: must be > 0",
        ),
        (
            vec![range(0.0, 1.0)],
            0,
            "spec.source.maxDevices: must be > 0",
        ),
    ];
    for (stages, max_devices, message) in cases {
        let err = Processors::new(&stages, max_devices)
            .err()
            .map(|e| e.to_string());
        assert!(
            err.as_deref().is_some_and(|e| e.starts_with(message)),
            "{err:?} should start with {message}"
        );
    }
}

/// An independent model of the aggregate stage: group every reading by (device, window
/// start) and compute the statistics directly.
fn naive_aggregates(readings: &[Reading], window_ms: i64) -> BTreeMap<(String, i64), Vec<f64>> {
    let mut groups: BTreeMap<(String, i64), Vec<f64>> = BTreeMap::new();
    for r in readings {
        let start = r.received_ms.div_euclid(window_ms) * window_ms;
        groups
            .entry((r.device.clone(), start))
            .or_default()
            .push(r.value);
    }
    groups
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(500))]

    /// With enough device slots and a non-decreasing clock, the aggregate records are
    /// exactly the per-(device, window) statistics, whether windows close by a later
    /// reading or by `tick`, and every absorbed reading is counted once.
    #[test]
    fn aggregates_match_a_direct_computation(
        window_ms in 1i64..50,
        steps in prop::collection::vec((0u8..4, -100i32..100, 0i64..20, any::<bool>()), 1..150),
    ) {
        let mut p = Processors::new(&[aggregate(&format!("{window_ms}ms"), &ALL_FUNCTIONS)], 16).unwrap();
        let mut now = 1_000_000;
        let mut readings = Vec::new();
        let mut records = Vec::new();
        for (device, value, dt, tick) in steps {
            now += dt;
            let r = reading(&format!("d{device}"), f64::from(value), now);
            records.extend(p.apply(&r).records);
            readings.push(r);
            if tick {
                records.extend(p.tick(now));
                prop_assert!(p.next_deadline_ms().is_none_or(|d| d > now));
            }
        }
        records.extend(p.tick(i64::MAX));
        prop_assert_eq!(p.next_deadline_ms(), None);
        let expected = naive_aggregates(&readings, window_ms);
        prop_assert_eq!(records.len(), expected.len());
        for r in &records {
            let values = &expected[&(r.device.clone(), r.timestamp_ms)];
            let stats = r.stats.as_ref().unwrap();
            let sum: f64 = values.iter().sum();
            prop_assert_eq!(stats["count"], values.len() as f64);
            prop_assert_eq!(stats["sum"], sum);
            prop_assert_eq!(stats["mean"], sum / values.len() as f64);
            prop_assert_eq!(stats["min"], values.iter().copied().fold(f64::INFINITY, f64::min));
            prop_assert_eq!(stats["max"], values.iter().copied().fold(f64::NEG_INFINITY, f64::max));
            prop_assert_eq!(Some(stats["last"]), values.last().copied());
            prop_assert_eq!(r.value, values.last().copied());
        }
    }

    /// With fewer slots than devices, nothing absorbed is lost: the counts of all
    /// emitted aggregates (partial ones included) add up to the readings, the table
    /// never exceeds its bound, and every eviction is reported.
    #[test]
    fn eviction_loses_no_absorbed_reading(
        max_devices in 1usize..4,
        steps in prop::collection::vec((0u8..6, 0i64..20), 1..200),
    ) {
        let mut p = Processors::new(&[aggregate("30ms", &[AggregateFunction::Count])], max_devices).unwrap();
        let mut now = 0;
        let mut counted = 0.0;
        let mut evictions = 0;
        let mut seen: Vec<String> = Vec::new(); // tracked devices, most recent first
        for (device, dt) in &steps {
            now += dt;
            let name = format!("d{device}");
            let out = p.apply(&reading(&name, 1.0, now));
            let expected_eviction = if let Some(pos) = seen.iter().position(|n| *n == name) {
                seen.remove(pos);
                0
            } else if seen.len() == max_devices {
                seen.pop();
                1
            } else {
                0
            };
            seen.insert(0, name);
            prop_assert_eq!(out.evicted_devices, expected_eviction);
            evictions += out.evicted_devices;
            counted += out.records.iter().filter_map(|r| r.stats.as_ref()).map(|s| s["count"]).sum::<f64>();
            prop_assert!(p.devices() <= max_devices);
        }
        counted += p.tick(i64::MAX).iter().filter_map(|r| r.stats.as_ref()).map(|s| s["count"]).sum::<f64>();
        prop_assert_eq!(counted, steps.len() as f64);
        prop_assert!(evictions <= steps.len() as u64);
    }

    /// The significant-change stage inside the chain, with interleaved devices, agrees
    /// with the original Python rule kept per device.
    #[test]
    fn chain_significant_change_matches_the_original_per_device(
        window in 1u32..12,
        steps in prop::collection::vec((0u8..5, -20i32..20), 0..300),
    ) {
        let mut p = Processors::new(&[sc(window, 2.0)], 100).unwrap();
        let mut buffers: HashMap<String, Vec<f64>> = HashMap::new();
        for (device, value) in steps {
            let device = format!("d{device}");
            let value = f64::from(value) / 2.0;
            let buffer = buffers.entry(device.clone()).or_default();
            buffer.push(value);
            if buffer.len() > window as usize {
                buffer.remove(0);
            }
            let avg = buffer.iter().sum::<f64>() / buffer.len() as f64;
            let expected = (value - avg).abs() > 2.0;
            let out = p.apply(&reading(&device, value, 0));
            prop_assert_eq!(out.records.len() == 1, expected);
            prop_assert_eq!(out.filtered_by.is_none(), expected);
        }
    }
}

/// What the queue keeps of [`Processors::take_changes`]: the last state per device (in
/// order of change), deleted on eviction.
#[derive(Default)]
struct Saved {
    clock: u64,
    rows: HashMap<String, (u64, Vec<u8>)>,
}

impl Saved {
    fn commit(&mut self, changes: Vec<DeviceChange>) {
        for (device, value) in changes {
            match value {
                Some(v) => {
                    self.clock += 1;
                    self.rows.insert(device, (self.clock, v));
                }
                None => {
                    self.rows.remove(&device);
                }
            }
        }
    }

    fn rows(&self) -> Vec<(&str, &[u8])> {
        let mut rows: Vec<_> = self
            .rows
            .iter()
            .map(|(d, (c, v))| (*c, d.as_str(), v.as_slice()))
            .collect();
        rows.sort();
        rows.into_iter().map(|(_, d, v)| (d, v)).collect()
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    /// Restarts anywhere in the stream, with the state committed so far restored, forward
    /// exactly what one uninterrupted chain forwards: significant-change and deadband state,
    /// open aggregate windows, eviction order.
    #[test]
    fn a_restart_with_the_saved_state_changes_nothing_forwarded(
        window_ms in 1i64..50,
        max_devices in 1usize..5,
        steps in prop::collection::vec((0u8..5, -20i32..20, 0i64..20, any::<bool>(), 0u8..10), 1..120),
    ) {
        let chain = [sc(3, 2.0), deadband(1.0), aggregate(&format!("{window_ms}ms"), &ALL_FUNCTIONS)];
        let mut straight = Processors::new(&chain, max_devices).unwrap();
        let mut restarted = Processors::new(&chain, max_devices).unwrap();
        restarted.track_changes();
        let mut saved = Saved::default();
        let (mut expected, mut got) = (Vec::new(), Vec::new());
        let mut now = 1_000_000;
        for (device, value, dt, tick, restart) in steps {
            if restart == 0 {
                restarted = Processors::new(&chain, max_devices).unwrap();
                restarted.track_changes();
                prop_assert!(restarted.restore(saved.rows()).is_empty());
            }
            now += dt;
            let r = reading(&format!("d{device}"), f64::from(value), now);
            expected.extend(straight.apply(&r).records);
            got.extend(restarted.apply(&r).records);
            saved.commit(restarted.take_changes());
            if tick {
                expected.extend(straight.tick(now));
                got.extend(restarted.tick(now));
                saved.commit(restarted.take_changes());
            }
        }
        expected.extend(straight.tick(i64::MAX));
        got.extend(restarted.tick(i64::MAX));
        // Windows closing at the same instant may come out in another order.
        let key = |r: &Record| (r.timestamp_ms, r.device.clone(), r.kind.as_str());
        expected.sort_by_key(key);
        got.sort_by_key(key);
        prop_assert_eq!(got, expected);
        prop_assert!(saved.rows.len() <= max_devices, "bounded by maxDevices");
    }
}

#[test]
fn a_saved_state_of_another_chain_is_refused() {
    let mut a = Processors::new(&[sc(3, 2.0)], 4).unwrap();
    a.track_changes();
    a.apply(&reading("d", 1.0, 1));
    let changes = a.take_changes();
    assert_eq!(changes.len(), 1);
    let saved = changes[0].1.clone().unwrap();
    let mut b = Processors::new(&[deadband(1.0), sc(3, 2.0)], 4).unwrap();
    let errors = b.restore([("d", saved.as_slice())]);
    assert!(
        matches!(errors[..], [RestoreError::Mismatch { .. }]),
        "{errors:?}"
    );
    let errors = b.restore([("d", &b"not json"[..])]);
    assert!(
        matches!(errors[..], [RestoreError::Decode { .. }]),
        "{errors:?}"
    );
    assert_eq!(b.devices(), 0);
}

#[test]
fn the_threshold_margin_is_the_distance_inside_the_nearest_limit() {
    let band = Processor {
        threshold: Some(Threshold {
            above: Some(100.0),
            below: Some(10.0),
        }),
        ..Processor::default()
    };
    let mut p = Processors::new(&[range(0.0, 200.0), band], 10).unwrap();
    let mut margin = |v: f64| {
        let out = p.apply(&reading("d", v, 0));
        (out.threshold_margin, out.threshold_crossed)
    };
    // Inside: the distance to the nearest limit.
    assert_eq!(margin(80.0), (Some(20.0), false));
    assert_eq!(margin(15.0), (Some(5.0), false));
    assert_eq!(margin(100.0), (Some(0.0), false));
    // Beyond a limit: negative, and crossed.
    assert_eq!(margin(105.0), (Some(-5.0), true));
    assert_eq!(margin(5.0), (Some(-5.0), true));
    // Dropped before the threshold stage: nothing said about it.
    assert_eq!(margin(250.0), (None, false));
}

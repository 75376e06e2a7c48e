//! The processor chain: `spec.processors` applied per device, in spec order, deciding
//! which routine readings travel upstream.
//!
//! A reading must pass every filtering stage (`significantChange`, `deadband`, `range`,
//! `threshold`); the first stage that drops it is reported so the drop can be counted,
//! and later stages never see it (their state is untouched). An `aggregate` stage, which
//! must be the last, absorbs the readings that reach it into per-device tumbling windows
//! of receive time; a window becomes one aggregate record when it closes: on
//! [`Processors::tick`] by the clock, or when the device's next reading falls in a later
//! window.
//!
//! Per-device state is bounded by `maxDevices`: a new device beyond it evicts the least
//! recently seen one (counted). An evicted device's open window is emitted at once as a
//! partial aggregate, so no absorbed reading is lost; its filter state starts afresh if
//! it returns (its next reading is then a first reading).
//!
//! With [`Processors::track_changes`], the chain also reports each device's state after
//! every change ([`Processors::take_changes`]), for the queue to commit with the unit of
//! the reading that changed it, and [`Processors::restore`] loads it back at start: a
//! restart then changes nothing that is forwarded.

pub(crate) mod devices;
mod stage;
mod window;

use std::collections::BTreeSet;

use edge_crds::units::UnitError;
use edge_crds::{Processor, ProcessorKind};

use self::devices::{DeviceTable, Touch};
use self::stage::{Band, Stage, StageState};
use self::window::{AggregateStage, Window};
use crate::record::{Reading, Record};

/// Why a processor chain cannot be built (the spec did not pass validation).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProcessError {
    /// None or several stage kinds are set.
    #[error(
        "spec.processors[{index}]: exactly one of significantChange, deadband, range, threshold or aggregate must be set"
    )]
    NoKind { index: usize },
    /// A field has an invalid value.
    #[error("spec.processors[{index}].{field}: {message}")]
    Invalid {
        index: usize,
        field: &'static str,
        message: String,
    },
    /// A duration does not parse.
    #[error("spec.processors[{index}].{field}: {source}")]
    Duration {
        index: usize,
        field: &'static str,
        source: UnitError,
    },
    /// An aggregate stage is followed by another stage.
    #[error("spec.processors[{index}].aggregate: must be the last processor")]
    AggregateNotLast { index: usize },
    /// `maxDevices` is zero.
    #[error("spec.source.maxDevices: must be > 0")]
    NoDevices,
}

/// What happened to one reading.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Outcome {
    /// Records to enqueue: the reading itself (kind `reading`) when it passed every
    /// stage, and aggregate records of windows this reading closed or whose device it
    /// evicted.
    pub records: Vec<Record>,
    /// Metric name of the stage that dropped the reading
    /// ([`ProcessorKind::metric_name`]); `None` if it passed or an aggregate absorbed it.
    pub filtered_by: Option<&'static str>,
    /// The reading passed a `threshold` stage (drives `trigger: threshold` actions),
    /// whether or not a later stage dropped it.
    pub threshold_crossed: bool,
    /// How far inside the limits of the `threshold` stages it reached the reading is, in
    /// the value's unit: the smallest distance to a limit, negative when it is beyond one
    /// (then `threshold_crossed`). `None` when it reached no threshold stage. Ends alert
    /// episodes (an action's `hysteresis`).
    pub threshold_margin: Option<f64>,
    /// Devices whose state was evicted to make room for this reading's device.
    pub evicted_devices: u64,
}

/// One device's state: one entry per filtering stage, and its open aggregate window.
#[derive(serde::Serialize, serde::Deserialize)]
struct DeviceState {
    stages: Vec<StageState>,
    window: Option<Window>,
    /// When the device's last reading came ([`Processors`]' reading counter): restores
    /// the least-recently-seen order, which a window closed by the clock does not change.
    #[serde(default)]
    seen: u64,
}

/// Why a saved device state was not restored.
#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    /// It does not decode.
    #[error("device {device}: saved processor state does not decode: {source}")]
    Decode {
        device: String,
        #[source]
        source: serde_json::Error,
    },
    /// It does not fit this chain's stages.
    #[error("device {device}: saved processor state does not fit spec.processors")]
    Mismatch { device: String },
}

/// The state of one device after a change: `None` when the device was evicted.
pub type DeviceChange = (String, Option<Vec<u8>>);

/// The processor chain of one pipeline, with the state of every tracked device.
pub struct Processors {
    stages: Vec<(Stage, &'static str)>,
    aggregate: Option<AggregateStage>,
    /// `None` when no stage keeps per-device state.
    devices: Option<DeviceTable<DeviceState>>,
    /// Open windows by (end, device slot): the earliest is the next to close.
    deadlines: BTreeSet<(i64, usize)>,
    /// Whether changes are tracked for [`Processors::take_changes`].
    tracking: bool,
    /// Slots whose state changed since the last [`Processors::take_changes`].
    changed: Vec<usize>,
    /// Devices evicted since then.
    evicted: Vec<String>,
    /// Readings applied (restored across restarts): each device's `seen`.
    readings: u64,
}

impl Processors {
    /// Builds the chain of `stages` (in spec order), keeping state for at most
    /// `max_devices` devices.
    pub fn new(stages: &[Processor], max_devices: usize) -> Result<Self, ProcessError> {
        if max_devices == 0 {
            return Err(ProcessError::NoDevices);
        }
        let mut filters = Vec::with_capacity(stages.len());
        let mut aggregate = None;
        for (index, p) in stages.iter().enumerate() {
            let kind = p.kind().ok_or(ProcessError::NoKind { index })?;
            if aggregate.is_some() {
                return Err(ProcessError::AggregateNotLast { index: index - 1 });
            }
            let stage = match kind {
                ProcessorKind::SignificantChange(sc) => {
                    if sc.window == 0 {
                        return Err(invalid(index, "significantChange.window", "must be > 0"));
                    }
                    if !(sc.threshold >= 0.0 && sc.threshold.is_finite()) {
                        return Err(invalid(
                            index,
                            "significantChange.threshold",
                            "must be a finite number >= 0",
                        ));
                    }
                    Stage::SignificantChange {
                        window: usize::try_from(sc.window).unwrap_or(usize::MAX),
                        threshold: sc.threshold,
                    }
                }
                ProcessorKind::Deadband(d) => {
                    let band = match (d.absolute, d.percent) {
                        (Some(a), None) if a > 0.0 && a.is_finite() => Band::Absolute(a),
                        (None, Some(p)) if p > 0.0 && p.is_finite() => Band::Percent(p),
                        _ => {
                            return Err(invalid(
                                index,
                                "deadband",
                                "exactly one of absolute or percent must be set, > 0",
                            ));
                        }
                    };
                    let max_silence_ms = d
                        .max_silence
                        .as_ref()
                        .map(|s| millis(index, "deadband.maxSilence", s))
                        .transpose()?;
                    Stage::Deadband {
                        band,
                        max_silence_ms,
                    }
                }
                ProcessorKind::Range(r) => Stage::Range {
                    min: r.min.unwrap_or(f64::NEG_INFINITY),
                    max: r.max.unwrap_or(f64::INFINITY),
                },
                ProcessorKind::Threshold(t) => Stage::Threshold {
                    above: t.above.unwrap_or(f64::INFINITY),
                    below: t.below.unwrap_or(f64::NEG_INFINITY),
                },
                ProcessorKind::Aggregate(a) => {
                    if a.functions.is_empty() {
                        return Err(invalid(
                            index,
                            "aggregate.functions",
                            "at least one function is required",
                        ));
                    }
                    aggregate = Some(AggregateStage {
                        window_ms: millis(index, "aggregate.window", &a.window)?,
                        functions: a.functions.clone(),
                    });
                    continue;
                }
            };
            filters.push((stage, kind.metric_name()));
        }
        let stateful = aggregate.is_some() || filters.iter().any(|(s, _)| s.is_stateful());
        Ok(Self {
            stages: filters,
            aggregate,
            devices: stateful.then(|| DeviceTable::new(max_devices)),
            deadlines: BTreeSet::new(),
            tracking: false,
            changed: Vec::new(),
            evicted: Vec::new(),
            readings: 0,
        })
    }

    /// Reports state changes from now on (see [`Processors::take_changes`]).
    pub fn track_changes(&mut self) {
        self.tracking = self.devices.is_some();
    }

    /// The state of every device changed since the last call (by [`Processors::apply`] or
    /// [`Processors::tick`]), encoded, and the devices evicted (`None`); empty unless
    /// [`Processors::track_changes`] was called.
    pub fn take_changes(&mut self) -> Vec<DeviceChange> {
        let mut out: Vec<DeviceChange> = self.evicted.drain(..).map(|d| (d, None)).collect();
        let Some(table) = self.devices.as_mut() else {
            return out;
        };
        for slot in self.changed.drain(..) {
            if let Some((device, state)) = table.get_mut(slot) {
                match serde_json::to_vec(&*state) {
                    Ok(bytes) => out.push((device.to_string(), Some(bytes))),
                    // A non-finite sum (readings near f64::MAX) has no JSON: the device's
                    // state is not saved, and starts afresh after a restart.
                    Err(_) => out.push((device.to_string(), None)),
                }
            }
        }
        out
    }

    /// Loads saved device states (least recently changed first, as
    /// [`Processors::take_changes`] reported them), before any reading. A state that does
    /// not decode or fit is skipped (the device starts afresh) and returned as an error.
    pub fn restore<'a>(
        &mut self,
        saved: impl IntoIterator<Item = (&'a str, &'a [u8])>,
    ) -> Vec<RestoreError> {
        let mut errors = Vec::new();
        let Some(table) = self.devices.as_mut() else {
            return errors;
        };
        let mut decoded = Vec::new();
        for (device, bytes) in saved {
            let state: DeviceState = match serde_json::from_slice(bytes) {
                Ok(s) => s,
                Err(source) => {
                    errors.push(RestoreError::Decode {
                        device: device.to_string(),
                        source,
                    });
                    continue;
                }
            };
            let fits = state.stages.len() == self.stages.len()
                && state
                    .stages
                    .iter()
                    .zip(&self.stages)
                    .all(|(s, (stage, _))| s.fits(stage))
                && (state.window.is_none() || self.aggregate.is_some());
            if !fits {
                errors.push(RestoreError::Mismatch {
                    device: device.to_string(),
                });
                continue;
            }
            decoded.push((device, state));
        }
        decoded.sort_by_key(|(_, s)| s.seen);
        for (device, state) in decoded {
            self.readings = self.readings.max(state.seen);
            let end = state.window.as_ref().map(|w| w.end_ms);
            let empty = || DeviceState {
                stages: Vec::new(),
                window: None,
                seen: 0,
            };
            // More saved devices than maxDevices (not possible with the same
            // configuration): the least recently changed give way.
            let (Touch::Known(slot) | Touch::Added(slot) | Touch::Evicted(slot, _)) =
                table.touch(device, empty);
            if let Some((_, current)) = table.get_mut(slot) {
                if let Some(w) = &current.window {
                    self.deadlines.remove(&(w.end_ms, slot));
                }
                *current = state;
            }
            if let Some(end) = end {
                self.deadlines.insert((end, slot));
            }
        }
        errors
    }

    /// Runs one reading through the chain.
    pub fn apply(&mut self, reading: &Reading) -> Outcome {
        let mut out = Outcome::default();
        let Self {
            stages,
            aggregate,
            devices,
            deadlines,
            tracking,
            changed,
            evicted: evicted_names,
            readings,
        } = self;
        *readings += 1;
        let mut stateless = DeviceState {
            stages: Vec::new(),
            window: None,
            seen: 0,
        };
        let (slot, state) = match devices {
            None => (0, &mut stateless),
            Some(table) => {
                let init = || DeviceState {
                    stages: stages.iter().map(|(s, _)| s.initial_state()).collect(),
                    window: None,
                    seen: 0,
                };
                let touch = table.touch(&reading.device, init);
                let slot = match &touch {
                    Touch::Known(slot) | Touch::Added(slot) | Touch::Evicted(slot, _) => *slot,
                };
                let Some((_, state)) = table.get_mut(slot) else {
                    return out;
                };
                if let Touch::Evicted(_, evicted) = touch {
                    out.evicted_devices = 1;
                    if let (Some(w), Some(agg)) = (state.window.take(), aggregate.as_ref()) {
                        deadlines.remove(&(w.end_ms, slot));
                        out.records.push(w.record(&evicted, &agg.functions));
                    }
                    state.stages.iter_mut().for_each(StageState::reset);
                    if *tracking {
                        evicted_names.push(evicted);
                    }
                }
                if *tracking {
                    changed.push(slot);
                }
                state.seen = *readings;
                (slot, state)
            }
        };

        for (i, (stage, name)) in stages.iter().enumerate() {
            let passes = match state.stages.get_mut(i) {
                Some(s) => stage.passes(s, reading),
                None => stage.passes(&mut StageState::Stateless, reading),
            };
            if let Stage::Threshold { above, below } = stage {
                let margin = (above - reading.value).min(reading.value - below);
                out.threshold_margin = Some(out.threshold_margin.map_or(margin, |m| m.min(margin)));
                out.threshold_crossed |= passes;
            }
            if !passes {
                out.filtered_by = Some(*name);
                return out;
            }
        }

        let Some(agg) = aggregate.as_ref() else {
            out.records.push(Record::reading(reading));
            return out;
        };
        match &mut state.window {
            Some(w) if reading.received_ms >= w.end_ms => {
                deadlines.remove(&(w.end_ms, slot));
                out.records.push(w.record(&reading.device, &agg.functions));
                let next = Window::open(agg, reading);
                deadlines.insert((next.end_ms, slot));
                *w = next;
            }
            // A reading received before the window's start (the clock went back) joins
            // the open window rather than reopening a closed one.
            Some(w) => w.add(reading),
            None => {
                let w = Window::open(agg, reading);
                deadlines.insert((w.end_ms, slot));
                state.window = Some(w);
            }
        }
        out
    }

    /// Closes every window that ends at or before `now_ms` (unix milliseconds, receive
    /// clock) and returns their aggregate records.
    pub fn tick(&mut self, now_ms: i64) -> Vec<Record> {
        let mut records = Vec::new();
        let (Some(table), Some(agg)) = (self.devices.as_mut(), self.aggregate.as_ref()) else {
            return records;
        };
        while let Some(&(end_ms, slot)) = self.deadlines.first() {
            if end_ms > now_ms {
                break;
            }
            self.deadlines.pop_first();
            if let Some((device, state)) = table.get_mut(slot)
                && let Some(w) = state.window.take()
            {
                records.push(w.record(device, &agg.functions));
                if self.tracking {
                    self.changed.push(slot);
                }
            }
        }
        records
    }

    /// When the earliest open window closes (unix milliseconds), for the caller's timer.
    pub fn next_deadline_ms(&self) -> Option<i64> {
        self.deadlines.first().map(|&(end_ms, _)| end_ms)
    }

    /// Number of devices whose state is kept (0 when no stage keeps state).
    pub fn devices(&self) -> usize {
        self.devices.as_ref().map_or(0, DeviceTable::len)
    }
}

fn invalid(index: usize, field: &'static str, message: &str) -> ProcessError {
    ProcessError::Invalid {
        index,
        field,
        message: message.to_string(),
    }
}

/// A duration in whole milliseconds, at least 1.
fn millis(
    index: usize,
    field: &'static str,
    d: &edge_crds::units::Duration,
) -> Result<i64, ProcessError> {
    let std = d.to_std().map_err(|source| ProcessError::Duration {
        index,
        field,
        source,
    })?;
    match i64::try_from(std.as_millis()) {
        Ok(ms) if ms >= 1 => Ok(ms),
        Ok(_) => Err(invalid(index, field, "must be at least 1ms")),
        Err(_) => Err(invalid(index, field, "is too long")),
    }
}

#[cfg(test)]
mod tests;

//! Per-device sliding windows of raw readings for the anomaly task: each device keeps
//! its last `window` values; once full, every new reading yields the normalised window
//! the model scores, with a summary of the raw values for the anomaly record.
//!
//! The number of devices is bounded: past `capacity`, the least recently seen device's
//! window is evicted (and counted by the caller), like the processors' device state.
//!
//! A device's window is saved as its raw values, 8 little-endian bytes each
//! ([`Windows::saved`]), and loaded back at start ([`Windows::restore`]).

use std::collections::{BTreeMap, HashMap, VecDeque};

use edge_crds::Normalize;

/// How readings are scaled before they reach the model.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Normalizer {
    /// Raw values.
    Identity,
    /// `(x - mean) / std`.
    MeanStd {
        /// Training mean.
        mean: f64,
        /// Training standard deviation.
        std: f64,
    },
    /// `(x - min) / (max - min)`.
    MinMax {
        /// Training minimum.
        min: f64,
        /// Training maximum.
        max: f64,
    },
}

impl Normalizer {
    /// The normaliser the spec describes (validated elsewhere: `std > 0`, `max > min`).
    pub fn from_spec(spec: Option<&Normalize>) -> Self {
        match spec {
            Some(Normalize {
                mean: Some(mean),
                std: Some(std),
                ..
            }) => Self::MeanStd {
                mean: *mean,
                std: *std,
            },
            Some(Normalize {
                min: Some(min),
                max: Some(max),
                ..
            }) => Self::MinMax {
                min: *min,
                max: *max,
            },
            _ => Self::Identity,
        }
    }

    /// Scales one raw value.
    pub fn apply(self, x: f64) -> f32 {
        let y = match self {
            Self::Identity => x,
            Self::MeanStd { mean, std } => (x - mean) / std,
            Self::MinMax { min, max } => (x - min) / (max - min),
        };
        y as f32
    }
}

/// Summary of the raw values of one window.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct WindowStats {
    /// Mean of the raw values.
    pub mean: f64,
    /// Smallest raw value.
    pub min: f64,
    /// Largest raw value.
    pub max: f64,
    /// The newest raw value.
    pub last: f64,
}

impl WindowStats {
    fn of(values: &VecDeque<f64>) -> Self {
        let n = values.len().max(1) as f64;
        Self {
            mean: values.iter().sum::<f64>() / n,
            min: values.iter().copied().fold(f64::INFINITY, f64::min),
            max: values.iter().copied().fold(f64::NEG_INFINITY, f64::max),
            last: values.back().copied().unwrap_or(f64::NAN),
        }
    }

    /// The summary as the `stats` map of an anomaly record.
    pub fn to_map(self) -> BTreeMap<String, f64> {
        BTreeMap::from([
            ("mean".to_string(), self.mean),
            ("min".to_string(), self.min),
            ("max".to_string(), self.max),
            ("last".to_string(), self.last),
        ])
    }
}

/// A full window, ready for the model.
#[derive(Clone, Debug, PartialEq)]
pub struct Window {
    /// Normalised values, oldest first.
    pub input: Vec<f32>,
    /// Summary of the raw values.
    pub stats: WindowStats,
}

struct Device {
    values: VecDeque<f64>,
    seen: u64,
}

/// Sliding windows for at most `capacity` devices.
pub struct Windows {
    len: usize,
    normalizer: Normalizer,
    capacity: usize,
    devices: HashMap<String, Device>,
    /// Devices by last-seen tick, oldest first.
    recency: BTreeMap<u64, String>,
    tick: u64,
}

impl Windows {
    /// Windows of `len` readings for at most `capacity` (at least 1) devices.
    pub fn new(len: usize, normalizer: Normalizer, capacity: usize) -> Self {
        Self {
            len: len.max(1),
            normalizer,
            capacity: capacity.max(1),
            devices: HashMap::new(),
            recency: BTreeMap::new(),
            tick: 0,
        }
    }

    /// Number of devices with a window.
    pub fn devices(&self) -> usize {
        self.devices.len()
    }

    /// `device`'s window as saved: its raw values, oldest first, 8 little-endian bytes
    /// each.
    pub fn saved(&self, device: &str) -> Option<Vec<u8>> {
        let d = self.devices.get(device)?;
        Some(d.values.iter().flat_map(|v| v.to_le_bytes()).collect())
    }

    /// Loads saved windows (least recently seen first) before any reading; a window longer
    /// than `len` keeps its newest values. Returns the devices whose saved bytes are not
    /// whole values (skipped).
    pub fn restore<'a>(
        &mut self,
        saved: impl IntoIterator<Item = (&'a str, &'a [u8])>,
    ) -> Vec<String> {
        let mut skipped = Vec::new();
        for (device, bytes) in saved {
            if bytes.len() % 8 != 0 {
                skipped.push(device.to_string());
                continue;
            }
            let mut values: VecDeque<f64> = bytes
                .chunks_exact(8)
                .map(|c| {
                    let mut b = [0u8; 8];
                    b.copy_from_slice(c);
                    f64::from_le_bytes(b)
                })
                .collect();
            while values.len() > self.len {
                values.pop_front();
            }
            self.tick += 1;
            let tick = self.tick;
            if let Some(old) = self.devices.get(device) {
                self.recency.remove(&old.seen);
            } else if self.devices.len() >= self.capacity
                && let Some((_, oldest)) = self.recency.pop_first()
            {
                self.devices.remove(&oldest);
            }
            self.devices
                .insert(device.to_string(), Device { values, seen: tick });
            self.recency.insert(tick, device.to_string());
        }
        skipped
    }

    /// Appends `value` to `device`'s window. Returns the window once it holds `len`
    /// readings, and whether another device's window was evicted to make room.
    pub fn push(&mut self, device: &str, value: f64) -> (Option<Window>, bool) {
        let (window, evicted) = self.push_evicting(device, value);
        (window, evicted.is_some())
    }

    /// [`Windows::push`], naming the device whose window was evicted.
    pub fn push_evicting(&mut self, device: &str, value: f64) -> (Option<Window>, Option<String>) {
        self.tick += 1;
        let tick = self.tick;
        let mut evicted = None;
        if let Some(d) = self.devices.get_mut(device) {
            self.recency.remove(&d.seen);
            d.seen = tick;
        } else {
            if self.devices.len() >= self.capacity
                && let Some((_, oldest)) = self.recency.pop_first()
            {
                self.devices.remove(&oldest);
                evicted = Some(oldest);
            }
            self.devices.insert(
                device.to_string(),
                Device {
                    values: VecDeque::with_capacity(self.len),
                    seen: tick,
                },
            );
        }
        self.recency.insert(tick, device.to_string());
        let Some(d) = self.devices.get_mut(device) else {
            return (None, evicted);
        };
        if d.values.len() == self.len {
            d.values.pop_front();
        }
        d.values.push_back(value);
        if d.values.len() < self.len {
            return (None, evicted);
        }
        let window = Window {
            input: d.values.iter().map(|v| self.normalizer.apply(*v)).collect(),
            stats: WindowStats::of(&d.values),
        };
        (Some(window), evicted)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_window_is_emitted_once_full_and_slides() {
        let mut w = Windows::new(
            3,
            Normalizer::MeanStd {
                mean: 20.0,
                std: 2.0,
            },
            10,
        );
        assert_eq!(w.push("a", 20.0).0, None);
        assert_eq!(w.push("a", 22.0).0, None);
        let full = w.push("a", 24.0).0.unwrap();
        assert_eq!(full.input, vec![0.0, 1.0, 2.0]);
        assert_eq!(
            full.stats,
            WindowStats {
                mean: 22.0,
                min: 20.0,
                max: 24.0,
                last: 24.0
            }
        );
        let next = w.push("a", 18.0).0.unwrap();
        assert_eq!(next.input, vec![1.0, 2.0, -1.0]);
        assert_eq!(next.stats.last, 18.0);
    }

    #[test]
    fn min_max_normalisation() {
        let n = Normalizer::from_spec(Some(&Normalize {
            mean: None,
            std: None,
            min: Some(10.0),
            max: Some(30.0),
        }));
        assert_eq!(n.apply(20.0), 0.5);
        assert_eq!(Normalizer::from_spec(None).apply(3.0), 3.0);
    }

    #[test]
    fn devices_are_bounded_and_the_least_recently_seen_is_evicted() {
        let mut w = Windows::new(2, Normalizer::Identity, 2);
        assert!(!w.push("a", 1.0).1);
        assert!(!w.push("b", 1.0).1);
        assert!(!w.push("a", 2.0).1); // a is now the most recent
        assert!(w.push("c", 1.0).1); // evicts b
        assert_eq!(w.devices(), 2);
        assert!(w.push("a", 3.0).0.is_some(), "a kept its window");
        assert!(w.push("b", 1.0).1, "b starts over and evicts c");
        assert_eq!(w.push("b", 2.0).0.unwrap().input, vec![1.0, 2.0]);
    }
}

//! Tumbling aggregate windows: the statistics of one device over one window of receive
//! time, and the aggregate [`Record`] a closed window becomes.

use std::collections::BTreeMap;

use edge_crds::AggregateFunction;

use crate::record::{Reading, Record, RecordKind};

/// The `aggregate` stage: window length and the statistics to report.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct AggregateStage {
    /// Window length in milliseconds (> 0).
    pub window_ms: i64,
    /// Statistics reported, in spec order.
    pub functions: Vec<AggregateFunction>,
}

impl AggregateStage {
    /// Start of the window holding `received_ms`, aligned to the unix epoch.
    pub(crate) fn window_start(&self, received_ms: i64) -> i64 {
        received_ms.div_euclid(self.window_ms) * self.window_ms
    }
}

/// The statistics of one device's open window.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub(crate) struct Window {
    /// Window start, unix milliseconds.
    pub start_ms: i64,
    /// Window end (exclusive): the window closes when the clock reaches it.
    pub end_ms: i64,
    count: u64,
    sum: f64,
    min: f64,
    max: f64,
    last: f64,
    topic: String,
}

impl Window {
    /// A window of `stage` opened by `r`.
    pub(crate) fn open(stage: &AggregateStage, r: &Reading) -> Self {
        let start_ms = stage.window_start(r.received_ms);
        Self {
            start_ms,
            end_ms: start_ms.saturating_add(stage.window_ms),
            count: 1,
            sum: r.value,
            min: r.value,
            max: r.value,
            last: r.value,
            topic: r.topic.clone(),
        }
    }

    /// Adds a reading to the window.
    pub(crate) fn add(&mut self, r: &Reading) {
        self.count += 1;
        self.sum += r.value;
        self.min = self.min.min(r.value);
        self.max = self.max.max(r.value);
        self.last = r.value;
        if self.topic != r.topic {
            self.topic.clone_from(&r.topic);
        }
    }

    /// The aggregate record of the window for `device`, with the configured statistics.
    pub(crate) fn record(&self, device: &str, functions: &[AggregateFunction]) -> Record {
        let stats: BTreeMap<String, f64> = functions
            .iter()
            .map(|f| {
                let x = match f {
                    AggregateFunction::Mean => self.sum / self.count as f64,
                    AggregateFunction::Min => self.min,
                    AggregateFunction::Max => self.max,
                    AggregateFunction::Count => self.count as f64,
                    AggregateFunction::Sum => self.sum,
                    AggregateFunction::Last => self.last,
                };
                (f.as_str().to_string(), x)
            })
            .collect();
        Record {
            kind: RecordKind::Aggregate,
            device: device.to_string(),
            topic: self.topic.clone(),
            value: Some(self.last),
            timestamp_ms: self.start_ms,
            score: None,
            stats: Some(stats),
            labels: None,
            urgent: false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reading(value: f64, received_ms: i64, topic: &str) -> Reading {
        Reading {
            device: "d".into(),
            topic: topic.into(),
            value,
            timestamp_ms: 0,
            received_ms,
        }
    }

    #[test]
    fn windows_are_aligned_to_the_epoch() {
        let stage = AggregateStage {
            window_ms: 60_000,
            functions: vec![],
        };
        assert_eq!(stage.window_start(0), 0);
        assert_eq!(stage.window_start(59_999), 0);
        assert_eq!(stage.window_start(60_000), 60_000);
        assert_eq!(stage.window_start(-1), -60_000);
    }

    #[test]
    fn record_holds_only_the_configured_statistics() {
        let stage = AggregateStage {
            window_ms: 1_000,
            functions: vec![
                AggregateFunction::Sum,
                AggregateFunction::Mean,
                AggregateFunction::Count,
            ],
        };
        let mut w = Window::open(&stage, &reading(1.0, 5_100, "a"));
        w.add(&reading(4.0, 5_200, "a"));
        w.add(&reading(-2.0, 5_999, "b"));
        let r = w.record("d", &stage.functions);
        assert_eq!(
            (r.kind, r.device.as_str(), r.topic.as_str()),
            (RecordKind::Aggregate, "d", "b")
        );
        assert_eq!(
            (r.value, r.timestamp_ms, w.end_ms),
            (Some(-2.0), 5_000, 6_000)
        );
        let stats = r.stats.unwrap();
        assert_eq!(
            stats.into_iter().collect::<Vec<_>>(),
            [
                ("count".to_string(), 3.0),
                ("mean".to_string(), 1.0),
                ("sum".to_string(), 3.0)
            ]
        );
        let all = AggregateStage {
            window_ms: 1_000,
            functions: vec![
                AggregateFunction::Min,
                AggregateFunction::Max,
                AggregateFunction::Last,
            ],
        };
        let stats = w.record("d", &all.functions).stats.unwrap();
        assert_eq!(
            (stats["min"], stats["max"], stats["last"]),
            (-2.0, 4.0, -2.0)
        );
    }
}

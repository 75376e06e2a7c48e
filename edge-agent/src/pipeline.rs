//! What the agent does with the readings it takes in: inference, the processors, the local
//! actions they trigger and their metrics, turning each reading into the records (possibly
//! none) that are queued as its unit.
//!
//! Readings come in batches: whatever arrived while the previous batch was being handled
//! (see `run`). Inference scores every full window of a batch in one model call, since
//! tract's per-call overhead dominates small models (one window costs about ten times
//! what it costs within a batch of 16; BENCHMARKS.md, B6), and a busy agent is exactly the
//! one that gets batches. An idle agent gets batches of one: no reading waits for others.

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use crate::actions::Actions;
use crate::config::AgentConfig;
use crate::inference::{InferenceError, InferenceStage};
use crate::parse::PayloadParser;
use crate::process::Processors;
use crate::record::{Reading, Record};
use crate::run::inference_metrics;
use crate::telemetry::Metrics;

/// Turns readings into records: inference, the processors, the actions they trigger, and
/// their metrics.
pub struct Pipeline {
    pub(crate) inference: Option<InferenceStage>,
    pub(crate) parser: PayloadParser,
    pub(crate) processors: Processors,
    pub(crate) actions: Actions,
    metrics: Arc<Metrics>,
}

impl Pipeline {
    /// The pipeline of `config` with its `processors` (built first, so a bad processor
    /// stops the agent before it connects anywhere) and its `actions` (see
    /// [`Actions::connect`]); URL models are cached under `data_dir`.
    pub fn new(
        config: &AgentConfig,
        processors: Processors,
        data_dir: &Path,
        actions: Actions,
        metrics: Arc<Metrics>,
    ) -> Result<Self, InferenceError> {
        let inference = InferenceStage::start(config, data_dir, inference_metrics(&metrics))?;
        Ok(Self {
            inference,
            parser: PayloadParser::new(&config.spec.source.format, config.source.max_payload_bytes),
            processors,
            actions,
            metrics,
        })
    }

    /// The one place readings become records: `records[i]` is the unit of `readings[i]`
    /// (`received[i]` its arrival). Inference, when configured, scores the whole batch
    /// first, in one model call, on every raw reading (its anomaly records always travel
    /// and fire `trigger: anomaly` actions at once); then the processors, reading by
    /// reading in arrival order, decide which routine readings travel. Per device, both
    /// see the readings in the order they arrived, so a batch yields exactly the records
    /// the same readings would one at a time (model scores equal to float rounding).
    pub async fn on_readings(
        &mut self,
        readings: &[Reading],
        received: &[Instant],
    ) -> Vec<Vec<Record>> {
        debug_assert_eq!(readings.len(), received.len());
        let mut units = match &mut self.inference {
            Some(inference) => {
                inference
                    .on_readings(readings, received, &mut self.actions)
                    .await
            }
            None => vec![Vec::new(); readings.len()],
        };
        for ((reading, at), unit) in readings.iter().zip(received).zip(&mut units) {
            let outcome = self.processors.apply(reading);
            if let Some(processor) = outcome.filtered_by {
                self.metrics
                    .records_filtered
                    .with_label_values(&[processor])
                    .inc();
            }
            if outcome.evicted_devices > 0 {
                self.metrics
                    .dropped("device_evicted", outcome.evicted_devices);
            }
            if let Some(margin) = outcome.threshold_margin {
                self.actions.on_threshold(reading, margin, *at);
            }
            unit.extend(outcome.records);
        }
        units
    }

    /// The inference step, when the pipeline has one.
    pub fn inference(&self) -> Option<&InferenceStage> {
        self.inference.as_ref()
    }
}

#[cfg(test)]
mod tests;

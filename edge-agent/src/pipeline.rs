//! What the agent does with the messages it takes in, one way: a batch of received
//! messages in (readings in any configured encoding, or images to classify), and out, per
//! message, the unit to queue (its records, possibly none, and the device state they
//! change) or why the message was refused, plus the local actions to fire ([`Effect`]s,
//! in order). Parsing, inference, the processors and their metrics happen here; ingest
//! only performs what comes out: it fires the effects, queues the units and acknowledges.
//!
//! Readings come in batches: whatever arrived while the previous batch was being handled
//! (see `run`). Inference scores every full window of a batch in one model call, since
//! tract's per-call overhead dominates small models (one window costs about ten times
//! what it costs within a batch of 16; BENCHMARKS.md, B6), and a busy agent is exactly the
//! one that gets batches. An idle agent gets batches of one: no reading waits for others.

pub mod actions;
pub mod inference;
pub mod parse;
pub mod process;

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use edge_crds::ActionTrigger;

use crate::config::AgentConfig;
use crate::pipeline::actions::{Effect, Effects};
use crate::pipeline::inference::{InferenceError, InferenceMetrics, InferenceStage};
use crate::pipeline::parse::PayloadParser;
use crate::pipeline::process::Processors;
use crate::record::{InvalidReason, Reading, RecordKind, StateChange, UnitContent};

use crate::runtime::telemetry::{Metrics, MetricsError, init_labels};

/// Turns messages into records and effects: parsing, inference, the processors, and
/// their metrics.
pub struct Pipeline {
    inference: Option<InferenceStage>,
    parser: PayloadParser,
    processors: Processors,
    effects: Effects,
    metrics: Arc<Metrics>,
}

/// A received message as the pipeline takes it.
#[derive(Clone, Copy, Debug)]
pub struct Received<'a> {
    /// The topic it arrived on.
    pub topic: &'a str,
    /// Its payload, in the source's encoding (or an image, for classification).
    pub payload: &'a [u8],
    /// Its arrival, unix milliseconds.
    pub received_ms: i64,
    /// Its arrival, monotonic (action latency is measured from it).
    pub received: Instant,
}

/// What a batch became.
#[derive(Debug, Default)]
pub struct Handled {
    /// Per message of the batch, in order: the unit to queue, or why it was refused.
    pub units: Vec<Result<UnitContent, InvalidReason>>,
    /// The local actions the batch triggers, in the order they fire.
    pub effects: Vec<Effect>,
}

impl Pipeline {
    /// The pipeline of `config` with its `processors` (built first, so a bad processor
    /// stops the agent before it connects anywhere); URL models are cached under
    /// `data_dir`.
    pub fn new(
        config: &AgentConfig,
        processors: Processors,
        data_dir: &Path,
        metrics: Arc<Metrics>,
    ) -> Result<Self, InferenceError> {
        let mut inference = InferenceStage::start(config, data_dir, inference_metrics(&metrics))?;
        if let Some(stage) = inference.as_mut() {
            stage.inference_mut().track_changes();
        }
        let mut processors = processors;
        processors.track_changes();
        Ok(Self {
            inference,
            parser: PayloadParser::new(&config.spec.source.format, config.source.max_payload_bytes),
            processors,
            effects: Effects::for_config(config),
            metrics,
        })
    }

    /// The one entry of the pipeline: what a batch of messages becomes (see [`Handled`]).
    /// Image payloads (classification) are not readings: inference turns each into its
    /// record directly. Readings are parsed, then go through [`Pipeline::on_readings`]
    /// together.
    pub async fn handle(&mut self, batch: &[Received<'_>]) -> Handled {
        if let Some(stage) = self.inference.as_mut().filter(|s| s.takes_images()) {
            let mut units = Vec::with_capacity(batch.len());
            for m in batch {
                let records = stage
                    .on_image(
                        m.topic,
                        m.payload,
                        m.received_ms,
                        m.received,
                        &mut self.effects,
                    )
                    .await;
                units.push(records.map(|records| UnitContent {
                    records,
                    ..UnitContent::default()
                }));
            }
            return Handled {
                units,
                effects: self.effects.take(),
            };
        }
        let mut readings = Vec::with_capacity(batch.len());
        let mut received = Vec::with_capacity(batch.len());
        let parsed: Vec<Result<(), InvalidReason>> = batch
            .iter()
            .map(|m| {
                let reading = self.parser.parse(m.topic, m.payload, m.received_ms)?;
                readings.push(reading);
                received.push(m.received);
                Ok(())
            })
            .collect();
        let (units, effects) = self.on_readings(&readings, &received).await;
        let mut units = units.into_iter();
        Handled {
            units: parsed
                .into_iter()
                .map(|p| p.map(|()| units.next().unwrap_or_default()))
                .collect(),
            effects,
        }
    }

    /// The one place readings become records: `units[i]` is the unit of `readings[i]`
    /// (`received[i]` its arrival), and the effects are in the order they fire.
    /// Inference, when configured, scores the whole batch first, in one model call, on
    /// every raw reading (its anomaly records always travel, and every score is a
    /// `trigger: anomaly` effect); then the processors, reading by reading in arrival
    /// order, decide which routine readings travel. Per device, both see the readings in
    /// the order they arrived, so a batch yields exactly the records and effects the same
    /// readings would one at a time (model scores equal to float rounding).
    pub async fn on_readings(
        &mut self,
        readings: &[Reading],
        received: &[Instant],
    ) -> (Vec<UnitContent>, Vec<Effect>) {
        debug_assert_eq!(readings.len(), received.len());
        let mut units: Vec<UnitContent> = match &mut self.inference {
            Some(inference) => {
                let records = inference
                    .on_readings(readings, received, &mut self.effects)
                    .await;
                let mut units: Vec<UnitContent> =
                    records.into_iter().map(UnitContent::from).collect();
                for (index, device, saved) in inference.inference_mut().take_changes() {
                    if let Some(unit) = units.get_mut(index) {
                        unit.state.push(change("i", &device, saved));
                    }
                }
                units
            }
            None => (0..readings.len())
                .map(|_| UnitContent::default())
                .collect(),
        };
        for ((reading, at), unit) in readings.iter().zip(received).zip(&mut units) {
            let outcome = self.processors.apply(reading);
            unit.state.extend(
                self.processors
                    .take_changes()
                    .into_iter()
                    .map(|(device, saved)| change("p", &device, saved)),
            );
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
                self.effects
                    .add(ActionTrigger::Threshold, || Effect::Threshold {
                        reading: reading.clone(),
                        margin,
                        received: *at,
                    });
            }
            let urgent = outcome.threshold_crossed;
            unit.records
                .extend(outcome.records.into_iter().map(|mut record| {
                    // Only the reading itself: an aggregate it joined is routine.
                    record.urgent = urgent && record.kind == RecordKind::Reading;
                    record
                }));
        }
        (units, self.effects.take())
    }

    /// When the next aggregate window closes (unix milliseconds), if one is open.
    pub fn next_deadline_ms(&self) -> Option<i64> {
        self.processors.next_deadline_ms()
    }

    /// Closes the aggregate windows that end at or before `now_ms`: their records and the
    /// state of their devices, as one unit.
    pub fn tick(&mut self, now_ms: i64) -> UnitContent {
        let records = self.processors.tick(now_ms);
        let state = self
            .processors
            .take_changes()
            .into_iter()
            .map(|(device, saved)| change("p", &device, saved))
            .collect();
        UnitContent {
            records,
            state,
            delivery: None,
        }
    }

    /// Loads the state committed before a restart (least recently changed first).
    pub fn restore(&mut self, saved: &[(String, Vec<u8>)]) {
        let owned = |prefix: &'static str| {
            saved
                .iter()
                .filter_map(move |(key, value)| Some((key.strip_prefix(prefix)?, value.as_slice())))
        };
        for e in self.processors.restore(owned("p/")) {
            tracing::warn!(error = %e, "the device starts afresh");
        }
        if let Some(stage) = self.inference.as_mut() {
            for device in stage.inference_mut().restore(owned("i/")) {
                tracing::warn!(%device, "a saved inference window does not decode; the device starts afresh");
            }
        }
    }

    /// Identifies what the saved state depends on: the processors, `maxDevices` and the
    /// inference window. State saved under another fingerprint is not restored.
    pub fn state_fingerprint(config: &AgentConfig) -> i64 {
        use sha2::{Digest, Sha256};
        let inference_window = config.spec.inference.as_ref().map(|i| i.window);
        let processors = (
            &config.spec.processors,
            config.source.max_devices,
            inference_window,
        );
        // Switching encryption on discards state saved in clear (raw inference windows
        // could begin like a sealed value); without encryption the fingerprint is as it
        // always was.
        let described = if config.buffer.keys.is_enabled() {
            serde_json::to_vec(&(processors, "sealed"))
        } else {
            serde_json::to_vec(&processors)
        }
        .unwrap_or_default();
        let digest = Sha256::digest(&described);
        let mut first = [0u8; 8];
        first.copy_from_slice(&digest[..8]);
        i64::from_le_bytes(first)
    }

    /// The inference step, when the pipeline has one.
    pub fn inference(&self) -> Option<&InferenceStage> {
        self.inference.as_ref()
    }
}

/// Registers the agent's metrics with every label value of this pipeline at zero.
pub fn metrics_for(config: &AgentConfig) -> Result<Metrics, MetricsError> {
    let metrics = Metrics::new(&config.pipeline)?;
    let reasons: Vec<&str> = InvalidReason::ALL.iter().map(|r| r.as_str()).collect();
    init_labels(&metrics.messages_invalid, &reasons);
    let processors: Vec<&str> = config
        .spec
        .processors
        .iter()
        .filter_map(|p| p.kind().map(|k| k.metric_name()))
        .collect();
    init_labels(&metrics.records_filtered, &processors);
    // Creates the inference label values, so the series exist with or without a model.
    let _ = inference_metrics(&metrics);
    metrics
        .queue_capacity_bytes
        .set(config.buffer.max_bytes.min(i64::MAX as u64) as i64);
    Ok(metrics)
}

/// The inference engine's handles into the agent's registry.
pub fn inference_metrics(metrics: &Metrics) -> InferenceMetrics {
    InferenceMetrics::new(
        metrics.inferences.clone(),
        metrics.anomalies.clone(),
        metrics.inference_duration.clone(),
        metrics.inference_errors.clone(),
        metrics.model_loads.clone(),
        metrics.inference_windows_evicted.clone(),
        metrics.model_info.clone(),
    )
}

/// A state change of `device`'s entry of `owner` (`p` processors, `i` inference).
fn change(owner: &str, device: &str, saved: Option<Vec<u8>>) -> StateChange {
    StateChange {
        key: format!("{owner}/{device}"),
        value: saved,
    }
}

#[cfg(test)]
mod tests;

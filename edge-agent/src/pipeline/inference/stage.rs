//! Inference as a step of the agent's data path: what the pipeline calls for every batch
//! of raw readings (before the processors) and for every image payload, turning model results
//! into anomaly and classification records and firing the matching local actions at
//! once, before anything is queued.

use std::path::Path;
use std::time::Instant;

use edge_crds::{ActionTrigger, InferenceTask, PayloadEncoding, PayloadFormat};

use super::InferenceMetrics;
use super::engine::{Inference, InferenceError, InferenceSettings};
use super::source::SourceSettings;
use crate::config::AgentConfig;
use crate::pipeline::actions::{Effect, Effects};
use crate::record::InvalidReason;
use crate::record::{Reading, Record};

/// How image messages name their device: a topic segment (`topic[N]`), else the topic.
#[derive(Clone, Debug)]
struct ImageMessages {
    device_segment: Option<usize>,
    max_bytes: usize,
}

impl ImageMessages {
    fn new(format: &PayloadFormat, max_bytes: usize) -> Self {
        let device_segment = format
            .device
            .strip_prefix("topic[")
            .and_then(|rest| rest.strip_suffix(']'))
            .and_then(|n| n.parse().ok());
        Self {
            device_segment,
            max_bytes,
        }
    }

    /// The device of an image on `topic`: the configured topic segment, or else the whole
    /// topic with `/` written as `_`; either must pass the device id rule.
    fn device(&self, topic: &str) -> Result<String, InvalidReason> {
        match self.device_segment {
            Some(i) => crate::pipeline::parse::topic_segment(topic, i),
            None => {
                let id = topic.replace('/', "_");
                crate::pipeline::parse::check_device_id(&id)?;
                Ok(id)
            }
        }
    }
}

/// The inference step of one pipeline.
pub struct InferenceStage {
    inference: Inference,
    images: Option<ImageMessages>,
}

impl InferenceStage {
    /// Starts inference when the pipeline has `spec.inference`; URL models are cached in
    /// `<data_dir>/models`.
    pub fn start(
        config: &AgentConfig,
        data_dir: &Path,
        metrics: InferenceMetrics,
    ) -> Result<Option<Self>, InferenceError> {
        let Some(spec) = &config.spec.inference else {
            return Ok(None);
        };
        let images = (spec.task == InferenceTask::Classification
            && config.spec.source.format.encoding == PayloadEncoding::Image)
            .then(|| {
                ImageMessages::new(&config.spec.source.format, config.source.max_payload_bytes)
            });
        let mut source = SourceSettings::new(data_dir);
        source.headers = config.model_headers.clone();
        let settings = InferenceSettings::new(spec.clone(), source, config.source.max_devices);
        let inference = Inference::start(settings, metrics)?;
        Ok(Some(Self { inference, images }))
    }

    /// The engine, e.g. for its model status.
    pub fn inference(&self) -> &Inference {
        &self.inference
    }

    /// The model runner, to track and restore its windows.
    pub fn inference_mut(&mut self) -> &mut Inference {
        &mut self.inference
    }

    /// Whether messages are images to classify rather than readings to parse.
    pub fn takes_images(&self) -> bool {
        self.images.is_some()
    }

    /// Scores the windows of a batch of readings (in arrival order, `received[i]` the
    /// arrival of `readings[i]`) in one model call. Every score is an effect for the
    /// `trigger: anomaly` actions, in arrival order (they start and end alert episodes);
    /// each anomaly comes back among the records of its reading, to queue whatever the
    /// processors do with that reading.
    pub async fn on_readings(
        &mut self,
        readings: &[Reading],
        received: &[Instant],
        effects: &mut Effects,
    ) -> Vec<Vec<Record>> {
        let mut records = vec![Vec::new(); readings.len()];
        let scored = self.inference.scored(readings).await;
        for (index, score) in scored.scores {
            if let (Some(reading), Some(at)) = (readings.get(index), received.get(index)) {
                effects.add(ActionTrigger::Anomaly, || Effect::Score {
                    reading: reading.clone(),
                    score,
                    received: *at,
                });
            }
        }
        for (index, record) in scored.anomalies {
            if let Some(unit) = records.get_mut(index) {
                unit.push(record);
            }
        }
        records
    }

    /// Classifies an image payload: a classification record, and the effect for the
    /// `trigger: classification` actions. An undecodable image or a skipped inference
    /// yields no record (counted in the inference metrics).
    pub async fn on_image(
        &mut self,
        topic: &str,
        payload: &[u8],
        received_ms: i64,
        received: Instant,
        effects: &mut Effects,
    ) -> Result<Vec<Record>, InvalidReason> {
        let Some(images) = &self.images else {
            return Ok(Vec::new());
        };
        if payload.len() > images.max_bytes {
            return Err(InvalidReason::TooLarge);
        }
        let device = images.device(topic)?;
        let Some(record) = self
            .inference
            .classify(&device, topic, received_ms, payload)
            .await
        else {
            return Ok(Vec::new());
        };
        if let Some((label, score)) = record.labels.as_ref().and_then(|l| l.first()) {
            let reading = Reading {
                device,
                topic: topic.to_string(),
                value: *score,
                timestamp_ms: received_ms,
                received_ms,
            };
            effects.add(ActionTrigger::Classification, || Effect::Classification {
                reading,
                label: label.clone(),
                received,
            });
        }
        Ok(vec![record])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_devices_come_from_a_topic_segment_or_the_topic() {
        let mut format = PayloadFormat {
            device: "topic[1]".into(),
            ..PayloadFormat::default()
        };
        let m = ImageMessages::new(&format, 10);
        assert_eq!(m.device("cameras/cam7/frame"), Ok("cam7".to_string()));
        assert_eq!(m.device("cameras"), Err(InvalidReason::MissingDevice));
        assert_eq!(
            m.device("cameras/\u{7}/frame"),
            Err(InvalidReason::BadDevice)
        );
        format.device = "device_id".into();
        let m = ImageMessages::new(&format, 10);
        assert_eq!(m.device("cams/x"), Ok("cams_x".to_string()));
        assert_eq!(m.device(&"c/".repeat(100)), Err(InvalidReason::BadDevice));
    }
}

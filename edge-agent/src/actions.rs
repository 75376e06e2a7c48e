//! Local actions: a JSON message published straight on the source broker when a reading
//! crosses a `threshold` processor or inference flags an anomaly. Never queued, never
//! waiting on the upstream: the latency from receiving the reading to handing the publish
//! to the MQTT client is measured in `edge_agent_action_latency_seconds`.

use std::sync::Arc;
use std::time::Instant;

use edge_crds::{Action, ActionTrigger};
use rumqttc::{AsyncClient, QoS};
use serde::Serialize;

use crate::record::{Reading, format_timestamp_ms};
use crate::telemetry::Metrics;

/// The message published by an action.
#[derive(Debug, Serialize)]
pub struct ActionMessage<'a> {
    /// `namespace/name`.
    pub pipeline: &'a str,
    /// Node name.
    pub node: &'a str,
    /// Device id.
    pub device: &'a str,
    /// Topic of the reading.
    pub topic: &'a str,
    /// The reading's value.
    pub value: f64,
    /// The reading's time, RFC 3339.
    pub timestamp: String,
    /// `threshold` or `anomaly`.
    pub trigger: &'static str,
    /// Anomaly score, or the top class's score.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub score: Option<f64>,
    /// Top class of an image classification.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub label: Option<&'a str>,
}

/// The configured actions of one pipeline.
pub struct Actions {
    actions: Vec<Action>,
    pipeline: String,
    node: String,
    client: AsyncClient,
    metrics: Arc<Metrics>,
}

impl Actions {
    /// Actions publishing through `client` (the source connection).
    pub fn new(
        actions: &[Action],
        pipeline: &str,
        node: &str,
        client: AsyncClient,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            actions: actions.to_vec(),
            pipeline: pipeline.to_string(),
            node: node.to_string(),
            client,
            metrics,
        }
    }

    /// True when some action fires on `trigger`.
    pub fn wants(&self, trigger: ActionTrigger) -> bool {
        self.actions.iter().any(|a| a.trigger == trigger)
    }

    /// A reading passed a threshold processor.
    pub fn on_threshold(&self, reading: &Reading, received: Instant) {
        self.fire(ActionTrigger::Threshold, reading, None, None, received);
    }

    /// Inference scored a reading's window as an anomaly.
    pub fn on_anomaly(&self, reading: &Reading, score: f64, received: Instant) {
        self.fire(ActionTrigger::Anomaly, reading, Some(score), None, received);
    }

    /// Inference classified an image from `reading.device` as `label`.
    pub fn on_classification(&self, reading: &Reading, label: &str, score: f64, received: Instant) {
        self.fire(
            ActionTrigger::Classification,
            reading,
            Some(score),
            Some(label),
            received,
        );
    }

    fn fire(
        &self,
        trigger: ActionTrigger,
        reading: &Reading,
        score: Option<f64>,
        label: Option<&str>,
        received: Instant,
    ) {
        for action in self.actions.iter().filter(|a| a.trigger == trigger) {
            let message = ActionMessage {
                pipeline: &self.pipeline,
                node: &self.node,
                device: &reading.device,
                topic: &reading.topic,
                value: reading.value,
                timestamp: format_timestamp_ms(reading.timestamp_ms),
                trigger: trigger_name(trigger),
                score,
                label,
            };
            let payload = match serde_json::to_vec(&message) {
                Ok(p) => p,
                Err(e) => {
                    tracing::warn!(error = %e, "encoding an action message");
                    continue;
                }
            };
            let topic = render_topic(
                &action.mqtt.topic,
                &reading.device,
                &self.pipeline,
                &self.node,
            );
            let qos = if action.mqtt.qos == 0 {
                QoS::AtMostOnce
            } else {
                QoS::AtLeastOnce
            };
            self.metrics
                .action_latency
                .observe(received.elapsed().as_secs_f64());
            match self
                .client
                .try_publish(topic, qos, action.mqtt.retain, payload)
            {
                Ok(()) => self.metrics.actions_published.inc(),
                Err(e) => tracing::warn!(error = %e, "local action not published"),
            }
        }
    }
}

fn trigger_name(t: ActionTrigger) -> &'static str {
    match t {
        ActionTrigger::Anomaly => "anomaly",
        ActionTrigger::Threshold => "threshold",
        ActionTrigger::Classification => "classification",
    }
}

/// Replaces `{device}`, `{pipeline}` and `{node}` in a topic template. MQTT wildcards in
/// the values are replaced by `_` so the result is always a valid topic name.
pub fn render_topic(template: &str, device: &str, pipeline: &str, node: &str) -> String {
    let clean = |s: &str| s.replace(['+', '#'], "_");
    template
        .replace("{device}", &clean(device))
        .replace("{pipeline}", &clean(pipeline))
        .replace("{node}", &clean(node))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topics_are_rendered_without_wildcards() {
        assert_eq!(
            render_topic("alerts/{device}", "t1", "f/l", "n"),
            "alerts/t1"
        );
        assert_eq!(
            render_topic(
                "alerts/{pipeline}/{node}/{device}",
                "a+b#",
                "factory/line1",
                "edge-1"
            ),
            "alerts/factory/line1/edge-1/a_b_"
        );
    }

    #[test]
    fn the_message_carries_the_reading_and_the_trigger() {
        let m = ActionMessage {
            pipeline: "factory/line1",
            node: "edge-1",
            device: "t1",
            topic: "sensors/t1/temperature",
            value: 101.5,
            timestamp: format_timestamp_ms(1_795_608_000_123),
            trigger: "threshold",
            score: None,
            label: None,
        };
        assert_eq!(
            serde_json::to_value(&m).unwrap(),
            serde_json::json!({"pipeline":"factory/line1","node":"edge-1","device":"t1",
                "topic":"sensors/t1/temperature","value":101.5,
                "timestamp":"2026-11-25T12:00:00.123Z","trigger":"threshold"})
        );
    }
}

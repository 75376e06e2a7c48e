//! Local actions: a JSON message published straight on the source broker when a reading
//! crosses a `threshold` processor or inference flags an anomaly. Never queued, never
//! waiting on the upstream: the latency from receiving the reading to handing the publish
//! to the MQTT client is measured in `edge_agent_action_latency_seconds`.
//!
//! Actions publish on a connection of their own (client id `<source client id>-actions`,
//! clean session), so a publish the broker refuses, or a broker that drops the connection
//! over one, can never disturb ingest and its persistent session. Every rendered topic is
//! checked first ([`check_topic`]); one that is not a valid topic name is counted
//! (`edge_agent_actions_failed_total{reason="bad_topic"}`) and not published.

use std::sync::Arc;
use std::time::{Duration, Instant};

use edge_crds::{Action, ActionTrigger};
use rumqttc::{AsyncClient, ConnectionError, Event, EventLoop, Outgoing, QoS};
use serde::Serialize;
use tokio::task::JoinHandle;

use crate::config::SourceSettings;
use crate::record::{Reading, format_timestamp_ms};
use crate::sink::backoff;
use crate::source::tls::{Connect, TlsError, mqtt_options};
use crate::telemetry::Metrics;

/// Action publishes waiting for the connection; more are counted as `backlog`.
const REQUEST_CAPACITY: usize = 1024;
/// Longest topic name MQTT can carry (its length is a 16-bit field).
const MAX_TOPIC_BYTES: usize = 65_535;
/// First and largest reconnect delay.
const BACKOFF: (Duration, Duration) = (Duration::from_millis(100), Duration::from_secs(30));

/// The client id of the actions connection of a source with client id `source`.
pub fn client_id(source: &str) -> String {
    format!("{source}-actions")
}

/// Why a rendered topic is not published.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TopicError {
    #[error("topic is empty")]
    Empty,
    #[error("topic is longer than 65535 bytes")]
    TooLong,
    #[error("topic holds a wildcard or a control character")]
    Forbidden,
    #[error("topic starts with '$', reserved for the broker")]
    Reserved,
}

/// A topic name an action may publish to: not empty, at most 65535 bytes, no wildcard, no
/// control character, not a `$` broker topic.
pub fn check_topic(topic: &str) -> Result<(), TopicError> {
    if topic.is_empty() {
        return Err(TopicError::Empty);
    }
    if topic.len() > MAX_TOPIC_BYTES {
        return Err(TopicError::TooLong);
    }
    if topic.starts_with('$') {
        return Err(TopicError::Reserved);
    }
    if topic
        .chars()
        .any(|c| c.is_control() || c == '+' || c == '#')
    {
        return Err(TopicError::Forbidden);
    }
    Ok(())
}

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
    /// Connects the actions of a pipeline to its source broker on a connection of their
    /// own; returns them and the task driving that connection (it ends after
    /// [`Actions::disconnect`]). No connection is made when the pipeline has no actions.
    pub fn connect(
        actions: &[Action],
        pipeline: &str,
        node: &str,
        source: &SourceSettings,
        metrics: Arc<Metrics>,
    ) -> Result<(Self, Option<JoinHandle<()>>), TlsError> {
        let client_id = client_id(&source.client_id);
        let mut options = mqtt_options(&Connect {
            client_id: &client_id,
            host: &source.host,
            port: source.port,
            tls: source.tls,
            material: &source.tls_material,
            username: source.username.as_deref(),
            password: source.password.as_deref(),
            keep_alive: source.keep_alive,
        })?;
        options.set_clean_session(true);
        let (client, events) = AsyncClient::new(options, REQUEST_CAPACITY);
        let task = (!actions.is_empty()).then(|| tokio::spawn(drive(events, source.url.clone())));
        Ok((Self::new(actions, pipeline, node, client, metrics), task))
    }

    /// Disconnects after the publishes already handed over.
    pub async fn disconnect(&self) {
        let _ = self.client.disconnect().await;
    }

    /// Actions publishing through `client`.
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
            if let Err(e) = check_topic(&topic) {
                self.failed("bad_topic");
                tracing::debug!(error = %e, device = %reading.device.escape_debug(), "local action not published");
                continue;
            }
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
                Err(e) => {
                    self.failed("backlog");
                    tracing::debug!(error = %e, "local action not published");
                }
            }
        }
    }

    fn failed(&self, reason: &'static str) {
        self.metrics
            .actions_failed
            .with_label_values(&[reason])
            .inc();
    }
}

/// Drives the actions connection: reconnects with capped backoff until disconnected.
async fn drive(mut events: EventLoop, url: String) {
    let mut failures = 0u32;
    loop {
        match events.poll().await {
            Ok(Event::Incoming(rumqttc::Incoming::ConnAck(_))) => {
                if failures > 0 {
                    tracing::info!(url = %url, "actions connection restored");
                }
                failures = 0;
            }
            Ok(Event::Outgoing(Outgoing::Disconnect)) | Err(ConnectionError::RequestsDone) => {
                return;
            }
            Ok(_) => {}
            Err(e) => {
                let delay = backoff(failures, BACKOFF.0, BACKOFF.1);
                if failures == 0 || failures.is_multiple_of(20) {
                    tracing::warn!(url = %url, error = %crate::diagnostics::chain(&e), retry_in = ?delay, "actions connection failed");
                }
                failures = failures.saturating_add(1);
                tokio::time::sleep(delay).await;
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
    fn only_valid_topic_names_are_published() {
        assert_eq!(check_topic("alerts/t1"), Ok(()));
        assert_eq!(check_topic(""), Err(TopicError::Empty));
        assert_eq!(check_topic("a/\u{0}"), Err(TopicError::Forbidden));
        assert_eq!(check_topic("a/\u{7f}"), Err(TopicError::Forbidden));
        assert_eq!(check_topic("a/+"), Err(TopicError::Forbidden));
        assert_eq!(check_topic("$SYS/x"), Err(TopicError::Reserved));
        assert_eq!(check_topic(&"a".repeat(65_536)), Err(TopicError::TooLong));
        assert_eq!(check_topic(&"a".repeat(65_535)), Ok(()));
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

//! Local actions: a JSON message published straight on the source broker when a device's
//! alert episode starts (a reading crosses a `threshold` processor, inference flags an
//! anomaly, an image is classified) and, if asked, when it ends. Never queued, never
//! waiting on the upstream or on the queue's commit. When to publish is decided by the
//! pure state machine in [`episodes`]; this module renders and publishes.
//!
//! Actions publish on a connection of their own (client id `<source client id>-actions`,
//! clean session, `TCP_NODELAY`), so a publish the broker refuses, or a broker that drops
//! the connection over one, can never disturb ingest and its persistent session. Every
//! rendered topic is checked first ([`check_topic`]). Every action that is not written to
//! the connection is counted in `edge_agent_actions_failed_total{reason}`: `bad_topic`,
//! `backlog` (the connection's request queue is full) or `disconnected` (lost with the
//! connection, or with the agent stopping, before it was written). One that is written
//! is counted in `edge_agent_actions_published_total`, and the time from receiving its
//! reading to that write in `edge_agent_action_latency_seconds`.
//!
//! The pipeline never publishes: it reports what happened as [`Effect`]s, in order, and
//! ingest hands them to [`Actions::perform`] before it queues the batch's records.

pub mod episodes;

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use edge_crds::{Action, ActionTrigger};
use rumqttc::{AsyncClient, ConnectionError, Event, EventLoop, Outgoing, QoS, Request};
use serde::Serialize;
use tokio::task::JoinHandle;

use self::episodes::{Decision, Episodes, Rules, Signal, margin_signal, score_signal};
use crate::config::AgentConfig;
use crate::record::{Reading, format_timestamp_ms};
use crate::runtime::backoff::backoff;
use crate::runtime::telemetry::Metrics;
use crate::runtime::tls::{Connect, TlsError, mqtt_options};

/// Action publishes waiting for the connection; more are counted as `backlog`.
const REQUEST_CAPACITY: usize = 1024;
/// Longest topic name MQTT can carry (its length is a 16-bit field).
const MAX_TOPIC_BYTES: usize = 65_535;
/// First and largest reconnect delay.
const BACKOFF: (Duration, Duration) = (Duration::from_millis(100), Duration::from_secs(30));

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
    /// `threshold`, `anomaly` or `classification`.
    pub trigger: &'static str,
    /// `firing` when the episode starts (this reading started it), `resolved` when it
    /// ends (this reading cleared it).
    pub state: &'static str,
    /// Resolved messages: the time of the reading that started the episode, RFC 3339.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub since: Option<String>,
    /// Anomaly score, or the top class's score.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub score: Option<f64>,
    /// Top class of an image classification.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub label: Option<&'a str>,
}

/// One configured action and the episodes of its devices.
struct Configured {
    action: Action,
    episodes: Episodes,
    /// `trigger: anomaly`: a score above this fires.
    threshold: f64,
    /// `trigger: anomaly`: a score at or below this clears.
    clear_below: f64,
    /// `trigger: threshold`: a margin at least this far inside the limits clears.
    hysteresis: f64,
}

impl Configured {
    fn new(action: &Action, threshold: f64, max_devices: usize) -> Self {
        let rules = Rules {
            clear_after: action.clear_after.unwrap_or(1),
            cooldown: action
                .cooldown
                .as_ref()
                .and_then(|c| c.to_std().ok())
                .unwrap_or_default(),
            single_events: action.trigger == ActionTrigger::Classification,
        };
        Self {
            action: action.clone(),
            episodes: Episodes::new(rules, max_devices),
            threshold,
            clear_below: action.clear_below.unwrap_or(threshold).min(threshold),
            hysteresis: action.hysteresis.unwrap_or(0.0).max(0.0),
        }
    }
}

/// What a reading said, for the message.
#[derive(Clone, Copy)]
struct Occurrence<'a> {
    trigger: ActionTrigger,
    reading: &'a Reading,
    score: Option<f64>,
    label: Option<&'a str>,
    received: Instant,
}

/// The configured actions of one pipeline.
pub struct Actions {
    actions: Vec<Configured>,
    pipeline: String,
    node: String,
    client: AsyncClient,
    handed: Arc<Handed>,
    metrics: Arc<Metrics>,
}

/// What a reading did that actions may fire on: the pipeline's output, performed by
/// [`Actions::perform`] in the order the pipeline reports them.
#[derive(Clone, Debug, PartialEq)]
pub enum Effect {
    /// A reading reached the threshold processors, `margin` inside their limits
    /// (negative: beyond one).
    Threshold {
        /// The reading.
        reading: Reading,
        /// Distance to the nearest limit.
        margin: f64,
        /// Its arrival (monotonic).
        received: Instant,
    },
    /// Inference scored a reading's window.
    Score {
        /// The reading that completed the window.
        reading: Reading,
        /// The anomaly score.
        score: f64,
        /// Its arrival (monotonic).
        received: Instant,
    },
    /// Inference classified an image (`reading.value` is the top score).
    Classification {
        /// The image's device, topic and times.
        reading: Reading,
        /// The top label.
        label: String,
        /// Its arrival (monotonic).
        received: Instant,
    },
}

impl Effect {
    /// The trigger that actions fire on for this effect.
    pub fn trigger(&self) -> ActionTrigger {
        match self {
            Effect::Threshold { .. } => ActionTrigger::Threshold,
            Effect::Score { .. } => ActionTrigger::Anomaly,
            Effect::Classification { .. } => ActionTrigger::Classification,
        }
    }
}

/// The effects of one batch, in order, kept only for the triggers some action fires on
/// (a pipeline without actions collects nothing).
#[derive(Debug, Default)]
pub struct Effects {
    wanted: Vec<ActionTrigger>,
    list: Vec<Effect>,
}

impl Effects {
    /// Effects of the triggers the actions of `config` fire on.
    pub fn for_config(config: &AgentConfig) -> Self {
        let mut wanted: Vec<ActionTrigger> =
            config.spec.actions.iter().map(|a| a.trigger).collect();
        wanted.dedup();
        Self {
            wanted,
            list: Vec::new(),
        }
    }

    /// Adds the effect `make` builds, if some action fires on `trigger`.
    pub fn add(&mut self, trigger: ActionTrigger, make: impl FnOnce() -> Effect) {
        if self.wanted.contains(&trigger) {
            self.list.push(make());
        }
    }

    /// Takes the effects collected so far, in order; the wanted triggers stay.
    pub fn take(&mut self) -> Vec<Effect> {
        std::mem::take(&mut self.list)
    }
}

impl Actions {
    /// Fires the actions of `effect`'s trigger.
    pub fn perform(&mut self, effect: &Effect) {
        match effect {
            Effect::Threshold {
                reading,
                margin,
                received,
            } => self.on_threshold(reading, *margin, *received),
            Effect::Score {
                reading,
                score,
                received,
            } => self.on_score(reading, *score, *received),
            Effect::Classification {
                reading,
                label,
                received,
            } => self.on_classification(reading, label, reading.value, *received),
        }
    }

    /// Connects the actions of a pipeline to its source broker on a connection of their
    /// own; returns them and the task driving that connection (it ends after
    /// [`Actions::disconnect`]). No connection is made when the pipeline has no actions.
    pub fn connect(
        config: &AgentConfig,
        metrics: Arc<Metrics>,
    ) -> Result<(Self, Option<JoinHandle<()>>), TlsError> {
        let source = &config.source;
        let client_id = source.actions_client_id();
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
        let (client, mut events) = AsyncClient::new(options, REQUEST_CAPACITY);
        // An alert is one small packet: sent at once, not held back for more to come.
        events.network_options.set_tcp_nodelay(true);
        let actions = Self::new(config, client, metrics);
        let task = (!config.spec.actions.is_empty())
            .then(|| tokio::spawn(drive(events, source.url.clone(), actions.handed.clone())));
        Ok((actions, task))
    }

    /// Disconnects after the publishes already handed over.
    pub async fn disconnect(&self) {
        let _ = self.client.disconnect().await;
    }

    /// The actions of `config`, publishing through `client` (whose event loop the caller
    /// drives).
    pub fn new(config: &AgentConfig, client: AsyncClient, metrics: Arc<Metrics>) -> Self {
        let threshold = config
            .spec
            .inference
            .as_ref()
            .map_or(f64::INFINITY, |i| i.threshold);
        let max_devices = config.source.max_devices;
        Self {
            actions: config
                .spec
                .actions
                .iter()
                .map(|a| Configured::new(a, threshold, max_devices))
                .collect(),
            pipeline: config.pipeline.clone(),
            node: config.node.clone(),
            client,
            handed: Arc::new(Handed::new(metrics.clone())),
            metrics,
        }
    }

    /// True when some action fires on `trigger`.
    pub fn wants(&self, trigger: ActionTrigger) -> bool {
        self.actions.iter().any(|a| a.action.trigger == trigger)
    }

    /// A reading reached the threshold processors, `margin` inside their limits (negative:
    /// beyond one, it passed a threshold processor).
    pub fn on_threshold(&mut self, reading: &Reading, margin: f64, received: Instant) {
        let event = Occurrence {
            trigger: ActionTrigger::Threshold,
            reading,
            score: None,
            label: None,
            received,
        };
        self.observe(event, |a| margin_signal(margin, a.hysteresis));
    }

    /// Inference scored a reading's window (every score, anomalous or not: a low score
    /// ends an episode).
    pub fn on_score(&mut self, reading: &Reading, score: f64, received: Instant) {
        let event = Occurrence {
            trigger: ActionTrigger::Anomaly,
            reading,
            score: Some(score),
            label: None,
            received,
        };
        self.observe(event, |a| score_signal(score, a.threshold, a.clear_below));
    }

    /// Inference classified an image from `reading.device` as `label`.
    pub fn on_classification(
        &mut self,
        reading: &Reading,
        label: &str,
        score: f64,
        received: Instant,
    ) {
        let event = Occurrence {
            trigger: ActionTrigger::Classification,
            reading,
            score: Some(score),
            label: Some(label),
            received,
        };
        self.observe(event, |_| Signal::Fire);
    }

    /// Runs the reading through the episodes of every action of its trigger and publishes
    /// what they decide.
    fn observe(&mut self, event: Occurrence<'_>, signal: impl Fn(&Configured) -> Signal) {
        for i in 0..self.actions.len() {
            let Some(configured) = self.actions.get_mut(i) else {
                continue;
            };
            if configured.action.trigger != event.trigger {
                continue;
            }
            let signal = signal(configured);
            let r = event.reading;
            let decision =
                configured
                    .episodes
                    .observe(&r.device, signal, event.received, r.timestamp_ms);
            match decision {
                Decision::Nothing => {}
                Decision::Suppressed(why) => self
                    .metrics
                    .actions_suppressed
                    .with_label_values(&[why.as_str()])
                    .inc(),
                Decision::Start => {
                    let (topic, mqtt) = (&configured.action.mqtt.topic, &configured.action.mqtt);
                    let (topic, qos, retain) = (topic.clone(), mqtt.qos, mqtt.retain);
                    self.publish(&topic, qos, retain, event, "firing", None);
                }
                Decision::Resolve { started_ms } => {
                    let Some(resolved) = &configured.action.resolved else {
                        continue;
                    };
                    let mqtt = &configured.action.mqtt;
                    let topic = resolved.topic.clone().unwrap_or_else(|| mqtt.topic.clone());
                    let (qos, retain) = (mqtt.qos, mqtt.retain);
                    let since = Some(format_timestamp_ms(started_ms));
                    self.publish(&topic, qos, retain, event, "resolved", since);
                }
            }
        }
    }

    /// Renders and publishes one message of an action.
    fn publish(
        &self,
        template: &str,
        qos: u8,
        retain: bool,
        event: Occurrence<'_>,
        state: &'static str,
        since: Option<String>,
    ) {
        let reading = event.reading;
        let message = ActionMessage {
            pipeline: &self.pipeline,
            node: &self.node,
            device: &reading.device,
            topic: &reading.topic,
            value: reading.value,
            timestamp: format_timestamp_ms(reading.timestamp_ms),
            trigger: trigger_name(event.trigger),
            state,
            since,
            score: event.score,
            label: event.label,
        };
        // Strings and finite numbers: encoding cannot fail (a NaN would be `null`).
        let payload = serde_json::to_vec(&message).unwrap_or_default();
        let topic = render_topic(template, &reading.device, &self.pipeline, &self.node);
        if let Err(e) = check_topic(&topic) {
            self.failed("bad_topic");
            tracing::debug!(error = %e, device = %reading.device.escape_debug(), "local action not published");
            return;
        }
        let qos = if qos == 0 {
            QoS::AtMostOnce
        } else {
            QoS::AtLeastOnce
        };
        if let Err(e) =
            self.handed
                .publish(&self.client, topic, qos, retain, payload, event.received)
        {
            self.failed("backlog");
            tracing::debug!(error = %e, "local action not published");
        }
    }

    fn failed(&self, reason: &'static str) {
        self.metrics
            .actions_failed
            .with_label_values(&[reason])
            .inc();
    }
}

/// The publishes handed to the connection and not yet written to it, oldest first (the
/// receive time of each one's reading). The event loop writes them in this order and says
/// so with an `Outgoing::Publish` event each, which is when they count as published.
struct Handed {
    waiting: Mutex<VecDeque<Instant>>,
    metrics: Arc<Metrics>,
}

impl Handed {
    fn new(metrics: Arc<Metrics>) -> Self {
        Self {
            waiting: Mutex::new(VecDeque::new()),
            metrics,
        }
    }

    fn lock(&self) -> MutexGuard<'_, VecDeque<Instant>> {
        self.waiting.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Hands a publish to the connection. The list is held across the hand-over, so its
    /// order is the order of the connection's request queue.
    fn publish(
        &self,
        client: &AsyncClient,
        topic: String,
        qos: QoS,
        retain: bool,
        payload: Vec<u8>,
        received: Instant,
    ) -> Result<(), rumqttc::ClientError> {
        let mut waiting = self.lock();
        client.try_publish(topic, qos, retain, payload)?;
        waiting.push_back(received);
        Ok(())
    }

    /// The oldest waiting publish was written to the connection.
    fn written(&self) {
        if let Some(received) = self.lock().pop_front() {
            self.metrics.actions_published.inc();
            self.metrics
                .action_latency
                .observe(received.elapsed().as_secs_f64());
        }
    }

    /// The connection failed. rumqttc moved the requests it had not taken yet into
    /// `events.pending`, and a new clean session drops them: they are counted as lost
    /// here (and taken out, so nothing else sends them). Publishes whose `Outgoing`
    /// event is still buffered in the event loop come out after the reconnect; they are
    /// ahead of the lost ones in the list.
    fn connection_lost(&self, events: &mut EventLoop) {
        let buffered = events
            .state
            .events
            .iter()
            .filter(|e| matches!(e, Event::Outgoing(Outgoing::Publish(_))))
            .count();
        let before = events.pending.len();
        // Not taken yet: no packet id assigned. Publishes already written carry one.
        events
            .pending
            .retain(|r| !matches!(r, Request::Publish(p) if p.pkid == 0));
        let lost = before - events.pending.len();
        if lost == 0 {
            return;
        }
        let mut waiting = self.lock();
        let from = buffered.min(waiting.len());
        let to = (buffered + lost).min(waiting.len());
        waiting.drain(from..to);
        self.lost(lost as u64);
    }

    fn lost(&self, n: u64) {
        self.metrics
            .actions_failed
            .with_label_values(&["disconnected"])
            .inc_by(n);
    }
}

/// Counts what is still waiting when the connection's task ends (or is aborted at
/// shutdown) as lost.
struct LostAtExit(Arc<Handed>);

impl Drop for LostAtExit {
    fn drop(&mut self) {
        let left = self.0.lock().drain(..).count();
        if left > 0 {
            self.0.lost(left as u64);
        }
    }
}

/// Drives the actions connection: accounts for every publish as it is written (or lost),
/// reconnects with capped backoff until disconnected.
async fn drive(mut events: EventLoop, url: String, handed: Arc<Handed>) {
    let _exit = LostAtExit(handed.clone());
    let mut failures = 0u32;
    loop {
        match events.poll().await {
            Ok(Event::Outgoing(Outgoing::Publish(_))) => handed.written(),
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
                handed.connection_lost(&mut events);
                let delay = backoff(failures, BACKOFF.0, BACKOFF.1);
                if failures == 0 || failures.is_multiple_of(20) {
                    tracing::warn!(url = %url, error = %crate::runtime::diagnostics::chain(&e), retry_in = ?delay, "actions connection failed");
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
    fn publishes_count_when_written_and_those_lost_with_the_connection_as_disconnected() {
        use rumqttc::{MqttOptions, Publish};
        let metrics = Arc::new(Metrics::new("f/l").unwrap());
        let handed = Handed::new(metrics.clone());
        let t0 = Instant::now();
        let at: Vec<Instant> = (0..4).map(|i| t0 + Duration::from_millis(i)).collect();
        handed.lock().extend(&at);
        let mut events = EventLoop::new(MqttOptions::new("t", "127.0.0.1", 1), 10);
        // at[0] was written, its event is still buffered; at[1] and at[2] were never
        // taken from the request queue; a written QoS 1 publish (packet id 5) awaits its
        // PUBACK; at[3] was handed over after the failure.
        events
            .state
            .events
            .push_back(Event::Outgoing(Outgoing::Publish(0)));
        let fresh = || Request::Publish(Publish::new("a", QoS::AtMostOnce, vec![]));
        let mut inflight = Publish::new("a", QoS::AtLeastOnce, vec![]);
        inflight.pkid = 5;
        events
            .pending
            .extend([Request::Publish(inflight), fresh(), fresh()]);
        handed.connection_lost(&mut events);
        let failed = |reason: &str| metrics.actions_failed.with_label_values(&[reason]).get();
        assert_eq!(failed("disconnected"), 2);
        assert_eq!(
            events.pending.len(),
            1,
            "only the in-flight publish is left"
        );
        assert_eq!(*handed.lock(), [at[0], at[3]]);
        handed.written();
        assert_eq!(metrics.actions_published.get(), 1);
        assert_eq!(metrics.action_latency.get_sample_count(), 1);
        // The task ends with at[3] never written: lost too.
        drop(LostAtExit(Arc::new(handed)));
        assert_eq!(failed("disconnected"), 3);
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
            state: "firing",
            since: None,
            score: None,
            label: None,
        };
        assert_eq!(
            serde_json::to_value(&m).unwrap(),
            serde_json::json!({"pipeline":"factory/line1","node":"edge-1","device":"t1",
                "topic":"sensors/t1/temperature","value":101.5,
                "timestamp":"2026-11-25T12:00:00.123Z","trigger":"threshold",
                "state":"firing"})
        );
    }
}

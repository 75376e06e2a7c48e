//! The MQTT source: a persistent session on the node's broker (`clean_session = false`,
//! a stable client id, manual acknowledgements), so that a message is acknowledged only
//! after its outcome is committed to the queue and anything not acknowledged is
//! redelivered by the broker after a reconnect or a restart.
//!
//! One task drives the rumqttc event loop: it reconnects with jittered, capped backoff,
//! subscribes again whenever the broker has no session for us, and forwards each message
//! to the ingest loop through a bounded channel. Acknowledgements go back through a
//! [`SourceHandle`]; one for a message received on an earlier connection is not sent (the
//! broker redelivers that message on the new connection, where it is acknowledged), so a
//! stale acknowledgement can never release a different message that reused its packet id.
//! New credentials (a rotated password or certificate, see [`crate::credentials`]) end the
//! connection the same way and the client reconnects with them.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use rumqttc::{
    AsyncClient, ConnectionError, Event, EventLoop, Incoming, MqttOptions, Outgoing, Publish, QoS,
    Request, StateError, Subscribe, SubscribeFilter, SubscribeReasonCode, mqttbytes,
};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::oversized;
use super::tls::{Connect, TlsError, client_config, mqtt_options};
use crate::config::SourceSettings;
use crate::credentials::Updates;
use crate::http::Health;
use crate::parse::InvalidReason;
use crate::queue::now_ms;
use crate::sink::backoff;
use crate::telemetry::Metrics;

/// Messages waiting for the ingest loop. When it is full, messages wait in the driver
/// (see [`HELD_LIMIT`]) and the event loop goes on sending acknowledgements and
/// keep-alives: a connection never drops because ingest is behind.
const MESSAGE_CAPACITY: usize = 4096;
/// Messages the driver holds while the channel to ingest is full. The broker's in-flight
/// window (unacknowledged messages) bounds them in practice; past this the driver waits
/// for ingest again instead of reading more (a broker without a window).
const HELD_LIMIT: usize = 65_536;
/// Requests (acknowledgements) waiting for the event loop.
const REQUEST_CAPACITY: usize = 4096;
/// Room for the fixed header, the topic (at most 64 KiB) and the packet id on top of the
/// payload limit.
const PACKET_OVERHEAD: usize = 64 * 1024 + 8;
/// First reconnect delay.
const INITIAL_BACKOFF: Duration = Duration::from_millis(100);
/// Largest reconnect delay.
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// One message from the source broker.
pub struct Message {
    /// The MQTT publish.
    pub publish: Publish,
    /// When it arrived (monotonic).
    pub received: Instant,
    /// When it arrived (unix milliseconds).
    pub received_ms: i64,
    /// The connection it arrived on.
    generation: u64,
}

/// Sends acknowledgements on the source connection.
#[derive(Clone)]
pub struct SourceHandle {
    client: AsyncClient,
    generation: Arc<AtomicU64>,
}

impl SourceHandle {
    /// Acknowledges `message` (QoS 1) unless its connection is gone.
    pub async fn ack(&self, message: &Message) {
        if message.publish.qos == QoS::AtMostOnce
            || message.generation != self.generation.load(Ordering::Acquire)
        {
            return;
        }
        if let Err(e) = self.client.ack(&message.publish).await {
            tracing::debug!(error = %e, "acknowledgement not sent: the source loop stopped");
        }
    }

    /// Asks the event loop to disconnect cleanly after the requests already queued
    /// (acknowledgements included).
    pub async fn disconnect(&self) {
        let _ = self.client.disconnect().await;
    }
}

/// How the source connects: the client options (credentials and TLS included) and the
/// same session's target for clearing an oversized message. Rebuilt when the credentials
/// change (see [`crate::credentials`]).
#[derive(Clone)]
pub struct SourceConnection {
    options: MqttOptions,
    clear: oversized::Target,
    incoming: usize,
}

impl SourceConnection {
    /// The connection of `settings`.
    pub fn new(settings: &SourceSettings) -> Result<Self, TlsError> {
        let mut options = mqtt_options(&Connect {
            client_id: &settings.client_id,
            host: &settings.host,
            port: settings.port,
            tls: settings.tls,
            material: &settings.tls_material,
            username: settings.username.as_deref(),
            password: settings.password.as_deref(),
            keep_alive: settings.keep_alive,
        })?;
        options.set_clean_session(false);
        options.set_manual_acks(true);
        // A payload up to the limit plus the largest topic reaches the parser; a larger
        // packet breaks the connection and is cleared by `oversized::clear`.
        let incoming = settings.max_payload_bytes.saturating_add(PACKET_OVERHEAD);
        options.set_max_packet_size(incoming, 1024 * 1024);
        let clear = oversized::Target {
            host: settings.host.clone(),
            port: settings.port,
            tls: match settings.tls {
                true => Some(Arc::new(client_config(&settings.tls_material)?)),
                false => None,
            },
            client_id: settings.client_id.clone(),
            credentials: settings.username.clone().zip(settings.password.clone()),
            keep_alive: settings.keep_alive,
        };
        Ok(Self {
            options,
            clear,
            incoming,
        })
    }
}

/// Connects to the source broker; returns the handle, the message stream, and the task
/// driving the connection (it ends after [`SourceHandle::disconnect`]). A connection from
/// `updates` (new credentials) replaces the current one: the client reconnects with it.
pub fn start(
    settings: &SourceSettings,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
    updates: Updates<SourceConnection>,
) -> Result<(SourceHandle, mpsc::Receiver<Message>, JoinHandle<()>), TlsError> {
    let SourceConnection {
        options,
        clear,
        incoming,
    } = SourceConnection::new(settings)?;
    let (client, mut events) = AsyncClient::new(options, REQUEST_CAPACITY);
    // Acknowledgements are small packets that should leave at once, not wait for more.
    events.network_options.set_tcp_nodelay(true);
    let generation = Arc::new(AtomicU64::new(0));
    let (tx, rx) = mpsc::channel(MESSAGE_CAPACITY);
    let qos = if settings.qos == 0 {
        QoS::AtMostOnce
    } else {
        QoS::AtLeastOnce
    };
    let filters: Vec<SubscribeFilter> = settings
        .topics
        .iter()
        .map(|t| SubscribeFilter::new(t.clone(), qos))
        .collect();
    let driver = Driver {
        events,
        tx,
        held: std::collections::VecDeque::new(),
        filters,
        generation: generation.clone(),
        metrics,
        health,
        url: settings.url.clone(),
        clear,
        incoming,
        updates,
    };
    let task = tokio::spawn(driver.run());
    Ok((SourceHandle { client, generation }, rx, task))
}

struct Driver {
    events: EventLoop,
    tx: mpsc::Sender<Message>,
    /// Messages received while the channel to ingest was full, oldest first.
    held: std::collections::VecDeque<Message>,
    filters: Vec<SubscribeFilter>,
    generation: Arc<AtomicU64>,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
    url: String,
    /// The session, for clearing a message too large to receive.
    clear: oversized::Target,
    /// Largest packet the client reads.
    incoming: usize,
    /// New connections (new credentials).
    updates: Updates<SourceConnection>,
}

impl Driver {
    async fn run(mut self) {
        let mut failures = 0u32;
        let mut intake_open = true;
        loop {
            // Held messages go first, as the channel makes room; meanwhile the event loop
            // keeps running (acknowledgements, keep-alives), unless the driver holds so
            // many that it waits for ingest instead.
            let hold_full = self.held.len() >= HELD_LIMIT;
            enum Next {
                Event(Result<Event, ConnectionError>),
                Room(bool),
                Update,
            }
            let next = tokio::select! {
                biased;
                permit = self.tx.reserve(), if intake_open && !self.held.is_empty() => {
                    match permit {
                        Ok(permit) => {
                            if let Some(message) = self.held.pop_front() {
                                permit.send(message);
                            }
                            Next::Room(true)
                        }
                        Err(_) => Next::Room(false),
                    }
                }
                event = self.events.poll(), if !hold_full || !intake_open => Next::Event(event),
                () = self.updates.changed() => Next::Update,
            };
            let event = match next {
                Next::Event(event) => event,
                Next::Room(open) => {
                    if !open {
                        intake_open = false;
                        self.held.clear();
                    }
                    continue;
                }
                Next::Update => {
                    self.reconnect();
                    continue;
                }
            };
            match event {
                Ok(Event::Incoming(Incoming::ConnAck(ack))) => {
                    failures = 0;
                    self.generation.fetch_add(1, Ordering::AcqRel);
                    self.metrics.mqtt_connections.inc();
                    self.connected(true);
                    tracing::info!(url = %crate::diagnostics::url(&self.url), session_present = ack.session_present, "connected to the source broker");
                    if !ack.session_present && !self.filters.is_empty() {
                        // Ahead of any queued request; the event loop sends it first.
                        let subscribe = Subscribe::new_many(self.filters.clone());
                        self.events
                            .pending
                            .push_front(Request::Subscribe(subscribe));
                    }
                }
                Ok(Event::Incoming(Incoming::Publish(publish))) => {
                    let message = Message {
                        publish,
                        received: Instant::now(),
                        received_ms: now_ms(),
                        generation: self.generation.load(Ordering::Acquire),
                    };
                    // Once intake is closed (shutting down) messages stay unacknowledged
                    // and the broker redelivers them to the next run.
                    if intake_open {
                        self.forward(message, &mut intake_open);
                    }
                }
                Ok(Event::Incoming(Incoming::SubAck(ack))) => {
                    if ack
                        .return_codes
                        .iter()
                        .any(|c| matches!(c, SubscribeReasonCode::Failure))
                    {
                        tracing::error!(codes = ?ack.return_codes, "the source broker refused a subscription");
                    } else {
                        tracing::info!(topics = self.filters.len(), "subscribed");
                    }
                }
                Ok(Event::Outgoing(Outgoing::Disconnect)) => {
                    self.connected(false);
                    tracing::info!("disconnected from the source broker");
                    return;
                }
                Ok(_) => {}
                Err(ConnectionError::RequestsDone) => {
                    self.connected(false);
                    return;
                }
                Err(ConnectionError::MqttState(StateError::Deserialization(
                    mqttbytes::Error::PayloadSizeLimitExceeded(size),
                ))) => {
                    // Still connected as far as readiness goes: the session is resumed at
                    // once, after the message that cannot be received is cleared.
                    self.generation.fetch_add(1, Ordering::AcqRel);
                    match oversized::clear(&self.clear, self.incoming).await {
                        Ok(n) => {
                            tracing::warn!(
                                size,
                                limit = self.incoming,
                                cleared = n,
                                "acknowledged and skipped messages larger than the packet limit"
                            );
                            self.metrics.messages_received.inc_by(n);
                            self.metrics
                                .messages_invalid
                                .with_label_values(&[InvalidReason::TooLarge.as_str()])
                                .inc_by(n);
                        }
                        Err(e) => {
                            tracing::warn!(size, error = %crate::diagnostics::chain(&e), "a message larger than the packet limit could not be cleared");
                            failures = failures.saturating_add(1);
                            tokio::time::sleep(backoff(failures, INITIAL_BACKOFF, MAX_BACKOFF))
                                .await;
                        }
                    }
                }
                Err(e) => {
                    self.generation.fetch_add(1, Ordering::AcqRel);
                    self.connected(false);
                    let delay = backoff(failures, INITIAL_BACKOFF, MAX_BACKOFF);
                    if failures == 0 || failures.is_multiple_of(20) {
                        tracing::warn!(url = %crate::diagnostics::url(&self.url), error = %crate::diagnostics::chain(&e), retry_in = ?delay, "source broker connection failed");
                    }
                    failures = failures.saturating_add(1);
                    tokio::time::sleep(delay).await;
                }
            }
        }
    }

    /// Hands `message` to ingest, or holds it (in order) while the channel is full.
    fn forward(&mut self, message: Message, intake_open: &mut bool) {
        if !self.held.is_empty() {
            self.held.push_back(message);
            return;
        }
        match self.tx.try_send(message) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(message)) => self.held.push_back(message),
            Err(mpsc::error::TrySendError::Closed(_)) => *intake_open = false,
        }
    }

    /// Drops the connection to connect again with the new one from `updates`. Messages of
    /// the old connection are not acknowledged on the new one: the broker redelivers them.
    fn reconnect(&mut self) {
        let Some(next) = self.updates.take() else {
            return;
        };
        tracing::info!(url = %crate::diagnostics::url(&self.url), "reconnecting to the source broker with the new credentials");
        self.generation.fetch_add(1, Ordering::AcqRel);
        self.events.mqtt_options = next.options;
        self.clear = next.clear;
        self.incoming = next.incoming;
        self.events.clean();
    }

    fn connected(&self, up: bool) {
        self.metrics.mqtt_connected.set(i64::from(up));
        self.health.set_mqtt_connected(up);
    }
}

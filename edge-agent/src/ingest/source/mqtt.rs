//! The MQTT source: a persistent session on the node's broker (`clean_session = false`,
//! a stable client id, manual acknowledgements), so that a message is acknowledged only
//! after its outcome is committed to the queue and anything not acknowledged is
//! redelivered by the broker after a reconnect or a restart.
//!
//! One task drives the rumqttc event loop: it reconnects with jittered, capped backoff,
//! subscribes again whenever the broker has no session for us, and forwards each message
//! to the ingest loop through a bounded channel. What it has read and ingest has not yet
//! taken in is bounded in bytes (see [`BUDGET_BYTES`]), whatever the broker's in-flight
//! window: past it the task stops reading and TCP holds the broker back. Acknowledgements
//! go back through a [`SourceHandle`] as [`Receipt`]s (the payload is gone by then) to the
//! same task, which writes all that are waiting at once, ahead of reading more: through
//! the client's request channel they left one per event-loop turn, each turn also reading
//! ten messages, so they fell ever further behind a busy broker. One for a message
//! received on an earlier connection is not sent (the broker redelivers that message on
//! the new connection, where it is acknowledged), so a stale acknowledgement can never
//! release a different message that reused its packet id.
//! New credentials (a rotated password or certificate, see [`crate::runtime::credentials`]) end the
//! connection the same way and the client reconnects with them.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use rumqttc::{
    AsyncClient, ConnectionError, Event, EventLoop, Incoming, MqttOptions, Outgoing, Packet,
    PubAck, Publish, QoS, Request, StateError, Subscribe, SubscribeFilter, SubscribeReasonCode,
    mqttbytes,
};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio::task::JoinHandle;

use super::oversized;
use crate::config::SourceSettings;
use crate::record::InvalidReason;
use crate::runtime::backoff::backoff;
use crate::runtime::clock::now_ms;
use crate::runtime::credentials::Updates;
use crate::runtime::health::Health;
use crate::runtime::telemetry::Metrics;
use crate::runtime::tls::{TlsError, client_config, mqtt_options};

/// The [`Connect`](crate::runtime::tls::Connect) of settings that name a broker and how to log in
/// to it: the source's and the MQTT sink's, which hold the same fields under the same
/// names.
macro_rules! connect {
    ($settings:expr, keep_alive: $keep_alive:expr) => {
        $crate::runtime::tls::Connect {
            client_id: &$settings.client_id,
            host: &$settings.host,
            port: $settings.port,
            tls: $settings.tls,
            material: &$settings.tls_material,
            username: $settings.username.as_deref(),
            password: $settings.password.as_deref(),
            keep_alive: $keep_alive,
        }
    };
}
pub(crate) use connect;

/// Messages waiting for the ingest loop. When it is full, messages wait in the driver
/// and the event loop goes on sending acknowledgements and keep-alives: a connection
/// never drops because ingest is behind.
const MESSAGE_CAPACITY: usize = 4096;
/// Bytes of messages read from the broker and not yet taken in by ingest (payload, topic
/// and bookkeeping), in the channel and held by the driver. Past it the driver stops
/// reading until ingest catches up. A broker's in-flight window does not bound this:
/// Mosquitto 2.0 sent more than 14,000 unacknowledged messages past a window of 1,000.
/// Raised to one message of the largest size when `maxPayloadSize` is above it.
const BUDGET_BYTES: usize = 16 * 1024 * 1024;
/// Room for held messages kept once they are all handed on.
const HELD_KEPT: usize = 1024;
/// What a message costs beyond its payload and topic: the message itself and the
/// allocations behind it.
const MESSAGE_OVERHEAD: usize = std::mem::size_of::<Message>() + 64;
/// Requests (subscriptions, the disconnect) waiting for the event loop.
const REQUEST_CAPACITY: usize = 64;
/// Acknowledgements waiting for the driver.
const ACK_CAPACITY: usize = 4096;
/// Room for the fixed header, the topic (at most 64 KiB) and the packet id on top of the
/// payload limit.
const PACKET_OVERHEAD: usize = 64 * 1024 + 8;
/// First reconnect delay.
const INITIAL_BACKOFF: Duration = Duration::from_millis(100);
/// Largest reconnect delay.
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// One message from the source broker. Its bytes count against the source's budget until
/// it is turned into its [`Receipt`].
pub struct Message {
    /// The MQTT publish.
    pub publish: Publish,
    /// When it arrived (monotonic).
    pub received: Instant,
    /// When it arrived (unix milliseconds).
    pub received_ms: i64,
    /// The connection it arrived on.
    generation: u64,
    /// Its share of [`BUDGET_BYTES`], returned when it is dropped.
    _budget: OwnedSemaphorePermit,
}

impl Message {
    /// What acknowledging this message takes; the payload and its budget are released.
    pub fn receipt(self) -> Receipt {
        Receipt {
            pkid: self.publish.pkid,
            qos: self.publish.qos,
            generation: self.generation,
        }
    }
}

/// A message already taken in, waiting for its acknowledgement.
pub struct Receipt {
    pkid: u16,
    qos: QoS,
    generation: u64,
}

/// Sends acknowledgements on the source connection.
#[derive(Clone)]
pub struct SourceHandle {
    client: AsyncClient,
    acks: mpsc::Sender<Receipt>,
}

impl SourceHandle {
    /// Acknowledges the message of `receipt` (QoS 1) unless its connection is gone.
    pub async fn ack(&self, receipt: Receipt) {
        if receipt.qos == QoS::AtMostOnce {
            return;
        }
        if self.acks.send(receipt).await.is_err() {
            tracing::debug!("acknowledgement not sent: the source loop stopped");
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
/// change (see [`crate::runtime::credentials`]).
#[derive(Clone)]
pub struct SourceConnection {
    options: MqttOptions,
    clear: oversized::Target,
    incoming: usize,
}

impl SourceConnection {
    /// The connection of `settings`.
    pub fn new(settings: &SourceSettings) -> Result<Self, TlsError> {
        let mut options = mqtt_options(&connect!(settings, keep_alive: settings.keep_alive))?;
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
    let (acks_tx, acks) = mpsc::channel(ACK_CAPACITY);
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
    let budget = BUDGET_BYTES.max(incoming.saturating_add(MESSAGE_OVERHEAD));
    let driver = Driver {
        events,
        tx,
        held: std::collections::VecDeque::new(),
        budget: Arc::new(Semaphore::new(budget)),
        budget_bytes: budget,
        waiting: None,
        acks,
        ack_batch: Vec::new(),
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
    Ok((
        SourceHandle {
            client,
            acks: acks_tx,
        },
        rx,
        task,
    ))
}

/// A message read from the broker, before it has its share of the budget.
struct Arrival {
    publish: Publish,
    received: Instant,
    received_ms: i64,
    generation: u64,
}

impl Arrival {
    /// Its share of a budget of `budget` bytes: its payload and topic and the bookkeeping,
    /// at most the whole budget.
    fn cost(&self, budget: usize) -> u32 {
        let bytes = self.publish.payload.len() + self.publish.topic.len() + MESSAGE_OVERHEAD;
        u32::try_from(bytes.min(budget)).unwrap_or(u32::MAX)
    }

    fn into_message(self, budget: OwnedSemaphorePermit) -> Message {
        Message {
            publish: self.publish,
            received: self.received,
            received_ms: self.received_ms,
            generation: self.generation,
            _budget: budget,
        }
    }
}

struct Driver {
    events: EventLoop,
    tx: mpsc::Sender<Message>,
    /// Messages received while the channel to ingest was full, oldest first.
    held: std::collections::VecDeque<Message>,
    /// Bytes of messages not yet taken in by ingest may still read ([`BUDGET_BYTES`]).
    budget: Arc<Semaphore>,
    /// The budget's size.
    budget_bytes: usize,
    /// A message read while the budget was spent: the driver reads nothing more until the
    /// budget has room for it.
    waiting: Option<Arrival>,
    /// Acknowledgements to write.
    acks: mpsc::Receiver<Receipt>,
    /// The ones being written now.
    ack_batch: Vec<Receipt>,
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
        let mut acks_open = true;
        loop {
            // Held messages go first, as the channel makes room; meanwhile the event loop
            // keeps running (acknowledgements, keep-alives), unless the budget is spent:
            // then it waits for ingest to take messages in.
            enum Next {
                Event(Result<Event, ConnectionError>),
                Room(bool),
                Budget(OwnedSemaphorePermit),
                Acks,
                Update,
            }
            let cost = self
                .waiting
                .as_ref()
                .map_or(0, |a| a.cost(self.budget_bytes));
            let next = tokio::select! {
                biased;
                n = self.acks.recv_many(&mut self.ack_batch, ACK_CAPACITY), if acks_open => {
                    // None: every handle is gone, there is nothing more to acknowledge.
                    acks_open = n > 0;
                    Next::Acks
                }
                permit = self.tx.reserve(), if intake_open && !self.held.is_empty() => {
                    match permit {
                        Ok(permit) => {
                            if let Some(message) = self.held.pop_front() {
                                permit.send(message);
                            }
                            // A burst's backlog does not keep its memory.
                            if self.held.is_empty() {
                                self.held.shrink_to(HELD_KEPT);
                            }
                            Next::Room(true)
                        }
                        Err(_) => Next::Room(false),
                    }
                }
                budget = self.budget.clone().acquire_many_owned(cost), if intake_open && self.waiting.is_some() => {
                    match budget {
                        Ok(budget) => Next::Budget(budget),
                        // Never closed.
                        Err(_) => Next::Room(false),
                    }
                }
                event = self.events.poll(), if self.waiting.is_none() || !intake_open => Next::Event(event),
                () = self.updates.changed() => Next::Update,
            };
            let event = match next {
                Next::Event(event) => event,
                Next::Room(open) => {
                    if !open {
                        intake_open = false;
                        self.held.clear();
                        self.waiting = None;
                    }
                    continue;
                }
                Next::Budget(budget) => {
                    if let Some(arrival) = self.waiting.take() {
                        self.forward(arrival.into_message(budget), &mut intake_open);
                    }
                    continue;
                }
                Next::Acks => {
                    self.write_acks().await;
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
                    tracing::info!(url = %crate::runtime::diagnostics::url(&self.url), session_present = ack.session_present, "connected to the source broker");
                    if !ack.session_present && !self.filters.is_empty() {
                        // Ahead of any queued request; the event loop sends it first.
                        let subscribe = Subscribe::new_many(self.filters.clone());
                        self.events
                            .pending
                            .push_front(Request::Subscribe(subscribe));
                    }
                }
                Ok(Event::Incoming(Incoming::Publish(mut publish))) => {
                    // Once intake is closed (shutting down) messages stay unacknowledged
                    // and the broker redelivers them to the next run.
                    if !intake_open {
                        continue;
                    }
                    // The payload is a slice of the connection's read buffer; kept as it
                    // is, one message pins a whole buffer (8 KiB) for as long as it waits.
                    publish.payload = Bytes::copy_from_slice(&publish.payload);
                    let arrival = Arrival {
                        publish,
                        received: Instant::now(),
                        received_ms: now_ms(),
                        generation: self.generation.load(Ordering::Acquire),
                    };
                    match self
                        .budget
                        .clone()
                        .try_acquire_many_owned(arrival.cost(self.budget_bytes))
                    {
                        Ok(budget) => self.forward(arrival.into_message(budget), &mut intake_open),
                        Err(_) => self.waiting = Some(arrival),
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
                            tracing::warn!(size, error = %crate::runtime::diagnostics::chain(&e), "a message larger than the packet limit could not be cleared");
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
                        tracing::warn!(url = %crate::runtime::diagnostics::url(&self.url), error = %crate::runtime::diagnostics::chain(&e), retry_in = ?delay, "source broker connection failed");
                    }
                    failures = failures.saturating_add(1);
                    tokio::time::sleep(delay).await;
                }
            }
        }
    }

    /// Writes the acknowledgements in `ack_batch` of messages received on this connection,
    /// then flushes once. One that cannot be written is not retried: the connection is
    /// broken, and the broker redelivers the message on the next one.
    async fn write_acks(&mut self) {
        let generation = self.generation.load(Ordering::Acquire);
        let Some(network) = self.events.network.as_mut() else {
            self.ack_batch.clear();
            return;
        };
        let mut result = Ok(());
        for receipt in self.ack_batch.drain(..) {
            if receipt.generation == generation && result.is_ok() {
                result = network
                    .write(Packet::PubAck(PubAck::new(receipt.pkid)))
                    .await;
            }
        }
        if let Err(e) = match result {
            Ok(()) => network.flush().await,
            failed => failed,
        } {
            tracing::debug!(error = %e, "acknowledgements not written: the connection broke");
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
        tracing::info!(url = %crate::runtime::diagnostics::url(&self.url), "reconnecting to the source broker with the new credentials");
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

//! The MQTT sink: publishes each batch (a JSON array, or a v2 object with `sink.format: v2`) to a topic of an upstream broker
//! and deletes it from the queue only after the broker's PUBACK (QoS 1).
//!
//! The connection is driven only while a batch is in flight. On any error the client is
//! thrown away and the send comes to [`Outcome::Unreachable`]: the sync loop has a fresh
//! client publish the same batch again after a backoff, so there is exactly one copy of a
//! batch in flight at a time. New credentials (a rotated password or certificate, see
//! [`crate::runtime::credentials`]) replace the client the same way.

use std::time::Duration;

use rumqttc::{AsyncClient, Event, EventLoop, Incoming, MqttOptions, Outgoing, QoS};
use tokio::time::Instant;

use super::wire::{WireFormat, Writer};
use super::{Outcome, Payload, Sent};
use crate::config::MqttSinkSettings;
use crate::delivery::queue::Batch;
use crate::ingest::source::mqtt::connect;
use crate::runtime::credentials::Updates;
use crate::runtime::diagnostics;
use crate::runtime::tls::{TlsError, mqtt_options};

/// Longest wait for a PUBACK before the connection is considered broken.
const ACK_TIMEOUT: Duration = Duration::from_secs(30);
/// First retry delay.
pub const INITIAL_BACKOFF: Duration = Duration::from_millis(500);
/// Largest retry delay.
pub const MAX_BACKOFF: Duration = Duration::from_secs(60);
/// Largest message the sink publishes (a batch); the broker may have a lower limit.
const MAX_OUTGOING_PACKET: usize = 128 * 1024 * 1024;

/// An upstream MQTT broker.
pub struct MqttSink {
    pub(super) settings: MqttSinkSettings,
    options: MqttOptions,
    conn: Option<Connection>,
    writer: Writer,
    pub(super) updates: Updates<MqttOptions>,
}

struct Connection {
    client: AsyncClient,
    events: EventLoop,
    last_used: Instant,
}

impl MqttSink {
    /// A sink for `settings` (not connected until the first batch).
    pub fn new(settings: &MqttSinkSettings) -> Result<Self, TlsError> {
        Ok(Self {
            settings: settings.clone(),
            options: Self::options(settings)?,
            conn: None,
            writer: Writer::default(),
            updates: Updates::none(),
        })
    }

    /// Writes batches in `format` (`sink.format`); v2 names `pipeline` and `node` once.
    pub fn with_format(mut self, format: WireFormat, pipeline: &str, node: &str) -> Self {
        self.writer = Writer {
            format,
            pipeline: pipeline.to_string(),
            node: node.to_string(),
        };
        self
    }

    /// The connection options of `settings` (credentials and TLS included).
    pub fn options(settings: &MqttSinkSettings) -> Result<MqttOptions, TlsError> {
        let mut options = mqtt_options(&connect!(settings, keep_alive: Duration::from_secs(30)))?;
        options.set_clean_session(true);
        options.set_max_packet_size(64 * 1024, MAX_OUTGOING_PACKET);
        Ok(options)
    }

    /// Takes new connection options (new credentials) from `updates` from now on.
    pub fn with_updates(mut self, updates: Updates<MqttOptions>) -> Self {
        self.updates = updates;
        self
    }

    /// `batch` as it is published.
    pub(super) fn encode(&self, batch: &Batch) -> Payload {
        let (format, body) = self.writer.body(batch);
        Payload {
            format,
            body,
            encoding: None,
        }
    }

    /// Publishes `payload` once, with new credentials if there are any: accepted once the
    /// broker acknowledged it (QoS 1), else unreachable, and the client is thrown away.
    pub(super) async fn send(&mut self, payload: &Payload) -> Sent {
        if let Some(options) = self.updates.take() {
            tracing::info!("the MQTT sink reconnects with the new credentials");
            self.options = options;
            self.conn = None;
        }
        let qos = if self.settings.qos == 0 {
            QoS::AtMostOnce
        } else {
            QoS::AtLeastOnce
        };
        match self.publish(&payload.body, qos).await {
            Ok(()) => Sent {
                outcome: Outcome::Accepted,
                on_wire: true,
            },
            // On the wire once the client wrote the publish.
            Err((reason, on_wire)) => {
                self.conn = None;
                Sent {
                    outcome: Outcome::Unreachable(reason),
                    on_wire,
                }
            }
        }
    }

    /// Publishes one batch and waits for its acknowledgement; `Err` says why and whether
    /// the publish reached the wire.
    async fn publish(&mut self, payload: &[u8], qos: QoS) -> Result<(), (String, bool)> {
        // An idle connection stops sending keep-alives; start afresh rather than find out
        // through an error.
        let keep_alive = self.options.keep_alive();
        if self
            .conn
            .as_ref()
            .is_some_and(|c| c.last_used.elapsed() > keep_alive / 2)
        {
            self.conn = None;
        }
        let conn = self.conn.get_or_insert_with(|| {
            let (client, events) = AsyncClient::new(self.options.clone(), 10);
            Connection {
                client,
                events,
                last_used: Instant::now(),
            }
        });
        conn.last_used = Instant::now();
        conn.client
            .try_publish(self.settings.topic.as_str(), qos, false, payload.to_vec())
            .map_err(|e| (diagnostics::chain(&e), false))?;
        let mut pkid = None;
        let wait = async {
            loop {
                let event = conn.events.poll().await;
                match event.map_err(|e| (diagnostics::chain(&e), pkid.is_some()))? {
                    Event::Outgoing(Outgoing::Publish(id)) => {
                        if qos == QoS::AtMostOnce {
                            return Ok(());
                        }
                        pkid = Some(id);
                    }
                    Event::Incoming(Incoming::PubAck(ack)) if Some(ack.pkid) == pkid => {
                        return Ok(());
                    }
                    Event::Incoming(Incoming::Disconnect) => {
                        return Err(("the broker disconnected".to_string(), pkid.is_some()));
                    }
                    _ => {}
                }
            }
        };
        let result = tokio::time::timeout(ACK_TIMEOUT, wait).await;
        let result = result.unwrap_or_else(|_| Err(("no PUBACK in time".into(), pkid.is_some())));
        conn.last_used = Instant::now();
        result
    }
}

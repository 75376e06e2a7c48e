//! The MQTT sink: publishes each batch (a JSON array, or a v2 object with `sink.format: v2`) to a topic of an upstream broker
//! and deletes it from the queue only after the broker's PUBACK (QoS 1).
//!
//! The connection is driven only while a batch is in flight. On any error the client is
//! thrown away and a fresh one publishes the same batch again after a backoff, so there is
//! exactly one copy of a batch in flight at a time. New credentials (a rotated password or
//! certificate, see [`crate::credentials`]) replace the client the same way.

use std::time::Duration;

use rumqttc::{AsyncClient, Event, EventLoop, Incoming, MqttOptions, Outgoing, QoS};
use tokio::time::Instant;

use super::wire::{WireFormat, Writer};
use super::{Delivery, Stopped, SyncContext, backoff};
use crate::config::MqttSinkSettings;
use crate::credentials::Updates;
use crate::diagnostics;
use crate::queue::Batch;
use crate::source::tls::{Connect, TlsError, mqtt_options};

/// Longest wait for a PUBACK before the connection is considered broken.
const ACK_TIMEOUT: Duration = Duration::from_secs(30);
/// First retry delay.
const INITIAL_BACKOFF: Duration = Duration::from_millis(500);
/// Largest retry delay.
const MAX_BACKOFF: Duration = Duration::from_secs(60);
/// Largest message the sink publishes (a batch); the broker may have a lower limit.
const MAX_OUTGOING_PACKET: usize = 128 * 1024 * 1024;

/// An upstream MQTT broker.
pub struct MqttSink {
    settings: MqttSinkSettings,
    options: MqttOptions,
    conn: Option<Connection>,
    writer: Writer,
    updates: Updates<MqttOptions>,
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
        let mut options = mqtt_options(&Connect {
            client_id: &settings.client_id,
            host: &settings.host,
            port: settings.port,
            tls: settings.tls,
            material: &settings.tls_material,
            username: settings.username.as_deref(),
            password: settings.password.as_deref(),
            keep_alive: Duration::from_secs(30),
        })?;
        options.set_clean_session(true);
        options.set_max_packet_size(64 * 1024, MAX_OUTGOING_PACKET);
        Ok(options)
    }

    /// Takes new connection options (new credentials) from `updates` from now on.
    pub fn with_updates(mut self, updates: Updates<MqttOptions>) -> Self {
        self.updates = updates;
        self
    }

    pub(super) fn batch_size(&self) -> usize {
        self.settings.batch_size
    }

    pub(super) fn flush_interval(&self) -> Duration {
        self.settings.flush_interval
    }

    /// Publishes `batch` once: after the broker's PUBACK the batch leaves the queue; on
    /// a failure this waits out the backoff for `attempt`.
    pub(super) async fn deliver(
        &mut self,
        batch: Batch,
        attempt: u32,
        ctx: &SyncContext,
    ) -> Result<Delivery, Stopped> {
        if let Some(options) = self.updates.take() {
            tracing::info!("the MQTT sink reconnects with the new credentials");
            self.options = options;
            self.conn = None;
        }
        let (_, payload) = self.writer.body(&batch);
        ctx.throttle(payload.len()).await?;
        let qos = if self.settings.qos == 0 {
            QoS::AtMostOnce
        } else {
            QoS::AtLeastOnce
        };
        let started = Instant::now();
        let result = tokio::select! {
            _ = ctx.stop.cancelled() => return Err(Stopped),
            r = self.publish(&payload, qos) => r,
        };
        // On the wire once the client wrote the publish (an outage must not look like
        // traffic in the bandwidth panels).
        if result.as_ref().map_or_else(|(_, sent)| *sent, |()| true) {
            ctx.metrics.sent_bytes.inc_by(payload.len() as u64);
        } else {
            ctx.refund(payload.len());
        }
        ctx.metrics
            .sync_duration
            .observe(started.elapsed().as_secs_f64());
        match result {
            Ok(()) => {
                ctx.metrics
                    .sync_requests
                    .with_label_values(&["success"])
                    .inc();
                ctx.upstream(true);
                ctx.accepted(batch).await.map(|()| Delivery::Done)
            }
            Err((reason, _)) => {
                self.conn = None;
                ctx.metrics
                    .sync_requests
                    .with_label_values(&["retry"])
                    .inc();
                ctx.upstream(false);
                ctx.upstream_failed(&reason.to_string());
                let delay = backoff(attempt, INITIAL_BACKOFF, MAX_BACKOFF);
                if attempt == 0 || attempt.is_multiple_of(10) {
                    let url = diagnostics::url(&self.settings.url);
                    tracing::warn!(%url, first = batch.first_seq, last = batch.last_seq, attempt, %reason,
                        retry_in = ?delay, "upstream broker unavailable, will retry");
                }
                // New credentials end the wait: they may be what the broker waited for.
                tokio::select! {
                    r = ctx.pause(delay) => r.map(|()| Delivery::Retry),
                    () = self.updates.changed() => Ok(Delivery::Retry),
                }
            }
        }
    }

    /// One publish and the wait for its acknowledgement.
    /// Publishes one batch; `Err` says why and whether the publish reached the wire.
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

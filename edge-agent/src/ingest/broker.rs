//! The embedded MQTT broker (`spec.source.mqtt.embedded`): an MQTT 3.1.1 broker (rumqttd)
//! inside the agent, so a node needs no separate broker. Devices publish to it on the
//! configured address; the agent's own source connects to it over loopback with its usual
//! persistent session and manual acknowledgements, and local actions are published on it.
//!
//! The broker is configured in code (no config file): bounded connections, a packet limit
//! derived from `source.maxPayloadSize`, bounded in-memory logs per topic filter, and the
//! access rules of [`access`]: it listens on loopback by default, and on any other address
//! only with logins (`embedded.users`, each with the topics it may publish and subscribe
//! to). Its state lives in memory: messages published while the agent is down are not
//! kept, but the agent's session survives its reconnects.
//!
//! The accept loop runs on the agent's runtime and stops with [`EmbeddedBroker`]; the
//! router runs on its own thread for the rest of the process (rumqttd offers no way to
//! stop it; it sleeps while there is no traffic).

pub mod access;
pub mod tls;

use std::net::SocketAddr;
use std::sync::Arc;

use rand::Rng;
use rumqttd::protocol::v4::V4;
use rumqttd::{
    ConnectionSettings, LinkType, Router, RouterConfig, SegmentConfig, Server, ServerSettings,
};
use tokio::task::JoinHandle;

pub use self::access::Access;
use crate::config::{SourceSettings, TlsMaterial};

/// Username of the agent's own login when the source has none.
const AGENT_USERNAME: &str = "edge-agent";

/// Clients connected at once (devices, the agent itself, local subscribers).
pub const MAX_CONNECTIONS: usize = 1024;
/// Room for the topic and header of a packet on top of its payload.
const PACKET_OVERHEAD: usize = 64 * 1024;
/// Unacknowledged QoS 1 messages per connection.
const MAX_INFLIGHT: usize = 1000;
/// A client must send CONNECT within this long after opening its connection.
const CONNECT_TIMEOUT_MS: u16 = 10_000;
/// In-memory log of a subscribed source filter: segment size and count.
const SOURCE_SEGMENT: (usize, usize) = (4 * 1024 * 1024, 8);
/// In-memory log of any other topic (nobody subscribed yet, or a local alert topic).
const OTHER_SEGMENT: (usize, usize) = (64 * 1024, 4);
/// Messages sent to one connection per router iteration.
const MAX_OUTGOING_PACKETS: u64 = 200;

/// Why the embedded broker cannot start.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    /// The TLS certificate, key or client CA is unusable.
    #[error("embedded broker: {0}")]
    Tls(#[from] tls::ServerTlsError),
    /// The listen address cannot be bound (in use, not local, no permission).
    #[error("embedded broker: cannot listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// What the embedded broker runs with, derived from the source settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BrokerSettings {
    /// Address devices connect to.
    pub listen: SocketAddr,
    /// Largest packet accepted (a larger one closes the client's connection).
    pub max_packet_bytes: usize,
    /// Topic filters the agent subscribes to (they get the larger logs).
    pub source_filters: Vec<String>,
    /// Who may connect and do what.
    pub access: Access,
    /// TLS server identity and client CA, when devices connect over TLS.
    pub tls: Option<TlsMaterial>,
}

impl BrokerSettings {
    /// The broker `source` asks for, if any. The agent's login is the source's
    /// credentials when it has both, else a random one ([`BrokerSettings::agent_login`]
    /// says which, for the source and actions connections).
    pub fn for_source(source: &SourceSettings) -> Option<Self> {
        let listen = source.embedded_listen?;
        let shared = source.username.clone().zip(source.password.clone());
        let agent = shared.clone().unwrap_or_else(|| {
            let secret: [u8; 32] = rand::rng().random();
            (AGENT_USERNAME.to_string(), hex::encode(secret))
        });
        Some(Self {
            listen,
            max_packet_bytes: source.max_payload_bytes.saturating_add(PACKET_OVERHEAD),
            source_filters: source.topics.clone(),
            access: Access {
                agent,
                agent_client_ids: vec![source.client_id.clone(), source.actions_client_id()],
                users: source.embedded_users.clone(),
                anonymous: listen.ip().is_loopback()
                    && source.embedded_users.is_empty()
                    && shared.is_none(),
            },
            tls: source.embedded_tls.clone(),
        })
    }

    /// The username and password the agent's own connections log in with.
    pub fn agent_login(&self) -> (String, String) {
        self.access.agent.clone()
    }

    /// The rumqttd router configuration.
    pub fn router(&self) -> RouterConfig {
        let segment = |(size, count): (usize, usize)| SegmentConfig {
            max_segment_size: size.max(self.max_packet_bytes),
            max_segment_count: count,
        };
        let source = segment(SOURCE_SEGMENT);
        let other = segment(OTHER_SEGMENT);
        RouterConfig {
            max_connections: MAX_CONNECTIONS,
            max_outgoing_packet_count: MAX_OUTGOING_PACKETS,
            max_segment_size: other.max_segment_size,
            max_segment_count: other.max_segment_count,
            custom_segment: Some(
                self.source_filters
                    .iter()
                    .map(|f| (f.clone(), source.clone()))
                    .collect(),
            ),
            initialized_filters: None,
            shared_subscriptions_strategy: Default::default(),
        }
    }

    /// The rumqttd listener configuration, on `listen` (the configured address, or the
    /// loopback port behind the TLS relay).
    pub fn server(&self, listen: SocketAddr) -> ServerSettings {
        ServerSettings {
            name: "embedded".to_string(),
            listen,
            tls: None,
            next_connection_delay_ms: 0,
            connections: ConnectionSettings {
                connection_timeout_ms: CONNECT_TIMEOUT_MS,
                max_payload_size: self.max_packet_bytes,
                max_inflight_count: MAX_INFLIGHT,
                auth: None,
                external_auth: Some(self.authenticator()),
                acl: Some({
                    let access = Arc::new(self.access.clone());
                    Arc::new(move |user: &str, action, topic: &str| {
                        let allowed = access.allows(user, action, topic);
                        if !allowed {
                            tracing::warn!(user, ?action, topic = %topic.escape_debug(), "embedded broker: not authorized, disconnecting the client");
                        }
                        allowed
                    })
                }),
                // Without this a publish to a topic nobody subscribes to (yet) would
                // close the publisher's connection.
                dynamic_filters: true,
            },
        }
    }
}

impl BrokerSettings {
    fn authenticator(&self) -> rumqttd::AuthHandler {
        let access = Arc::new(self.access.clone());
        Arc::new(move |client_id: String, user: String, password: String| {
            let allowed = access.authenticate(&client_id, &user, &password);
            if !allowed {
                tracing::warn!(client_id = %client_id.escape_debug(), user = %user.escape_debug(), "embedded broker: connection refused");
            }
            Box::pin(std::future::ready(allowed))
        })
    }
}

/// A running embedded broker; its listeners stop when this is dropped.
pub struct EmbeddedBroker {
    addr: SocketAddr,
    /// Where the agent's own connections reach the broker.
    local: SocketAddr,
    tasks: Vec<JoinHandle<()>>,
}

impl EmbeddedBroker {
    /// Starts the broker on the current tokio runtime. Fails at once when the address
    /// cannot be bound or the TLS material is unusable.
    pub fn start(settings: &BrokerSettings) -> Result<Self, BrokerError> {
        let addr = settings.listen;
        let bind = |addr: SocketAddr| {
            std::net::TcpListener::bind(addr).map_err(|source| BrokerError::Listen { addr, source })
        };
        let mut tasks = Vec::new();
        let local = match &settings.tls {
            None => {
                // rumqttd binds inside its accept loop and only logs a failure there:
                // bind here first so the agent reports it and does not start.
                drop(bind(addr)?);
                match addr.ip().is_unspecified() {
                    true => SocketAddr::new([127, 0, 0, 1].into(), addr.port()),
                    false => addr,
                }
            }
            Some(material) => {
                let config = Arc::new(tls::server_config(material)?);
                let public = bind(addr)?;
                public
                    .set_nonblocking(true)
                    .map_err(|source| BrokerError::Listen { addr, source })?;
                let public = tokio::net::TcpListener::from_std(public)
                    .map_err(|source| BrokerError::Listen { addr, source })?;
                let loopback = SocketAddr::new([127, 0, 0, 1].into(), 0);
                let backend = bind(loopback)?
                    .local_addr()
                    .map_err(|source| BrokerError::Listen { addr, source })?;
                tasks.push(tokio::spawn(tls::serve(public, config, backend)));
                backend
            }
        };
        let router = Router::new(0, settings.router()).spawn();
        let mut server = Server::new(settings.server(local), router, V4);
        tasks.push(tokio::spawn(async move {
            if let Err(e) = server.start(LinkType::Remote).await {
                tracing::error!(%addr, error = %e, "embedded broker stopped");
            }
        }));
        tracing::info!(%addr, tls = settings.tls.is_some(), "embedded MQTT broker listening");
        Ok(Self { addr, local, tasks })
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Where the agent's own connections reach it (plain MQTT over loopback).
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }
}

impl Drop for EmbeddedBroker {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn source(embedded: Option<&str>) -> SourceSettings {
        SourceSettings {
            url: "mqtt://127.0.0.1:1883".into(),
            host: "127.0.0.1".into(),
            port: 1883,
            tls: false,
            topics: vec!["sensors/+/vibration".into()],
            qos: 1,
            client_id: "agent".into(),
            username: None,
            password: None,
            tls_material: Default::default(),
            keep_alive: std::time::Duration::from_secs(30),
            max_payload_bytes: 256 * 1024,
            max_devices: 10,
            embedded_listen: embedded.and_then(|a| a.parse().ok()),
            embedded_users: Vec::new(),
            embedded_tls: None,
        }
    }

    #[test]
    fn no_broker_without_embedded() {
        assert_eq!(BrokerSettings::for_source(&source(None)), None);
    }

    #[test]
    fn limits_follow_the_source() {
        let s = BrokerSettings::for_source(&source(Some("0.0.0.0:1883"))).expect("broker");
        assert_eq!(s.listen, "0.0.0.0:1883".parse().expect("addr"));
        assert_eq!(s.max_packet_bytes, 256 * 1024 + PACKET_OVERHEAD);
        let server = s.server(s.listen);
        assert_eq!(server.connections.max_payload_size, s.max_packet_bytes);
        assert!(server.connections.auth.is_none());
        assert!(server.connections.dynamic_filters);
        let router = s.router();
        assert_eq!(router.max_connections, MAX_CONNECTIONS);
        let custom = router.custom_segment.expect("source filter segments");
        let seg = &custom["sensors/+/vibration"];
        assert_eq!(
            (seg.max_segment_size, seg.max_segment_count),
            SOURCE_SEGMENT
        );
        assert_eq!(router.max_segment_size, s.max_packet_bytes);
    }

    #[test]
    fn the_agent_logs_in_with_the_source_credentials_or_a_random_login() {
        let mut src = source(Some("127.0.0.1:1883"));
        let own = BrokerSettings::for_source(&src).expect("broker");
        let (user, password) = own.agent_login();
        assert_eq!(user, AGENT_USERNAME);
        assert_eq!(password.len(), 64);
        assert_ne!(
            BrokerSettings::for_source(&src)
                .expect("broker")
                .agent_login(),
            (user, password),
            "a new login every start"
        );
        assert!(own.access.anonymous, "loopback without logins is open");
        assert_eq!(own.access.agent_client_ids, ["agent", "agent-actions"]);
        src.username = Some("edge".into());
        src.password = Some("secret".into());
        let shared = BrokerSettings::for_source(&src).expect("broker");
        assert_eq!(shared.agent_login(), ("edge".into(), "secret".into()));
        assert!(
            !shared.access.anonymous,
            "a login is required of every client"
        );
        let wide = BrokerSettings::for_source(&source(Some("0.0.0.0:1883"))).expect("broker");
        assert!(!wide.access.anonymous, "beyond loopback, never anonymous");
    }

    #[test]
    fn the_source_reaches_the_broker_on_its_listen_address() {
        let config = |listen: &str| {
            let yaml = format!(
                "source:\n  mqtt:\n    embedded: {{listen: \"{listen}\"}}\n    topics: [a/+]\n  \
                 format: {{value: v, device: d}}\nsink:\n  http: {{url: http://127.0.0.1:9/x}}\n"
            );
            crate::config::AgentConfig::from_text(&yaml, "n1", &|_| None)
                .map(|c| c.source.url)
                .map_err(|e| e.to_string())
        };
        assert_eq!(
            config("127.0.0.1:1884").as_deref(),
            Ok("mqtt://127.0.0.1:1884")
        );
        assert_eq!(
            config("127.0.0.2:1885").as_deref(),
            Ok("mqtt://127.0.0.2:1885")
        );
    }

    #[tokio::test]
    async fn a_taken_address_is_an_error() {
        let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = taken.local_addr().expect("addr");
        let mut s = BrokerSettings::for_source(&source(Some("127.0.0.1:1"))).expect("broker");
        s.listen = addr;
        match EmbeddedBroker::start(&s) {
            Err(BrokerError::Listen { addr: a, .. }) => assert_eq!(a, addr),
            Err(e) => panic!("{e}"),
            Ok(_) => panic!("started on a taken address"),
        }
    }
}

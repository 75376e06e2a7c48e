//! The checks of `doctor` that cross a network: the source broker (reachable, TLS,
//! credentials, subscriptions allowed), the upstream (resolves, connects, TLS with the
//! configured CA, credentials accepted, without sending data) and the certificates in use.
//!
//! The broker is probed under a client id of its own (`<clientId>-doctor`, clean session),
//! so a running agent keeps its session and nothing queued for it is touched; the agent's
//! own session is looked at only while no agent runs (see [`session`]).

use std::path::Path;
use std::time::{Duration, Instant, SystemTime};

use rumqttc::{
    AsyncClient, ConnectReturnCode, ConnectionError, Event, Packet, QoS, SubscribeReasonCode,
};

use super::{Check, age};
use crate::config::{AgentConfig, SinkSettings, TlsMaterial};
use crate::delivery::sink::http::HttpClient;
use crate::runtime::credentials::expiry;
use crate::runtime::datadir::lock::{DirLock, Mode};
use crate::runtime::diagnostics;
use crate::runtime::heartbeat;
use crate::runtime::tls::{Connect, mqtt_options};

/// Certificates expiring sooner than this are a warning (as the `CertificateExpiringSoon`
/// alert).
const EXPIRY_WARNING: Duration = Duration::from_secs(14 * 86_400);

/// The source broker, unless the agent runs it (embedded), and the agent's persistent
/// session there.
pub(super) async fn source(config: &AgentConfig, data_dir: &Path, timeout: Duration) -> Check {
    const NAME: &str = "source";
    let s = &config.source;
    if let Some(listen) = s.embedded_listen {
        return Check::ok(
            NAME,
            format!("embedded broker: the agent runs it on {listen} (nothing to reach)"),
        );
    }
    let probe_id = format!("{}-doctor", s.client_id);
    let probe = MqttProbe {
        url: &s.url,
        connect: source_connect(s, &probe_id),
        subscribe: &s.topics,
        qos: s.qos,
        field: "spec.source.mqtt",
    };
    let mut check = probe.run(NAME, timeout).await;
    if check.status != super::Status::Ok {
        return check;
    }
    let (warning, text) = session(config, data_dir, timeout).await;
    check.detail.push_str("; ");
    check.detail.push_str(&text);
    if warning {
        check.status = super::Status::Warning;
        check.fix = "give the broker persistence (mosquitto: persistence true) so it keeps the \
                     agent's session and its readings across a restart"
            .into();
    }
    check
}

/// How to connect to the source broker of `s` as `client_id`.
fn source_connect<'a>(s: &'a crate::config::SourceSettings, client_id: &'a str) -> Connect<'a> {
    Connect {
        client_id,
        host: &s.host,
        port: s.port,
        tls: s.tls,
        material: &s.tls_material,
        username: s.username.as_deref(),
        password: s.password.as_deref(),
        keep_alive: s.keep_alive,
    }
}

/// Whether the broker keeps the agent's persistent session: (warning, what was found).
///
/// Asked under the agent's own client id, so only while no agent holds the queue (its
/// lock is held meanwhile, so none can start): a running agent is never disconnected.
/// Nothing is acknowledged, so whatever the broker delivers in those milliseconds comes
/// again to the agent. When there is no session the probe has just created an empty one,
/// which would keep the agent from subscribing; it is removed at once with a clean-session
/// connection.
async fn session(config: &AgentConfig, data_dir: &Path, timeout: Duration) -> (bool, String) {
    let s = &config.source;
    let lock = match DirLock::try_acquire(data_dir, Mode::Agent) {
        Ok(Some(lock)) => lock,
        Ok(None) => {
            return (
                false,
                format!(
                    "the agent runs (it holds the queue) and uses its session as {:?}",
                    s.client_id
                ),
            );
        }
        Err(e) => return (false, format!("session not checked: {e}")),
    };
    let connect = |clean: bool| {
        let mut options = mqtt_options(&source_connect(s, &s.client_id)).ok()?;
        options.set_clean_session(clean);
        options.set_manual_acks(true);
        Some(options)
    };
    let Some(options) = connect(false) else {
        return (false, "session not checked".into());
    };
    let present = connack(options, timeout).await;
    let text = match present {
        Some(true) => {
            drop(lock);
            return (
                false,
                format!(
                    "the broker keeps the agent's persistent session as {:?}",
                    s.client_id
                ),
            );
        }
        Some(false) => {
            // Remove the empty session this probe created.
            if let Some(options) = connect(true) {
                let _ = connack(options, timeout).await;
            }
            "the broker has no session for the agent"
        }
        None => return (false, "session not checked (no answer)".into()),
    };
    drop(lock);
    let ran_before = data_dir
        .join(crate::delivery::queue::store::DB_FILE)
        .exists();
    if ran_before {
        (
            true,
            format!(
                "{text}: readings published while the agent is down are not kept (the broker lost it)"
            ),
        )
    } else {
        (
            false,
            format!("{text} yet (the agent creates it when it first connects)"),
        )
    }
}

/// Connects with `options` and disconnects: whether the broker had a session (`None` when
/// it did not answer in time).
async fn connack(options: rumqttc::MqttOptions, timeout: Duration) -> Option<bool> {
    let (client, mut events) = AsyncClient::new(options, 4);
    let present = tokio::time::timeout(timeout, async {
        loop {
            match events.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(ack))) => return Some(ack.session_present),
                Ok(_) => {}
                Err(_) => return None,
            }
        }
    })
    .await
    .ok()
    .flatten();
    if present.is_some() {
        let _ = client.disconnect().await;
        // Drive the event loop until the DISCONNECT is written.
        let _ = tokio::time::timeout(Duration::from_secs(2), async {
            while let Ok(event) = events.poll().await {
                if matches!(event, Event::Outgoing(rumqttc::Outgoing::Disconnect)) {
                    break;
                }
            }
        })
        .await;
    }
    present
}

/// The upstream, and the `Date` it answered with (for the clock check).
pub(super) async fn upstream(
    config: &AgentConfig,
    timeout: Duration,
) -> (Check, Option<SystemTime>) {
    const NAME: &str = "upstream";
    match &config.sink {
        SinkSettings::Http(http) => http_upstream(http, timeout).await,
        SinkSettings::Mqtt(m) => {
            let probe = MqttProbe {
                url: &m.url,
                connect: Connect {
                    client_id: &format!("{}-doctor", m.client_id),
                    host: &m.host,
                    port: m.port,
                    tls: m.tls,
                    material: &m.tls_material,
                    username: m.username.as_deref(),
                    password: m.password.as_deref(),
                    keep_alive: Duration::from_secs(30),
                },
                subscribe: &[],
                qos: m.qos,
                field: "spec.sink.mqtt",
            };
            (probe.run(NAME, timeout).await, None)
        }
    }
}

async fn http_upstream(
    http: &crate::config::HttpSettings,
    timeout: Duration,
) -> (Check, Option<SystemTime>) {
    const NAME: &str = "upstream";
    let started = Instant::now();
    let shown = edge_crds::redact::url(&http.url);
    let url = match reqwest::Url::parse(&http.url) {
        Ok(u) => u,
        Err(e) => {
            return (
                Check::failed(NAME, format!("{shown}: {e}"), "fix spec.sink.http.url"),
                None,
            );
        }
    };
    let host = url.host_str().unwrap_or_default().to_string();
    let port = url.port_or_known_default().unwrap_or(443);
    let failed = |detail: String, fix: &str| {
        (
            Check::failed(NAME, detail, fix.to_string()).timed(started),
            None,
        )
    };
    let resolved =
        match tokio::time::timeout(timeout, tokio::net::lookup_host((host.as_str(), port))).await {
            Ok(Ok(addrs)) => addrs.collect::<Vec<_>>(),
            Ok(Err(e)) => {
                return failed(
                    format!("{shown}: cannot resolve {host}: {e}"),
                    "check the node's DNS (/etc/resolv.conf) or spec.sink.http.url",
                );
            }
            Err(_) => {
                return failed(
                    format!("{shown}: resolving {host} took longer than {timeout:?}"),
                    "check the node's DNS (/etc/resolv.conf)",
                );
            }
        };
    let client = match HttpClient::new(http) {
        Ok(c) => c,
        Err(e) => {
            return failed(
                format!("{shown}: {e}"),
                "fix spec.sink.http.tls (the CA bundle, or the client certificate and key)",
            );
        }
    };
    let answer = tokio::time::timeout(timeout, client.probe(url.as_str())).await;
    let took = started.elapsed();
    let response = match answer {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => {
            let cause = diagnostics::chain(&e);
            let fix = if cause.contains("certificate") || cause.contains("tls") {
                "the upstream's certificate is not trusted by spec.sink.http.tls.ca (or the client certificate is refused): configure the CA that signed it"
            } else if e.is_connect() {
                "the upstream refuses connections: check it runs, and the node's firewall and proxy"
            } else {
                "check the upstream and the network path to it"
            };
            let addrs: Vec<String> = resolved.iter().map(ToString::to_string).collect();
            return failed(format!("{shown} ({}): {cause}", addrs.join(", ")), fix);
        }
        Err(_) => {
            return failed(
                format!("{shown}: no answer within {timeout:?}"),
                "check the upstream, the node's firewall and proxy",
            );
        }
    };
    let status = response.status();
    let date = response
        .headers()
        .get(reqwest::header::DATE)
        .and_then(|v| v.to_str().ok())
        .and_then(parse_http_date);
    let tls = if url.scheme() == "https" {
        ", TLS verified"
    } else {
        ""
    };
    let detail = format!(
        "{shown}: resolved, connected{tls}, answered {} to a HEAD request (no data sent) in {} ms",
        status.as_u16(),
        took.as_millis()
    );
    let check = match status.as_u16() {
        401 | 403 => Check::failed(
            NAME,
            format!("{detail}: the credentials were refused"),
            "fix the token or password in spec.sink.http.headers (or the client certificate)",
        ),
        500..=599 => Check::warning(
            NAME,
            format!("{detail}: the upstream reports an error"),
            "the upstream is unwell: the agent keeps the backlog and retries",
        ),
        _ => Check::ok(NAME, format!("{detail}, credentials not refused")),
    };
    (check.timed(started), date)
}

/// An MQTT broker to connect to (and subscribe at, for the source).
struct MqttProbe<'a> {
    url: &'a str,
    connect: Connect<'a>,
    subscribe: &'a [String],
    qos: u8,
    field: &'static str,
}

impl MqttProbe<'_> {
    async fn run(&self, name: &'static str, timeout: Duration) -> Check {
        let started = Instant::now();
        let shown = edge_crds::redact::url(self.url);
        let options = match mqtt_options(&self.connect) {
            Ok(mut o) => {
                o.set_clean_session(true);
                o
            }
            Err(e) => {
                return Check::failed(
                    name,
                    format!("{shown}: {e}"),
                    format!("fix {}.tls", self.field),
                )
                .timed(started);
            }
        };
        let (client, mut events) = AsyncClient::new(options, 16);
        let outcome = tokio::time::timeout(timeout, async {
            let mut pending_subs = 0usize;
            loop {
                match events.poll().await {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => {
                        if self.subscribe.is_empty() {
                            return Ok(Vec::new());
                        }
                        for topic in self.subscribe {
                            let qos = if self.qos == 0 {
                                QoS::AtMostOnce
                            } else {
                                QoS::AtLeastOnce
                            };
                            if client.subscribe(topic.as_str(), qos).await.is_err() {
                                return Err(ProbeError::Closed);
                            }
                        }
                        pending_subs = self.subscribe.len();
                    }
                    Ok(Event::Incoming(Packet::SubAck(ack))) => {
                        let refused: Vec<usize> = ack
                            .return_codes
                            .iter()
                            .enumerate()
                            .filter(|(_, c)| matches!(c, SubscribeReasonCode::Failure))
                            .map(|(i, _)| i)
                            .collect();
                        if !refused.is_empty() {
                            return Ok(refused);
                        }
                        pending_subs = pending_subs.saturating_sub(1);
                        if pending_subs == 0 {
                            return Ok(Vec::new());
                        }
                    }
                    Ok(_) => {}
                    Err(e) => return Err(ProbeError::Connection(e)),
                }
            }
        })
        .await;
        let _ = client.try_disconnect();
        let took = started.elapsed().as_millis();
        let check = match outcome {
            Ok(Ok(refused)) if refused.is_empty() => {
                let what = if self.subscribe.is_empty() {
                    "connected and logged in".to_string()
                } else {
                    format!(
                        "connected, logged in, subscription to {} allowed",
                        self.subscribe.join(", ")
                    )
                };
                Check::ok(name, format!("{shown}: {what} in {took} ms"))
            }
            Ok(Ok(refused)) => {
                let topics: Vec<&str> = refused
                    .iter()
                    .filter_map(|i| self.subscribe.get(*i).map(String::as_str))
                    .collect();
                Check::failed(
                    name,
                    format!(
                        "{shown}: the broker refused the subscription to {}",
                        topics.join(", ")
                    ),
                    format!(
                        "allow this user to subscribe to {} in the broker's ACL, or fix {}.topics",
                        topics.join(", "),
                        self.field
                    ),
                )
            }
            Ok(Err(e)) => e.check(name, &shown, self.field),
            Err(_) => Check::failed(
                name,
                format!("{shown}: no answer within {timeout:?}"),
                "check that the broker runs and the node can reach it (firewall, address)",
            ),
        };
        check.timed(started)
    }
}

enum ProbeError {
    Connection(ConnectionError),
    Closed,
}

impl ProbeError {
    fn check(self, name: &'static str, shown: &str, field: &str) -> Check {
        let e = match self {
            Self::Connection(e) => e,
            Self::Closed => {
                return Check::failed(
                    name,
                    format!("{shown}: the connection closed during the check"),
                    "check the broker's log",
                );
            }
        };
        let cause = diagnostics::chain(&e);
        match &e {
            ConnectionError::ConnectionRefused(
                ConnectReturnCode::BadUserNamePassword | ConnectReturnCode::NotAuthorized,
            ) => Check::failed(
                name,
                format!("{shown}: the broker refused the login: {cause}"),
                format!("fix the username or password ({field}.username, passwordFrom)"),
            ),
            ConnectionError::ConnectionRefused(code) => Check::failed(
                name,
                format!("{shown}: the broker refused the connection: {code:?}"),
                "check the broker's log and its listener settings",
            ),
            ConnectionError::Tls(_) => Check::failed(
                name,
                format!("{shown}: TLS failed: {cause}"),
                format!("trust the broker's CA in {field}.tls.ca, or fix the client certificate"),
            ),
            ConnectionError::Io(io) if io.kind() == std::io::ErrorKind::ConnectionRefused => {
                Check::failed(
                    name,
                    format!("{shown}: connection refused"),
                    format!("start the broker, or fix {field}.url"),
                )
            }
            _ => Check::failed(
                name,
                format!("{shown}: {cause}"),
                format!("check the broker and {field}.url"),
            ),
        }
    }
}

/// Reads a certificate's expiry (unix seconds) from PEM.
type ReadExpiry = fn(&[u8]) -> Result<i64, expiry::ExpiryError>;

/// Every certificate in use: client certificates (their leaf) and CA bundles (their
/// earliest), of the source, the sink and the embedded broker.
/// The node's fleet record ([`crate::runtime::heartbeat`]): not configured outside a pod with
/// agent access (ok); otherwise one server-side dry run of the agent's own write, which
/// the API server authenticates, authorizes and admits without storing anything. A
/// refusal fails (the operator's fleet view goes without this node); an unreachable API
/// server is a warning (the pipeline delivers all the same).
pub(super) async fn fleet_record(config: &AgentConfig) -> Check {
    const NAME: &str = "fleet-record";
    let started = Instant::now();
    let env = |name: &str| std::env::var(name).ok();
    let settings = match heartbeat::Settings::from_env(&config.name, &config.node, &env) {
        Ok(settings) => settings,
        Err(heartbeat::Disabled::NoLease) => {
            return Check::ok(
                NAME,
                "not kept here (no EDGEPIPE_FLEET_LEASE: outside a pod with agent access)",
            )
            .timed(started);
        }
        Err(why) => {
            return Check::failed(
                NAME,
                format!("not kept: {why}"),
                "the operator sets these variables in the agent pod; compare them with the pod's spec",
            )
            .timed(started);
        }
    };
    let what = format!("Lease {}/{}", settings.namespace, settings.lease);
    let api = diagnostics::url(&settings.api);
    match heartbeat::probe(settings).await {
        Ok(()) => Check::ok(
            NAME,
            format!("the API server {api} accepts {what} (dry run)"),
        ),
        Err(e @ heartbeat::WriteError::Status { .. }) => Check::failed(
            NAME,
            format!("the API server {api} refuses {what}: {e}"),
            "an agent may write only its own node's record: check the pod's node and EDGEPIPE_FLEET_LEASE, and the chart's agent ClusterRole and admission policy",
        ),
        Err(e) => Check::warning(
            NAME,
            format!("cannot write {what} to {api}: {e}"),
            "the pipeline delivers all the same; check the token and CA in /var/run/secrets/edgepipe.dev/api and the way to the API server",
        ),
    }
    .timed(started)
}

pub(super) fn certificates(config: &AgentConfig) -> Check {
    const NAME: &str = "certificates";
    let sink = match &config.sink {
        SinkSettings::Http(h) => &h.tls_material,
        SinkSettings::Mqtt(m) => &m.tls_material,
    };
    let mut found: Vec<(String, i64)> = Vec::new();
    let mut broken = Vec::new();
    let mut add = |what: &str, material: &TlsMaterial| {
        let parts: [(&str, Option<&[u8]>, ReadExpiry); 2] = [
            ("client certificate", material.cert.as_deref(), expiry::leaf),
            ("CA bundle", material.ca.as_deref(), expiry::earliest),
        ];
        for (part, pem, read) in parts {
            let Some(pem) = pem else { continue };
            match read(pem) {
                Ok(not_after) => found.push((format!("{what} {part}"), not_after)),
                Err(e) => broken.push(format!("{what} {part}: {e}")),
            }
        }
    };
    add("source", &config.source.tls_material);
    add("sink", sink);
    if let Some(embedded) = &config.source.embedded_tls {
        add("embedded broker", embedded);
    }
    if !broken.is_empty() {
        return Check::failed(NAME, broken.join("; "), "replace the unreadable PEM file");
    }
    if found.is_empty() {
        return Check::ok(NAME, "no certificate configured");
    }
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    found.sort_by_key(|(_, t)| *t);
    let describe = |(what, t): &(String, i64)| {
        let date = crate::record::format_timestamp_ms(t.saturating_mul(1000));
        if *t <= now {
            format!("{what} expired {date}")
        } else {
            format!(
                "{what} valid until {date} ({} left)",
                age(Duration::from_secs((t - now) as u64))
            )
        }
    };
    let lines: Vec<String> = found.iter().map(describe).collect();
    let (first_what, first) = (&found[0].0, found[0].1);
    if first <= now {
        Check::failed(
            NAME,
            lines.join("; "),
            format!("renew the {first_what}: handshakes with it fail"),
        )
    } else if ((first - now) as u64) < EXPIRY_WARNING.as_secs() {
        Check::warning(
            NAME,
            lines.join("; "),
            format!("renew the {first_what} before it expires (rotation needs no restart)"),
        )
    } else {
        Check::ok(NAME, lines.join("; "))
    }
}

/// An HTTP `Date` (IMF-fixdate, RFC 9110): `Sun, 06 Nov 1994 08:49:37 GMT`.
fn parse_http_date(text: &str) -> Option<SystemTime> {
    let format = time::macros::format_description!(
        "[weekday repr:short], [day] [month repr:short] [year] [hour]:[minute]:[second] GMT"
    );
    let t = time::PrimitiveDateTime::parse(text.trim(), &format).ok()?;
    let secs = t.assume_utc().unix_timestamp();
    Some(SystemTime::UNIX_EPOCH + Duration::from_secs(u64::try_from(secs).ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_dates_parse() {
        let t = parse_http_date("Sun, 06 Nov 1994 08:49:37 GMT").unwrap();
        assert_eq!(
            t.duration_since(SystemTime::UNIX_EPOCH).unwrap().as_secs(),
            784_111_777
        );
        assert_eq!(parse_http_date("yesterday"), None);
    }
}

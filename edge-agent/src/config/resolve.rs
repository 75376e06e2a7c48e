//! Resolution of a validated spec into settings: `${VAR}` expansion, secrets from the
//! environment or files, broker addresses, defaults. Problems are collected as field
//! errors, never returned early, so the user sees all of them at once.

use std::collections::HashSet;
use std::time::Duration;

use edge_crds::redact;
use edge_crds::units::Duration as SpecDuration;
use edge_crds::{Buffer, Compression, EdgePipelineSpec, FieldError, Header, Sink, Tls, ValueFrom};

use crate::delivery::queue::seal::Keyring;

use super::{
    BufferSettings, EmbeddedUser, HttpSettings, MqttSinkSettings, SinkSettings, SourceSettings,
    TlsMaterial,
};

/// Longest MQTT client id the agent derives.
const MAX_CLIENT_ID: usize = 128;
/// MQTT keep-alive is a 16-bit number of seconds; the client refuses less than 1 s.
const KEEP_ALIVE_RANGE: std::ops::RangeInclusive<Duration> =
    Duration::from_secs(1)..=Duration::from_secs(65_535);

pub(super) struct Resolver<'a> {
    env: &'a dyn Fn(&str) -> Option<String>,
    errors: Vec<FieldError>,
    /// What this environment lacks (an unset variable, an unreadable file, a Secret that
    /// only the operator resolves): fatal to a run, a note to `check`.
    needs: Vec<FieldError>,
    /// Fields whose `${VAR}` expansion failed: validation errors about them would only
    /// repeat the problem, and they are not resolved further.
    unexpanded: HashSet<&'static str>,
}

impl<'a> Resolver<'a> {
    pub(super) fn new(env: &'a dyn Fn(&str) -> Option<String>) -> Self {
        Self {
            env,
            errors: Vec::new(),
            needs: Vec::new(),
            unexpanded: HashSet::new(),
        }
    }

    pub(super) fn err(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.errors.push(FieldError {
            path: path.into(),
            message: message.into(),
        });
    }

    fn need(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.needs.push(FieldError {
            path: path.into(),
            message: message.into(),
        });
    }

    /// The problems of the pipeline, and what this environment lacks, in the order found.
    pub(super) fn finish(self) -> (Vec<FieldError>, Vec<FieldError>) {
        (self.errors, self.needs)
    }

    /// Adds the validation errors, except those about fields that failed expansion.
    pub(super) fn add_validation(&mut self, errors: Vec<FieldError>) {
        let unexpanded = &self.unexpanded;
        let kept: Vec<FieldError> = errors
            .into_iter()
            .filter(|e| !unexpanded.contains(e.path.as_str()))
            .collect();
        self.errors.extend(kept);
    }

    /// Expands `${VAR}` in every URL of the spec, in place.
    pub(super) fn expand_urls(&mut self, spec: &mut EdgePipelineSpec) {
        let urls: [(&'static str, Option<&mut String>); 4] = [
            ("spec.source.mqtt.url", spec.source.mqtt.url.as_mut()),
            (
                "spec.sink.http.url",
                spec.sink.http.as_mut().map(|h| &mut h.url),
            ),
            (
                "spec.sink.mqtt.url",
                spec.sink.mqtt.as_mut().map(|m| &mut m.url),
            ),
            (
                "spec.inference.model.url",
                spec.inference.as_mut().and_then(|i| i.model.url.as_mut()),
            ),
        ];
        for (path, url) in urls {
            if let Some(url) = url {
                match self.expand(path, url) {
                    Some(expanded) => *url = expanded,
                    None => {
                        self.unexpanded.insert(path);
                    }
                }
            }
        }
    }

    /// `text` with every `${VAR}` replaced, or `None` (with errors) if a variable is
    /// unset or malformed.
    fn expand(&mut self, path: &str, text: &str) -> Option<String> {
        let mut out = String::with_capacity(text.len());
        let mut ok = true;
        let mut rest = text;
        while let Some(start) = rest.find("${") {
            out.push_str(&rest[..start]);
            let after = &rest[start + 2..];
            let Some(end) = after.find('}') else {
                self.err(path, format!("unterminated ${{ in {:?}", redact::url(text)));
                return None;
            };
            let name = &after[..end];
            if !is_variable_name(name) {
                self.err(
                    path,
                    format!("${{{name}}} is not an environment variable name"),
                );
                ok = false;
            } else if let Some(value) = (self.env)(name) {
                out.push_str(&value);
            } else {
                self.need(path, format!("environment variable {name} is not set"));
                ok = false;
            }
            rest = &after[end + 1..];
        }
        out.push_str(rest);
        ok.then_some(out)
    }

    /// The value of a secret, from an environment variable or a file (trailing newlines
    /// removed). `None` after reporting a problem, or when the `ValueFrom` itself is
    /// malformed (validation reports that).
    fn secret(&mut self, path: &str, v: &ValueFrom) -> Option<Vec<u8>> {
        match (&v.secret_key_ref, &v.env, &v.file) {
            (Some(_), None, None) => {
                self.need(
                    format!("{path}.secretKeyRef"),
                    "secretKeyRef is resolved by the operator; standalone use env or file",
                );
                None
            }
            (None, Some(name), None) => {
                let value = (self.env)(name);
                if value.is_none() {
                    self.need(
                        format!("{path}.env"),
                        format!("environment variable {name} is not set"),
                    );
                }
                value.map(String::into_bytes)
            }
            (None, None, Some(file)) => match std::fs::read(file) {
                Ok(mut bytes) => {
                    while bytes.last().is_some_and(|b| matches!(b, b'\n' | b'\r')) {
                        bytes.pop();
                    }
                    Some(bytes)
                }
                Err(e) => {
                    self.need(format!("{path}.file"), format!("cannot read {file}: {e}"));
                    None
                }
            },
            _ => None,
        }
    }

    /// A secret that must be text (a password, a header value).
    fn secret_text(&mut self, path: &str, v: &ValueFrom) -> Option<String> {
        let bytes = self.secret(path, v)?;
        match String::from_utf8(bytes) {
            Ok(text) => Some(text),
            Err(_) => {
                self.err(path, "the value is not UTF-8 text");
                None
            }
        }
    }

    fn tls(&mut self, path: &str, tls: Option<&Tls>) -> TlsMaterial {
        let Some(tls) = tls else {
            return TlsMaterial::default();
        };
        let mut pem = |name: &str, v: &Option<ValueFrom>| {
            v.as_ref()
                .and_then(|v| self.secret(&format!("{path}.{name}"), v))
        };
        TlsMaterial {
            ca: pem("ca", &tls.ca),
            cert: pem("cert", &tls.cert),
            key: pem("key", &tls.key),
        }
    }

    /// Host, port and TLS flag of an `mqtt://` or `mqtts://` URL. A wrong scheme is left
    /// to validation.
    fn broker(&mut self, path: &'static str, url: &str) -> (String, u16, bool) {
        let fallback = (String::new(), 0, false);
        if self.unexpanded.contains(path) {
            return fallback;
        }
        let (tls, authority) = match url.split_once("://") {
            Some(("mqtt", rest)) => (false, rest),
            Some(("mqtts", rest)) => (true, rest),
            _ => return fallback,
        };
        let authority = authority.strip_suffix('/').unwrap_or(authority);
        if authority.contains('@') {
            self.err(
                path,
                "credentials are never inline: use username and passwordFrom",
            );
            return fallback;
        }
        if authority.contains(['/', '?', '#']) {
            self.err(
                path,
                format!(
                    "{:?} must be mqtt[s]://host[:port] without a path",
                    redact::url(url)
                ),
            );
            return fallback;
        }
        let (host, port) = match authority.strip_prefix('[') {
            Some(v6) => match v6.split_once(']') {
                Some((host, "")) => (host, None),
                Some((host, port)) => (host, Some(port.strip_prefix(':').unwrap_or(port))),
                None => (authority, None),
            },
            None => match authority.rsplit_once(':') {
                Some((host, port)) if !host.contains(':') => (host, Some(port)),
                _ => (authority, None),
            },
        };
        if host.is_empty() || host.contains(['[', ']']) {
            self.err(path, format!("{:?} has no valid host", redact::url(url)));
            return fallback;
        }
        let port = match port {
            None => Some(if tls { 8883 } else { 1883 }),
            Some(p) => p.parse::<u16>().ok().filter(|p| *p != 0),
        };
        let Some(port) = port else {
            self.err(path, format!("{:?} has an invalid port", redact::url(url)));
            return fallback;
        };
        (host.to_string(), port, tls)
    }

    pub(super) fn source(
        &mut self,
        spec: &EdgePipelineSpec,
        namespace: &str,
        name: &str,
        node: &str,
    ) -> SourceSettings {
        let m = &spec.source.mqtt;
        let embedded_listen: Option<std::net::SocketAddr> =
            m.embedded.as_ref().and_then(|e| e.listen.parse().ok());
        let url = match (&m.url, embedded_listen) {
            (Some(url), _) => url.clone(),
            // The embedded broker, over loopback when it listens on every address.
            (None, Some(listen)) if listen.ip().is_unspecified() => {
                format!("mqtt://127.0.0.1:{}", listen.port())
            }
            (None, Some(listen)) => format!("mqtt://{listen}"),
            (None, None) => String::new(),
        };
        let (host, port, tls) = if url.is_empty() {
            (String::new(), 0, false)
        } else {
            self.broker("spec.source.mqtt.url", &url)
        };
        let keep_alive = duration(&m.keep_alive);
        if !keep_alive.is_zero() && !KEEP_ALIVE_RANGE.contains(&keep_alive) {
            self.err(
                "spec.source.mqtt.keepAlive",
                "must be between 1s and 65535s",
            );
        }
        let password = m
            .password_from
            .as_ref()
            .and_then(|p| self.secret_text("spec.source.mqtt.passwordFrom", p));
        SourceSettings {
            url,
            host,
            port,
            tls,
            topics: m.topics.clone(),
            qos: m.qos,
            client_id: m
                .client_id
                .clone()
                .unwrap_or_else(|| client_id(&format!("{namespace}-{name}-{node}"))),
            username: m.username.clone(),
            password,
            tls_material: self.tls("spec.source.mqtt.tls", m.tls.as_ref()),
            keep_alive,
            max_payload_bytes: spec
                .source
                .max_payload_size
                .to_bytes()
                .map_or(0, |b| usize::try_from(b).unwrap_or(usize::MAX)),
            max_devices: usize::try_from(spec.source.max_devices).unwrap_or(usize::MAX),
            embedded_listen,
            embedded_users: m
                .embedded
                .iter()
                .flat_map(|e| e.users.iter().enumerate())
                .filter_map(|(i, u)| {
                    let path = format!("spec.source.mqtt.embedded.users[{i}].passwordFrom");
                    let password = self.secret_text(&path, &u.password_from)?;
                    let own = |filters: &[String]| {
                        filters
                            .iter()
                            .map(|f| f.replace("{username}", &u.username))
                            .collect()
                    };
                    Some(EmbeddedUser {
                        username: u.username.clone(),
                        password,
                        publish: own(&u.publish),
                        subscribe: own(&u.subscribe),
                    })
                })
                .collect(),
            embedded_tls: m.embedded.as_ref().and_then(|e| e.tls.as_ref()).map(|t| {
                let path = "spec.source.mqtt.embedded.tls";
                TlsMaterial {
                    cert: self.secret(&format!("{path}.cert"), &t.cert),
                    key: self.secret(&format!("{path}.key"), &t.key),
                    ca: t
                        .client_ca
                        .as_ref()
                        .and_then(|c| self.secret(&format!("{path}.clientCa"), c)),
                }
            }),
        }
    }

    pub(super) fn buffer(&mut self, b: &Buffer) -> BufferSettings {
        let max_bytes = b.max_bytes.to_bytes().unwrap_or(0);
        BufferSettings {
            max_bytes,
            max_dead_letter_bytes: b
                .max_dead_letter_bytes
                .as_ref()
                .and_then(|s| s.to_bytes().ok())
                .unwrap_or(max_bytes / 4)
                .min(max_bytes / 2),
            max_age: duration(&b.max_age),
            when_full: b.when_full,
            durability: b.durability,
            keys: self.keys(b),
        }
    }

    /// The keyring of `buffer.encryption` (empty when off, or when a key is missing or
    /// malformed: that is reported).
    fn keys(&mut self, b: &Buffer) -> Keyring {
        let Some(encryption) = &b.encryption else {
            return Keyring::default();
        };
        let mut material = Vec::with_capacity(encryption.keys.len());
        for (i, key) in encryption.keys.iter().enumerate() {
            let path = format!("spec.buffer.encryption.keys[{i}].keyFrom");
            match self.secret(&path, &key.key_from) {
                Some(bytes) => material.push((key.id.clone(), bytes)),
                None => return Keyring::default(),
            }
        }
        match Keyring::new(material) {
            Ok(ring) => ring,
            Err(e) => {
                self.err("spec.buffer.encryption.keys", e.to_string());
                Keyring::default()
            }
        }
    }

    pub(super) fn sink(
        &mut self,
        s: &Sink,
        namespace: &str,
        name: &str,
        pipeline: &str,
        node: &str,
    ) -> SinkSettings {
        if let Some(m) = &s.mqtt {
            let (host, port, tls) = self.broker("spec.sink.mqtt.url", &m.url);
            let password = m
                .password_from
                .as_ref()
                .and_then(|p| self.secret_text("spec.sink.mqtt.passwordFrom", p));
            return SinkSettings::Mqtt(MqttSinkSettings {
                url: m.url.clone(),
                host,
                port,
                tls,
                topic: m
                    .topic
                    .replace("{pipeline}", pipeline)
                    .replace("{node}", node),
                qos: m.qos,
                batch_size: usize::try_from(m.batch_size).unwrap_or(usize::MAX),
                flush_interval: duration(&m.flush_interval),
                client_id: m
                    .client_id
                    .clone()
                    .unwrap_or_else(|| client_id(&format!("{namespace}-{name}-{node}-sink"))),
                username: m.username.clone(),
                password,
                tls_material: self.tls("spec.sink.mqtt.tls", m.tls.as_ref()),
            });
        }
        let Some(h) = &s.http else {
            // Neither sink: validation reported it and the settings are never used.
            return SinkSettings::Http(HttpSettings {
                url: String::new(),
                batch_size: 0,
                flush_interval: Duration::ZERO,
                timeout: Duration::ZERO,
                compression: Compression::None,
                headers: Vec::new(),
                tls_material: TlsMaterial::default(),
                initial_backoff: Duration::ZERO,
                max_backoff: Duration::ZERO,
                dead_letter_on: Vec::new(),
            });
        };
        let headers = self.headers("spec.sink.http.headers", &h.headers);
        let (initial_backoff, max_backoff) = (
            duration(&h.retry.initial_backoff),
            duration(&h.retry.max_backoff),
        );
        if h.retry.initial_backoff.to_std().is_ok()
            && h.retry.max_backoff.to_std().is_ok()
            && max_backoff < initial_backoff
        {
            self.err(
                "spec.sink.http.retry.maxBackoff",
                "must be >= initialBackoff",
            );
        }
        SinkSettings::Http(HttpSettings {
            url: h.url.clone(),
            batch_size: usize::try_from(h.batch_size).unwrap_or(usize::MAX),
            flush_interval: duration(&h.flush_interval),
            timeout: duration(&h.timeout),
            compression: h.compression,
            headers,
            tls_material: self.tls("spec.sink.http.tls", h.tls.as_ref()),
            initial_backoff,
            max_backoff,
            dead_letter_on: h.dead_letter_on.clone(),
        })
    }
}

impl Resolver<'_> {
    /// Request headers with their values resolved; `path` is e.g. `spec.sink.http.headers`.
    fn headers(&mut self, path: &str, headers: &[Header]) -> Vec<(String, String)> {
        let mut resolved = Vec::with_capacity(headers.len());
        for (i, header) in headers.iter().enumerate() {
            let path = format!("{path}[{i}].valueFrom");
            if let Some(value) = self.secret_text(&path, &header.value_from) {
                if value
                    .bytes()
                    .all(|b| b == b'\t' || (b' '..=b'~').contains(&b) || b >= 0x80)
                {
                    resolved.push((header.name.clone(), value));
                } else {
                    self.err(
                        path,
                        "the value is not a valid HTTP header value (control characters)",
                    );
                }
            }
        }
        resolved
    }

    /// The request headers of model downloads (`spec.inference.model.headers`), resolved.
    pub(super) fn model_headers(&mut self, spec: &EdgePipelineSpec) -> Vec<(String, String)> {
        match &spec.inference {
            Some(i) => self.headers("spec.inference.model.headers", &i.model.headers),
            None => Vec::new(),
        }
    }
}

/// A duration from the spec; an unparsable one was reported by validation and the
/// settings are then never used.
fn duration(d: &SpecDuration) -> Duration {
    d.to_std().unwrap_or_default()
}

fn is_variable_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// An MQTT-safe client id from `raw`: characters other than ASCII letters, digits, `-`,
/// `_` and `.` become `-`; an id longer than 128 characters is cut and suffixed with a
/// hash of the whole, so it stays unique and stable across restarts.
pub(super) fn client_id(raw: &str) -> String {
    let mut id: String = raw
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                c
            } else {
                '-'
            }
        })
        .collect();
    if id.len() > MAX_CLIENT_ID {
        let hash = fnv1a(raw.as_bytes());
        id.truncate(MAX_CLIENT_ID - 17);
        id.push_str(&format!("-{hash:016x}"));
    }
    id
}

/// 64-bit FNV-1a: a stable hash (unlike `std`'s, which is randomly seeded).
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

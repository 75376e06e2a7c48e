//! Credentials the configuration would send across the network in clear text: an MQTT
//! password over `mqtt://`, HTTP headers (API keys, tokens) or URL user info over
//! `http://`, for the source, the sinks and model downloads. The agent still starts (a
//! lab network may be fine with it) but says so at start, one warning per credential.
//!
//! Loopback peers are exempt: the connection never leaves the host (or, in a pod, the
//! pod), so there is no wire to read it from.

use std::net::IpAddr;

use edge_crds::redact;
use reqwest::Url;

use super::{AgentConfig, SinkSettings};

impl AgentConfig {
    /// One message per credential that would travel in clear text to another host, each
    /// naming the field, the (redacted) URL and the way out.
    pub fn cleartext_credentials(&self) -> Vec<String> {
        let mut warnings = Vec::new();
        let s = &self.source;
        if s.password.is_some() && !s.tls && !loopback_host(&s.host) {
            warnings.push(format!(
                "spec.source.mqtt.passwordFrom: the MQTT password is sent in clear text to {}; use mqtts://",
                redact::url(&s.url)
            ));
        }
        match &self.sink {
            SinkSettings::Mqtt(m) => {
                if m.password.is_some() && !m.tls && !loopback_host(&m.host) {
                    warnings.push(format!(
                        "spec.sink.mqtt.passwordFrom: the MQTT password is sent in clear text to {}; use mqtts://",
                        redact::url(&m.url)
                    ));
                }
            }
            SinkSettings::Http(h) => {
                warnings.extend(http_warning("spec.sink.http", &h.url, &h.headers));
            }
        }
        if let Some(url) = self
            .spec
            .inference
            .as_ref()
            .and_then(|i| i.model.url.as_deref())
        {
            warnings.extend(http_warning(
                "spec.inference.model",
                url,
                &self.model_headers,
            ));
        }
        warnings
    }
}

/// A warning when `url` is plain `http://` to another host and carries credentials
/// (headers, or user info in the URL itself).
fn http_warning(path: &str, url: &str, headers: &[(String, String)]) -> Option<String> {
    let parsed = Url::parse(url).ok()?;
    let host = parsed.host_str().unwrap_or_default();
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if parsed.scheme() != "http" || host.is_empty() || loopback_host(host) {
        return None;
    }
    let shown = redact::url(url);
    if !headers.is_empty() {
        let names: Vec<&str> = headers.iter().map(|(n, _)| n.as_str()).collect();
        return Some(format!(
            "{path}.headers: {} sent in clear text to {shown}; use https://",
            names.join(", ")
        ));
    }
    (!parsed.username().is_empty() || parsed.password().is_some()).then(|| {
        format!(
            "{path}.url: the credentials in the URL are sent in clear text to {shown}; use https://"
        )
    })
}

/// Whether a host (IPv6 without brackets) is this machine.
fn loopback_host(host: &str) -> bool {
    host.eq_ignore_ascii_case("localhost")
        || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn warnings(spec: &str, env: &[(&str, &str)]) -> Vec<String> {
        let lookup = |name: &str| {
            env.iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| v.to_string())
        };
        AgentConfig::from_text(spec, "edge-1", &lookup)
            .unwrap_or_else(|e| panic!("{e}"))
            .cleartext_credentials()
    }

    const PASSWORD: &str = "username: u\n      passwordFrom: {env: PW}";

    #[test]
    fn passwords_and_headers_over_plaintext_to_another_host_are_named() {
        let spec = format!(
            "source:\n  mqtt:\n      url: mqtt://broker.lan:1883\n      topics: [a]\n      {PASSWORD}\n\
             inference:\n  model:\n    url: http://models.lan/m.tflite?sig=secret\n    sha256: \"{}\"\n    \
             headers: [{{name: Authorization, valueFrom: {{env: TOKEN}}}}]\n\
             sink:\n  http:\n    url: http://ingest.lan/b\n    headers: [{{name: X-Api-Key, valueFrom: {{env: KEY}}}}]\n",
            "ab".repeat(32)
        );
        let got = warnings(&spec, &[("PW", "pw"), ("TOKEN", "t"), ("KEY", "k")]);
        assert_eq!(
            got,
            [
                "spec.source.mqtt.passwordFrom: the MQTT password is sent in clear text to mqtt://broker.lan:1883; use mqtts://",
                "spec.sink.http.headers: X-Api-Key sent in clear text to http://ingest.lan/b; use https://",
                "spec.inference.model.headers: Authorization sent in clear text to http://models.lan/m.tflite; use https://",
            ]
        );
        assert!(!got.concat().contains("secret"));

        let mqtt_sink = format!(
            "source:\n  mqtt: {{url: mqtt://127.0.0.1:1883, topics: [a]}}\n\
             sink:\n  mqtt:\n      url: mqtt://upstream.example:1883\n      topic: t\n      {PASSWORD}\n"
        );
        assert_eq!(
            warnings(&mqtt_sink, &[("PW", "pw")]),
            [
                "spec.sink.mqtt.passwordFrom: the MQTT password is sent in clear text to mqtt://upstream.example:1883; use mqtts://"
            ]
        );

        let userinfo = "source:\n  mqtt: {url: mqtt://127.0.0.1:1883, topics: [a]}\n\
                        sink:\n  http: {url: \"http://user:pw@ingest.lan/b\"}\n";
        assert_eq!(
            warnings(userinfo, &[]),
            [
                "spec.sink.http.url: the credentials in the URL are sent in clear text to http://ingest.lan/b; use https://"
            ]
        );
    }

    #[test]
    fn tls_and_loopback_peers_are_fine() {
        for spec in [
            format!(
                "source:\n  mqtt:\n      url: mqtts://broker.lan\n      topics: [a]\n      {PASSWORD}\n\
                 sink:\n  http:\n    url: https://ingest.lan/b\n    headers: [{{name: X-Api-Key, valueFrom: {{env: KEY}}}}]\n"
            ),
            format!(
                "source:\n  mqtt:\n      url: mqtt://127.0.0.1:1883\n      topics: [a]\n      {PASSWORD}\n\
                 sink:\n  http:\n    url: http://localhost:8080/b\n    headers: [{{name: X-Api-Key, valueFrom: {{env: KEY}}}}]\n"
            ),
            format!(
                "source:\n  mqtt:\n      url: mqtt://[::1]:1883\n      topics: [a]\n      {PASSWORD}\n\
                 sink:\n  http: {{url: \"http://[::1]:8080/b\"}}\n"
            ),
            "source:\n  mqtt: {url: mqtt://broker.lan:1883, topics: [a]}\n\
             sink:\n  http: {url: http://ingest.lan/b}\n"
                .to_string(),
        ] {
            assert_eq!(
                warnings(&spec, &[("PW", "pw"), ("KEY", "k")]),
                Vec::<String>::new(),
                "{spec}"
            );
        }
    }
}

//! The checks of where records wait and go: the queue (`spec.buffer`, its sizes and
//! encryption keys) and the sink (`spec.sink`: exactly one of HTTP or MQTT, its batches,
//! timeouts, TLS and credentials, and the rate limit with its schedule).

use super::Validator;
use crate::spec::{Buffer, HttpSink, MqttSink, NEVER_DEAD_LETTER, Sink, minute_of_day};
use crate::units::parse_size;

impl Validator {
    pub(super) fn buffer(&mut self, b: &Buffer) {
        match parse_size(&b.max_bytes.0) {
            Ok(n) if n < 64 * 1024 => self.err("spec.buffer.maxBytes", "must be at least 64Ki"),
            Ok(_) => {}
            Err(e) => self.err("spec.buffer.maxBytes", e.to_string()),
        }
        if let Some(dead) = &b.max_dead_letter_bytes {
            match (parse_size(&dead.0), parse_size(&b.max_bytes.0)) {
                (Ok(0), _) => self.err("spec.buffer.maxDeadLetterBytes", "must be > 0"),
                (Ok(d), Ok(max)) if d > max / 2 => self.err(
                    "spec.buffer.maxDeadLetterBytes",
                    "must be at most half of spec.buffer.maxBytes",
                ),
                (Ok(_), _) => {}
                (Err(e), _) => self.err("spec.buffer.maxDeadLetterBytes", e.to_string()),
            }
        }
        self.duration("spec.buffer.maxAge", &b.max_age, true);
        if let Some(e) = &b.encryption {
            let path = "spec.buffer.encryption.keys";
            if e.keys.is_empty() || e.keys.len() > 8 {
                self.err(path, "must list 1 to 8 keys");
            }
            for (i, key) in e.keys.iter().enumerate() {
                let ok = (1..=63).contains(&key.id.len())
                    && key
                        .id
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
                if !ok {
                    self.err(
                        format!("{path}[{i}].id"),
                        "must be 1 to 63 characters of letters, digits, '.', '_' and '-'",
                    );
                }
                if e.keys[..i].iter().any(|k| k.id == key.id) {
                    self.err(
                        path,
                        format!("key ids must be unique: {:?} is listed twice", key.id),
                    );
                }
                self.value_from(&format!("{path}[{i}].keyFrom"), &key.key_from);
            }
        }
    }

    pub(super) fn sink(&mut self, s: &Sink) {
        if let Some(share) = s.backlog.as_ref().and_then(|b| b.share_percent)
            && share > 100
        {
            self.err("spec.sink.backlog.sharePercent", "must be 0 to 100");
        }
        if let Some(r) = &s.rate_limit {
            let sizes = [
                (
                    "spec.sink.rateLimit.bytesPerSecond",
                    Some(&r.bytes_per_second),
                ),
                ("spec.sink.rateLimit.burst", r.burst.as_ref()),
            ];
            for (path, size) in sizes {
                match size.map(|s| parse_size(&s.0)) {
                    Some(Ok(0)) => self.err(path, "must be > 0"),
                    Some(Err(e)) => self.err(path, e.to_string()),
                    _ => {}
                }
            }
            if r.schedule.len() > 24 {
                self.err("spec.sink.rateLimit.schedule", "at most 24 windows");
            }
            for (i, w) in r.schedule.iter().enumerate() {
                let path = format!("spec.sink.rateLimit.schedule[{i}]");
                for (field, text) in [("from", &w.from), ("to", &w.to)] {
                    if minute_of_day(text).is_none() {
                        self.err(
                            format!("{path}.{field}"),
                            format!("{text:?} is not a time of day as HH:MM (00:00 to 23:59)"),
                        );
                    }
                }
                if w.from == w.to {
                    self.err(
                        format!("{path}.to"),
                        "must differ from from (a window cannot be empty or the whole day)",
                    );
                }
                if let Err(e) = parse_size(&w.bytes_per_second.0) {
                    self.err(format!("{path}.bytesPerSecond"), e.to_string());
                }
            }
        }
        if s.http.is_some() == s.mqtt.is_some() {
            self.err("spec.sink", "exactly one of http or mqtt must be set");
        }
        // Each sink that is set is checked, also when both are (as the CRD does).
        if let Some(h) = &s.http {
            self.http_sink(h);
        }
        if let Some(m) = &s.mqtt {
            self.mqtt_sink(m);
        }
    }

    pub(super) fn http_sink(&mut self, h: &HttpSink) {
        self.url("spec.sink.http.url", &h.url, &["http", "https"]);
        if h.batch_size == 0 {
            self.err("spec.sink.http.batchSize", "must be > 0");
        }
        self.duration("spec.sink.http.flushInterval", &h.flush_interval, true);
        self.duration("spec.sink.http.timeout", &h.timeout, true);
        self.duration(
            "spec.sink.http.retry.initialBackoff",
            &h.retry.initial_backoff,
            true,
        );
        self.duration(
            "spec.sink.http.retry.maxBackoff",
            &h.retry.max_backoff,
            true,
        );
        self.headers("spec.sink.http.headers", &h.headers);
        for (i, code) in h.dead_letter_on.iter().enumerate() {
            if !(400..500).contains(code) || NEVER_DEAD_LETTER.contains(code) {
                self.err(
                    format!("spec.sink.http.deadLetterOn[{i}]"),
                    format!("{code} is not a content rejection: use a 4xx other than 401, 403, 407, 408 and 429"),
                );
            }
        }
        if let Some(tls) = &h.tls {
            self.tls("spec.sink.http.tls", tls);
        }
        self.tls_scheme("spec.sink.http.tls", h.tls.as_ref(), Some(&h.url), "https");
    }

    pub(super) fn mqtt_sink(&mut self, m: &MqttSink) {
        self.url("spec.sink.mqtt.url", &m.url, &["mqtt", "mqtts"]);
        if m.topic.is_empty() || m.topic.contains(['+', '#']) {
            self.err(
                "spec.sink.mqtt.topic",
                "must be a topic name without wildcards",
            );
        }
        if m.qos > 1 {
            self.err("spec.sink.mqtt.qos", "must be 0 or 1");
        }
        if m.batch_size == 0 {
            self.err("spec.sink.mqtt.batchSize", "must be > 0");
        }
        self.duration("spec.sink.mqtt.flushInterval", &m.flush_interval, true);
        if let Some(p) = &m.password_from {
            self.value_from("spec.sink.mqtt.passwordFrom", p);
        }
        if let Some(tls) = &m.tls {
            self.tls("spec.sink.mqtt.tls", tls);
        }
        self.tls_scheme("spec.sink.mqtt.tls", m.tls.as_ref(), Some(&m.url), "mqtts");
    }
}

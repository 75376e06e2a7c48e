//! The checks of how the agent talks to the network: a `tls` block needs a TLS scheme (on
//! `mqtt://` or `http://` it would be ignored without a word), request headers have valid
//! names and a source, and golden and labels files are files next to the model, never
//! URLs of their own (a model pinned by `sha256` must not pull files from anywhere else).

use super::Validator;
use crate::redact;
use crate::spec::{Header, Tls};

impl Validator {
    /// `tls` at `path` is only honoured when `url` has the scheme `scheme` (`mqtts`,
    /// `https`); `url` is `None` for the embedded broker, which is plain MQTT.
    pub(super) fn tls_scheme(
        &mut self,
        path: &str,
        tls: Option<&Tls>,
        url: Option<&str>,
        scheme: &str,
    ) {
        if tls.is_none() {
            return;
        }
        match url {
            Some(url) if url.starts_with(&format!("{scheme}://")) => {}
            Some(url) => self.err(
                path,
                format!(
                    "set, but the url {:?} is not {scheme}://, so it would not be used: use {scheme}:// or remove tls",
                    redact::url(url)
                ),
            ),
            None => self.err(
                path,
                "set, but the embedded broker is plain MQTT, so it would not be used: remove tls",
            ),
        }
    }

    /// Request headers: a valid name and exactly one source for each value.
    pub(super) fn headers(&mut self, path: &str, headers: &[Header]) {
        for (i, header) in headers.iter().enumerate() {
            let path = format!("{path}[{i}]");
            if header.name.is_empty()
                || !header
                    .name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            {
                self.err(format!("{path}.name"), "must be an HTTP header name");
            }
            self.value_from(&format!("{path}.valueFrom"), &header.value_from);
        }
    }

    /// A golden or labels file named "next to the model": a file name or relative path,
    /// never a URL (`https://...`, `//host/...`, `file:...`, a backslash that URL parsers
    /// read as a slash).
    pub(super) fn file_next_to_model(&mut self, path: &str, name: &str) {
        if let Err(message) = file_next_to_model(name) {
            self.err(path, message);
        }
    }
}

/// Whether `name` is a file name or relative path rather than a URL.
pub fn file_next_to_model(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("must not be empty".into());
    }
    if name.contains(':') || name.contains('\\') || name.starts_with("//") {
        return Err(format!(
            "{:?} is a URL; name a file next to the model (pinned together with it)",
            redact::url(name)
        ));
    }
    Ok(())
}

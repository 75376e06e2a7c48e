//! The credential files of one client and the decision of what to do with what they hold
//! now: nothing (unchanged), wait (changed since the last look, maybe still being
//! written), try the new credentials, or keep the old ones because a file is broken.
//!
//! Pure: the caller reads the files and builds the client; nothing here touches the disk
//! or the network, so every rule is tested with plain values.

use std::path::PathBuf;

use edge_crds::{MqttSource, Sink, Tls, ValueFrom};
use rustls::pki_types::PrivateKeyDer;
use rustls::pki_types::pem::PemObject;

use super::expiry;
use crate::config::TlsMaterial;

/// A part of a client's credentials that can come from a file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Part {
    /// The value of the HTTP sink's header at this index of `headers`.
    Header(usize),
    /// The MQTT password.
    Password,
    /// The CA bundle trusted instead of the system roots.
    Ca,
    /// The client certificate (chain).
    Cert,
    /// The client private key.
    Key,
}

/// What can change in a client's credentials while the agent runs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Credentials {
    /// Request headers (name, value), the HTTP sink's.
    pub headers: Vec<(String, String)>,
    /// The MQTT password.
    pub password: Option<String>,
    /// CA, client certificate and key.
    pub tls: TlsMaterial,
}

impl Credentials {
    /// The value of `part` as the client uses it (empty when absent).
    fn value(&self, part: Part) -> Vec<u8> {
        let bytes = match part {
            Part::Header(i) => self.headers.get(i).map(|(_, v)| v.as_bytes()),
            Part::Password => self.password.as_deref().map(str::as_bytes),
            Part::Ca => self.tls.ca.as_deref(),
            Part::Cert => self.tls.cert.as_deref(),
            Part::Key => self.tls.key.as_deref(),
        };
        bytes.unwrap_or_default().to_vec()
    }

    /// These credentials with `part` set to `value` (a file's content, trailing newlines
    /// removed), or why `value` cannot be that part.
    fn with(mut self, part: Part, value: Vec<u8>) -> Result<Self, String> {
        if value.is_empty() {
            return Err("the file is empty".into());
        }
        let text = |value: Vec<u8>| String::from_utf8(value).map_err(|_| "not UTF-8 text");
        match part {
            Part::Header(i) => {
                let value = text(value)?;
                if !value
                    .bytes()
                    .all(|b| b == b'\t' || (b' '..=b'~').contains(&b) || b >= 0x80)
                {
                    return Err("not a valid HTTP header value (control characters)".into());
                }
                match self.headers.get_mut(i) {
                    Some((_, v)) => *v = value,
                    None => return Err(format!("no header at index {i}")),
                }
            }
            Part::Password => self.password = Some(text(value)?),
            Part::Ca => {
                expiry::earliest(&value).map_err(|e| format!("CA bundle: {e}"))?;
                self.tls.ca = Some(value);
            }
            Part::Cert => {
                expiry::leaf(&value).map_err(|e| format!("certificate: {e}"))?;
                self.tls.cert = Some(value);
            }
            Part::Key => {
                PrivateKeyDer::from_pem_slice(&value).map_err(|e| format!("private key: {e}"))?;
                self.tls.key = Some(value);
            }
        }
        Ok(self)
    }
}

/// What a file held when it was read: its content with trailing newlines removed (as
/// when the config was loaded), or why it could not be read.
pub type Content = Result<Vec<u8>, String>;

/// `raw` as [`Content`]: trailing `\n` and `\r` removed.
pub fn content(raw: std::io::Result<Vec<u8>>) -> Content {
    let mut bytes = raw.map_err(|e| e.to_string())?;
    while bytes.last().is_some_and(|b| matches!(b, b'\n' | b'\r')) {
        bytes.pop();
    }
    Ok(bytes)
}

/// What to do after a look at the files.
#[derive(Debug, PartialEq, Eq)]
pub enum Decision {
    /// They hold what was last decided on.
    Unchanged,
    /// They changed since the last look: wait one more look, in case they are still
    /// being written (a certificate before its key).
    Settling,
    /// They changed and stayed so: build the client with these, then [`CredentialFiles::adopt`]
    /// them if it works.
    Reload(Credentials),
    /// They changed and stayed so, but a file is unusable (named in the reason): the
    /// credentials in use stay.
    Broken(String),
}

/// The credential files of one client, the credentials in use, and what was last seen.
#[derive(Debug)]
pub struct CredentialFiles {
    files: Vec<(Part, PathBuf)>,
    in_use: Credentials,
    /// The files' contents the credentials in use came from.
    in_use_version: Vec<Content>,
    /// The contents last decided on (in use, or found broken).
    decided: Vec<Content>,
    /// Contents seen once, different from `decided`: applied if seen again.
    pending: Option<Vec<Content>>,
}

impl CredentialFiles {
    /// The files of a client whose credentials in use are `in_use` (read from those files).
    pub fn new(files: Vec<(Part, PathBuf)>, in_use: Credentials) -> Self {
        let version: Vec<Content> = files.iter().map(|(p, _)| Ok(in_use.value(*p))).collect();
        Self {
            files,
            in_use,
            in_use_version: version.clone(),
            decided: version,
            pending: None,
        }
    }

    /// The files, in the order [`CredentialFiles::observe`] expects their contents.
    pub fn paths(&self) -> impl Iterator<Item = &PathBuf> {
        self.files.iter().map(|(_, path)| path)
    }

    /// Whether there is anything to watch.
    pub fn is_empty(&self) -> bool {
        self.files.is_empty()
    }

    /// The credentials in use.
    pub fn in_use(&self) -> &Credentials {
        &self.in_use
    }

    /// Decides on what the files hold now (`now[i]` is the content of the i-th path).
    pub fn observe(&mut self, now: Vec<Content>) -> Decision {
        if now == self.decided {
            self.pending = None;
            return Decision::Unchanged;
        }
        if self.pending.as_ref() != Some(&now) {
            self.pending = Some(now);
            return Decision::Settling;
        }
        self.pending = None;
        self.decided = now.clone();
        if now == self.in_use_version {
            // Back to what is in use after a broken version: nothing to rebuild.
            return Decision::Unchanged;
        }
        let mut next = self.in_use.clone();
        for ((part, path), content) in self.files.iter().zip(now) {
            let applied = content.and_then(|value| next.with(*part, value));
            match applied {
                Ok(c) => next = c,
                Err(reason) => return Decision::Broken(format!("{}: {reason}", path.display())),
            }
        }
        Decision::Reload(next)
    }

    /// Makes `credentials` (from the last [`Decision::Reload`]) the ones in use: the
    /// client was rebuilt with them.
    pub fn adopt(&mut self, credentials: Credentials) {
        self.in_use_version = self.decided.clone();
        self.in_use = credentials;
    }
}

/// The credential files of the sink: header values, password, CA, certificate and key
/// given as `{file: ...}`.
pub fn sink_files(sink: &Sink) -> Vec<(Part, PathBuf)> {
    let mut files = Vec::new();
    if let Some(h) = &sink.http {
        for (i, header) in h.headers.iter().enumerate() {
            push(&mut files, Part::Header(i), Some(&header.value_from));
        }
        tls_files(&mut files, h.tls.as_ref());
    } else if let Some(m) = &sink.mqtt {
        push(&mut files, Part::Password, m.password_from.as_ref());
        tls_files(&mut files, m.tls.as_ref());
    }
    files
}

/// The credential files of the source broker connection.
pub fn source_files(source: &MqttSource) -> Vec<(Part, PathBuf)> {
    let mut files = Vec::new();
    push(&mut files, Part::Password, source.password_from.as_ref());
    tls_files(&mut files, source.tls.as_ref());
    files
}

fn tls_files(files: &mut Vec<(Part, PathBuf)>, tls: Option<&Tls>) {
    if let Some(tls) = tls {
        push(files, Part::Ca, tls.ca.as_ref());
        push(files, Part::Cert, tls.cert.as_ref());
        push(files, Part::Key, tls.key.as_ref());
    }
}

fn push(files: &mut Vec<(Part, PathBuf)>, part: Part, from: Option<&ValueFrom>) {
    if let Some(path) = from.and_then(|v| v.file.as_ref()) {
        files.push((part, PathBuf::from(path)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CERT_A: &[u8] = include_bytes!("testdata/until-2034.crt");
    const KEY_A: &[u8] = include_bytes!("testdata/until-2034.key");
    const CERT_B: &[u8] = include_bytes!("testdata/until-2030.crt");
    const KEY_B: &[u8] = include_bytes!("testdata/until-2030.key");

    fn token_files(token: &str) -> CredentialFiles {
        CredentialFiles::new(
            vec![(Part::Header(0), PathBuf::from("/run/token"))],
            Credentials {
                headers: vec![("Authorization".into(), token.into())],
                ..Credentials::default()
            },
        )
    }

    fn tls_files() -> CredentialFiles {
        CredentialFiles::new(
            vec![
                (Part::Cert, PathBuf::from("/tls/tls.crt")),
                (Part::Key, PathBuf::from("/tls/tls.key")),
            ],
            Credentials {
                tls: TlsMaterial {
                    cert: Some(trimmed(CERT_A)),
                    key: Some(trimmed(KEY_A)),
                    ca: None,
                },
                ..Credentials::default()
            },
        )
    }

    fn trimmed(pem: &[u8]) -> Vec<u8> {
        content(Ok(pem.to_vec())).unwrap()
    }

    fn now(contents: &[&[u8]]) -> Vec<Content> {
        contents.iter().map(|c| content(Ok(c.to_vec()))).collect()
    }

    #[test]
    fn the_files_the_config_was_read_from_are_unchanged() {
        let mut files = token_files("Bearer a");
        assert_eq!(files.observe(now(&[b"Bearer a\n"])), Decision::Unchanged);
        let mut files = tls_files();
        assert_eq!(files.observe(now(&[CERT_A, KEY_A])), Decision::Unchanged);
    }

    #[test]
    fn a_change_is_applied_once_it_has_stayed_for_one_more_look() {
        let mut files = token_files("Bearer a");
        assert_eq!(files.observe(now(&[b"Bearer b"])), Decision::Settling);
        let Decision::Reload(creds) = files.observe(now(&[b"Bearer b\r\n"])) else {
            panic!("expected a reload");
        };
        assert_eq!(creds.headers, [("Authorization".into(), "Bearer b".into())]);
        files.adopt(creds.clone());
        assert_eq!(files.in_use(), &creds);
        assert_eq!(files.observe(now(&[b"Bearer b"])), Decision::Unchanged);
    }

    #[test]
    fn a_pair_written_one_file_after_the_other_is_never_tried_half_done() {
        let mut files = tls_files();
        // The certificate is replaced first, the key a moment later.
        assert_eq!(files.observe(now(&[CERT_B, KEY_A])), Decision::Settling);
        assert_eq!(files.observe(now(&[CERT_B, KEY_B])), Decision::Settling);
        let Decision::Reload(creds) = files.observe(now(&[CERT_B, KEY_B])) else {
            panic!("expected a reload");
        };
        assert_eq!(creds.tls.cert.as_deref(), Some(&trimmed(CERT_B)[..]));
        assert_eq!(creds.tls.key.as_deref(), Some(&trimmed(KEY_B)[..]));
    }

    #[test]
    fn a_broken_file_keeps_the_credentials_in_use_and_is_reported_once() {
        let cases: [(&[u8], &str); 4] = [
            (b"", "empty"),
            (b"\n\n", "empty"),
            (
                b"-----BEGIN CERTIFICATE-----\nZm9v\n-----END CERTIFICATE-----\n",
                "certificate",
            ),
            (KEY_A, "no certificate"),
        ];
        for (cert, why) in cases {
            let mut files = tls_files();
            assert_eq!(files.observe(now(&[cert, KEY_A])), Decision::Settling);
            match files.observe(now(&[cert, KEY_A])) {
                Decision::Broken(reason) => {
                    assert!(reason.starts_with("/tls/tls.crt: "), "{reason}");
                    assert!(reason.contains(why), "{reason} should say {why}");
                }
                other => panic!("{why}: {other:?}"),
            }
            // Reported once: the same broken content is not decided on again.
            assert_eq!(files.observe(now(&[cert, KEY_A])), Decision::Unchanged);
            assert_eq!(
                files.in_use().tls.cert.as_deref(),
                Some(&trimmed(CERT_A)[..])
            );
        }
        let mut files = tls_files();
        let unreadable = vec![Ok(trimmed(CERT_A)), Err("permission denied".to_string())];
        files.observe(unreadable.clone());
        assert_eq!(
            files.observe(unreadable),
            Decision::Broken("/tls/tls.key: permission denied".into())
        );
        let mut files = tls_files();
        files.observe(now(&[CERT_A, b"not a key"]));
        assert!(
            matches!(files.observe(now(&[CERT_A, b"not a key"])), Decision::Broken(r) if r.contains("private key"))
        );
    }

    #[test]
    fn a_header_value_must_be_text_a_header_can_carry() {
        let mut files = token_files("Bearer a");
        files.observe(now(&[b"Bearer b\nInjected: 1"]));
        let decision = files.observe(now(&[b"Bearer b\nInjected: 1"]));
        assert!(matches!(decision, Decision::Broken(r) if r.contains("header value")));
        files.observe(now(&[b"\xff\xfe"]));
        let decision = files.observe(now(&[b"\xff\xfe"]));
        assert!(matches!(decision, Decision::Broken(r) if r.contains("UTF-8")));
    }

    #[test]
    fn going_back_to_the_files_in_use_after_a_broken_version_rebuilds_nothing() {
        let mut files = token_files("Bearer a");
        files.observe(now(&[b""]));
        assert!(matches!(files.observe(now(&[b""])), Decision::Broken(_)));
        assert_eq!(files.observe(now(&[b"Bearer a"])), Decision::Settling);
        assert_eq!(files.observe(now(&[b"Bearer a"])), Decision::Unchanged);
        // And a fix after that is applied.
        files.observe(now(&[b"Bearer c"]));
        assert!(matches!(
            files.observe(now(&[b"Bearer c"])),
            Decision::Reload(_)
        ));
    }

    #[test]
    fn a_rebuild_that_fails_leaves_the_old_credentials_in_use_until_the_next_change() {
        let mut files = token_files("Bearer a");
        files.observe(now(&[b"Bearer b"]));
        assert!(matches!(
            files.observe(now(&[b"Bearer b"])),
            Decision::Reload(_)
        ));
        // The caller could not build the client: it does not adopt.
        assert_eq!(files.observe(now(&[b"Bearer b"])), Decision::Unchanged);
        assert_eq!(files.in_use().headers[0].1, "Bearer a");
    }

    #[test]
    fn only_file_references_are_watched() {
        let spec: edge_crds::EdgePipelineSpec = edge_crds::parse_pipeline(
            "source:\n  mqtt:\n    url: mqtts://broker:8883\n    topics: [a]\n    username: u\n    \
             passwordFrom: {file: /run/pw}\n    tls: {ca: {file: /tls/ca.crt}, cert: {env: C}, key: {env: K}}\n\
             sink:\n  http:\n    url: https://x/\n    headers:\n      - {name: A, valueFrom: {env: T}}\n      \
             - {name: B, valueFrom: {file: /run/b}}\n    tls: {cert: {file: /c}, key: {file: /k}}\n",
        )
        .expect("spec")
        .spec;
        assert_eq!(
            sink_files(&spec.sink),
            [
                (Part::Header(1), PathBuf::from("/run/b")),
                (Part::Cert, PathBuf::from("/c")),
                (Part::Key, PathBuf::from("/k")),
            ]
        );
        assert_eq!(
            source_files(&spec.source.mqtt),
            [
                (Part::Password, PathBuf::from("/run/pw")),
                (Part::Ca, PathBuf::from("/tls/ca.crt")),
            ]
        );
    }
}

//! Credentials that rotate without a restart, and fail safe when the new ones are broken.
//!
//! Every credential given as a file (`valueFrom: {file: ...}` of the HTTP sink's headers,
//! `passwordFrom: {file: ...}`, the `tls` CA, certificate and key of the sink and of the
//! source broker connection) is read again every [`POLL`]. A change is acted on once the
//! files have held it for two looks in a row (a certificate is not tried without the key
//! written after it). The client is then rebuilt with it: the HTTP sink takes a new
//! client and headers before its next request, the MQTT sink and the source reconnect. A
//! new version that cannot be used (an empty or unreadable file, text that is no PEM
//! certificate or key, a key that does not match its certificate, a header value with
//! control characters) is logged once, counted as
//! `edge_agent_credential_reloads_total{use,result="failed"}`, and the credentials in use
//! stay until the files change again.
//!
//! The `notAfter` of every certificate in use is exported as
//! `edge_agent_certificate_expiry_timestamp_seconds{use}`, at start and after every
//! reload. Environment variables cannot change under a running process: credentials from
//! `env` (and so from `secretKeyRef`, which the operator turns into variables) take a
//! restart.
//!
//! The decisions are pure ([`files`], [`expiry`]); this module reads the files and hands
//! the rebuilt clients over. How a client is built is its stage's business: [`Watch::new`]
//! takes the client's constructor.

pub mod expiry;
pub mod files;

use std::path::Path;
use std::time::Duration;

use tokio::io::AsyncReadExt;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

pub use self::files::Credentials;
use self::files::{Content, CredentialFiles, Decision};
use crate::config::{HttpSettings, MqttSinkSettings, SourceSettings, TlsMaterial};
use crate::runtime::telemetry::Metrics;

/// How often credential files are read.
pub const POLL: Duration = Duration::from_secs(2);
/// Largest credential file read; a larger one is broken.
const MAX_FILE_BYTES: u64 = 1024 * 1024;

/// The client credentials belong to (the `use` label of
/// `edge_agent_credential_reloads_total`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Client {
    /// The HTTP or MQTT sink.
    Sink,
    /// The source broker connection.
    Source,
}

impl Client {
    /// Every client, for the metric's label values.
    pub const ALL: [Client; 2] = [Client::Sink, Client::Source];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Sink => "sink",
            Self::Source => "source",
        }
    }

    /// The `use` labels of its certificates' expiry: (client certificate, CA bundle).
    fn expiry_uses(self) -> (&'static str, &'static str) {
        match self {
            Self::Sink => ("sink_client", "sink_ca"),
            Self::Source => ("source_client", "source_ca"),
        }
    }
}

/// New values of a client's connection (new credentials), as the client sees them: it
/// takes the latest when it is ready for it.
pub struct Updates<T> {
    rx: Option<watch::Receiver<Option<T>>>,
    /// A value [`Updates::changed`] saw arrive, not taken yet.
    next: Option<T>,
}

impl<T: Clone> Updates<T> {
    /// No updates ever (nothing is read from files).
    pub fn none() -> Self {
        Self {
            rx: None,
            next: None,
        }
    }

    fn from(rx: watch::Receiver<Option<T>>) -> Self {
        Self {
            rx: Some(rx),
            next: None,
        }
    }

    /// The newest value, if one came since the last call.
    pub fn take(&mut self) -> Option<T> {
        if let Some(rx) = self.rx.as_mut()
            && rx.has_changed().unwrap_or(false)
        {
            self.next = rx.borrow_and_update().clone();
        }
        self.next.take()
    }

    /// Resolves when a new value is waiting (then [`Updates::take`] returns it); never
    /// without a watcher.
    pub async fn changed(&mut self) {
        if self.next.is_some() {
            return;
        }
        let Some(rx) = self.rx.as_mut() else {
            return std::future::pending().await;
        };
        match rx.changed().await {
            Ok(()) => self.next = rx.borrow_and_update().clone(),
            Err(_) => {
                // The watcher stopped: nothing will ever change again.
                self.rx = None;
                std::future::pending::<()>().await;
            }
        }
    }
}

/// Settings whose credentials may come from files: the credentials they use, and how they
/// take checked new ones.
pub trait WithCredentials: Clone + Send + 'static {
    /// The credentials these settings use now.
    fn credentials(&self) -> Credentials;
    /// Takes `c` in place of the credentials in use.
    fn adopt(&mut self, c: &Credentials);
}

impl WithCredentials for HttpSettings {
    fn credentials(&self) -> Credentials {
        Credentials {
            headers: self.headers.clone(),
            password: None,
            tls: self.tls_material.clone(),
        }
    }

    fn adopt(&mut self, c: &Credentials) {
        self.headers.clone_from(&c.headers);
        self.tls_material = c.tls.clone();
    }
}

impl WithCredentials for MqttSinkSettings {
    fn credentials(&self) -> Credentials {
        mqtt_credentials(&self.password, &self.tls_material)
    }

    fn adopt(&mut self, c: &Credentials) {
        self.password.clone_from(&c.password);
        self.tls_material = c.tls.clone();
    }
}

impl WithCredentials for SourceSettings {
    fn credentials(&self) -> Credentials {
        mqtt_credentials(&self.password, &self.tls_material)
    }

    fn adopt(&mut self, c: &Credentials) {
        self.password.clone_from(&c.password);
        self.tls_material = c.tls.clone();
    }
}

/// An MQTT client's credentials: a password and TLS files, no headers.
fn mqtt_credentials(password: &Option<String>, tls: &TlsMaterial) -> Credentials {
    Credentials {
        headers: Vec::new(),
        password: password.clone(),
        tls: tls.clone(),
    }
}

/// Builds a client from checked credentials and hands it to the running one; or says why
/// it cannot be built.
type Rebuild = Box<dyn FnMut(&Credentials) -> Result<(), String> + Send>;

/// The credential files of one client and where their new versions go.
pub struct Watch {
    client: Client,
    files: CredentialFiles,
    rebuild: Rebuild,
}

impl Watch {
    /// The credential files of `client`, configured by `settings`: each checked new
    /// version is taken into a copy of the settings, turned into a client by `build` (the
    /// client's own constructor) and handed over through the returned updates. `None`
    /// when none of its credentials comes from a file.
    pub fn new<S, T, E>(
        client: Client,
        settings: &S,
        files: Vec<(files::Part, std::path::PathBuf)>,
        build: fn(&S) -> Result<T, E>,
    ) -> Option<(Self, Updates<T>)>
    where
        S: WithCredentials,
        T: Clone + Send + Sync + 'static,
        E: std::fmt::Display + 'static,
    {
        let files = CredentialFiles::new(files, settings.credentials());
        if files.is_empty() {
            return None;
        }
        let (tx, rx) = watch::channel(None);
        let mut settings = settings.clone();
        let rebuild: Rebuild = Box::new(move |c| {
            settings.adopt(c);
            tx.send_replace(Some(build(&settings).map_err(|e| e.to_string())?));
            Ok(())
        });
        let watch = Self {
            client,
            files,
            rebuild,
        };
        Some((watch, Updates::from(rx)))
    }

    /// One look at the files, and what follows from it.
    async fn check(&mut self, metrics: &Metrics) {
        let mut now = Vec::new();
        for path in self.files.paths() {
            now.push(read(path).await);
        }
        let client = self.client.as_str();
        let failed = |reason: &str| {
            tracing::warn!(client, %reason, "new credentials are unusable; the ones in use stay");
            metrics
                .credential_reloads
                .with_label_values(&[client, "failed"])
                .inc();
        };
        match self.files.observe(now) {
            Decision::Unchanged | Decision::Settling => {}
            Decision::Broken(reason) => failed(&reason),
            Decision::Reload(credentials) => match (self.rebuild)(&credentials) {
                Ok(()) => {
                    tracing::info!(client, "credentials reloaded from their files");
                    metrics
                        .credential_reloads
                        .with_label_values(&[client, "ok"])
                        .inc();
                    export_expiry(metrics, self.client, &credentials.tls);
                    self.files.adopt(credentials);
                }
                Err(reason) => failed(&reason),
            },
        }
    }
}

/// Reads the files of `watches` every [`POLL`] until `stop`, rebuilding clients as their
/// credentials change.
pub async fn run(
    mut watches: Vec<Watch>,
    metrics: std::sync::Arc<Metrics>,
    stop: CancellationToken,
) {
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(POLL) => {}
        }
        for watch in &mut watches {
            watch.check(&metrics).await;
        }
    }
}

/// A file's content, at most [`MAX_FILE_BYTES`], read off the async workers.
async fn read(path: &Path) -> Content {
    let read = async {
        let file = tokio::fs::File::open(path).await?;
        let mut bytes = Vec::new();
        file.take(MAX_FILE_BYTES + 1)
            .read_to_end(&mut bytes)
            .await?;
        if bytes.len() as u64 > MAX_FILE_BYTES {
            return Err(std::io::Error::other(format!(
                "larger than {MAX_FILE_BYTES} bytes"
            )));
        }
        Ok(bytes)
    };
    files::content(read.await)
}

/// Sets the expiry gauges of `client`'s certificates in `tls` (client certificate: its
/// leaf; CA bundle: its earliest). A certificate that cannot be parsed is logged.
pub fn export_expiry(metrics: &Metrics, client: Client, tls: &TlsMaterial) {
    let (cert, ca) = client.expiry_uses();
    export(metrics, cert, tls.cert.as_deref(), expiry::leaf);
    export(metrics, ca, tls.ca.as_deref(), expiry::earliest);
}

/// Sets the expiry gauges of the embedded broker's certificate and client CA.
pub fn export_embedded_expiry(metrics: &Metrics, tls: &TlsMaterial) {
    export(
        metrics,
        "embedded_server",
        tls.cert.as_deref(),
        expiry::leaf,
    );
    export(
        metrics,
        "embedded_client_ca",
        tls.ca.as_deref(),
        expiry::earliest,
    );
}

fn export(
    metrics: &Metrics,
    use_: &'static str,
    pem: Option<&[u8]>,
    not_after: fn(&[u8]) -> Result<i64, expiry::ExpiryError>,
) {
    let Some(pem) = pem else {
        return;
    };
    match not_after(pem) {
        Ok(at) => metrics
            .certificate_expiry
            .with_label_values(&[use_])
            .set(at),
        Err(e) => tracing::warn!(certificate = use_, error = %e, "no expiry date exported"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::delivery::sink::http::HttpClient;

    #[tokio::test]
    async fn a_value_seen_arriving_while_waiting_is_still_taken_after() {
        let (tx, rx) = watch::channel(None);
        let mut updates = Updates::from(rx);
        assert_eq!(updates.take(), None);
        tx.send_replace(Some(1));
        updates.changed().await;
        assert_eq!(updates.take(), Some(1));
        assert_eq!(updates.take(), None);
        tx.send_replace(Some(2));
        tx.send_replace(Some(3));
        assert_eq!(updates.take(), Some(3), "the newest");
        drop(tx);
        let waited = tokio::time::timeout(Duration::from_millis(50), updates.changed()).await;
        assert!(waited.is_err(), "a stopped watcher never wakes the client");
        let mut none = Updates::<u8>::none();
        assert_eq!(none.take(), None);
    }

    const CERT_A: &[u8] = include_bytes!("testdata/until-2034.crt");
    const KEY_A: &[u8] = include_bytes!("testdata/until-2034.key");
    const KEY_B: &[u8] = include_bytes!("testdata/until-2030.key");

    fn http(cert: &[u8], key: &[u8]) -> HttpSettings {
        let config = crate::config::AgentConfig::from_text(
            "source:\n  mqtt: {url: \"mqtt://127.0.0.1:1883\", topics: [a]}\n\
             sink:\n  http: {url: \"https://127.0.0.1:9/ingest\"}\n",
            "edge-1",
            &|_| None,
        )
        .expect("config");
        let crate::config::SinkSettings::Http(mut settings) = config.sink else {
            panic!("http sink");
        };
        settings.tls_material = TlsMaterial {
            ca: None,
            cert: Some(cert.to_vec()),
            key: Some(key.to_vec()),
        };
        settings
    }

    #[test]
    fn a_key_that_does_not_match_its_certificate_builds_no_client() {
        crate::runtime::tls::install_crypto_provider();
        assert!(HttpClient::new(&http(CERT_A, KEY_A)).is_ok());
        let err = HttpClient::new(&http(CERT_A, KEY_B)).expect_err("mismatched key");
        assert!(err.to_string().contains("KeyMismatch"), "{err}");
        let material = |key: &[u8]| TlsMaterial {
            ca: None,
            cert: Some(CERT_A.to_vec()),
            key: Some(key.to_vec()),
        };
        assert!(crate::runtime::tls::client_config(&material(KEY_A)).is_ok());
        assert!(crate::runtime::tls::client_config(&material(KEY_B)).is_err());
    }

    #[test]
    fn expiry_is_exported_for_the_certificates_in_use_only() {
        let metrics = Metrics::new("a/b").expect("metrics");
        export_expiry(
            &metrics,
            Client::Sink,
            &TlsMaterial {
                ca: Some(include_bytes!("testdata/until-2030.crt").to_vec()),
                cert: Some(CERT_A.to_vec()),
                key: Some(KEY_A.to_vec()),
            },
        );
        let text = metrics.render();
        assert!(text.contains("edge_agent_certificate_expiry_timestamp_seconds{pipeline=\"a/b\",use=\"sink_client\"} 2019686400"), "{text}");
        assert!(text.contains("edge_agent_certificate_expiry_timestamp_seconds{pipeline=\"a/b\",use=\"sink_ca\"} 1906545600"), "{text}");
        assert!(!text.contains("use=\"source_"), "{text}");
        assert!(text.contains("edge_agent_credential_reloads_total{pipeline=\"a/b\",result=\"failed\",use=\"source\"} 0"), "{text}");
    }
}

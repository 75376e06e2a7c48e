//! TLS and connection options for the agent's MQTT clients (the source broker and the
//! MQTT sink): rustls with the ring provider, an optional custom CA bundle (instead of
//! the system roots) and an optional client certificate.

use std::sync::Arc;
use std::time::Duration;

use rumqttc::{MqttOptions, TlsConfiguration, Transport};
use rustls::RootCertStore;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::config::TlsMaterial;

/// Why a TLS client configuration cannot be built.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("CA bundle: {0}")]
    Ca(#[source] PemMaterialError),
    #[error("client certificate: {0}")]
    Cert(#[source] PemMaterialError),
    #[error("client key: {0}")]
    Key(#[source] PemMaterialError),
    #[error("a client certificate needs both cert and key")]
    HalfIdentity,
    #[error("TLS setup: {0}")]
    Rustls(#[from] rustls::Error),
}

/// What is wrong with one piece of PEM material (a CA bundle, a certificate chain, a
/// key); the field it came from is named by the error that holds it.
#[derive(Debug, thiserror::Error)]
pub enum PemMaterialError {
    /// The field is not set.
    #[error("missing")]
    Missing,
    /// A certificate chain without a certificate.
    #[error("no certificate in the PEM")]
    NoCertificate,
    /// A CA bundle without a certificate.
    #[error("no certificate in the PEM bundle")]
    EmptyBundle,
    /// The text is not valid PEM, or holds no item of the kind wanted.
    #[error(transparent)]
    Pem(#[from] rustls::pki_types::pem::Error),
    /// rustls refuses a certificate (a CA that is not a valid trust anchor).
    #[error(transparent)]
    Rustls(#[from] rustls::Error),
    /// No client verifier can be built from the CA bundle.
    #[error(transparent)]
    Verifier(#[from] rustls::server::VerifierBuilderError),
}

/// Makes ring the process-wide rustls provider (idempotent). `main` calls it first thing.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// A rustls client configuration from PEM material.
pub fn client_config(material: &TlsMaterial) -> Result<rustls::ClientConfig, TlsError> {
    let mut roots = RootCertStore::empty();
    match &material.ca {
        Some(pem) => {
            let mut added = 0;
            for cert in CertificateDer::pem_slice_iter(pem) {
                let cert = cert.map_err(|e| TlsError::Ca(e.into()))?;
                roots.add(cert).map_err(|e| TlsError::Ca(e.into()))?;
                added += 1;
            }
            if added == 0 {
                return Err(TlsError::Ca(PemMaterialError::EmptyBundle));
            }
        }
        None => {
            let native = rustls_native_certs::load_native_certs();
            if !native.errors.is_empty() {
                tracing::debug!(errors = ?native.errors, "some system CA certificates could not be read");
            }
            let (added, ignored) = roots.add_parsable_certificates(native.certs);
            tracing::debug!(added, ignored, "system CA certificates");
        }
    }
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_root_certificates(roots);
    let config = match (&material.cert, &material.key) {
        (Some(cert), Some(key)) => {
            let chain = CertificateDer::pem_slice_iter(cert)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| TlsError::Cert(e.into()))?;
            if chain.is_empty() {
                return Err(TlsError::Cert(PemMaterialError::NoCertificate));
            }
            let key = PrivateKeyDer::from_pem_slice(key).map_err(|e| TlsError::Key(e.into()))?;
            builder.with_client_auth_cert(chain, key)?
        }
        (None, None) => builder.with_no_client_auth(),
        _ => return Err(TlsError::HalfIdentity),
    };
    Ok(config)
}

/// Everything needed to connect one MQTT client.
pub struct Connect<'a> {
    /// Client id.
    pub client_id: &'a str,
    /// Broker host.
    pub host: &'a str,
    /// Broker port.
    pub port: u16,
    /// `mqtts://`.
    pub tls: bool,
    /// PEM material for TLS.
    pub material: &'a TlsMaterial,
    /// Username.
    pub username: Option<&'a str>,
    /// Password.
    pub password: Option<&'a str>,
    /// Keep-alive interval.
    pub keep_alive: Duration,
}

/// rumqttc options for `c`.
pub fn mqtt_options(c: &Connect<'_>) -> Result<MqttOptions, TlsError> {
    let mut options = MqttOptions::new(c.client_id, c.host, c.port);
    options.set_keep_alive(c.keep_alive.max(Duration::from_secs(5)));
    if let Some(user) = c.username {
        options.set_credentials(user, c.password.unwrap_or_default());
    }
    if c.tls {
        let config = client_config(c.material)?;
        options.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(
            Arc::new(config),
        )));
    }
    Ok(options)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bad_ca_bundle_or_half_an_identity_is_an_error_not_a_panic() {
        let bad = TlsMaterial {
            ca: Some(b"not pem".to_vec()),
            ..TlsMaterial::default()
        };
        assert!(matches!(client_config(&bad), Err(TlsError::Ca(_))));
        let half = TlsMaterial {
            cert: Some(b"x".to_vec()),
            ..TlsMaterial::default()
        };
        assert!(client_config(&half).is_err());
    }

    #[test]
    fn system_roots_are_used_without_a_custom_ca() {
        assert!(client_config(&TlsMaterial::default()).is_ok());
    }
}

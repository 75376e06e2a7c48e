//! TLS for the embedded broker (`embedded.tls`): the agent terminates TLS on the broker's
//! address and hands each connection, decrypted, to the broker on a loopback port of its
//! own. rumqttd's own TLS would bring a second rustls version into the build; this keeps
//! the one the agent already verifies its upstreams with (ring provider).
//!
//! Bounded like the broker: at most [`MAX_CONNECTIONS`] connections at once (more are
//! closed at once), and a client gets [`HANDSHAKE_TIMEOUT`] to finish its handshake.
//! With a client CA, every client must present a certificate it signed.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rumqttc::tokio_rustls::TlsAcceptor;
use rustls::RootCertStore;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

use super::MAX_CONNECTIONS;
use crate::config::TlsMaterial;
use crate::runtime::tls::PemMaterialError;

/// How long a client may take to complete its TLS handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Why the broker's TLS configuration cannot be built.
#[derive(Debug, thiserror::Error)]
pub enum ServerTlsError {
    #[error("spec.source.mqtt.embedded.tls.cert: {0}")]
    Cert(#[source] PemMaterialError),
    #[error("spec.source.mqtt.embedded.tls.key: {0}")]
    Key(#[source] PemMaterialError),
    #[error("spec.source.mqtt.embedded.tls.clientCa: {0}")]
    ClientCa(#[source] PemMaterialError),
    #[error("spec.source.mqtt.embedded.tls: {0}")]
    Rustls(#[from] rustls::Error),
}

/// The rustls server configuration of `material` (`cert`, `key`, and `ca` as the client CA).
pub fn server_config(material: &TlsMaterial) -> Result<rustls::ServerConfig, ServerTlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let cert = material
        .cert
        .as_deref()
        .ok_or(ServerTlsError::Cert(PemMaterialError::Missing))?;
    let chain = CertificateDer::pem_slice_iter(cert)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| ServerTlsError::Cert(e.into()))?;
    if chain.is_empty() {
        return Err(ServerTlsError::Cert(PemMaterialError::NoCertificate));
    }
    let key = material
        .key
        .as_deref()
        .ok_or(ServerTlsError::Key(PemMaterialError::Missing))?;
    let key = PrivateKeyDer::from_pem_slice(key).map_err(|e| ServerTlsError::Key(e.into()))?;
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()?;
    let builder = match &material.ca {
        None => builder.with_no_client_auth(),
        Some(pem) => {
            let mut roots = RootCertStore::empty();
            for cert in CertificateDer::pem_slice_iter(pem) {
                let cert = cert.map_err(|e| ServerTlsError::ClientCa(e.into()))?;
                roots
                    .add(cert)
                    .map_err(|e| ServerTlsError::ClientCa(e.into()))?;
            }
            if roots.is_empty() {
                return Err(ServerTlsError::ClientCa(PemMaterialError::EmptyBundle));
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| ServerTlsError::ClientCa(e.into()))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    Ok(builder.with_single_cert(chain, key)?)
}

/// Accepts TLS connections on `listener` and relays each to the broker at `backend`.
pub async fn serve(listener: TcpListener, config: Arc<rustls::ServerConfig>, backend: SocketAddr) {
    let acceptor = TlsAcceptor::from(config);
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                tracing::warn!(error = %e, "embedded broker: accepting a TLS connection");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            tracing::warn!(%peer, "embedded broker: connection limit reached, closing");
            continue;
        };
        let acceptor = acceptor.clone();
        tokio::spawn(async move {
            let _slot = slot;
            relay(acceptor, tcp, peer, backend).await;
        });
    }
}

async fn relay(acceptor: TlsAcceptor, tcp: TcpStream, peer: SocketAddr, backend: SocketAddr) {
    let mut tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => {
            tracing::info!(%peer, error = %crate::runtime::diagnostics::chain(&e), "embedded broker: TLS handshake failed");
            return;
        }
        Err(_) => {
            tracing::info!(%peer, "embedded broker: TLS handshake timed out");
            return;
        }
    };
    let mut broker = match TcpStream::connect(backend).await {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "embedded broker: relaying a TLS connection");
            return;
        }
    };
    let _ = tokio::io::copy_bidirectional(&mut tls, &mut broker).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_or_broken_material_names_the_field() {
        let none = TlsMaterial::default();
        assert!(matches!(server_config(&none), Err(ServerTlsError::Cert(_))));
        let bad = TlsMaterial {
            cert: Some(b"not pem".to_vec()),
            key: Some(b"not pem".to_vec()),
            ca: None,
        };
        let err = server_config(&bad).unwrap_err().to_string();
        assert!(err.starts_with("spec.source.mqtt.embedded.tls."), "{err}");
    }
}

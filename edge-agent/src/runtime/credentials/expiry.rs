//! When a certificate stops being valid: the `notAfter` of the leaf of a certificate
//! chain, or the earliest one of a CA bundle, in unix seconds. Exported as
//! `edge_agent_certificate_expiry_timestamp_seconds{use}` and alerted on
//! (`CertificateExpiringSoon`) well before a handshake starts failing.

use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;

/// Why no expiry could be read from PEM text.
#[derive(Debug, thiserror::Error)]
pub enum ExpiryError {
    /// The text holds no `CERTIFICATE` block.
    #[error("no certificate in the PEM")]
    Empty,
    /// A block is not valid PEM.
    #[error("not valid PEM: {0}")]
    Pem(#[source] rustls::pki_types::pem::Error),
    /// A certificate is not valid X.509.
    #[error("not a valid X.509 certificate: {0}")]
    X509(#[source] x509_parser::nom::Err<x509_parser::error::X509Error>),
}

/// Two errors are equal when they are the same failure and say the same: the PEM
/// parser's error has no equality of its own.
impl PartialEq for ExpiryError {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (Self::Empty, Self::Empty) => true,
            (Self::Pem(a), Self::Pem(b)) => a.to_string() == b.to_string(),
            (Self::X509(a), Self::X509(b)) => a == b,
            _ => false,
        }
    }
}

/// The `notAfter` (unix seconds) of every certificate in `pem`, in order.
fn not_afters(pem: &[u8]) -> Result<Vec<i64>, ExpiryError> {
    let mut out = Vec::new();
    for der in CertificateDer::pem_slice_iter(pem) {
        let der = der.map_err(ExpiryError::Pem)?;
        let (_, cert) = x509_parser::parse_x509_certificate(&der).map_err(ExpiryError::X509)?;
        out.push(cert.validity().not_after.timestamp());
    }
    if out.is_empty() {
        return Err(ExpiryError::Empty);
    }
    Ok(out)
}

/// The `notAfter` of the first certificate of a chain (the leaf the peer checks).
pub fn leaf(pem: &[u8]) -> Result<i64, ExpiryError> {
    not_afters(pem).map(|all| all[0])
}

/// The earliest `notAfter` of a CA bundle: the first moment part of it stops working.
pub fn earliest(pem: &[u8]) -> Result<i64, ExpiryError> {
    not_afters(pem).map(|all| all.into_iter().min().unwrap_or(i64::MIN))
}

#[cfg(test)]
mod tests {
    use super::*;

    const UNTIL_2034: &str = include_str!("testdata/until-2034.crt");
    const UNTIL_2030: &str = include_str!("testdata/until-2030.crt");

    #[test]
    fn the_leaf_is_the_first_certificate_and_a_bundle_expires_with_its_earliest() {
        assert_eq!(leaf(UNTIL_2034.as_bytes()), Ok(2_019_686_400));
        let chain = format!("{UNTIL_2034}{UNTIL_2030}");
        assert_eq!(leaf(chain.as_bytes()), Ok(2_019_686_400));
        assert_eq!(earliest(chain.as_bytes()), Ok(1_906_545_600));
    }

    #[test]
    fn text_that_is_no_certificate_is_an_error_not_a_date() {
        assert_eq!(leaf(b""), Err(ExpiryError::Empty));
        assert_eq!(earliest(b"Bearer token"), Err(ExpiryError::Empty));
        let key = include_str!("testdata/until-2034.key");
        assert_eq!(leaf(key.as_bytes()), Err(ExpiryError::Empty));
        let garbled =
            "-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydGlmaWNhdGU=\n-----END CERTIFICATE-----\n";
        assert!(matches!(
            leaf(garbled.as_bytes()),
            Err(ExpiryError::X509(_))
        ));
    }
}

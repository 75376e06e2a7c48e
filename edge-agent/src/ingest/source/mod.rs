//! Where readings come from: the MQTT source broker ([`mqtt`]) and clearing a message
//! too large to receive ([`oversized`]). The TLS and connection options it shares with
//! the MQTT sink and the actions connection are [`crate::runtime::tls`].

pub mod mqtt;
pub mod oversized;

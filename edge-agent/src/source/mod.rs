//! Where readings come from: the MQTT source broker ([`mqtt`]), clearing a message too
//! large to receive ([`oversized`]), and the TLS and connection options shared with the
//! MQTT sink and the actions connection ([`tls`]).

pub mod mqtt;
pub mod oversized;
pub mod tls;

//! Where readings come from: the MQTT source broker ([`mqtt`]), and the TLS and
//! connection options shared with the MQTT sink ([`tls`]).

pub mod mqtt;
pub mod tls;

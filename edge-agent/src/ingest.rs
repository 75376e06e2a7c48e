//! Where messages come in: the MQTT [`source`] (connection, TLS, persistent
//! session, acknowledgement after commit) and the optional embedded [`broker`]. Out:
//! received messages, to the pipeline.

pub mod broker;
pub mod source;

//! Clearing a message too large to receive, so it cannot wedge the source session.
//!
//! The MQTT client reads a whole packet into memory, so it refuses one above its limit
//! (`source.maxPayloadSize` plus room for the topic) and drops the connection. With a
//! persistent session the broker then redelivers that message on every reconnect, and
//! nothing behind it is ever read. MQTT 3.1.1 offers no way to refuse one message, so
//! after such a failure the source runs [`clear`] before reconnecting: a short
//! connection with the same client id and session that reads packets as a stream,
//! acknowledges every publish over the limit without keeping its payload (counted as
//! invalid `too_large`, like any other malformed message), leaves every other message
//! unacknowledged (the broker redelivers it to the next connection) and disconnects.
//!
//! Memory stays bounded by the topic (at most 64 KiB) whatever the size of the payload.
//! A QoS 0 message delivered while this connection is open is lost, as QoS 0 allows.

use std::sync::Arc;
use std::time::Duration;

use rumqttc::tokio_rustls::TlsConnector;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{Instant, timeout, timeout_at};

/// The longest the whole clearing connection may take.
const DEADLINE: Duration = Duration::from_secs(60);
/// After an oversized message is acknowledged: how long to wait for another packet.
const SETTLE: Duration = Duration::from_millis(300);
/// Before any oversized message arrived: how long to wait for the broker's redelivery.
const WAIT_FIRST: Duration = Duration::from_secs(5);
/// Payload bytes discarded per read.
const CHUNK: usize = 64 * 1024;

/// Where and as whom the source connects.
#[derive(Clone)]
pub struct Target {
    /// Broker host.
    pub host: String,
    /// Broker port.
    pub port: u16,
    /// TLS client configuration for `mqtts://`.
    pub tls: Option<Arc<rustls::ClientConfig>>,
    /// The source's client id (its persistent session).
    pub client_id: String,
    /// Username and password.
    pub credentials: Option<(String, String)>,
    /// Keep-alive announced in CONNECT.
    pub keep_alive: Duration,
}

/// Why clearing failed (the source reconnects as usual and tries again on the next
/// oversized message).
#[derive(Debug, thiserror::Error)]
pub enum ClearError {
    #[error("connecting: {0}")]
    Io(#[from] std::io::Error),
    #[error("the broker refused the connection (return code {0})")]
    Refused(u8),
    #[error("unexpected packet type {0:#x} before CONNACK")]
    Protocol(u8),
    #[error("invalid TLS server name {name:?}")]
    ServerName {
        name: String,
        #[source]
        source: rustls::pki_types::InvalidDnsNameError,
    },
    #[error("timed out")]
    Timeout,
}

/// Connects as the source's session and acknowledges every QoS 1 publish whose packet is
/// larger than `limit` bytes; returns how many were cleared.
pub async fn clear(target: &Target, limit: usize) -> Result<u64, ClearError> {
    let deadline = Instant::now() + DEADLINE;
    let tcp = timeout_at(
        deadline,
        TcpStream::connect((target.host.as_str(), target.port)),
    )
    .await
    .map_err(|_| ClearError::Timeout)??;
    match &target.tls {
        None => session(tcp, target, limit, deadline).await,
        Some(config) => {
            let name = ServerName::try_from(target.host.clone()).map_err(|source| {
                ClearError::ServerName {
                    name: target.host.clone(),
                    source,
                }
            })?;
            let stream = timeout_at(
                deadline,
                TlsConnector::from(config.clone()).connect(name, tcp),
            )
            .await
            .map_err(|_| ClearError::Timeout)??;
            session(stream, target, limit, deadline).await
        }
    }
}

async fn session<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    target: &Target,
    limit: usize,
    deadline: Instant,
) -> Result<u64, ClearError> {
    stream.write_all(&connect_packet(target)).await?;
    let (kind, len) = timeout_at(deadline, read_header(&mut stream))
        .await
        .map_err(|_| ClearError::Timeout)??;
    if kind >> 4 != 2 || len != 2 {
        return Err(ClearError::Protocol(kind));
    }
    let mut ack = [0u8; 2];
    stream.read_exact(&mut ack).await?;
    if ack[1] != 0 {
        return Err(ClearError::Refused(ack[1]));
    }
    let mut cleared = 0u64;
    loop {
        let wait = if cleared == 0 { WAIT_FIRST } else { SETTLE };
        let until = (Instant::now() + wait).min(deadline);
        let Ok(header) = timeout_at(until, read_header(&mut stream)).await else {
            break;
        };
        let (kind, len) = header?;
        let body = timeout_at(deadline, read_body(&mut stream, kind, len, limit))
            .await
            .map_err(|_| ClearError::Timeout)??;
        if let Some(packet_id) = body {
            let [hi, lo] = packet_id.to_be_bytes();
            stream.write_all(&[0x40, 0x02, hi, lo]).await?;
            cleared += 1;
        }
    }
    // DISCONNECT keeps the session (and the unacknowledged messages) for the next run.
    let _ = timeout(SETTLE, stream.write_all(&[0xE0, 0x00])).await;
    let _ = timeout(SETTLE, stream.shutdown()).await;
    Ok(cleared)
}

/// Reads one packet body of `len` bytes after its fixed header byte `kind`, keeping
/// nothing of it but the packet id of an oversized QoS 1 publish, which is returned.
async fn read_body<S: AsyncRead + Unpin>(
    stream: &mut S,
    kind: u8,
    len: usize,
    limit: usize,
) -> Result<Option<u16>, ClearError> {
    let qos = (kind >> 1) & 0b11;
    if kind >> 4 != 3 || qos == 0 || len <= limit {
        discard(stream, len).await?;
        return Ok(None);
    }
    let topic_len = usize::from(stream.read_u16().await?);
    discard(stream, topic_len).await?;
    let packet_id = stream.read_u16().await?;
    discard(stream, len.saturating_sub(topic_len + 4)).await?;
    Ok(Some(packet_id))
}

/// Reads and forgets `n` bytes.
async fn discard<S: AsyncRead + Unpin>(stream: &mut S, mut n: usize) -> std::io::Result<()> {
    let mut buf = vec![0u8; CHUNK.min(n)];
    while n > 0 {
        let want = n.min(buf.len());
        let got = stream.read(&mut buf[..want]).await?;
        if got == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        n -= got;
    }
    Ok(())
}

/// A fixed header: the type-and-flags byte and the remaining length.
async fn read_header<S: AsyncRead + Unpin>(stream: &mut S) -> std::io::Result<(u8, usize)> {
    let kind = stream.read_u8().await?;
    let mut len = 0usize;
    for shift in [0, 7, 14, 21] {
        let byte = stream.read_u8().await?;
        len |= usize::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Ok((kind, len));
        }
    }
    Err(std::io::Error::new(
        std::io::ErrorKind::InvalidData,
        "remaining length longer than 4 bytes",
    ))
}

/// An MQTT 3.1.1 CONNECT resuming the source's session (clean session off).
fn connect_packet(target: &Target) -> Vec<u8> {
    let mut body = Vec::with_capacity(64);
    body.extend_from_slice(&[0, 4, b'M', b'Q', b'T', b'T', 4]);
    let flags = match target.credentials {
        Some(_) => 0xC0,
        None => 0x00,
    };
    body.push(flags);
    let keep_alive = u16::try_from(target.keep_alive.as_secs()).unwrap_or(u16::MAX);
    body.extend_from_slice(&keep_alive.to_be_bytes());
    put_str(&mut body, &target.client_id);
    if let Some((user, password)) = &target.credentials {
        put_str(&mut body, user);
        put_str(&mut body, password);
    }
    let mut packet = vec![0x10];
    put_len(&mut packet, body.len());
    packet.extend_from_slice(&body);
    packet
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    let bytes = &s.as_bytes()[..s.len().min(usize::from(u16::MAX))];
    out.extend_from_slice(&(bytes.len() as u16).to_be_bytes());
    out.extend_from_slice(bytes);
}

fn put_len(out: &mut Vec<u8>, mut len: usize) {
    loop {
        let mut byte = (len % 128) as u8;
        len /= 128;
        if len > 0 {
            byte |= 0x80;
        }
        out.push(byte);
        if len == 0 {
            break;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target() -> Target {
        Target {
            host: "127.0.0.1".into(),
            port: 1883,
            tls: None,
            client_id: "agent".into(),
            credentials: Some(("u".into(), "p".into())),
            keep_alive: Duration::from_secs(30),
        }
    }

    #[test]
    fn connect_resumes_the_session_with_credentials() {
        let p = connect_packet(&target());
        assert_eq!(
            p,
            [
                0x10, 23, 0, 4, b'M', b'Q', b'T', b'T', 4, 0xC0, 0, 30, 0, 5, b'a', b'g', b'e',
                b'n', b't', 0, 1, b'u', 0, 1, b'p'
            ]
        );
    }

    #[tokio::test]
    async fn lengths_round_trip_and_oversized_publishes_yield_their_id() {
        for len in [
            0,
            127,
            128,
            16_383,
            16_384,
            2_097_151,
            2_097_152,
            268_435_455,
        ] {
            let mut bytes = vec![0x32];
            put_len(&mut bytes, len);
            assert_eq!(read_header(&mut &bytes[..]).await.unwrap(), (0x32, len));
        }
        // A QoS 1 publish: topic "t", packet id 7, 10 bytes of payload.
        let mut body = vec![0, 1, b't', 0, 7];
        body.extend_from_slice(&[0xAA; 10]);
        let len = body.len();
        assert_eq!(
            read_body(&mut &body[..], 0x32, len, 8).await.unwrap(),
            Some(7)
        );
        assert_eq!(
            read_body(&mut &body[..], 0x32, len, len).await.unwrap(),
            None
        );
        // QoS 0 is never acknowledged.
        assert_eq!(read_body(&mut &body[..], 0x30, len, 8).await.unwrap(), None);
        // A truncated stream is an error, not a hang or a panic.
        assert!(read_body(&mut &body[..4], 0x32, len, 8).await.is_err());
    }

    proptest::proptest! {
        /// Whatever bytes a broker (or anyone in between) sends, reading packets ends in
        /// a result, never a panic, and never keeps more than the topic.
        #[test]
        fn arbitrary_streams_never_panic(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..512), limit in 0usize..64) {
            let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
            runtime.block_on(async {
                let mut stream = &bytes[..];
                while let Ok((kind, len)) = read_header(&mut stream).await {
                    if read_body(&mut stream, kind, len, limit).await.is_err() {
                        break;
                    }
                }
            });
        }
    }
}

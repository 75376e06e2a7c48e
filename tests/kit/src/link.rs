//! A thin network link for the tests: a TCP proxy in front of an upstream port that
//! carries at most a set number of bytes per second in each direction, as a cellular
//! modem or a satellite terminal does, and that can be cut (open connections are reset,
//! new ones closed at once) and restored.
//!
//! Each direction is one token bucket shared by every connection, with a burst of
//! [`CHUNK`] bytes: what is written beyond it waits, so the far end sees the link's rate.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};

/// Bytes moved at once (and the bucket's burst).
pub const CHUNK: usize = 512;

/// The link. Dropping it closes the port and every connection.
pub struct Link {
    /// Where clients connect.
    pub port: u16,
    up: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl Link {
    /// A link to `127.0.0.1:upstream` carrying `bytes_per_second` each way.
    pub async fn start(upstream: u16, bytes_per_second: u64) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the link");
        let port = listener.local_addr().expect("link address").port();
        let (up, state) = watch::channel(true);
        let shapers = [(); 2].map(|_| Arc::new(Mutex::new(Bucket::new(bytes_per_second))));
        let task = tokio::spawn(accept(listener, upstream, state, shapers));
        Self { port, up, task }
    }

    /// Cuts the link: open connections are dropped, new ones closed as they arrive.
    pub fn cut(&self) {
        self.up.send_replace(false);
    }

    /// Restores the link.
    pub fn restore(&self) {
        self.up.send_replace(true);
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn accept(
    listener: TcpListener,
    upstream: u16,
    state: watch::Receiver<bool>,
    [to_upstream, to_client]: [Arc<Mutex<Bucket>>; 2],
) {
    // Connection tasks live in the set: aborting this task ends them.
    let mut connections = JoinSet::new();
    loop {
        let Ok((client, _)) = listener.accept().await else {
            continue;
        };
        while connections.try_join_next().is_some() {}
        if !*state.borrow() {
            drop(client);
            continue;
        }
        let Ok(server) = TcpStream::connect(("127.0.0.1", upstream)).await else {
            continue;
        };
        let _ = client.set_nodelay(true);
        let _ = server.set_nodelay(true);
        let mut state = state.clone();
        let (up, down) = (to_upstream.clone(), to_client.clone());
        connections.spawn(async move {
            let (client_read, client_write) = client.into_split();
            let (server_read, server_write) = server.into_split();
            tokio::select! {
                _ = pump(client_read, server_write, up) => {}
                _ = pump(server_read, client_write, down) => {}
                _ = state.wait_for(|up| !*up) => {}
            }
        });
    }
}

/// Copies `from` to `to` through `bucket` until either side closes.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    bucket: Arc<Mutex<Bucket>>,
) {
    let mut buf = [0u8; CHUNK];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        let wait = bucket.lock().unwrap().reserve(n, Instant::now());
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

/// Bytes per second with a burst of [`CHUNK`]; a reservation beyond what is saved waits
/// its turn (first come, first served).
struct Bucket {
    rate: f64,
    tokens: f64,
    last: Instant,
}

impl Bucket {
    fn new(bytes_per_second: u64) -> Self {
        Self {
            rate: bytes_per_second.max(1) as f64,
            tokens: CHUNK as f64,
            last: Instant::now(),
        }
    }

    /// Takes `n` bytes; returns how long to wait before they may go.
    fn reserve(&mut self, n: usize, now: Instant) -> Duration {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * self.rate).min(CHUNK as f64) - n as f64;
        if self.tokens >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-self.tokens / self.rate)
        }
    }
}

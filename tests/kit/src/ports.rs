//! Loopback ports for tests that cannot collide with each other or with the kernel's own
//! choices: a port is taken from below the ephemeral range (where `bind(0)` and outgoing
//! connections never land), each one at most once per test process, and only if nothing
//! listens on it now.
//!
//! The usual "bind port 0, read the port, close" is racy twice over: the kernel may hand
//! the released port to a concurrent test's `bind(0)`, and a process spawned by another
//! test thread between `socket()` and `close()` inherits the socket until its `exec`, so
//! the owner's own bind right after fails with `EADDRINUSE`. Probing with a connect holds
//! no socket on the port at all.

use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

/// Lowest and one past the highest port handed out (Linux's ephemeral range starts at 32768).
const FIRST: u32 = 20_000;
const END: u32 = 32_000;

/// A port nothing listens on right now and no other caller in this process got.
pub fn free_port() -> u16 {
    static NEXT: AtomicU32 = AtomicU32::new(u32::MAX);
    // Test binaries of one run start at different offsets, so a broker a killed test
    // left behind is skipped rather than reused.
    let _ = NEXT.compare_exchange(
        u32::MAX,
        (std::process::id() * 101) % (END - FIRST),
        Ordering::Relaxed,
        Ordering::Relaxed,
    );
    for _ in FIRST..END {
        let port = FIRST + NEXT.fetch_add(1, Ordering::Relaxed) % (END - FIRST);
        let port = u16::try_from(port).expect("port range fits u16");
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        // Refused at once on loopback when nothing listens.
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
            return port;
        }
    }
    panic!("no free loopback port in {FIRST}..{END}");
}

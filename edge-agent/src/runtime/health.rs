//! The agent's health registry: each loop (ingest, queue writer, sync) beats it, the
//! queue and the source say whether they are open and connected; the probes of
//! [`super::http`] read it.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// A loop whose heartbeat liveness watches.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Loop {
    /// The MQTT source loop.
    Ingest,
    /// The queue writer thread.
    Writer,
    /// The sink loop.
    Sync,
}

impl Loop {
    const ALL: [Loop; 3] = [Loop::Ingest, Loop::Writer, Loop::Sync];

    fn as_str(self) -> &'static str {
        match self {
            Self::Ingest => "ingest",
            Self::Writer => "queue writer",
            Self::Sync => "sync",
        }
    }
}

/// Liveness and readiness state shared by the agent's parts.
pub struct Health {
    start: Instant,
    window: Duration,
    beats: [AtomicU64; 3],
    queue_open: AtomicBool,
    mqtt_connected: AtomicBool,
}

impl Health {
    /// A loop that has not beaten for `window` makes the agent not live.
    pub fn new(window: Duration) -> Self {
        Self {
            start: Instant::now(),
            window,
            beats: Default::default(),
            queue_open: AtomicBool::new(false),
            mqtt_connected: AtomicBool::new(false),
        }
    }

    /// Records that `l` is alive now.
    pub fn beat(&self, l: Loop) {
        let ms = self.start.elapsed().as_millis() as u64;
        self.beats[l as usize].store(ms, Ordering::Relaxed);
    }

    /// Sets whether the queue is open.
    pub fn set_queue_open(&self, open: bool) {
        self.queue_open.store(open, Ordering::Relaxed);
    }

    /// Sets whether the source broker is connected.
    pub fn set_mqtt_connected(&self, connected: bool) {
        self.mqtt_connected.store(connected, Ordering::Relaxed);
    }

    /// `Ok` when every loop beat within the window, else the names of the stuck ones.
    pub fn live(&self) -> Result<(), Vec<&'static str>> {
        let now = self.start.elapsed().as_millis() as u64;
        let window = self.window.as_millis() as u64;
        let stuck: Vec<_> = Loop::ALL
            .into_iter()
            .filter(|l| {
                now.saturating_sub(self.beats[*l as usize].load(Ordering::Relaxed)) > window
            })
            .map(Loop::as_str)
            .collect();
        if stuck.is_empty() { Ok(()) } else { Err(stuck) }
    }

    /// `Ok` when the queue is open and the source broker connected, else what is missing.
    pub fn ready(&self) -> Result<(), Vec<&'static str>> {
        let mut missing = Vec::new();
        if !self.queue_open.load(Ordering::Relaxed) {
            missing.push("queue not open");
        }
        if !self.mqtt_connected.load(Ordering::Relaxed) {
            missing.push("source broker not connected");
        }
        if missing.is_empty() {
            Ok(())
        } else {
            Err(missing)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readiness_needs_the_queue_and_the_broker_but_not_the_upstream() {
        let h = Health::new(Duration::from_secs(30));
        assert_eq!(
            h.ready(),
            Err(vec!["queue not open", "source broker not connected"])
        );
        h.set_queue_open(true);
        h.set_mqtt_connected(true);
        assert_eq!(h.ready(), Ok(()));
        h.set_mqtt_connected(false);
        assert_eq!(h.ready(), Err(vec!["source broker not connected"]));
    }

    /// A server on a loopback port within `limits`, with fresh metrics.
    #[test]
    fn a_loop_that_stops_beating_fails_liveness() {
        let h = Health::new(Duration::ZERO);
        // Every loop starts within the window of the agent's start.
        let deadline = Instant::now() + Duration::from_secs(5);
        while h.live().is_ok() {
            assert!(Instant::now() < deadline, "liveness never expired");
            std::thread::yield_now();
        }
        assert_eq!(h.live(), Err(vec!["ingest", "queue writer", "sync"]));
        let h = Health::new(Duration::from_secs(3600));
        h.beat(Loop::Sync);
        assert_eq!(h.live(), Ok(()));
    }
}

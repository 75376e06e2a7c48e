//! What the demo shows: a live view refreshed about once a second (a small table on a
//! terminal, one progress line otherwise) and the final summary, a single line of
//! `key=value` pairs whose keys are stable for scripts and tests.

use std::fmt;
use std::time::Duration;

/// The counters the view shows at one moment.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Snapshot {
    /// Time since the sensors started.
    pub elapsed: Duration,
    /// Readings the sensors published.
    pub published: u64,
    /// MQTT messages the agent received.
    pub readings_in: u64,
    /// Records the agent committed to its queue, to go upstream.
    pub forwarded: u64,
    /// Distinct records the cloud stored.
    pub delivered: u64,
    /// Anomalies the model found.
    pub anomalies: u64,
    /// Alerts seen on `alerts/+` on the local broker.
    pub alerts: u64,
    /// Records waiting in the queue.
    pub backlog: u64,
    /// Whether the cloud is accepting requests.
    pub cloud_online: bool,
    /// Whether the agent's last upstream request succeeded.
    pub upstream_up: bool,
}

/// The share of readings that did not have to travel upstream, in percent.
pub fn bandwidth_saved(readings_in: u64, forwarded: u64) -> f64 {
    if readings_in == 0 {
        return 0.0;
    }
    let saved = 1.0 - forwarded as f64 / readings_in as f64;
    (saved * 100.0).max(0.0)
}

fn updown(up: bool) -> &'static str {
    if up { "up" } else { "DOWN" }
}

/// One progress line (for logs and pipes).
pub fn progress_line(s: &Snapshot) -> String {
    format!(
        "[{:>5.1}s] readings_in={} forwarded={} delivered={} bandwidth_saved={:.1}% anomalies={} alerts={} backlog={} cloud={} upstream={}",
        s.elapsed.as_secs_f64(),
        s.readings_in,
        s.forwarded,
        s.delivered,
        bandwidth_saved(s.readings_in, s.forwarded),
        s.anomalies,
        s.alerts,
        s.backlog,
        updown(s.cloud_online),
        updown(s.upstream_up),
    )
}

/// Lines of the table shown on a terminal (redrawn in place).
pub fn table(s: &Snapshot) -> Vec<String> {
    let row = |name: &str, value: String| format!("  {name:<22}{value:>14}");
    vec![
        format!("edgepipe demo  {:>6.1}s", s.elapsed.as_secs_f64()),
        row("readings published", s.published.to_string()),
        row("readings in", s.readings_in.to_string()),
        row("records forwarded", s.forwarded.to_string()),
        row("records delivered", s.delivered.to_string()),
        row(
            "bandwidth saved",
            format!("{:.1}%", bandwidth_saved(s.readings_in, s.forwarded)),
        ),
        row("anomalies", s.anomalies.to_string()),
        row("local alerts", s.alerts.to_string()),
        row("backlog (queued)", s.backlog.to_string()),
        row("cloud", updown(s.cloud_online).to_string()),
        row("upstream link", updown(s.upstream_up).to_string()),
    ]
}

/// The ANSI sequence that redraws `lines` over the previous `previous` lines.
pub fn redraw(previous: usize, lines: &[String]) -> String {
    let mut out = String::new();
    if previous > 0 {
        out.push_str(&format!("\x1b[{previous}A"));
    }
    for line in lines {
        out.push_str("\r\x1b[2K");
        out.push_str(line);
        out.push('\n');
    }
    out
}

/// The demo's outcome.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Summary {
    /// Readings the sensors published.
    pub published: u64,
    /// MQTT messages the agent received.
    pub readings_in: u64,
    /// Records committed to the queue.
    pub forwarded: u64,
    /// Distinct records the cloud stored.
    pub delivered: u64,
    /// Records the cloud received more than once.
    pub duplicates: u64,
    /// Anomalies the model found.
    pub anomalies: u64,
    /// Alerts seen on the local broker.
    pub alerts: u64,
    /// Spikes the sensors injected.
    pub spikes: u64,
    /// Records still queued at the end.
    pub backlog: u64,
    /// Records dropped by the agent (any reason).
    pub dropped: u64,
    /// How long the cloud was offline.
    pub cloud_offline: Duration,
    /// How long the sensors ran.
    pub duration: Duration,
    /// How long the backlog took to drain after the sensors stopped.
    pub drain: Duration,
}

impl Summary {
    /// Records forwarded but never stored by the cloud, plus records dropped.
    pub fn lost(&self) -> u64 {
        self.forwarded.saturating_sub(self.delivered) + self.dropped
    }
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "summary published={} readings_in={} forwarded={} delivered={} duplicates={} anomalies={} alerts={} spikes={} bandwidth_saved={:.1}% backlog={} lost={} cloud_offline={:.1}s duration={:.1}s drain={:.1}s",
            self.published,
            self.readings_in,
            self.forwarded,
            self.delivered,
            self.duplicates,
            self.anomalies,
            self.alerts,
            self.spikes,
            bandwidth_saved(self.readings_in, self.forwarded),
            self.backlog,
            self.lost(),
            self.cloud_offline.as_secs_f64(),
            self.duration.as_secs_f64(),
            self.drain.as_secs_f64(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bandwidth_saved_is_the_share_of_readings_kept_local() {
        assert_eq!(bandwidth_saved(0, 0), 0.0);
        assert_eq!(bandwidth_saved(200, 50), 75.0);
        // Anomaly records on top of readings can exceed the readings in: never negative.
        assert_eq!(bandwidth_saved(10, 12), 0.0);
    }

    #[test]
    fn the_summary_has_stable_keys() {
        let s = Summary {
            published: 500,
            readings_in: 500,
            forwarded: 120,
            delivered: 120,
            anomalies: 7,
            cloud_offline: Duration::from_millis(3040),
            duration: Duration::from_secs(10),
            ..Summary::default()
        };
        assert_eq!(
            s.to_string(),
            "summary published=500 readings_in=500 forwarded=120 delivered=120 duplicates=0 \
             anomalies=7 alerts=0 spikes=0 bandwidth_saved=76.0% backlog=0 lost=0 \
             cloud_offline=3.0s duration=10.0s drain=0.0s"
        );
        let lossy = Summary {
            forwarded: 10,
            delivered: 7,
            dropped: 2,
            ..Summary::default()
        };
        assert_eq!(lossy.lost(), 5);
    }

    #[test]
    fn the_table_redraws_in_place() {
        let s = Snapshot {
            readings_in: 42,
            cloud_online: false,
            ..Snapshot::default()
        };
        let lines = table(&s);
        assert!(
            lines
                .iter()
                .any(|l| l.contains("readings in") && l.ends_with("42"))
        );
        assert!(
            lines
                .iter()
                .any(|l| l.contains("cloud") && l.ends_with("DOWN"))
        );
        let first = redraw(0, &lines);
        assert!(!first.contains("\x1b[11A"));
        let again = redraw(lines.len(), &lines);
        assert!(again.starts_with(&format!("\x1b[{}A", lines.len())));
        assert_eq!(again.matches('\n').count(), lines.len());
        assert!(progress_line(&s).contains("readings_in=42 "));
        assert!(progress_line(&s).contains("cloud=DOWN"));
    }
}

//! At most one reconcile a second per pipeline while only its fleet changes.
//!
//! A pipeline's reconcile is triggered by its own changes and by those of its DaemonSet,
//! ConfigMaps and agent pods. Agents come up in bursts: five agents made about thirteen
//! triggers in a few seconds in B9, each a reconcile (a DaemonSet read, often a status
//! patch). Unlike a debounce, which keeps postponing while changes go on (a fleet of
//! crash-looping agents would freeze the status), this throttle lets the first trigger
//! through and defers the others to [`SETTLE`] after it, so the status follows the fleet
//! within a second and the API server sees a fraction of the requests. A spec change (a
//! new generation) is reconciled at once.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use edge_crds::EdgePipeline;
use kube::runtime::reflector::ObjectRef;

/// Shortest time between two reconciles of one pipeline at one generation.
pub const SETTLE: Duration = Duration::from_secs(1);
/// Upper bound on the pipelines remembered (the map is cleared when full: at worst one
/// early reconcile each).
const MAX_TRACKED: usize = 16_384;

/// A pipeline's generation at its last reconcile, and when that was.
type Last = (Option<i64>, Instant);

/// When each pipeline was last reconciled, and at which generation.
#[derive(Default)]
pub struct Settling {
    last: Mutex<HashMap<ObjectRef<EdgePipeline>, Last>>,
}

impl Settling {
    /// `Some(wait)` when `key` was reconciled at `generation` less than [`SETTLE`] before
    /// `now`: reconcile it again after `wait`. Otherwise records `now` as its last
    /// reconcile and returns `None`: reconcile it now.
    pub fn defer(
        &self,
        key: &ObjectRef<EdgePipeline>,
        generation: Option<i64>,
        now: Instant,
    ) -> Option<Duration> {
        let Ok(mut last) = self.last.lock() else {
            return None;
        };
        if let Some((seen, at)) = last.get(key) {
            let since = now.saturating_duration_since(*at);
            if *seen == generation && since < SETTLE {
                return Some(SETTLE - since);
            }
        }
        if last.len() >= MAX_TRACKED && !last.contains_key(key) {
            last.clear();
        }
        last.insert(key.clone(), (generation, now));
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_is_deferred_to_one_reconcile_a_second_and_a_spec_change_goes_through() {
        let settling = Settling::default();
        let line1 = ObjectRef::new("line1").within("factory");
        let line2 = ObjectRef::new("line2").within("factory");
        let t0 = Instant::now();
        let ms = |n| t0 + Duration::from_millis(n);
        assert_eq!(settling.defer(&line1, Some(1), t0), None, "first trigger");
        assert_eq!(
            settling.defer(&line1, Some(1), ms(300)),
            Some(Duration::from_millis(700)),
            "a pod change 300 ms later waits for the rest of the second"
        );
        assert_eq!(
            settling.defer(&line2, Some(1), ms(300)),
            None,
            "another pipeline"
        );
        assert_eq!(
            settling.defer(&line1, Some(2), ms(400)),
            None,
            "a new generation is reconciled at once"
        );
        assert_eq!(
            settling.defer(&line1, Some(2), ms(900)),
            Some(Duration::from_millis(500))
        );
        assert_eq!(
            settling.defer(&line1, Some(2), ms(1400)),
            None,
            "the deferred reconcile runs once the second is over"
        );
    }

    #[test]
    fn the_memory_is_bounded() {
        let settling = Settling::default();
        let now = Instant::now();
        for i in 0..MAX_TRACKED + 10 {
            settling.defer(&ObjectRef::new(&format!("p{i}")).within("ns"), Some(1), now);
        }
        assert!(settling.last.lock().map(|l| l.len()).unwrap_or(0) <= MAX_TRACKED);
    }
}

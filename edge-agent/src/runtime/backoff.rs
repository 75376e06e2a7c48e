//! How long to wait before trying again: capped exponential backoff with full jitter,
//! shared by everything that reconnects or resends (the source, the sinks, the actions'
//! connection).

use std::time::Duration;

use rand::Rng;

/// Capped exponential backoff with full jitter: a random delay between `initial` and
/// `min(max, initial * 2^attempt)`.
pub fn backoff(attempt: u32, initial: Duration, max: Duration) -> Duration {
    let ceiling = initial
        .saturating_mul(2u32.saturating_pow(attempt.min(31)))
        .min(max);
    let floor = initial.min(ceiling);
    if ceiling <= floor {
        return ceiling;
    }
    rand::rng().random_range(floor..=ceiling)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_is_capped_and_jittered() {
        let (i, m) = (Duration::from_millis(100), Duration::from_secs(2));
        for attempt in 0..40 {
            let d = backoff(attempt, i, m);
            assert!(d >= i && d <= m, "attempt {attempt}: {d:?}");
            let cap = (i * 2u32.pow(attempt.min(20))).min(m);
            assert!(d <= cap, "attempt {attempt}: {d:?} above {cap:?}");
        }
        let spread: std::collections::BTreeSet<_> = (0..50).map(|_| backoff(10, i, m)).collect();
        assert!(spread.len() > 1, "no jitter");
        assert_eq!(backoff(3, m, i), i, "a max below initial wins");
    }
}

//! The wall clock as the agent's records and queue use it.

use std::time::{SystemTime, UNIX_EPOCH};

/// Wall-clock unix milliseconds.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis().min(i64::MAX as u128) as i64)
}

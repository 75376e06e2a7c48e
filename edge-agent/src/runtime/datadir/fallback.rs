//! What the node's fallback did, kept beside the queue (`fallback.json`), so the agent that
//! takes the queue over can say that the node ran in fallback, for how long, and whether it
//! ran another revision of the pipeline than the one the agent runs now
//! (`edge_agent_fallback_last_*`, and a warning in the log once per run).
//!
//! The fallback writes the record when it starts and refreshes its `until` every few
//! seconds, so a fallback killed -9 (or a power cut) still leaves a duration good to that
//! interval.

use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// The record's file in the data directory.
pub const RECORD_FILE: &str = "fallback.json";
/// How often a running fallback refreshes `until`.
pub const REFRESH: Duration = Duration::from_secs(5);

/// One run of the fallback.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FallbackRun {
    /// When it started, unix seconds.
    pub started: u64,
    /// When it was last seen running (or stopped), unix seconds.
    pub until: u64,
    /// SHA-256 of the pipeline file it ran.
    pub pipeline_sha256: String,
    /// Whether an agent has reported this run already.
    #[serde(default)]
    pub reported: bool,
}

impl FallbackRun {
    /// How long it ran.
    pub fn duration(&self) -> Duration {
        Duration::from_secs(self.until.saturating_sub(self.started))
    }
}

/// SHA-256 (hex) of a pipeline file's bytes.
pub fn pipeline_digest(path: &Path) -> Option<String> {
    std::fs::read(path)
        .ok()
        .map(|bytes| hex::encode(Sha256::digest(bytes)))
}

/// Unix seconds now.
pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The last run recorded in `dir`.
pub fn last(dir: &Path) -> Option<FallbackRun> {
    let bytes = std::fs::read(dir.join(RECORD_FILE)).ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// Writes `run` as the record of `dir` (temporary file and rename).
pub fn write(dir: &Path, run: &FallbackRun) -> std::io::Result<()> {
    let tmp = dir.join(format!(".{RECORD_FILE}.tmp"));
    std::fs::write(&tmp, serde_json::to_vec(run).unwrap_or_default())?;
    std::fs::rename(tmp, dir.join(RECORD_FILE))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_run_is_written_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(last(dir.path()), None);
        let run = FallbackRun {
            started: 100,
            until: 160,
            pipeline_sha256: "ab".into(),
            reported: false,
        };
        write(dir.path(), &run).unwrap();
        assert_eq!(last(dir.path()), Some(run.clone()));
        assert_eq!(run.duration(), Duration::from_secs(60));
    }
}

//! Reserve space for a full disk: a file of zeros (`queue.reserve`) kept beside the queue.
//!
//! When the disk fills up, SQLite cannot even delete: a delete writes to the WAL, and a
//! checkpoint may grow the database file. Removing the reserve gives it the room to
//! checkpoint and to delete what the upstream has acknowledged, so the queue drains and
//! the space of the deleted records is reused. The reserve is written again once there is
//! room for it; until then it is *in use* by the drain, and the queue commits no new
//! records (they would take the space the drain needs and stall it).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// File name of the reserve inside the data directory.
pub const RESERVE_FILE: &str = "queue.reserve";
/// Size of the reserve.
pub const RESERVE_BYTES: usize = 512 * 1024;
/// How long after a release the reserve is not written again.
const QUIET: Duration = Duration::from_secs(5);

/// The reserve file.
#[derive(Debug)]
pub struct Reserve {
    path: PathBuf,
    present: bool,
    released_at: Option<Instant>,
    /// Released for the drain and not written again yet.
    in_use: bool,
}

impl Reserve {
    /// The reserve in `dir`, written now if it is missing (and there is room).
    pub fn new(dir: &Path) -> Self {
        let path = dir.join(RESERVE_FILE);
        let present = std::fs::metadata(&path).is_ok_and(|m| m.len() >= RESERVE_BYTES as u64);
        let mut reserve = Self {
            path,
            present,
            released_at: None,
            in_use: false,
        };
        reserve.restore();
        reserve
    }

    /// Whether the reserve is on disk.
    pub fn present(&self) -> bool {
        self.present
    }

    /// Whether the reserve was released for the drain and is not back yet: new records
    /// must not be committed meanwhile.
    pub fn in_use(&self) -> bool {
        self.in_use
    }

    /// Deletes the reserve; true if there was one to delete.
    pub fn release(&mut self) -> bool {
        if !self.present {
            return false;
        }
        self.present = false;
        self.in_use = true;
        self.released_at = Some(Instant::now());
        match std::fs::remove_file(&self.path) {
            Ok(()) => true,
            Err(e) => {
                tracing::warn!(error = %e, path = %self.path.display(), "removing the queue reserve");
                false
            }
        }
    }

    /// Writes the reserve again if it is missing, was not just released and fits.
    pub fn restore(&mut self) {
        if self.present || self.released_at.is_some_and(|t| t.elapsed() < QUIET) {
            return;
        }
        match write_zeros(&self.path, RESERVE_BYTES) {
            Ok(()) => {
                self.present = true;
                self.in_use = false;
            }
            Err(e) => {
                let _ = std::fs::remove_file(&self.path);
                self.released_at = Some(Instant::now());
                tracing::debug!(error = %e, "no room for the queue reserve yet");
            }
        }
    }
}

fn write_zeros(path: &Path, bytes: usize) -> std::io::Result<()> {
    let mut f = std::fs::File::create(path)?;
    f.write_all(&vec![0u8; bytes])?;
    f.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_reserve_is_written_released_and_kept_off_while_quiet() {
        let dir = tempfile::tempdir().unwrap();
        let mut r = Reserve::new(dir.path());
        assert!(r.present());
        let path = dir.path().join(RESERVE_FILE);
        assert_eq!(
            std::fs::metadata(&path).unwrap().len(),
            RESERVE_BYTES as u64
        );
        assert!(!r.in_use());
        assert!(r.release());
        assert!(r.in_use(), "the drain has it");
        assert!(!path.exists());
        assert!(!r.release(), "nothing left to release");
        r.restore();
        assert!(!r.present(), "not rewritten right after a release");
        assert!(r.in_use());
        let again = Reserve::new(dir.path());
        assert!(again.present(), "a new start writes it");
    }
}

//! The `seq` high-water mark kept beside the queue database (`seq.hwm`).
//!
//! `seq` must never be reused, even when the database is replaced (a corrupt file moved
//! aside) or loses its last commits (`durability: os` and a power cut). The store reserves
//! sequence numbers in blocks: before handing out a `seq` above the mark it durably raises
//! the mark by [`SEQ_BLOCK`] (write, fsync, rename). A fresh database starts at the mark, so
//! nothing ever handed out can come again. The file costs one fsync per block, not per
//! commit.

use std::io::Write;
use std::path::{Path, PathBuf};

use super::store::QueueError;

/// File name of the mark inside the data directory.
pub const HWM_FILE: &str = "seq.hwm";
/// Sequence numbers reserved per write of the mark.
pub const SEQ_BLOCK: u64 = 100_000;

/// The reserved ceiling: every `seq` handed out so far is below it.
#[derive(Debug)]
pub struct SeqCeiling {
    path: PathBuf,
    value: Option<u64>,
}

impl SeqCeiling {
    /// Reads the mark in `dir` (absent or unreadable: none).
    pub fn load(dir: &Path) -> Result<Self, QueueError> {
        let path = dir.join(HWM_FILE);
        let value = match std::fs::read_to_string(&path) {
            Ok(text) => match text.trim().parse::<u64>() {
                Ok(v) => Some(v),
                Err(_) => {
                    tracing::warn!(path = %path.display(), "ignoring an unreadable seq high-water mark");
                    None
                }
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(source) => return Err(QueueError::Io { path, source }),
        };
        Ok(Self { path, value })
    }

    /// The current mark.
    pub fn value(&self) -> Option<u64> {
        self.value
    }

    /// Makes sure every `seq` below `next` is covered by the mark, raising it by a block
    /// when needed (durably, before the caller commits those numbers).
    pub fn reserve_through(&mut self, next: u64) -> Result<(), QueueError> {
        if self.value.is_some_and(|v| v >= next) {
            return Ok(());
        }
        let value = next.saturating_add(SEQ_BLOCK);
        write_durably(&self.path, value).map_err(|source| QueueError::Io {
            path: self.path.clone(),
            source,
        })?;
        self.value = Some(value);
        Ok(())
    }
}

fn write_durably(path: &Path, value: u64) -> std::io::Result<()> {
    let tmp = path.with_extension("hwm.tmp");
    {
        let mut f = std::fs::File::create(&tmp)?;
        writeln!(f, "{value}")?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        // Persist the rename itself.
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_mark_is_raised_in_blocks_and_survives_reloading() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = SeqCeiling::load(dir.path()).unwrap();
        assert_eq!(c.value(), None);
        c.reserve_through(1).unwrap();
        assert_eq!(c.value(), Some(1 + SEQ_BLOCK));
        c.reserve_through(50).unwrap();
        assert_eq!(c.value(), Some(1 + SEQ_BLOCK), "no write inside the block");
        c.reserve_through(SEQ_BLOCK + 2).unwrap();
        assert_eq!(c.value(), Some(2 * SEQ_BLOCK + 2));
        assert_eq!(
            SeqCeiling::load(dir.path()).unwrap().value(),
            Some(2 * SEQ_BLOCK + 2)
        );
    }

    #[test]
    fn a_garbled_mark_is_ignored() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(HWM_FILE), "not a number").unwrap();
        assert_eq!(SeqCeiling::load(dir.path()).unwrap().value(), None);
    }
}

//! Which pipeline a queue belongs to. A pipeline deleted and created again under the same
//! namespace and name gets the same directory on the node, where the queue of the deleted
//! one still lies: records, dead letters and processor state written for sinks and
//! processors the new pipeline may not have. The directory records the uid of the pipeline
//! that owns its queue (the file `pipeline-uid`); an agent started for another uid sets the
//! old queue aside as `queue.db.pipeline-<old uid>` (kept on the node, never sent) and
//! starts an empty one, unless the pipeline asks to adopt it
//! (`buffer.adoptPreviousQueue`). A directory without the file (a queue from before it
//! existed, or a new one) is claimed as it is. `seq.hwm` stays: sequence numbers keep
//! rising across the change, so no upstream sees one reused.

use std::io::Write;
use std::path::{Path, PathBuf};

use rusqlite::Connection;

use super::store::{DB_FILE, QueueError};

/// The file holding the uid of the pipeline the queue belongs to.
pub const OWNER_FILE: &str = "pipeline-uid";

/// What [`claim`] found and did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Claim {
    /// The queue was this pipeline's already.
    Owned,
    /// Nobody owned the directory (a new queue, or one older than ownership): it is this
    /// pipeline's now, contents included.
    Claimed,
    /// Another pipeline's queue, adopted as asked: it is sent.
    Adopted {
        /// The uid of the pipeline that wrote it.
        previous: String,
    },
    /// Another pipeline's queue, set aside: never sent, left on the node.
    SetAside {
        /// The uid of the pipeline that wrote it.
        previous: String,
        /// Where it went (`None` when there was no queue file).
        path: Option<PathBuf>,
        /// Records it held (`None` when the file could not be read).
        records: Option<u64>,
    },
}

/// The uid of the pipeline the queue in `dir` belongs to, if one was recorded.
pub fn recorded(dir: &Path) -> Option<String> {
    std::fs::read_to_string(dir.join(OWNER_FILE))
        .ok()
        .map(|text| text.trim().to_string())
        .filter(|uid| !uid.is_empty())
}

/// Makes the queue in `dir` belong to the pipeline `uid` (see the module documentation).
/// Runs before the queue is opened.
pub fn claim(dir: &Path, uid: &str, adopt: bool) -> Result<Claim, QueueError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| QueueError::Io { path, source }
    };
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let owner_path = dir.join(OWNER_FILE);
    let previous = match std::fs::read_to_string(&owner_path) {
        Ok(text) => Some(text.trim().to_string()).filter(|p| !p.is_empty()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(io(&owner_path)(e)),
    };
    let claim = match previous {
        Some(previous) if previous == uid => return Ok(Claim::Owned),
        None => Claim::Claimed,
        Some(previous) if adopt => Claim::Adopted { previous },
        Some(previous) => {
            let (path, records) = set_aside(dir, &previous)?;
            Claim::SetAside {
                previous,
                path,
                records,
            }
        }
    };
    write_owner(dir, uid)?;
    Ok(claim)
}

/// Writes the owner file atomically (a temporary file renamed over it, both synced).
fn write_owner(dir: &Path, uid: &str) -> Result<(), QueueError> {
    let path = dir.join(OWNER_FILE);
    let tmp = dir.join(format!("{OWNER_FILE}.tmp"));
    let result = (|| {
        let mut file = std::fs::File::create(&tmp)?;
        writeln!(file, "{uid}")?;
        file.sync_all()?;
        std::fs::rename(&tmp, &path)?;
        std::fs::File::open(dir)?.sync_all()
    })();
    result.map_err(|source| QueueError::Io { path, source })
}

/// Moves `queue.db` of the pipeline `previous` to `queue.db.pipeline-<previous>` (a
/// free name). Its write-ahead log is folded into it first, so the move is one rename a
/// crash cannot split; a file SQLite cannot open is moved with its `-wal` and `-shm`.
fn set_aside(dir: &Path, previous: &str) -> Result<(Option<PathBuf>, Option<u64>), QueueError> {
    let db = dir.join(DB_FILE);
    if !db.exists() {
        return Ok((None, None));
    }
    let records = fold_wal(&db)
        .inspect_err(|e| tracing::warn!(error = %e, "reading the previous pipeline's queue"))
        .ok();
    let safe: String = previous
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '_'
            }
        })
        .take(64)
        .collect();
    let mut aside = dir.join(format!("{DB_FILE}.pipeline-{safe}"));
    let mut n = 1;
    while aside.exists() {
        aside = dir.join(format!("{DB_FILE}.pipeline-{safe}.{n}"));
        n += 1;
    }
    // Companions first: the database file moving last means a crash leaves it in place
    // and the next start sets it aside again.
    for suffix in ["-wal", "-shm", ""] {
        let from = PathBuf::from(format!("{}{suffix}", db.display()));
        if from.exists() {
            let to = PathBuf::from(format!("{}{suffix}", aside.display()));
            std::fs::rename(&from, &to).map_err(|source| QueueError::Io { path: from, source })?;
        }
    }
    Ok((Some(aside), records))
}

/// Checkpoints the write-ahead log into the database file and leaves WAL mode (which
/// deletes the log); returns the records the file holds.
fn fold_wal(db: &Path) -> Result<u64, rusqlite::Error> {
    let conn = Connection::open(db)?;
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    let _mode: String = conn.query_row("PRAGMA journal_mode = DELETE", [], |r| r.get(0))?;
    let records: i64 = conn.query_row("SELECT count(*) FROM records", [], |r| r.get(0))?;
    Ok(records.max(0) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn queue_with_records(dir: &Path, n: i64) {
        let conn = Connection::open(dir.join(DB_FILE)).unwrap();
        let _: String = conn
            .query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))
            .unwrap();
        conn.execute_batch("CREATE TABLE records (seq INTEGER PRIMARY KEY, body BLOB)")
            .unwrap();
        for seq in 1..=n {
            conn.execute("INSERT INTO records (seq, body) VALUES (?1, x'00')", [seq])
                .unwrap();
        }
    }

    fn owner(dir: &Path) -> String {
        std::fs::read_to_string(dir.join(OWNER_FILE))
            .unwrap()
            .trim()
            .to_string()
    }

    #[test]
    fn a_directory_without_an_owner_is_claimed_with_its_queue() {
        let dir = tempfile::tempdir().unwrap();
        queue_with_records(dir.path(), 3);
        assert_eq!(claim(dir.path(), "uid-a", false).unwrap(), Claim::Claimed);
        assert_eq!(owner(dir.path()), "uid-a");
        assert!(dir.path().join(DB_FILE).exists());
        assert_eq!(claim(dir.path(), "uid-a", false).unwrap(), Claim::Owned);
    }

    #[test]
    fn another_pipelines_queue_is_set_aside_whole_and_a_new_one_starts() {
        let dir = tempfile::tempdir().unwrap();
        claim(dir.path(), "uid-a", false).unwrap();
        queue_with_records(dir.path(), 5);
        let got = claim(dir.path(), "uid-b", false).unwrap();
        let aside = dir.path().join("queue.db.pipeline-uid-a");
        assert_eq!(
            got,
            Claim::SetAside {
                previous: "uid-a".into(),
                path: Some(aside.clone()),
                records: Some(5),
            }
        );
        assert_eq!(owner(dir.path()), "uid-b");
        assert!(!dir.path().join(DB_FILE).exists());
        assert!(!dir.path().join("queue.db-wal").exists());
        // Everything the old pipeline committed is in the file set aside, on its own.
        let conn = Connection::open(&aside).unwrap();
        let n: i64 = conn
            .query_row("SELECT count(*) FROM records", [], |r| r.get(0))
            .unwrap();
        assert_eq!(n, 5);
        // A third pipeline of the name sets the second one's queue aside under its uid.
        queue_with_records(dir.path(), 1);
        let got = claim(dir.path(), "uid-c", false).unwrap();
        assert!(
            matches!(&got, Claim::SetAside { path: Some(p), .. } if p.ends_with("queue.db.pipeline-uid-b")),
            "{got:?}"
        );
        assert!(aside.exists());
    }

    #[test]
    fn another_pipelines_queue_is_kept_when_adopted() {
        let dir = tempfile::tempdir().unwrap();
        claim(dir.path(), "uid-a", false).unwrap();
        queue_with_records(dir.path(), 2);
        assert_eq!(
            claim(dir.path(), "uid-b", true).unwrap(),
            Claim::Adopted {
                previous: "uid-a".into()
            }
        );
        assert_eq!(owner(dir.path()), "uid-b");
        assert!(dir.path().join(DB_FILE).exists());
    }

    #[test]
    fn an_owner_without_a_queue_file_hands_over_an_empty_directory() {
        let dir = tempfile::tempdir().unwrap();
        claim(dir.path(), "uid-a", false).unwrap();
        assert_eq!(
            claim(dir.path(), "uid-b", false).unwrap(),
            Claim::SetAside {
                previous: "uid-a".into(),
                path: None,
                records: None,
            }
        );
        assert_eq!(owner(dir.path()), "uid-b");
    }

    #[test]
    fn a_hostile_owner_file_cannot_name_a_path_elsewhere() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(OWNER_FILE), "../../etc/x\n").unwrap();
        queue_with_records(dir.path(), 1);
        let got = claim(dir.path(), "uid-b", false).unwrap();
        let Claim::SetAside { path: Some(p), .. } = got else {
            panic!("{got:?}")
        };
        assert_eq!(p.parent(), Some(dir.path()));
        assert!(p.ends_with("queue.db.pipeline-______etc_x"), "{p:?}");
    }
}

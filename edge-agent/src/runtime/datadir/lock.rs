//! One writer per queue: an exclusive `flock` on `<data-dir>/agent.lock`, held for the
//! agent's whole life and released by the kernel when the process ends, however it ends
//! (a kill -9 included). A second agent on the same directory (a misconfigured hostPath,
//! two pipelines sharing a directory, the pod agent while the node's fallback runs) waits
//! for it before it opens the queue, starts a broker or connects anywhere.
//!
//! The lock file says who holds it (`pid`, `mode`, since when). An agent run as the node's
//! fallback (`edge-agent fallback`) gives the queue up on request: a waiting agent that is
//! not a fallback itself writes `<data-dir>/handover`; the fallback sees it, stops the way
//! SIGTERM stops an agent (everything taken in is committed and acknowledged, the file
//! closed cleanly) and exits, and the waiting agent takes the lock. Two ordinary agents
//! never take the queue from each other: the second one waits, and says so.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustix::fs::{FlockOperation, flock};
use tokio_util::sync::CancellationToken;

/// The lock file in the data directory.
pub const LOCK_FILE: &str = "agent.lock";
/// The file a waiting agent writes to ask a fallback to hand the queue over.
pub const HANDOVER_FILE: &str = "handover";
/// How often a waiting agent tries again, and a fallback looks for a request.
const POLL: Duration = Duration::from_millis(200);

/// How an agent runs, as written into the lock file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// `edge-agent run` (in a pod or standalone): keeps the queue until it stops.
    Agent,
    /// `edge-agent fallback`: runs the stored pipeline until an agent asks for the queue.
    Fallback,
}

impl Mode {
    fn as_str(self) -> &'static str {
        match self {
            Self::Agent => "agent",
            Self::Fallback => "fallback",
        }
    }
}

/// The held lock; released when dropped (or when the process ends).
#[derive(Debug)]
pub struct DirLock {
    _file: File,
    dir: PathBuf,
}

/// Who holds a lock, as its file says.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Holder {
    /// Process id.
    pub pid: Option<u32>,
    /// `agent` or `fallback`.
    pub mode: String,
}

/// Why the lock could not be had.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("stopped while waiting for the queue in {0}")]
    Stopped(PathBuf),
}

impl DirLock {
    /// Takes the lock of `dir` if it is free.
    pub fn try_acquire(dir: &Path, mode: Mode) -> Result<Option<Self>, LockError> {
        let path = dir.join(LOCK_FILE);
        let io = |source| LockError::Io {
            path: path.clone(),
            source,
        };
        std::fs::create_dir_all(dir).map_err(io)?;
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(io)?;
        match flock(&file, FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => {}
            Err(e) if e == rustix::io::Errno::WOULDBLOCK => return Ok(None),
            Err(e) => return Err(io(e.into())),
        }
        let since = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let text = format!(
            "pid={}\nmode={}\nsince={since}\n",
            std::process::id(),
            mode.as_str()
        );
        file.set_len(0)
            .and_then(|()| file.seek(SeekFrom::Start(0)))
            .and_then(|_| file.write_all(text.as_bytes()))
            .map_err(io)?;
        Ok(Some(Self {
            _file: file,
            dir: dir.to_path_buf(),
        }))
    }

    /// Waits for the lock of `dir`, asking a fallback that holds it to hand it over
    /// (unless this is a fallback too), until `stop`.
    pub async fn acquire(
        dir: &Path,
        mode: Mode,
        stop: &CancellationToken,
    ) -> Result<Self, LockError> {
        let mut told = false;
        loop {
            if let Some(lock) = Self::try_acquire(dir, mode)? {
                if told {
                    tracing::info!(dir = %dir.display(), "the queue is ours now");
                }
                if mode == Mode::Agent {
                    let _ = std::fs::remove_file(dir.join(HANDOVER_FILE));
                }
                return Ok(lock);
            }
            let holder = holder(dir);
            let ask = mode == Mode::Agent && holder.mode == Mode::Fallback.as_str();
            if ask {
                let _ = std::fs::write(dir.join(HANDOVER_FILE), std::process::id().to_string());
            }
            if !told {
                told = true;
                tracing::warn!(
                    dir = %dir.display(),
                    holder_pid = holder.pid.map(|p| p.to_string()).unwrap_or_default(),
                    holder_mode = %holder.mode,
                    "another agent holds the queue in this directory; waiting for it{}",
                    if ask { " (asked the node's fallback to hand it over)" } else { "" }
                );
            }
            tokio::select! {
                _ = stop.cancelled() => return Err(LockError::Stopped(dir.to_path_buf())),
                _ = tokio::time::sleep(POLL) => {}
            }
        }
    }

    /// The directory locked.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

/// Resolves when an agent asks for the queue in `dir` (a fallback stops then).
pub async fn handover_requested(dir: &Path) {
    let request = dir.join(HANDOVER_FILE);
    loop {
        if request.exists() {
            return;
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Who holds the lock of `dir`, as far as its file says.
pub fn holder(dir: &Path) -> Holder {
    let mut text = String::new();
    if let Ok(mut f) = File::open(dir.join(LOCK_FILE)) {
        let _ = f.read_to_string(&mut text);
    }
    let mut holder = Holder::default();
    for line in text.lines() {
        match line.split_once('=') {
            Some(("pid", v)) => holder.pid = v.trim().parse().ok(),
            Some(("mode", v)) => holder.mode = v.trim().to_string(),
            _ => {}
        }
    }
    holder
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_holder_at_a_time_and_the_file_says_who() {
        let dir = tempfile::tempdir().unwrap();
        let first = DirLock::try_acquire(dir.path(), Mode::Fallback)
            .unwrap()
            .expect("free");
        assert!(
            DirLock::try_acquire(dir.path(), Mode::Agent)
                .unwrap()
                .is_none(),
            "held"
        );
        let h = holder(dir.path());
        assert_eq!(
            (h.pid, h.mode.as_str()),
            (Some(std::process::id()), "fallback")
        );
        drop(first);
        assert!(
            DirLock::try_acquire(dir.path(), Mode::Agent)
                .unwrap()
                .is_some()
        );
    }

    #[tokio::test]
    async fn a_waiting_agent_asks_a_fallback_to_hand_over_and_gets_the_lock() {
        let dir = tempfile::tempdir().unwrap();
        let fallback = DirLock::try_acquire(dir.path(), Mode::Fallback)
            .unwrap()
            .unwrap();
        let stop = CancellationToken::new();
        let path = dir.path().to_path_buf();
        let waiting =
            tokio::spawn(async move { DirLock::acquire(&path, Mode::Agent, &stop).await });
        tokio::time::timeout(Duration::from_secs(10), handover_requested(dir.path()))
            .await
            .expect("the waiting agent asks");
        drop(fallback);
        let lock = tokio::time::timeout(Duration::from_secs(10), waiting)
            .await
            .expect("taken over")
            .unwrap()
            .unwrap();
        assert!(!dir.path().join(HANDOVER_FILE).exists(), "request cleared");
        assert_eq!(holder(dir.path()).mode, "agent");
        drop(lock);
    }

    #[tokio::test]
    async fn two_agents_never_take_the_queue_from_each_other() {
        let dir = tempfile::tempdir().unwrap();
        let _first = DirLock::try_acquire(dir.path(), Mode::Agent)
            .unwrap()
            .unwrap();
        let stop = CancellationToken::new();
        let waiting = DirLock::acquire(dir.path(), Mode::Agent, &stop);
        let cancel = async {
            tokio::time::sleep(Duration::from_millis(600)).await;
            stop.cancel();
        };
        let (result, ()) = tokio::join!(waiting, cancel);
        assert!(matches!(result, Err(LockError::Stopped(_))));
        assert!(
            !dir.path().join(HANDOVER_FILE).exists(),
            "no request to an agent"
        );
    }
}

//! The agent's data directory: `edge-agent prepare-data-dir` (the agent pod's init
//! container) hands it (a hostPath the kubelet creates owned by root) to the agent user;
//! [`lock`] keeps one writer on it; [`store_pipeline`] keeps the pipeline it runs in it;
//! [`fallback`] records what the node's fallback did with it; [`snapshot`] keeps what
//! the fallback needs besides the pipeline (the pod's environment, its mounted files);
//! [`unit`] installs and disarms the node's fallback unit.
//!
//! `prepare-data-dir` It changes
//! the owner of that one directory, not recursively and only when it differs, so it needs
//! `CAP_CHOWN` and nothing else. It ships in the agent image, so a node pulls one image
//! for its agents and an operator upgrade alone restarts nothing there.

pub mod fallback;
pub mod lock;
pub mod snapshot;
pub mod unit;

use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

/// The pipeline file an agent keeps in its data directory: what `edge-agent fallback`
/// runs when the node comes up without its control plane.
pub const STORED_PIPELINE: &str = "pipeline.yaml";

/// Keeps a copy of the pipeline file `config` in `dir` (written to a temporary file,
/// fsynced and renamed, so a power cut leaves the old copy or the new one); nothing when
/// `config` is that copy already.
pub fn store_pipeline(dir: &Path, config: &Path) -> io::Result<()> {
    let target = dir.join(STORED_PIPELINE);
    if std::fs::canonicalize(config).ok() == std::fs::canonicalize(&target).ok() && target.exists()
    {
        return Ok(());
    }
    let text = std::fs::read(config)?;
    if std::fs::read(&target).is_ok_and(|old| old == text) {
        return Ok(());
    }
    let tmp = dir.join(format!(".{STORED_PIPELINE}.tmp"));
    {
        let mut f = std::fs::File::create(&tmp)?;
        io::Write::write_all(&mut f, &text)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, &target)?;
    std::fs::File::open(dir)?.sync_all()
}

/// Makes `path` (an existing directory) owned by `uid:gid`; returns whether it changed.
pub fn prepare_data_dir(path: &Path, uid: u32, gid: u32) -> io::Result<bool> {
    let metadata = std::fs::symlink_metadata(path)?;
    if !metadata.is_dir() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{} is not a directory", path.display()),
        ));
    }
    if metadata.uid() == uid && metadata.gid() == gid {
        return Ok(false);
    }
    std::os::unix::fs::lchown(path, Some(uid), Some(gid))?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owner_changes_once_and_files_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let metadata = std::fs::metadata(dir.path()).unwrap();
        let (uid, gid) = if metadata.uid() == 0 {
            (65532, 65532)
        } else {
            // Without CAP_CHOWN only the current owner and one of its groups are allowed.
            (metadata.uid(), metadata.gid())
        };
        let changed = prepare_data_dir(dir.path(), uid, gid).unwrap();
        assert_eq!(changed, metadata.uid() != uid || metadata.gid() != gid);
        let after = std::fs::metadata(dir.path()).unwrap();
        assert_eq!((after.uid(), after.gid()), (uid, gid));
        assert!(
            !prepare_data_dir(dir.path(), uid, gid).unwrap(),
            "second run changes nothing"
        );

        let file = dir.path().join("queue.db");
        std::fs::write(&file, b"").unwrap();
        let err = prepare_data_dir(&file, uid, gid).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
        assert!(prepare_data_dir(&dir.path().join("missing"), uid, gid).is_err());
    }
}

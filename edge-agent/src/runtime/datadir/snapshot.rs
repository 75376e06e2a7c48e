//! What the node's fallback needs beyond the stored pipeline, kept in the data directory
//! by an armed agent ([`edge_crds::fallback`]): the environment the pod gave the agent
//! (`env.json`) and the files its pipeline reads from its mounts (the Secrets and the
//! model) under `files/<absolute path>`, readable by the agent user only. The fallback
//! ([`Snapshot::load`]) reads the environment from it and maps the mounted paths of the
//! pipeline into it ([`Snapshot::map_paths`]).
//!
//! A new snapshot is written beside the old one and renamed over it, so a power cut
//! leaves one or the other whole. An agent that is not armed removes the snapshot, so
//! turning the fallback off takes the Secrets' copies off the node's disk.

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use edge_crds::fallback::{MOUNTED_DIRS, SNAPSHOT_DIR, SNAPSHOT_ENV};

const ENV_FILE: &str = "env.json";
const FILES_DIR: &str = "files";

/// A snapshot read back by the fallback.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Snapshot {
    /// The pod environment the agent had ([`SNAPSHOT_ENV`]).
    pub env: BTreeMap<String, String>,
    /// The directory holding the mounted files under their absolute paths.
    files: PathBuf,
}

/// Writes the snapshot of `dir` from this process's environment and the mounted
/// directories (`MOUNTED_DIRS` under `root`, `/` in a pod).
pub fn take(dir: &Path, root: &Path) -> io::Result<()> {
    let env: BTreeMap<String, String> = SNAPSHOT_ENV
        .iter()
        .filter_map(|name| std::env::var(name).ok().map(|v| (name.to_string(), v)))
        .collect();
    let tmp = dir.join(format!(".{SNAPSHOT_DIR}.tmp"));
    let _ = fs::remove_dir_all(&tmp);
    private_dir(&tmp)?;
    write_private(
        &tmp.join(ENV_FILE),
        &serde_json::to_vec_pretty(&env).map_err(io::Error::other)?,
    )?;
    for mounted in MOUNTED_DIRS {
        let source = root.join(mounted.trim_start_matches('/'));
        if source.is_dir() {
            copy_tree(
                &source,
                &tmp.join(FILES_DIR).join(mounted.trim_start_matches('/')),
            )?;
        }
    }
    let target = dir.join(SNAPSHOT_DIR);
    let old = dir.join(format!(".{SNAPSHOT_DIR}.old"));
    let _ = fs::remove_dir_all(&old);
    if target.exists() {
        fs::rename(&target, &old)?;
    }
    fs::rename(&tmp, &target)?;
    let _ = fs::remove_dir_all(&old);
    fs::File::open(dir)?.sync_all()
}

/// Removes the snapshot of `dir`, if any.
pub fn clear(dir: &Path) -> io::Result<()> {
    match fs::remove_dir_all(dir.join(SNAPSHOT_DIR)) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

impl Snapshot {
    /// The snapshot of `dir`, when an armed agent left one.
    pub fn load(dir: &Path) -> Option<Snapshot> {
        let base = dir.join(SNAPSHOT_DIR);
        let env = serde_json::from_slice(&fs::read(base.join(ENV_FILE)).ok()?).ok()?;
        Some(Snapshot {
            env,
            files: base.join(FILES_DIR),
        })
    }

    /// `text` (a pipeline file) with every mounted directory's path pointing into the
    /// snapshot's copy instead.
    pub fn map_paths(&self, text: &str) -> String {
        MOUNTED_DIRS.iter().fold(text.to_string(), |text, mounted| {
            let copy = self.files.join(mounted.trim_start_matches('/'));
            text.replace(&format!("{mounted}/"), &format!("{}/", copy.display()))
        })
    }
}

fn private_dir(path: &Path) -> io::Result<()> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(path)
}

fn write_private(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    io::Write::write_all(&mut f, bytes)?;
    f.sync_all()
}

/// Copies the files of `from` into `to`, following symlinks and leaving out the
/// kubelet's own entries of a projected volume (`..data`, `..2026_...`).
fn copy_tree(from: &Path, to: &Path) -> io::Result<()> {
    private_dir(to)?;
    for entry in fs::read_dir(from)? {
        let entry = entry?;
        let name = entry.file_name();
        if name.to_string_lossy().starts_with("..") {
            continue;
        }
        let path = entry.path();
        let metadata = fs::metadata(&path)?;
        if metadata.is_dir() {
            copy_tree(&path, &to.join(&name))?;
        } else if metadata.is_file() {
            write_private(&to.join(&name), &fs::read(&path)?)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn the_mounted_files_and_the_environment_come_back_under_the_snapshot() {
        let root = tempfile::tempdir().unwrap();
        let data = tempfile::tempdir().unwrap();
        // A Secret volume as the kubelet lays it out: keys are symlinks into ..data.
        let secret = root.path().join("etc/edgepipe-secrets/ingest-token");
        fs::create_dir_all(secret.join("..2026_12_05")).unwrap();
        fs::write(secret.join("..2026_12_05/authorization"), "Bearer x").unwrap();
        std::os::unix::fs::symlink("..2026_12_05", secret.join("..data")).unwrap();
        std::os::unix::fs::symlink("..data/authorization", secret.join("authorization")).unwrap();
        fs::create_dir_all(root.path().join("etc/edgepipe-model")).unwrap();
        fs::write(
            root.path().join("etc/edgepipe-model/model.tflite"),
            [1u8, 2, 3],
        )
        .unwrap();

        take(data.path(), root.path()).unwrap();
        // Taken twice: the second replaces the first whole.
        take(data.path(), root.path()).unwrap();
        let snapshot = Snapshot::load(data.path()).expect("a snapshot");
        let text = "url: x\nfile: /etc/edgepipe-secrets/ingest-token/authorization\n\
                    path: /etc/edgepipe-model/model.tflite\nother: /etc/edgepipe-secretsX\n";
        let mapped = snapshot.map_paths(text);
        let base = data.path().join(SNAPSHOT_DIR).join(FILES_DIR);
        let token = base.join("etc/edgepipe-secrets/ingest-token/authorization");
        assert!(mapped.contains(&format!("file: {}\n", token.display())));
        assert!(mapped.contains("other: /etc/edgepipe-secretsX"));
        assert_eq!(fs::read_to_string(&token).unwrap(), "Bearer x");
        assert_eq!(
            fs::metadata(&token).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert!(
            !base
                .join("etc/edgepipe-secrets/ingest-token/..data")
                .exists()
        );
        assert_eq!(
            fs::read(base.join("etc/edgepipe-model/model.tflite")).unwrap(),
            [1, 2, 3]
        );

        clear(data.path()).unwrap();
        assert!(Snapshot::load(data.path()).is_none());
        clear(data.path()).unwrap();
    }
}

//! The node's fallback unit, installed and disarmed from inside a pod: the agent pod's
//! `install-fallback` init container ([`install`]) and the operator's disarm Job
//! ([`disarm`]), each with the node's systemd unit directory and the root-owned binary
//! directory mounted (hostPath), as root with no capability.
//!
//! Installing copies the running `edge-agent` binary to the node (only when it changed),
//! writes the template unit `deploy/systemd/edgepipe-fallback@.service` with that binary
//! and the grace period, and enables the pipeline's instance the way
//! `systemctl enable` does (a symlink in `multi-user.target.wants`), so systemd starts
//! it at the next boot without a daemon reload: the fallback matters only after a reboot.
//! Every file is written beside its target and renamed over it.

use std::fs;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use edge_crds::fallback::{UNIT_TEMPLATE, WANTED_BY, unit_name};

use crate::runtime::datadir::lock::{HANDOVER_FILE, holder};
use crate::runtime::datadir::{STORED_PIPELINE, snapshot};

/// The unit as shipped; [`template`] points it at the installed binary.
const SHIPPED_UNIT: &str = include_str!("../../../../deploy/systemd/edgepipe-fallback@.service");
/// The binary path and grace period in [`SHIPPED_UNIT`].
const SHIPPED_BINARY: &str = "/usr/local/bin/edge-agent";
const SHIPPED_GRACE: &str = "--grace 2m";
/// The name of a disarmed pipeline file: kept for a look, never run
/// (the unit runs only when `pipeline.yaml` exists).
pub const DISARMED_PIPELINE: &str = "pipeline.disarmed.yaml";

/// Where things go, as seen from the installing container.
#[derive(Clone, Debug)]
pub struct Paths {
    /// The node's systemd unit directory (mounted).
    pub unit_dir: PathBuf,
    /// The node's fallback binary directory (mounted).
    pub bin_dir: PathBuf,
    /// That binary directory's path on the node (what the unit runs).
    pub host_bin_dir: PathBuf,
}

/// The shipped unit's condition, and the one the installed unit adds.
const SHIPPED_CONDITION: &str = "ConditionPathExists=/var/lib/edgepipe/%I/pipeline.yaml\n";

/// The template unit with the node's binary and `grace`, run only while the agent keeps
/// a snapshot for it: an agent that is no longer armed (the chart's `agent.fallback`
/// turned off) removes its snapshot, and the unit turns inert without touching the node's
/// unit directory.
pub fn template(host_bin_dir: &Path, grace: Duration) -> String {
    SHIPPED_UNIT
        .replace(
            SHIPPED_BINARY,
            &host_bin_dir.join("edge-agent").display().to_string(),
        )
        .replace(SHIPPED_GRACE, &format!("--grace {}s", grace.as_secs()))
        .replace(
            SHIPPED_CONDITION,
            &format!(
                "{SHIPPED_CONDITION}# Armed: the agent keeps what the fallback needs (removed when the chart's\n\
                 # agent.fallback is turned off or the pipeline is deleted).\n\
                 ConditionPathExists=/var/lib/edgepipe/%I/{}/env.json\n",
                edge_crds::fallback::SNAPSHOT_DIR
            ),
        )
}

/// Installs the binary and the template unit and enables the instance of
/// `namespace/name`; returns what changed, for the log.
pub fn install(
    paths: &Paths,
    namespace: &str,
    name: &str,
    grace: Duration,
) -> io::Result<Vec<String>> {
    let mut changed = Vec::new();
    let exe = std::env::current_exe()?;
    let binary = paths.bin_dir.join("edge-agent");
    // Streamed, never read whole: the init container has 64 MiB of memory.
    if !same_file_content(&exe, &binary)? {
        fs::create_dir_all(&paths.bin_dir)?;
        let tmp = paths.bin_dir.join(".edge-agent.tmp");
        fs::copy(&exe, &tmp)?;
        let f = fs::File::open(&tmp)?;
        f.set_permissions(fs::Permissions::from_mode(0o755))?;
        f.sync_all()?;
        fs::rename(&tmp, &binary)?;
        changed.push(binary.display().to_string());
    }
    let unit = paths.unit_dir.join(UNIT_TEMPLATE);
    let text = template(&paths.host_bin_dir, grace);
    if fs::read_to_string(&unit).ok().as_deref() != Some(text.as_str()) {
        replace(&unit, text.as_bytes(), 0o644)?;
        changed.push(unit.display().to_string());
    }
    let wants = paths.unit_dir.join(format!("{WANTED_BY}.wants"));
    fs::create_dir_all(&wants)?;
    let link = wants.join(unit_name(namespace, name));
    let target = Path::new("..").join(UNIT_TEMPLATE);
    if fs::read_link(&link).ok().as_deref() != Some(target.as_path()) {
        let tmp = wants.join(format!(".{}.tmp", unit_name(namespace, name)));
        let _ = fs::remove_file(&tmp);
        std::os::unix::fs::symlink(&target, &tmp)?;
        fs::rename(&tmp, &link)?;
        changed.push(link.display().to_string());
    }
    Ok(changed)
}

/// Disarms the fallback of `namespace/name`: disables its instance, sets the stored
/// pipeline aside (so no boot runs it again), removes the snapshot (the Secrets'
/// copies), and asks a fallback running it right now to stop. Returns what it did.
/// Either directory may be left out (the disarm Job does each as its own user: the data
/// directory as the agent user, the unit directory as root).
pub fn disarm(
    unit_dir: Option<&Path>,
    data_dir: Option<&Path>,
    namespace: &str,
    name: &str,
) -> io::Result<Vec<String>> {
    let mut done = Vec::new();
    if let Some(unit_dir) = unit_dir {
        let link = unit_dir
            .join(format!("{WANTED_BY}.wants"))
            .join(unit_name(namespace, name));
        match fs::remove_file(&link) {
            Ok(()) => done.push(format!("disabled {}", link.display())),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    let Some(data_dir) = data_dir else {
        return Ok(done);
    };
    let stored = data_dir.join(STORED_PIPELINE);
    if stored.exists() {
        fs::rename(&stored, data_dir.join(DISARMED_PIPELINE))?;
        done.push(format!("set {} aside", stored.display()));
    }
    if data_dir.is_dir() {
        snapshot::clear(data_dir)?;
        if holder(data_dir).mode == "fallback" {
            fs::write(data_dir.join(HANDOVER_FILE), "disarm")?;
            done.push("asked the running fallback to stop".to_string());
        }
    }
    Ok(done)
}

/// Whether `b` exists with the same bytes as `a`, compared a block at a time.
fn same_file_content(a: &Path, b: &Path) -> io::Result<bool> {
    let (Ok(ma), Ok(mb)) = (fs::metadata(a), fs::metadata(b)) else {
        return Ok(false);
    };
    if ma.len() != mb.len() {
        return Ok(false);
    }
    let (mut fa, mut fb) = (fs::File::open(a)?, fs::File::open(b)?);
    let (mut ba, mut bb) = (vec![0u8; 64 * 1024], vec![0u8; 64 * 1024]);
    loop {
        let n = io::Read::read(&mut fa, &mut ba)?;
        if n == 0 {
            return Ok(true);
        }
        io::Read::read_exact(&mut fb, &mut bb[..n])?;
        if ba[..n] != bb[..n] {
            return Ok(false);
        }
    }
}

/// Writes `bytes` to a temporary file beside `path` with `mode`, syncs it and renames
/// it over `path`.
fn replace(path: &Path, bytes: &[u8], mode: u32) -> io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    fs::create_dir_all(dir)?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp"));
    {
        let mut f = fs::File::create(&tmp)?;
        io::Write::write_all(&mut f, bytes)?;
        f.set_permissions(fs::Permissions::from_mode(mode))?;
        f.sync_all()?;
    }
    fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn install_enables_the_instance_and_disarm_undoes_it() {
        let node = tempfile::tempdir().unwrap();
        let paths = Paths {
            unit_dir: node.path().join("systemd"),
            bin_dir: node.path().join("bin"),
            host_bin_dir: PathBuf::from("/var/lib/edgepipe/.fallback"),
        };
        fs::create_dir_all(&paths.unit_dir).unwrap();
        let grace = Duration::from_secs(30);
        let changed = install(&paths, "factory", "line1-temperature", grace).unwrap();
        assert_eq!(changed.len(), 3, "{changed:?}");
        let unit = fs::read_to_string(paths.unit_dir.join(UNIT_TEMPLATE)).unwrap();
        assert!(unit.contains(
            "ExecStart=/var/lib/edgepipe/.fallback/edge-agent fallback --data-dir /var/lib/edgepipe/%I --grace 30s"
        ));
        assert!(unit.contains("ConditionPathExists=/var/lib/edgepipe/%I/pipeline.yaml\n"));
        assert!(
            unit.contains("ConditionPathExists=/var/lib/edgepipe/%I/fallback-snapshot/env.json\n")
        );
        let link = paths.unit_dir.join(
            "multi-user.target.wants/edgepipe-fallback@factory-line1\\x2dtemperature.service",
        );
        assert_eq!(
            fs::read_link(&link).unwrap(),
            Path::new("../edgepipe-fallback@.service")
        );
        let binary = paths.bin_dir.join("edge-agent");
        assert_eq!(
            fs::metadata(&binary).unwrap().permissions().mode() & 0o777,
            0o755
        );
        // A second install (the next pod) changes nothing.
        assert!(
            install(&paths, "factory", "line1-temperature", grace)
                .unwrap()
                .is_empty()
        );

        let data = node.path().join("data");
        fs::create_dir_all(&data).unwrap();
        fs::write(data.join(STORED_PIPELINE), "spec: {}").unwrap();
        let done = disarm(
            Some(&paths.unit_dir),
            Some(&data),
            "factory",
            "line1-temperature",
        )
        .unwrap();
        assert_eq!(done.len(), 2, "{done:?}");
        assert!(!link.exists());
        assert!(!data.join(STORED_PIPELINE).exists());
        assert!(data.join(DISARMED_PIPELINE).exists());
        // Disarming again finds nothing to do; the template stays for other pipelines.
        assert!(
            disarm(
                Some(&paths.unit_dir),
                Some(&data),
                "factory",
                "line1-temperature"
            )
            .unwrap()
            .is_empty()
        );
        assert!(paths.unit_dir.join(UNIT_TEMPLATE).exists());
    }
}

//! The checks of `doctor` that stay on the node: the data directory and its filesystem,
//! the queue file, the clock and the model.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use super::{Check, age, bytes};
use crate::config::AgentConfig;
use crate::delivery::queue::QueueError;
use crate::delivery::queue::inspect::inspect;
use crate::delivery::queue::store::{DB_FILE, files_bytes};
use crate::pipeline::inference::{ModelLocation, SourceSettings, prepare};
use crate::runtime::clock::now_ms;

/// Below this much free space the queue cannot take a burst.
const MIN_FREE: u64 = 64 * 1024 * 1024;
/// Clock skew against the upstream's `Date` that is worth a warning (it has 1 s
/// resolution), and one that is a failure.
const SKEW_WARNING: Duration = Duration::from_secs(2);
const SKEW_FAILED: Duration = Duration::from_secs(60);

/// Exists (or can be made), writable, on which filesystem, and free space against
/// `buffer.maxBytes`.
pub(super) fn data_dir(dir: &Path, config: Option<&AgentConfig>) -> Check {
    let started = Instant::now();
    const NAME: &str = "data-dir";
    if let Err(e) = std::fs::create_dir_all(dir) {
        return Check::failed(
            NAME,
            format!("{}: cannot create it: {e}", dir.display()),
            "mount a writable volume there (the agent's hostPath) or pass --data-dir",
        )
        .timed(started);
    }
    let probe = dir.join(format!(".doctor-{}", std::process::id()));
    if let Err(e) = std::fs::write(&probe, b"edgepipe doctor").and_then(|()| {
        let file = std::fs::File::open(&probe)?;
        file.sync_all()
    }) {
        let _ = std::fs::remove_file(&probe);
        let fix = if e.raw_os_error() == Some(28) {
            "free space on that filesystem, or lower buffer.maxBytes"
        } else {
            "give the agent's user write access (edge-agent prepare-data-dir) or mount it read-write"
        };
        return Check::failed(NAME, format!("{}: not writable: {e}", dir.display()), fix)
            .timed(started);
    }
    let _ = std::fs::remove_file(&probe);
    let fs = filesystem(dir).unwrap_or_else(|| "unknown filesystem".into());
    let (free, total) = match rustix::fs::statvfs(dir) {
        Ok(s) => (
            s.f_bavail.saturating_mul(s.f_frsize),
            s.f_blocks.saturating_mul(s.f_frsize),
        ),
        Err(e) => {
            return Check::warning(
                NAME,
                format!("{}: writable, {fs}; free space unknown: {e}", dir.display()),
                "check the filesystem with df",
            )
            .timed(started);
        }
    };
    let queued = files_bytes(&dir.join(DB_FILE));
    let mut detail = format!(
        "{}: writable, {fs}, {} free of {}",
        dir.display(),
        bytes(free),
        bytes(total)
    );
    let Some(config) = config else {
        return Check::ok(NAME, detail).timed(started);
    };
    let max = config.buffer.max_bytes;
    detail.push_str(&format!(", buffer.maxBytes {}", bytes(max)));
    let check = if free < MIN_FREE {
        Check::failed(
            NAME,
            detail,
            "free space on that filesystem: the queue drops (or blocks) new readings now",
        )
    } else if free.saturating_add(queued) < max {
        Check::warning(
            NAME,
            format!("{detail}: the queue cannot reach maxBytes here"),
            "give the data directory more space, or lower buffer.maxBytes to what the disk holds",
        )
    } else {
        Check::ok(NAME, detail)
    };
    check.timed(started)
}

/// The filesystem type holding `dir`, from the mount table (longest mount point prefix).
fn filesystem(dir: &Path) -> Option<String> {
    let dir = std::fs::canonicalize(dir).ok()?;
    let table = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    let mut best: Option<(usize, String)> = None;
    for line in table.lines() {
        let fields: Vec<&str> = line.split(' ').collect();
        let Some(sep) = fields.iter().position(|f| *f == "-") else {
            continue;
        };
        let (Some(mount), Some(fstype)) = (fields.get(4), fields.get(sep + 1)) else {
            continue;
        };
        let mount = PathBuf::from(mount.replace("\\040", " "));
        if dir.starts_with(&mount) {
            let depth = mount.components().count();
            if best.as_ref().is_none_or(|(d, _)| depth >= *d) {
                best = Some((depth, (*fstype).to_string()));
            }
        }
    }
    best.map(|(_, fs)| fs)
}

/// Integrity, keys, backlog and its age, dead letters.
pub(super) fn queue(dir: &Path, config: &AgentConfig) -> Check {
    let started = Instant::now();
    const NAME: &str = "queue";
    let inspection = match inspect(dir, &config.buffer.keys) {
        Ok(Some(i)) => i,
        Ok(None) => {
            return Check::ok(NAME, format!("no queue in {} yet", dir.display())).timed(started);
        }
        Err(QueueError::Seal(e)) => {
            return Check::failed(
                NAME,
                e.to_string(),
                "configure the key that sealed the queue under buffer.encryption.keys",
            )
            .timed(started);
        }
        Err(e) => {
            return Check::failed(
                NAME,
                format!("cannot read {}/queue.db: {e}", dir.display()),
                "the agent moves a corrupt file aside at start (queue.db.corrupt-*); check the disk",
            )
            .timed(started);
        }
    };
    if let Err(first) = &inspection.integrity {
        return Check::failed(
            NAME,
            format!("integrity check failed: {first}"),
            "restart the agent: it moves the corrupt file aside and starts a fresh queue; check the storage medium",
        )
        .timed(started);
    }
    let oldest = inspection
        .oldest_ms
        .map(|ms| Duration::from_millis(now_ms().saturating_sub(ms).max(0) as u64));
    let mut detail = format!(
        "{} records ({}) queued",
        inspection.records,
        bytes(inspection.bytes)
    );
    if let Some(oldest) = oldest {
        detail.push_str(&format!(", oldest {}", age(oldest)));
    }
    detail.push_str(&format!(
        "; {} dead letters; file {}",
        inspection.dead_letters.batches,
        bytes(inspection.file_bytes)
    ));
    if !inspection.keys.is_empty() {
        detail.push_str(&format!("; sealed with {}", inspection.keys.join(", ")));
    }
    let max_age = config.buffer.max_age;
    let check = if oldest.is_some_and(|o| o > max_age / 2) {
        Check::warning(
            NAME,
            detail,
            "the backlog is halfway to buffer.maxAge, when it expires: check the upstream check below",
        )
    } else if inspection.dead_letters.batches > 0 {
        Check::warning(
            NAME,
            detail,
            "the upstream rejected batches: `edge-agent dead-letters list`, fix the cause, then `dead-letters replay --all`",
        )
    } else {
        Check::ok(NAME, detail)
    };
    check.timed(started)
}

/// The system clock against the upstream's `Date` header, and NTP as the system reports it.
pub(super) fn clock(upstream_date: Option<SystemTime>) -> Check {
    const NAME: &str = "clock";
    let ntp = ntp_status();
    let Some(theirs) = upstream_date else {
        let detail = format!("no upstream Date header to compare with; {ntp}");
        return Check::ok(NAME, detail);
    };
    let now = SystemTime::now();
    let (skew, sign) = match now.duration_since(theirs) {
        Ok(ahead) => (ahead, "ahead of"),
        Err(e) => (e.duration(), "behind"),
    };
    let shown = if skew < Duration::from_secs(1) {
        "<1s".to_string()
    } else {
        age(skew)
    };
    let detail = format!("{shown} {sign} the upstream's clock; {ntp}");
    if skew > SKEW_FAILED {
        Check::failed(
            NAME,
            detail,
            "set the node's clock (enable NTP: timedatectl set-ntp true): readings are timestamped with it",
        )
    } else if skew > SKEW_WARNING {
        Check::warning(
            NAME,
            detail,
            "enable NTP on the node (timedatectl set-ntp true)",
        )
    } else {
        Check::ok(NAME, detail)
    }
}

fn ntp_status() -> &'static str {
    if Path::new("/run/systemd/timesync/synchronized").exists() {
        "NTP synchronized (systemd-timesyncd)"
    } else if Path::new("/run/chrony").exists() {
        "chrony runs on this system"
    } else {
        "NTP status not reported by this system"
    }
}

/// The model: reachable or cached, verified against its sha256, loads, passes its golden
/// check. `None` without inference.
pub(super) fn model(
    config: &AgentConfig,
    data_dir: &Path,
    rt: &tokio::runtime::Runtime,
) -> Option<Check> {
    let spec = config.spec.inference.as_ref()?;
    let started = Instant::now();
    const NAME: &str = "model";
    let mut settings = SourceSettings::new(data_dir);
    settings.headers = config.model_headers.clone();
    settings.download_timeout = Duration::from_secs(60);
    let fix_source =
        "fix inference.model (path, configMap or url and its sha256) or what serves it";
    let location = match ModelLocation::new(
        &spec.model,
        spec.golden.as_ref().and_then(|g| g.file.as_deref()),
        spec.labels_file.as_deref(),
        settings,
    ) {
        Ok(l) => l,
        Err(e) => return Some(Check::failed(NAME, e.to_string(), fix_source).timed(started)),
    };
    let files = match location.fetch(rt) {
        Ok(files) => files,
        Err(e) => return Some(Check::failed(NAME, e.to_string(), fix_source).timed(started)),
    };
    let check = match prepare(&files, spec) {
        Ok(prepared) => {
            let golden = match prepared.golden_error {
                Some(err) => format!(", golden vectors pass (max error {err:.2e})"),
                None => ", no golden vectors".into(),
            };
            Check::ok(
                NAME,
                format!(
                    "{} (sha256 {}) loads{golden}",
                    prepared.origin,
                    &prepared.sha256[..12.min(prepared.sha256.len())]
                ),
            )
        }
        Err(e) => Check::failed(
            NAME,
            format!("{}: {e}", files.origin),
            "use a model the agent supports (`edge-agent model inspect`), or fix its golden file",
        ),
    };
    Some(check.timed(started))
}

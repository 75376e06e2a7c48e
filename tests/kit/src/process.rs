//! A background process that cannot outlive the test that started it.
//!
//! Each process runs under a small bash watchdog in a process group of its own. The
//! watchdog reads its stdin, a pipe from the test process: when the test process exits
//! for any reason (a panic, `kill -9`, the end of a test binary whose shared cluster sits
//! in a `static` and is never dropped) the pipe closes and the watchdog stops the process.
//! Dropping a [`Process`] stops the whole group at once: SIGTERM, then SIGKILL after a
//! grace period.

use std::fs::File;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::{Duration, Instant};

/// How long a stopped process may take to exit before it is killed.
const GRACE: Duration = Duration::from_secs(10);

const WATCHDOG: &str = r#""$@" </dev/null & child=$!
while read -r _; do :; done
kill -TERM "$child" 2>/dev/null
for _ in $(seq 100); do kill -0 "$child" 2>/dev/null || exit 0; sleep 0.1; done
kill -KILL "$child" 2>/dev/null"#;

/// A running background process with its output in a log file.
pub struct Process {
    name: String,
    log: PathBuf,
    child: Child,
    /// Held open: closing it tells the watchdog to stop the process.
    stdin: Option<ChildStdin>,
}

impl Process {
    /// Starts `command` (its program, arguments and environment are kept) with stdout and
    /// stderr appended to `log`.
    pub fn spawn(name: &str, command: &Command, log: &Path) -> Process {
        let out = File::options()
            .create(true)
            .append(true)
            .open(log)
            .unwrap_or_else(|e| panic!("opening {}: {e}", log.display()));
        let err = out.try_clone().expect("log file handle");
        let mut watchdog = Command::new("bash");
        watchdog
            .arg("-c")
            .arg(WATCHDOG)
            .arg(name)
            .arg(command.get_program())
            .args(command.get_args())
            .stdin(Stdio::piped())
            .stdout(out)
            .stderr(err)
            .process_group(0);
        for (key, value) in command.get_envs() {
            match value {
                Some(value) => watchdog.env(key, value),
                None => watchdog.env_remove(key),
            };
        }
        if let Some(dir) = command.get_current_dir() {
            watchdog.current_dir(dir);
        }
        let mut child = watchdog
            .spawn()
            .unwrap_or_else(|e| panic!("starting {name}: {e}"));
        let stdin = child.stdin.take();
        Process {
            name: name.to_string(),
            log: log.to_path_buf(),
            child,
            stdin,
        }
    }

    /// The process's name, as given to [`Process::spawn`].
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The log file.
    pub fn log(&self) -> &Path {
        &self.log
    }

    /// The process id of the process itself (not its watchdog), while it runs.
    pub fn pid(&self) -> Option<u32> {
        let watchdog = self.child.id();
        std::fs::read_to_string(format!("/proc/{watchdog}/task/{watchdog}/children"))
            .ok()?
            .split_whitespace()
            .next()?
            .parse()
            .ok()
    }

    /// Whether the process (its watchdog) is still running.
    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Sends `signal` (e.g. "KILL", "TERM") to the whole process group.
    pub fn signal(&self, signal: &str) {
        let _ = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg("--")
            .arg(format!("-{}", self.child.id()))
            .stderr(Stdio::null())
            .status();
    }

    /// Whether any process of the group is alive.
    fn group_alive(&self) -> bool {
        Command::new("kill")
            .args(["-0", "--", &format!("-{}", self.child.id())])
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    }

    /// Stops the process: SIGTERM to its group, SIGKILL after the grace period, and
    /// waits until no process of the group is left.
    pub fn stop(&mut self) {
        self.stdin.take();
        self.signal("TERM");
        let deadline = Instant::now() + GRACE;
        while self.group_alive() && Instant::now() < deadline {
            let _ = self.child.try_wait();
            std::thread::sleep(Duration::from_millis(50));
        }
        self.signal("KILL");
        let _ = self.child.wait();
    }

    /// The last `lines` lines of the log.
    pub fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Stops a child process that is not a [`Process`]: SIGTERM, then SIGKILL if it is still
/// running after `grace`; waits for it either way.
pub fn terminate(child: &mut Child, grace: Duration) {
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// The highest RSS of a process so far (the kernel's `VmHWM`), in bytes: catches a peak
/// between two polls.
pub fn peak_rss(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        .unwrap_or(0)
        * 1024
}

/// (RSS bytes, CPU seconds) of a process.
pub fn usage(pid: u32) -> (u64, f64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let rss_kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0);
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    // utime and stime are fields 14 and 15 of stat, 12 and 13 after the command name.
    let ticks: f64 = fields
        .get(11..13)
        .map(|t| t.iter().filter_map(|v| v.parse::<f64>().ok()).sum())
        .unwrap_or(0.0);
    (rss_kb * 1024, ticks / 100.0)
}

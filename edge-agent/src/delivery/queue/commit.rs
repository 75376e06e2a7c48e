//! The queue writer's commit policy: after each attempt to commit the pending units, what
//! to do with them. Pure: the writer tells it what the attempt came to (with the instant
//! passed in) and performs the [`Step`] it returns; the I/O, the logs and the metrics are
//! the writer's.
//!
//! A failing commit is retried with a doubling delay (from 100 ms up to
//! [`MAX_RETRY_DELAY`]); after [`MAX_COMMIT_ATTEMPTS`] the units are dropped, unless the
//! policy is `block`, which retries until they fit. A full disk that made the writer give
//! up is held to be full: for [`DISK_FULL_HOLD`], or until the queue frees space, each later
//! group gets one attempt and is dropped at once if it does not fit, so ingest keeps its
//! pace while the sink cannot drain. While the drain uses the reserve space, new units are
//! not tried at all: dropped, or held under `block`.

use std::time::{Duration, Instant};

/// Failed commits retried before the records are dropped (not under `block`).
pub const MAX_COMMIT_ATTEMPTS: u32 = 5;
/// The pause before the first retry of a failed commit; it doubles with each failure.
const FIRST_RETRY_DELAY: Duration = Duration::from_millis(100);
/// Longest pause between retries of a failed commit.
pub const MAX_RETRY_DELAY: Duration = Duration::from_secs(5);
/// How long a full disk, once proved, costs each group one commit attempt instead of
/// the retries with backoff (unless the queue frees space sooner).
pub const DISK_FULL_HOLD: Duration = Duration::from_secs(30);

/// What one attempt to commit the pending units came to: the policy's input.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Attempt {
    /// The transaction committed; `blocked`: under `block` the queue was full and some
    /// units were left out.
    Committed { blocked: bool },
    /// The transaction failed; `disk_full`: SQLite ran out of space.
    Failed { disk_full: bool },
    /// Not tried: the drain is using the reserve space of a full disk.
    Refused,
}

/// What the writer does with the pending units.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Nothing is left waiting.
    Done,
    /// The units wait until the queue frees space (tried again then, and on every tick).
    Hold,
    /// The units wait and are tried again `after` this long; `attempts` failed so far.
    Retry { attempts: u32, after: Duration },
    /// Drop the pending units and count them as `disk_full`; `attempts` failed.
    Drop { attempts: u32 },
}

/// The decision, and whether the writer says so in its log: the first refusal of a spell
/// of them, or a failure that is news (not one more while the disk is held to be full).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Step {
    /// What to do.
    pub decision: Decision,
    /// Log it (and, after a failure on a full disk, checkpoint the WAL).
    pub report: bool,
}

/// Why pending units are not committed yet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stall {
    /// Nothing waits on the policy.
    None,
    /// Waiting for space ([`Decision::Hold`]).
    Held,
    /// Commits failed this many times; the next try is at `retry_at`.
    Failing { attempts: u32, retry_at: Instant },
}

/// The commit policy's memory between attempts.
#[derive(Debug)]
pub struct CommitPolicy {
    /// `whenFull: block`: never drop, wait.
    block: bool,
    stall: Stall,
    /// Since when the disk has proved full (a commit given up on it).
    disk_full_since: Option<Instant>,
    /// Refusing new units while the drain uses the reserve.
    refusing: bool,
}

impl CommitPolicy {
    /// A policy with nothing waiting; `block` for `whenFull: block`.
    pub fn new(block: bool) -> Self {
        Self {
            block,
            stall: Stall::None,
            disk_full_since: None,
            refusing: false,
        }
    }

    /// What to do after `attempt`, made at `now`.
    pub fn next(&mut self, attempt: Attempt, now: Instant) -> Step {
        match attempt {
            Attempt::Refused => {
                let report = !self.refusing;
                self.refusing = true;
                let decision = if self.block {
                    self.stall = Stall::Held;
                    Decision::Hold
                } else {
                    self.stall = Stall::None;
                    Decision::Drop { attempts: 0 }
                };
                Step { decision, report }
            }
            Attempt::Committed { blocked } => {
                self.refusing = false;
                let (stall, decision) = if blocked {
                    (Stall::Held, Decision::Hold)
                } else {
                    (Stall::None, Decision::Done)
                };
                self.stall = stall;
                Step {
                    decision,
                    report: false,
                }
            }
            Attempt::Failed { disk_full } => {
                self.refusing = false;
                let attempts = match self.stall {
                    Stall::Failing { attempts, .. } => attempts.saturating_add(1),
                    _ => 1,
                };
                // Still full after giving up on it before: no news, and no retries.
                let still_full = disk_full
                    && self
                        .disk_full_since
                        .is_some_and(|since| now.saturating_duration_since(since) < DISK_FULL_HOLD);
                let give_up = (still_full || attempts >= MAX_COMMIT_ATTEMPTS) && !self.block;
                let decision = if give_up {
                    self.stall = Stall::None;
                    if !still_full {
                        self.disk_full_since = disk_full.then_some(now);
                    }
                    Decision::Drop { attempts }
                } else {
                    let after = retry_delay(attempts);
                    self.stall = Stall::Failing {
                        attempts,
                        retry_at: now + after,
                    };
                    Decision::Retry { attempts, after }
                };
                Step {
                    decision,
                    report: !still_full,
                }
            }
        }
    }

    /// Nothing is pending any more.
    pub fn idle(&mut self) {
        self.stall = Stall::None;
    }

    /// The queue freed space (a batch delivered, dead-lettered or expired, or the file
    /// changed by another process): the disk is no longer held to be full.
    pub fn space_freed(&mut self) {
        self.disk_full_since = None;
    }

    /// When to try the failing commit again.
    pub fn retry_at(&self) -> Option<Instant> {
        match self.stall {
            Stall::Failing { retry_at, .. } => Some(retry_at),
            _ => None,
        }
    }

    /// Units wait for space ([`Decision::Hold`]).
    pub fn is_held(&self) -> bool {
        self.stall == Stall::Held
    }

    /// Commits are failing and being retried.
    pub fn is_failing(&self) -> bool {
        matches!(self.stall, Stall::Failing { .. })
    }

    /// Nothing waits and the disk is not held to be full: a time for housekeeping.
    pub fn is_settled(&self) -> bool {
        self.stall == Stall::None && self.disk_full_since.is_none()
    }
}

/// The pause after `attempts` failed commits: 100 ms doubling, at most
/// [`MAX_RETRY_DELAY`].
fn retry_delay(attempts: u32) -> Duration {
    FIRST_RETRY_DELAY
        .saturating_mul(2u32.saturating_pow(attempts.saturating_sub(1)))
        .min(MAX_RETRY_DELAY)
}

#[cfg(test)]
mod tests {
    use super::*;

    const FULL: Attempt = Attempt::Failed { disk_full: true };
    const IO: Attempt = Attempt::Failed { disk_full: false };
    const OK: Attempt = Attempt::Committed { blocked: false };
    const BLOCKED: Attempt = Attempt::Committed { blocked: true };
    const REFUSED: Attempt = Attempt::Refused;

    fn retry(attempts: u32, ms: u64, report: bool) -> Step {
        Step {
            decision: Decision::Retry {
                attempts,
                after: Duration::from_millis(ms),
            },
            report,
        }
    }

    fn drop(attempts: u32, report: bool) -> Step {
        Step {
            decision: Decision::Drop { attempts },
            report,
        }
    }

    fn quiet(decision: Decision) -> Step {
        Step {
            decision,
            report: false,
        }
    }

    fn loud(decision: Decision) -> Step {
        Step {
            decision,
            report: true,
        }
    }

    /// What happens between attempts.
    #[derive(Clone, Copy, Debug)]
    enum Event {
        /// An attempt at this many seconds after the start, and the step it must give.
        At(u64, Attempt, Step),
        /// The queue freed space.
        Freed,
    }
    use Event::{At, Freed};

    /// A full disk failing the group's commits until the writer gives up on it.
    fn proved_full(at: u64) -> Vec<Event> {
        let mut events: Vec<Event> = [(1, 100), (2, 200), (3, 400), (4, 800)]
            .into_iter()
            .map(|(attempts, ms)| At(at, FULL, retry(attempts, ms, true)))
            .collect();
        events.push(At(at, FULL, drop(MAX_COMMIT_ATTEMPTS, true)));
        events
    }

    #[test]
    fn the_policy_decides_as_the_table_says() {
        let cases: Vec<(&str, bool, Vec<Event>)> = vec![
            (
                "a commit leaves nothing waiting",
                false,
                vec![At(0, OK, quiet(Decision::Done))],
            ),
            (
                "a failing disk is retried with a doubling delay, then given up",
                false,
                vec![
                    At(0, IO, retry(1, 100, true)),
                    At(0, IO, retry(2, 200, true)),
                    At(0, IO, retry(3, 400, true)),
                    At(1, IO, retry(4, 800, true)),
                    At(2, IO, drop(5, true)),
                    // Not a full disk: the next group is retried as before.
                    At(3, FULL, retry(1, 100, true)),
                ],
            ),
            (
                "a disk proved full drops each later group at once, quietly, for the hold",
                false,
                [
                    proved_full(1),
                    vec![
                        At(2, FULL, drop(1, false)),
                        At(2, OK, quiet(Decision::Done)),
                        At(30, FULL, drop(1, false)),
                        // The hold is over: retries again.
                        At(31, FULL, retry(1, 100, true)),
                    ],
                ]
                .concat(),
            ),
            (
                "freed space ends the hold",
                false,
                [
                    proved_full(0),
                    vec![Freed, At(1, FULL, retry(1, 100, true))],
                ]
                .concat(),
            ),
            (
                "block never drops; the delay stops growing at its cap",
                true,
                [
                    (1, 100),
                    (2, 200),
                    (3, 400),
                    (4, 800),
                    (5, 1600),
                    (6, 3200),
                    (7, 5000),
                    (8, 5000),
                ]
                .into_iter()
                .map(|(attempts, ms)| At(0, FULL, retry(attempts, ms, true)))
                .collect(),
            ),
            (
                "block waits for space when the queue is full",
                true,
                vec![
                    At(0, BLOCKED, quiet(Decision::Hold)),
                    // A failure after a hold counts from one.
                    At(0, IO, retry(1, 100, true)),
                    At(0, OK, quiet(Decision::Done)),
                ],
            ),
            (
                "refusals while the drain uses the reserve are reported once a spell",
                false,
                vec![
                    At(0, REFUSED, loud(Decision::Drop { attempts: 0 })),
                    At(0, REFUSED, quiet(Decision::Drop { attempts: 0 })),
                    At(0, OK, quiet(Decision::Done)),
                    At(0, REFUSED, loud(Decision::Drop { attempts: 0 })),
                ],
            ),
            (
                "under block a refusal holds the units",
                true,
                vec![
                    At(0, REFUSED, loud(Decision::Hold)),
                    At(0, REFUSED, quiet(Decision::Hold)),
                ],
            ),
        ];
        for (name, block, events) in cases {
            let start = Instant::now();
            let mut policy = CommitPolicy::new(block);
            for (i, event) in events.iter().enumerate() {
                match *event {
                    At(secs, attempt, want) => {
                        let now = start + Duration::from_secs(secs);
                        let got = policy.next(attempt, now);
                        assert_eq!(got, want, "{name}: step {i} ({attempt:?} at {secs} s)");
                        let retry_at = match want.decision {
                            Decision::Retry { after, .. } => Some(now + after),
                            _ => None,
                        };
                        assert_eq!(policy.retry_at(), retry_at, "{name}: step {i}");
                        assert_eq!(policy.is_failing(), retry_at.is_some(), "{name}: step {i}");
                        assert_eq!(
                            policy.is_held(),
                            want.decision == Decision::Hold,
                            "{name}: step {i}"
                        );
                    }
                    Freed => policy.space_freed(),
                }
            }
        }
    }

    #[test]
    fn housekeeping_waits_until_nothing_is_stalled_and_the_disk_is_not_held_full() {
        let now = Instant::now();
        let mut policy = CommitPolicy::new(false);
        assert!(policy.is_settled());
        policy.next(FULL, now);
        assert!(!policy.is_settled(), "failing");
        policy.idle();
        assert!(policy.is_settled(), "nothing pending");
        for _ in 0..MAX_COMMIT_ATTEMPTS {
            policy.next(FULL, now);
        }
        assert!(!policy.is_settled(), "the disk is held to be full");
        policy.space_freed();
        assert!(policy.is_settled());
    }
}

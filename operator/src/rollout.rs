//! Which agents a rollout replaces next: the operator's rollout policy, a pure function
//! of the agent pods, the nodes and the pipeline's `spec.rollout` (the DaemonSet is on
//! `OnDelete`: the DaemonSet controller only recreates the pods the operator deletes, on
//! the current template).
//!
//! - An agent runs the current revision when its pod carries the current template's
//!   [`crate::render::TEMPLATE_HASH_ANNOTATION`]; the others are *outdated*.
//! - Offline nodes (NotReady, unreachable) are skipped: their agents are neither replaced
//!   nor waited for, and are replaced in a later wave once the node is back.
//! - At most `maxUnavailable` agents of online nodes are down at once (not ready, being
//!   deleted, or not recreated yet). An outdated agent that is not ready is replaced at
//!   once: it is down already.
//! - `paused` holds every node on the revision it runs.
//! - With a canary, only the canary nodes are replaced first; the others follow once
//!   every canary agent has been ready, without a restart, for `soak`, and the canary
//!   nodes' upstream fails no more than the other nodes' (their fleet records).
//! - A new agent that fails (crash-looping, restarted 3 times, or not ready within the
//!   progress deadline) pauses the rollout (`Failed`): the caller records the generation
//!   and keeps it paused until the spec changes (a fixed spec, or `paused: false`).

use std::collections::BTreeSet;
use std::time::Duration;

use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

/// A new agent restarted this often has failed.
pub const MAX_RESTARTS: i32 = 3;

/// An agent pod as the rollout sees it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Agent {
    /// The pod's name.
    pub name: String,
    /// The pod's uid (the precondition of its deletion).
    pub uid: String,
    /// Its node.
    pub node: String,
    /// Its template's hash.
    pub template: Option<String>,
    /// Ready now.
    pub ready: bool,
    /// Since when (seconds since the epoch) its Ready condition has been as it is.
    pub ready_since: Option<i64>,
    /// When it was created (seconds since the epoch).
    pub created: Option<i64>,
    /// Restarts of its containers.
    pub restarts: i32,
    /// A container waits in `CrashLoopBackOff` (or cannot start its image).
    pub crash_looping: bool,
    /// It is being deleted.
    pub deleting: bool,
}

/// What a rollout is asked to do, besides the agents.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Settings {
    /// The current template's hash.
    pub template: String,
    /// Nodes that should run the agent (the DaemonSet's desired count).
    pub desired: i32,
    /// `maxUnavailable`.
    pub max_unavailable: Option<IntOrString>,
    /// `spec.rollout.paused`.
    pub paused: bool,
    /// The canary nodes (resolved), if the rollout has a canary.
    pub canary: Option<BTreeSet<String>>,
    /// `canary.soak`.
    pub soak: Duration,
    /// `progressDeadline`: how long a new agent may take to become ready.
    pub deadline: Duration,
    /// The rollout paused itself at this spec already (the caller's memory).
    pub failed_before: bool,
}

/// Where a rollout stands, and what to do now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    /// The phase.
    pub phase: Phase,
    /// Pods to delete now (the DaemonSet controller recreates them on the current
    /// template), as `(name, uid)`.
    pub delete: Vec<(String, String)>,
    /// When to look again (a soak ending, a deadline passing), if before anything else
    /// would.
    pub recheck: Option<Duration>,
}

/// The phase of a rollout.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Every online node runs the current revision.
    Complete,
    /// `paused` holds the fleet.
    Paused,
    /// New agents failed: the rollout paused itself. The nodes and why.
    Failed(Vec<(String, String)>),
    /// The canary nodes are being updated, or soak.
    Canary {
        /// The canary nodes.
        nodes: Vec<String>,
        /// Why the others wait.
        waiting: String,
    },
    /// The online nodes are being updated, `maxUnavailable` at a time.
    Rolling,
}

/// What to do next (see the module documentation). `offline` are the nodes that are
/// NotReady or unreachable; `upstream_down` the nodes whose fleet record says their
/// upstream is down; `now` in seconds since the epoch.
pub fn plan(
    agents: &[Agent],
    settings: &Settings,
    offline: &BTreeSet<String>,
    upstream_down: &BTreeSet<String>,
    now: i64,
) -> Plan {
    let online: Vec<&Agent> = agents
        .iter()
        .filter(|a| !offline.contains(&a.node))
        .collect();
    let current = |a: &Agent| a.template.as_deref() == Some(settings.template.as_str());
    let deadline = i64::try_from(settings.deadline.as_secs()).unwrap_or(i64::MAX);

    // New agents that failed stop the rollout.
    let failed: Vec<(String, String)> = online
        .iter()
        .filter(|a| current(a) && !a.deleting)
        .filter_map(|a| {
            let reason = if a.crash_looping {
                "crash-looping".to_string()
            } else if a.restarts >= MAX_RESTARTS {
                format!("restarted {} times", a.restarts)
            } else if !a.ready && a.created.is_some_and(|c| now - c > deadline) {
                "not ready within the progress deadline".to_string()
            } else {
                return None;
            };
            Some((a.node.clone(), reason))
        })
        .collect();
    let outdated: Vec<&Agent> = online
        .iter()
        .copied()
        .filter(|a| !current(a) && !a.deleting)
        .collect();
    let hold = |phase| Plan {
        phase,
        delete: vec![],
        recheck: None,
    };
    if outdated.is_empty() && online.iter().all(|a| !a.deleting) && failed.is_empty() {
        return hold(Phase::Complete);
    }
    if settings.paused {
        return hold(Phase::Paused);
    }
    if !failed.is_empty() || settings.failed_before {
        return hold(Phase::Failed(failed));
    }

    // Agents down now: not ready, being deleted, or not recreated yet.
    let present = online.iter().filter(|a| !a.deleting).count() as i32;
    let missing = (settings.desired - offline_count(agents, offline) - present).max(0);
    let down = online.iter().filter(|a| !a.ready || a.deleting).count() as i32 + missing;
    let allowed = resolve(settings.max_unavailable.as_ref(), settings.desired);
    let mut budget = allowed - down;

    // With a canary: its nodes first, the others once it soaked.
    let mut phase = Phase::Rolling;
    let mut recheck = None;
    let mut candidates: Vec<&Agent> = outdated.clone();
    if let Some(canary) = settings.canary.as_ref().filter(|c| !c.is_empty()) {
        let on_canary = |a: &&Agent| canary.contains(&a.node);
        let canary_agents: Vec<&Agent> = online.iter().copied().filter(on_canary).collect();
        let nodes: Vec<String> = canary.iter().cloned().collect();
        let pending = canary_agents
            .iter()
            .any(|a| !current(a) || a.deleting || !a.ready);
        let waiting = if pending {
            Some("the canary nodes are being updated".to_string())
        } else {
            let soak = i64::try_from(settings.soak.as_secs()).unwrap_or(i64::MAX);
            let soaked_at = canary_agents
                .iter()
                .filter_map(|a| a.ready_since)
                .max()
                .map(|since| since.saturating_add(soak));
            let restarted = canary_agents.iter().any(|a| a.restarts > 0);
            let share = |nodes: &[&Agent]| {
                let down = nodes
                    .iter()
                    .filter(|a| upstream_down.contains(&a.node))
                    .count();
                (down, nodes.len().max(1))
            };
            let others: Vec<&Agent> = online.iter().copied().filter(|a| !on_canary(a)).collect();
            let (canary_down, canary_n) = share(&canary_agents);
            let (others_down, others_n) = share(&others);
            // canary_down / canary_n > others_down / others_n, without floats.
            let failing_more = canary_down * others_n > others_down * canary_n;
            match soaked_at {
                _ if restarted => Some(
                    "a canary agent restarted (delete its pod to soak it again, or fix the spec)"
                        .to_string(),
                ),
                _ if failing_more => {
                    Some("the canary nodes' upstream fails more than the other nodes'".to_string())
                }
                Some(at) if at > now => {
                    recheck = Some(Duration::from_secs(
                        u64::try_from(at - now).unwrap_or(0) + 1,
                    ));
                    Some(format!("the canary soaks for {}s more", at - now))
                }
                _ => None,
            }
        };
        if let Some(waiting) = waiting {
            candidates.retain(on_canary);
            phase = Phase::Canary { nodes, waiting };
        }
    }

    // Outdated agents that are down anyway go first, at no cost; then by node name.
    candidates.sort_by(|a, b| (a.ready, &a.node).cmp(&(b.ready, &b.node)));
    let mut delete = vec![];
    for agent in candidates {
        if agent.ready {
            if budget <= 0 {
                break;
            }
            budget -= 1;
        }
        delete.push((agent.name.clone(), agent.uid.clone()));
    }
    // A new agent not ready yet fails at its deadline: look again then.
    let next_deadline = online
        .iter()
        .filter(|a| current(a) && !a.ready && !a.deleting)
        .filter_map(|a| a.created.map(|c| c.saturating_add(deadline) - now + 1))
        .filter(|d| *d > 0)
        .min()
        .map(|d| Duration::from_secs(u64::try_from(d).unwrap_or(0)));
    Plan {
        phase,
        delete,
        recheck: [recheck, next_deadline].into_iter().flatten().min(),
    }
}

fn offline_count(agents: &[Agent], offline: &BTreeSet<String>) -> i32 {
    let nodes: BTreeSet<&str> = agents
        .iter()
        .filter(|a| offline.contains(&a.node))
        .map(|a| a.node.as_str())
        .collect();
    nodes.len() as i32
}

/// `maxUnavailable` as a number of agents (default 1), rounding percentages up like the
/// DaemonSet controller, and at least 1.
pub fn resolve(value: Option<&IntOrString>, desired: i32) -> i32 {
    let n = match value {
        None => 1,
        Some(IntOrString::Int(n)) => *n,
        Some(IntOrString::String(s)) => match s
            .strip_suffix('%')
            .and_then(|p| p.trim().parse::<i64>().ok())
        {
            Some(percent) => ((i64::from(desired.max(0)) * percent + 99) / 100) as i32,
            None => 1,
        },
    };
    n.max(1)
}

#[cfg(test)]
mod tests {
    use super::plan as next;
    use super::*;

    const NOW: i64 = 1_000_000;
    const NEW: &str = "new";

    fn agent(node: &str, template: &str, ready: bool) -> Agent {
        Agent {
            name: format!("agent-{node}"),
            uid: format!("uid-{node}"),
            node: node.to_string(),
            template: Some(template.to_string()),
            ready,
            ready_since: Some(NOW - 3600),
            created: Some(NOW - 3600),
            ..Agent::default()
        }
    }

    fn settings(desired: i32) -> Settings {
        Settings {
            template: NEW.to_string(),
            desired,
            max_unavailable: None,
            soak: Duration::from_secs(60),
            deadline: Duration::from_secs(600),
            ..Settings::default()
        }
    }

    fn fleet(n: usize, template: &str) -> Vec<Agent> {
        (1..=n)
            .map(|i| agent(&format!("n{i}"), template, true))
            .collect()
    }

    fn deleted(plan: &Plan) -> Vec<&str> {
        plan.delete.iter().map(|(name, _)| name.as_str()).collect()
    }

    fn none() -> BTreeSet<String> {
        BTreeSet::new()
    }

    fn set(nodes: &[&str]) -> BTreeSet<String> {
        nodes.iter().map(|n| n.to_string()).collect()
    }

    #[test]
    fn a_fleet_on_the_current_template_is_complete() {
        let plan = next(&fleet(3, NEW), &settings(3), &none(), &none(), NOW);
        assert_eq!(plan.phase, Phase::Complete);
        assert!(plan.delete.is_empty());
    }

    #[test]
    fn waves_respect_max_unavailable_counting_what_is_down() {
        let agents = fleet(5, "old");
        let cases: [(Option<IntOrString>, Vec<&str>); 3] = [
            (None, vec!["agent-n1"]),
            (Some(IntOrString::Int(2)), vec!["agent-n1", "agent-n2"]),
            // 30% of 5 rounds up to 2.
            (
                Some(IntOrString::String("30%".into())),
                vec!["agent-n1", "agent-n2"],
            ),
        ];
        for (max, expected) in cases {
            let s = Settings {
                max_unavailable: max.clone(),
                ..settings(5)
            };
            let plan = next(&agents, &s, &none(), &none(), NOW);
            assert_eq!(plan.phase, Phase::Rolling, "{max:?}");
            assert_eq!(deleted(&plan), expected, "{max:?}");
        }
        // One new agent not ready yet uses the whole budget of 1.
        let mut agents = fleet(5, "old");
        agents[0] = Agent {
            created: Some(NOW - 5),
            ..agent("n1", NEW, false)
        };
        let plan = next(&agents, &settings(5), &none(), &none(), NOW);
        assert!(plan.delete.is_empty());
        assert_eq!(plan.recheck, Some(Duration::from_secs(596)));
        // A pod being deleted, or one not recreated yet, counts as down too.
        let mut agents = fleet(5, "old");
        agents[0].deleting = true;
        assert!(
            next(&agents, &settings(5), &none(), &none(), NOW)
                .delete
                .is_empty()
        );
        let agents = fleet(4, "old");
        assert!(
            next(&agents, &settings(5), &none(), &none(), NOW)
                .delete
                .is_empty()
        );
    }

    #[test]
    fn outdated_agents_that_are_down_anyway_go_first_at_no_cost() {
        let mut agents = fleet(4, "old");
        agents[2].ready = false;
        agents[3].ready = false;
        let s = Settings {
            max_unavailable: Some(IntOrString::Int(3)),
            ..settings(4)
        };
        let plan = next(&agents, &s, &none(), &none(), NOW);
        assert_eq!(deleted(&plan), vec!["agent-n3", "agent-n4", "agent-n1"]);
    }

    #[test]
    fn offline_nodes_are_skipped_and_do_not_block_the_rest() {
        let mut agents = fleet(3, "old");
        agents[0].ready = false;
        let offline = set(&["n1"]);
        let plan = next(&agents, &settings(3), &offline, &none(), NOW);
        assert_eq!(deleted(&plan), vec!["agent-n2"]);
        // Only the offline node is left outdated: the rollout is complete for now.
        let agents = vec![
            Agent {
                ready: false,
                ..agent("n1", "old", true)
            },
            agent("n2", NEW, true),
            agent("n3", NEW, true),
        ];
        let plan = next(&agents, &settings(3), &offline, &none(), NOW);
        assert_eq!(plan.phase, Phase::Complete);
        // Back online, it is replaced.
        let plan = next(&agents, &settings(3), &none(), &none(), NOW);
        assert_eq!(deleted(&plan), vec!["agent-n1"]);
    }

    #[test]
    fn paused_holds_every_node() {
        let s = Settings {
            paused: true,
            ..settings(3)
        };
        let plan = next(&fleet(3, "old"), &s, &none(), &none(), NOW);
        assert_eq!(plan.phase, Phase::Paused);
        assert!(plan.delete.is_empty());
    }

    #[test]
    fn failing_new_agents_pause_the_rollout() {
        let failing = [
            (
                Agent {
                    crash_looping: true,
                    ..agent("n1", NEW, false)
                },
                "crash-looping",
            ),
            (
                Agent {
                    restarts: 3,
                    ..agent("n1", NEW, true)
                },
                "restarted 3 times",
            ),
            (
                Agent {
                    created: Some(NOW - 601),
                    ..agent("n1", NEW, false)
                },
                "not ready within the progress deadline",
            ),
        ];
        for (bad, reason) in failing {
            let mut agents = fleet(3, "old");
            agents[0] = bad;
            let plan = next(&agents, &settings(3), &none(), &none(), NOW);
            assert_eq!(
                plan.phase,
                Phase::Failed(vec![("n1".to_string(), reason.to_string())])
            );
            assert!(plan.delete.is_empty(), "{reason}");
        }
        // Paused once at this spec: it stays paused, even if the agent recovered.
        let mut agents = fleet(3, "old");
        agents[0] = agent("n1", NEW, true);
        let s = Settings {
            failed_before: true,
            ..settings(3)
        };
        assert_eq!(
            next(&agents, &s, &none(), &none(), NOW).phase,
            Phase::Failed(vec![])
        );
        // A failed agent of an earlier template (the spec was fixed) is just outdated,
        // and down: replaced at once.
        let mut agents = fleet(3, NEW);
        agents[0] = Agent {
            crash_looping: true,
            ..agent("n1", "bad", false)
        };
        let plan = next(&agents, &settings(3), &none(), &none(), NOW);
        assert_eq!(deleted(&plan), vec!["agent-n1"]);
    }

    #[test]
    fn a_canary_goes_first_and_the_rest_follow_once_it_soaked() {
        let canary = Settings {
            canary: Some(set(&["n3"])),
            max_unavailable: Some(IntOrString::Int(2)),
            ..settings(4)
        };
        // Nothing updated yet: only the canary node.
        let plan1 = next(&fleet(4, "old"), &canary, &none(), &none(), NOW);
        assert_eq!(deleted(&plan1), vec!["agent-n3"]);
        assert!(matches!(plan1.phase, Phase::Canary { .. }));
        // The canary is ready since 10 s: it soaks 50 s more.
        let mut agents = fleet(4, "old");
        agents[2] = Agent {
            ready_since: Some(NOW - 10),
            ..agent("n3", NEW, true)
        };
        let soaking = next(&agents, &canary, &none(), &none(), NOW);
        assert!(soaking.delete.is_empty());
        assert_eq!(soaking.recheck, Some(Duration::from_secs(51)));
        let Phase::Canary { waiting, .. } = &soaking.phase else {
            panic!("{soaking:?}")
        };
        assert!(waiting.contains("soaks for 50s more"), "{waiting}");
        // Soaked: the others follow, maxUnavailable at a time.
        let done = next(&agents, &canary, &none(), &none(), NOW + 60);
        assert_eq!(done.phase, Phase::Rolling);
        assert_eq!(deleted(&done), vec!["agent-n1", "agent-n2"]);
        // A canary that restarted, or whose upstream fails while the others' does not,
        // holds the others.
        let mut restarted = agents.clone();
        restarted[2].restarts = 1;
        assert!(
            next(&restarted, &canary, &none(), &none(), NOW + 60)
                .delete
                .is_empty()
        );
        let down = set(&["n3"]);
        assert!(
            next(&agents, &canary, &none(), &down, NOW + 60)
                .delete
                .is_empty()
        );
        // Unless the other nodes' upstream is down as much.
        let all_down = set(&["n1", "n2", "n3", "n4"]);
        assert_eq!(
            deleted(&plan(&agents, &canary, &none(), &all_down, NOW + 60)),
            vec!["agent-n1", "agent-n2"]
        );
    }

    #[test]
    fn max_unavailable_resolves_like_the_daemon_set_controller() {
        let pct = |s: &str| IntOrString::String(s.to_string());
        assert_eq!(resolve(None, 10), 1);
        assert_eq!(resolve(Some(&IntOrString::Int(3)), 10), 3);
        assert_eq!(resolve(Some(&IntOrString::Int(0)), 10), 1);
        assert_eq!(resolve(Some(&pct("25%")), 10), 3);
        assert_eq!(resolve(Some(&pct("100%")), 7), 7);
        assert_eq!(resolve(Some(&pct("1%")), 0), 1);
    }
}

//! The Kubernetes permissions the operator needs, exactly: the Helm chart's ClusterRoles
//! (and the leader-election Role) are tested against [`required_permissions`], and the
//! reconcile tests check every request the operator makes against it.

/// Where a permission must be granted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Scope {
    /// In every watched namespace (a ClusterRole, or Roles when `--namespace` is set).
    Cluster,
    /// Only in the operator's own namespace (`--lease-namespace`), for leader election.
    LeaseNamespace,
    /// Cluster-scoped resources (Nodes): granted cluster-wide also when the operator
    /// watches one namespace, read-only.
    ClusterScoped,
}

/// One RBAC rule: verbs on a resource of an API group (`""` is the core group).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Permission {
    /// Where the rule must be granted.
    pub scope: Scope,
    /// API group, `""` for the core group.
    pub api_group: &'static str,
    /// Resource (plural), with `/subresource` when it is one.
    pub resource: &'static str,
    /// Verbs, sorted.
    pub verbs: Vec<&'static str>,
}

impl Permission {
    /// Whether this rule allows `verb` on `api_group`/`resource`.
    pub fn allows(&self, api_group: &str, resource: &str, verb: &str) -> bool {
        self.api_group == api_group && self.resource == resource && self.verbs.contains(&verb)
    }
}

fn rule(
    scope: Scope,
    api_group: &'static str,
    resource: &'static str,
    verbs: &[&'static str],
) -> Permission {
    let mut verbs = verbs.to_vec();
    verbs.sort_unstable();
    Permission {
        scope,
        api_group,
        resource,
        verbs,
    }
}

/// What the node fallback adds (`--fallback-unit-dir`, chart value `agent.fallback`):
/// EdgePipelines `patch` (adding and releasing the finalizer
/// `edgepipe.dev/disarm-fallback`), and Jobs `create` in the lease namespace (the
/// operator's own: one Job per node of a deleted pipeline disarms its fallback).
pub fn fallback_permissions() -> Vec<Permission> {
    use Scope::*;
    vec![
        rule(Cluster, "edgepipe.dev", "edgepipelines", &["patch"]),
        rule(LeaseNamespace, "batch", "jobs", &["create"]),
    ]
}

/// Every permission the operator uses, and nothing more:
/// - EdgePipelines: `list`/`watch` (the controller's cache; `list` also checks at start
///   that the CRD is installed); their `/status`: `patch`.
/// - `edgepipelines/finalizers`: `update`, required to create children whose controller
///   ownerReference has `blockOwnerDeletion` where the OwnerReferencesPermissionEnforcement
///   admission plugin is on; the operator itself never writes finalizers.
/// - DaemonSets: `list`/`watch` (owned ones, by label), `get` (the running DaemonSet of an
///   invalid pipeline), `create`/`patch` (server-side apply; the API server authorises an
///   apply that creates the object as `create`), `delete` (the agents of a pipeline
///   outside the tenant policy).
/// - ConfigMaps: `list`/`watch` (owned ones and model ConfigMaps, by label),
///   `create`/`patch`, `delete` (as DaemonSets).
/// - Pods: `list`/`watch` (the agent pods, by label): which node each agent is on,
///   whether it is ready, and which configuration revision it mounts (a revision is
///   deleted only when no pod uses it); `delete`: the rollout replaces outdated agents
///   itself (the DaemonSet is on `OnDelete`), only this pipeline's, each by its uid.
/// - Nodes (cluster-scoped, granted cluster-wide in every mode): `list`/`watch`, to tell
///   an agent on an offline node (NotReady, unreachable) from a failing one.
/// - Secrets: `list`/`watch`, only ever asked for as metadata (`PartialObjectMetadata`,
///   cached without annotations), to know which Secrets opted in (label
///   `edgepipe.dev/allow-pipelines=true`) and when a referenced one changes; `get` of
///   each Secret a pipeline references, only once it opted in, to hash the referenced
///   keys' values into the pod template so a rotation rolls the agents. The values live
///   only until they are hashed: never stored, cached, logged or written anywhere. The
///   operator can already create pods that mount any Secret of a watched namespace, so
///   this grants it nothing it could not reach before.
/// - Events (`events.k8s.io`): `create`, and `patch` for repeated events (a series).
/// - With the agents' fleet records (`--agent-cluster-role`): ServiceAccounts and
///   RoleBindings: `get` (who holds one of the agent's name), `create`/`patch` (each
///   pipeline's agent account and its binding); ClusterRoles: `bind`, granted only for
///   the agents' ClusterRole (`resourceNames`), which binding it requires; Leases:
///   `list`/`watch` (the agents' records, by label).
/// - Leases (`coordination.k8s.io`) in the lease namespace: `get`, `create`, `patch`.
pub fn required_permissions() -> Vec<Permission> {
    use Scope::*;
    vec![
        rule(Cluster, "edgepipe.dev", "edgepipelines", &["list", "watch"]),
        rule(Cluster, "edgepipe.dev", "edgepipelines/status", &["patch"]),
        rule(
            Cluster,
            "edgepipe.dev",
            "edgepipelines/finalizers",
            &["update"],
        ),
        rule(
            Cluster,
            "apps",
            "daemonsets",
            &["get", "list", "watch", "create", "patch", "delete"],
        ),
        rule(
            Cluster,
            "",
            "configmaps",
            &["get", "list", "watch", "create", "patch", "delete"],
        ),
        rule(Cluster, "", "pods", &["list", "watch", "delete"]),
        rule(Cluster, "", "secrets", &["get", "list", "watch"]),
        rule(ClusterScoped, "", "nodes", &["list", "watch"]),
        rule(Cluster, "events.k8s.io", "events", &["create", "patch"]),
        rule(Cluster, "", "serviceaccounts", &["get", "create", "patch"]),
        rule(
            Cluster,
            "rbac.authorization.k8s.io",
            "rolebindings",
            &["get", "create", "patch"],
        ),
        rule(
            Cluster,
            "rbac.authorization.k8s.io",
            "clusterroles",
            &["bind"],
        ),
        rule(Cluster, "coordination.k8s.io", "leases", &["list", "watch"]),
        rule(
            LeaseNamespace,
            "coordination.k8s.io",
            "leases",
            &["get", "create", "patch"],
        ),
    ]
}

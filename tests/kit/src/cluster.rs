//! A real Kubernetes control plane on loopback, for tests and benchmarks.
//!
//! [`Cluster::start`] runs etcd, kube-apiserver (client-certificate and service-account
//! token authentication, the Node and RBAC authorizers, the default admission plugins, an
//! audit log of every request made by a service account), kube-controller-manager (every
//! default controller, each with its own service-account credentials: DaemonSet, garbage
//! collector, namespace, service-account token, node lifecycle...), kube-scheduler and
//! kwok, which plays the kubelet of simulated nodes: it keeps their status and leases
//! fresh and runs the pods bound to them. The binaries are the ones
//! `tests/scripts/install-deps.d/kubernetes.sh` builds from Go modules.
//!
//! Every cluster gets fresh certificates (openssl), free ports and a directory under
//! `target/cluster/`, which keeps the components' logs after the run; a failing test
//! prints where they are ([`Cluster::guard`]). Components stop when the cluster is
//! dropped, or when the test process exits, whichever comes first (see [`Process`]).

use std::io::Write;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};

use crate::pki::Pki;
use crate::process::Process;
use crate::{free_port, poll, target_dir, tool};

/// How long the control plane may take to come up on a loaded 2-core machine.
const START_TIMEOUT: Duration = Duration::from_secs(120);
/// Annotation kwok selects the nodes it simulates by.
const KWOK_ANNOTATION: &str = "kwok.x-k8s.io/node";

/// A simulated node: its name, labels and taints.
#[derive(Clone, Debug, Default)]
pub struct Node {
    pub name: String,
    pub labels: Vec<(String, String)>,
    /// `(key, value, effect)`.
    pub taints: Vec<(String, String, String)>,
}

impl Node {
    /// A node with no labels beyond the standard ones.
    pub fn new(name: &str) -> Node {
        Node {
            name: name.to_string(),
            ..Node::default()
        }
    }

    /// Adds a label.
    pub fn label(mut self, key: &str, value: &str) -> Node {
        self.labels.push((key.to_string(), value.to_string()));
        self
    }

    /// Adds a taint.
    pub fn taint(mut self, key: &str, value: &str, effect: &str) -> Node {
        self.taints
            .push((key.to_string(), value.to_string(), effect.to_string()));
        self
    }

    /// The Node object kwok simulates.
    fn manifest(&self) -> Value {
        let mut labels = serde_json::Map::new();
        labels.insert("kubernetes.io/hostname".into(), json!(self.name));
        labels.insert("kubernetes.io/os".into(), json!("linux"));
        labels.insert("kubernetes.io/arch".into(), json!("amd64"));
        labels.insert("type".into(), json!("kwok"));
        for (k, v) in &self.labels {
            labels.insert(k.clone(), json!(v));
        }
        let taints: Vec<Value> = self
            .taints
            .iter()
            .map(|(key, value, effect)| json!({"key": key, "value": value, "effect": effect}))
            .collect();
        let resources = json!({"cpu": "4", "memory": "8Gi", "pods": "110"});
        json!({
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {
                "name": self.name,
                "labels": labels,
                "annotations": {KWOK_ANNOTATION: "fake", "node.alpha.kubernetes.io/ttl": "0"},
            },
            "spec": {"taints": taints},
            "status": {"allocatable": resources, "capacity": resources},
        })
    }
}

/// How a control plane starts beyond the defaults of [`Cluster::start`].
#[derive(Clone, Debug, Default)]
pub struct Options {
    /// An address of this host the API server also serves on (`--bind-address=0.0.0.0`,
    /// `--advertise-address`, in its certificate), so pods of a real node reach it through
    /// the `kubernetes` Service ([`crate::node::RealNode`]). `None`: loopback only.
    pub advertise: Option<String>,
}

/// A running control plane. Dropping it stops every component.
pub struct Cluster {
    dir: PathBuf,
    server: String,
    kubeconfig: PathBuf,
    /// Started components, in start order (stopped in reverse).
    components: Mutex<Vec<Process>>,
}

impl Cluster {
    /// Starts a control plane with `nodes`, each Ready before this returns. `name` names
    /// the directory under `target/cluster/` (logs, certificates, kubeconfigs).
    pub fn start(name: &str, nodes: &[Node]) -> Cluster {
        Cluster::start_with(name, nodes, &Options::default())
    }

    /// [`Cluster::start`] with `options`.
    pub fn start_with(name: &str, nodes: &[Node], options: &Options) -> Cluster {
        let started = Instant::now();
        let stamp = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis())
            .unwrap_or_default();
        let dir = target_dir()
            .join("cluster")
            .join(format!("{name}-{}-{stamp}", std::process::id()));
        std::fs::create_dir_all(dir.join("logs")).expect("cluster directory");
        let pki = cluster_pki(&dir.join("pki"), options.advertise.as_deref());

        let api_port = free_port();
        let server = format!("https://127.0.0.1:{api_port}");
        let kubeconfig = write_kubeconfig(&dir, "admin", &server, &pki);
        let cluster = Cluster {
            dir: dir.clone(),
            server: server.clone(),
            kubeconfig,
            components: Mutex::new(Vec::new()),
        };

        let etcd_port = free_port();
        let peer_port = free_port();
        let mut etcd = Command::new(tool("etcd"));
        etcd.args(["--name", "default", "--data-dir"])
            .arg(dir.join("etcd"))
            .arg(format!("--listen-client-urls=http://127.0.0.1:{etcd_port}"))
            .arg(format!(
                "--advertise-client-urls=http://127.0.0.1:{etcd_port}"
            ))
            .arg(format!("--listen-peer-urls=http://127.0.0.1:{peer_port}"))
            .arg(format!(
                "--initial-advertise-peer-urls=http://127.0.0.1:{peer_port}"
            ))
            .arg(format!(
                "--initial-cluster=default=http://127.0.0.1:{peer_port}"
            ))
            // Test data: durability across power cuts buys nothing and costs seconds.
            .arg("--unsafe-no-fsync")
            .arg("--log-level=warn");
        cluster.spawn("etcd", &etcd);
        cluster.wait_port(etcd_port, "etcd");

        let policy = dir.join("audit-policy.yaml");
        std::fs::write(&policy, AUDIT_POLICY).expect("audit policy");
        let mut apiserver = Command::new(tool("kube-apiserver"));
        apiserver
            .arg(format!("--etcd-servers=http://127.0.0.1:{etcd_port}"))
            .arg(match options.advertise {
                Some(_) => "--bind-address=0.0.0.0",
                None => "--bind-address=127.0.0.1",
            })
            .arg(format!(
                "--advertise-address={}",
                options.advertise.as_deref().unwrap_or("127.0.0.1")
            ))
            // For `kubectl logs` and `exec` on a real node's pods.
            .arg(format!(
                "--kubelet-client-certificate={}",
                pki.path("admin.crt")
            ))
            .arg(format!("--kubelet-client-key={}", pki.path("admin.key")))
            .arg(format!("--secure-port={api_port}"))
            .arg(format!("--tls-cert-file={}", pki.path("apiserver.crt")))
            .arg(format!(
                "--tls-private-key-file={}",
                pki.path("apiserver.key")
            ))
            .arg(format!("--client-ca-file={}", pki.path("ca.crt")))
            // Only so the components' delegated authentication finds a bundle; no client
            // certificate carries the allowed name.
            .arg(format!(
                "--requestheader-client-ca-file={}",
                pki.path("ca.crt")
            ))
            .arg("--requestheader-allowed-names=front-proxy-client")
            .arg("--service-account-issuer=https://kubernetes.default.svc.cluster.local")
            .arg(format!("--service-account-key-file={}", pki.path("sa.pub")))
            .arg(format!(
                "--service-account-signing-key-file={}",
                pki.path("sa.key")
            ))
            .arg("--service-cluster-ip-range=10.96.0.0/16")
            .arg("--authorization-mode=Node,RBAC")
            .arg("--allow-privileged=true")
            .arg(format!("--audit-policy-file={}", policy.display()))
            .arg(format!(
                "--audit-log-path={}",
                dir.join("logs/audit.log").display()
            ))
            .arg("--audit-log-format=json")
            .arg("--profiling=false")
            .arg("--v=1");
        cluster.spawn("kube-apiserver", &apiserver);
        poll(START_TIMEOUT, "kube-apiserver /readyz", || {
            cluster
                .kubectl(&["get", "--raw=/readyz"])
                .status
                .success()
                .then_some(())
        });

        let kcm = write_kubeconfig(&dir, "kube-controller-manager", &server, &pki);
        let mut controllers = Command::new(tool("kube-controller-manager"));
        controllers
            .arg(format!("--kubeconfig={}", kcm.display()))
            .arg(format!("--authentication-kubeconfig={}", kcm.display()))
            .arg(format!("--authorization-kubeconfig={}", kcm.display()))
            .arg("--bind-address=127.0.0.1")
            .arg(format!("--secure-port={}", free_port()))
            .arg("--leader-elect=false")
            .arg("--use-service-account-credentials=true")
            .arg(format!(
                "--service-account-private-key-file={}",
                pki.path("sa.key")
            ))
            .arg(format!("--root-ca-file={}", pki.path("ca.crt")))
            .arg(format!(
                "--cluster-signing-cert-file={}",
                pki.path("ca.crt")
            ))
            .arg(format!("--cluster-signing-key-file={}", pki.path("ca.key")))
            // A fleet of simulated nodes: room for many DaemonSets at once.
            .arg("--kube-api-qps=200")
            .arg("--kube-api-burst=400")
            .arg("--concurrent-daemonset-syncs=8")
            // A loaded 2-core machine may renew 50 simulated nodes' leases late; a short
            // grace period would flap them NotReady and mark their pods unready.
            // `set_node_ready` does not wait for it.
            .arg("--node-monitor-grace-period=2m")
            .arg("--v=1");
        cluster.spawn("kube-controller-manager", &controllers);

        let scheduler_config = write_kubeconfig(&dir, "kube-scheduler", &server, &pki);
        let mut scheduler = Command::new(tool("kube-scheduler"));
        scheduler
            .arg(format!("--kubeconfig={}", scheduler_config.display()))
            .arg(format!(
                "--authentication-kubeconfig={}",
                scheduler_config.display()
            ))
            .arg(format!(
                "--authorization-kubeconfig={}",
                scheduler_config.display()
            ))
            .arg("--bind-address=127.0.0.1")
            .arg(format!("--secure-port={}", free_port()))
            .arg("--leader-elect=false")
            // Its default 50 requests a second would bind a fleet of 5,000 agent pods in
            // no less than 100 s; the same room as the controller-manager's.
            .arg("--kube-api-qps=200")
            .arg("--kube-api-burst=400")
            .arg("--v=1");
        cluster.spawn("kube-scheduler", &scheduler);

        let ready_again = dir.join("kwok-ready-again.yaml");
        std::fs::write(&ready_again, ready_again_stage()).expect("kwok stage");
        let never_ready = dir.join("kwok-never-ready.yaml");
        std::fs::write(
            &never_ready,
            format!(
                "{}---\n{}",
                pending_pod_stage(
                    "pod-never-ready",
                    NEVER_READY_TOLERATION,
                    NEVER_READY_STATUS
                ),
                pending_pod_stage("pod-crash-loop", CRASH_LOOP_TOLERATION, CRASH_LOOP_STATUS)
            ),
        )
        .expect("kwok stages");
        let mut kwok = Command::new(tool("kwok"));
        kwok.arg(format!("--kubeconfig={}", cluster.kubeconfig.display()))
            .arg(format!("--config={}", tool("stages.yaml").display()))
            .arg(format!("--config={}", ready_again.display()))
            .arg(format!("--config={}", never_ready.display()))
            .arg("--manage-all-nodes=false")
            .arg(format!(
                "--manage-nodes-with-annotation-selector={KWOK_ANNOTATION}=fake"
            ))
            .arg("--cidr=10.244.0.1/16")
            .arg("--node-ip=127.0.0.1")
            // kwok keeps no node Lease unless told to (its Stages then heartbeat node
            // status only every 10 to 20 minutes), so the node lifecycle controller
            // marked every node Unknown once the grace period ran out after start and
            // its pods unready; kwok readied them again, and the cluster never rested.
            // A kubelet's lease: 40 s, renewed every 10 s.
            .arg("--node-lease-duration-seconds=40")
            .arg(format!("--server-address=127.0.0.1:{}", free_port()));
        cluster.spawn("kwok", &kwok);

        // The default ServiceAccount of `default` exists once the token controllers run.
        poll(START_TIMEOUT, "the controller-manager", || {
            cluster
                .kubectl(&["get", "serviceaccount", "default", "-n", "default"])
                .status
                .success()
                .then_some(())
        });
        for node in nodes {
            cluster.add_node(node);
        }
        eprintln!(
            "cluster {name}: {} nodes up in {:.1} s at {server}; logs in {}",
            nodes.len(),
            started.elapsed().as_secs_f64(),
            dir.join("logs").display()
        );
        cluster
    }

    /// The API server URL.
    pub fn server(&self) -> &str {
        &self.server
    }

    /// The admin kubeconfig (`system:masters`).
    pub fn kubeconfig(&self) -> &Path {
        &self.kubeconfig
    }

    /// The cluster's directory (certificates, kubeconfigs, `logs/`).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The CA certificate the API server's serving certificate chains to.
    pub fn ca_file(&self) -> PathBuf {
        self.dir.join("pki/ca.crt")
    }

    /// Runs `kubectl ARGS` as the admin.
    pub fn kubectl(&self, args: &[&str]) -> Output {
        self.kubectl_as(&self.kubeconfig, args, None)
    }

    /// Runs `kubectl ARGS` as the admin, with `stdin` as its standard input.
    pub fn kubectl_stdin(&self, args: &[&str], stdin: &str) -> Output {
        self.kubectl_as(&self.kubeconfig, args, Some(stdin))
    }

    /// Runs `kubectl ARGS` with another kubeconfig.
    pub fn kubectl_as(&self, kubeconfig: &Path, args: &[&str], stdin: Option<&str>) -> Output {
        let mut child = Command::new(tool("kubectl"))
            .args(args)
            .env("KUBECONFIG", kubeconfig)
            .env("KUBECACHEDIR", self.dir.join("kubectl-cache"))
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("kubectl starts");
        if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
            pipe.write_all(text.as_bytes()).expect("kubectl stdin");
        }
        child.wait_with_output().expect("kubectl runs")
    }

    /// Runs `kubectl ARGS` as the admin and returns its stdout; panics with its stderr
    /// when it fails.
    pub fn kubectl_ok(&self, args: &[&str]) -> String {
        let out = self.kubectl(args);
        assert!(
            out.status.success(),
            "kubectl {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `kubectl get ARGS -o json`, parsed.
    pub fn get_json(&self, args: &[&str]) -> Value {
        let mut all = vec!["get"];
        all.extend_from_slice(args);
        all.extend_from_slice(&["-o", "json"]);
        serde_json::from_str(&self.kubectl_ok(&all)).expect("kubectl prints JSON")
    }

    /// Applies YAML with `kubectl apply -f -` as the admin; panics when it fails.
    pub fn apply(&self, yaml: &str) -> String {
        let out = self.kubectl_stdin(&["apply", "-f", "-"], yaml);
        assert!(
            out.status.success(),
            "kubectl apply failed: {}\n{yaml}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Waits (kubectl wait, up to 180 s) for the EdgePipeline `namespace/name` to be
    /// Ready; panics with its status otherwise.
    pub fn wait_pipeline_ready(&self, namespace: &str, name: &str) {
        let out = self.kubectl(&[
            "wait",
            "--for=condition=Ready",
            &format!("epl/{name}"),
            "-n",
            namespace,
            "--timeout=180s",
        ]);
        assert!(
            out.status.success(),
            "kubectl wait --for=condition=Ready epl/{name}: {}\nstatus: {}",
            String::from_utf8_lossy(&out.stderr),
            self.get_json(&["epl", name, "-n", namespace])["status"]
        );
    }

    /// The condition `type_` of the EdgePipeline `namespace/name`: (status, reason,
    /// message), or `None` while it has no such condition.
    pub fn pipeline_condition(
        &self,
        namespace: &str,
        name: &str,
        type_: &str,
    ) -> Option<(String, String, String)> {
        condition(&self.get_json(&["epl", name, "-n", namespace]), type_)
    }

    /// The agent pods of the pipeline `namespace/name` (label
    /// `app.kubernetes.io/instance=<name>`), as JSON, those being deleted included.
    pub fn agent_pods(&self, namespace: &str, name: &str) -> Vec<Value> {
        self.agent_pods_where(namespace, name, &[])
    }

    /// The agent pods of the pipeline `namespace/name` that are not being deleted.
    pub fn live_agent_pods(&self, namespace: &str, name: &str) -> Vec<Value> {
        let mut pods = self.agent_pods(namespace, name);
        pods.retain(|p| p["metadata"]["deletionTimestamp"].is_null());
        pods
    }

    /// Like [`Cluster::agent_pods`], with more `kubectl get` arguments (e.g. a
    /// `--field-selector`).
    pub fn agent_pods_where(&self, namespace: &str, name: &str, more: &[&str]) -> Vec<Value> {
        let selector = format!("app.kubernetes.io/instance={name}");
        let mut args = vec!["pods", "-n", namespace, "-l", &selector];
        args.extend_from_slice(more);
        let pods = self.get_json(&args);
        pods["items"].as_array().cloned().unwrap_or_default()
    }

    /// The nodes running a live (not deleted) agent pod of the pipeline `namespace/name`,
    /// sorted.
    pub fn agent_nodes(&self, namespace: &str, name: &str) -> Vec<String> {
        let mut nodes: Vec<String> = self
            .live_agent_pods(namespace, name)
            .iter()
            .filter_map(|p| p["spec"]["nodeName"].as_str().map(str::to_string))
            .collect();
        nodes.sort();
        nodes
    }

    /// The configuration revisions (ConfigMaps labelled
    /// `app.kubernetes.io/component=agent-config`) of the pipeline `namespace/name`, sorted
    /// by name.
    pub fn agent_config_maps(&self, namespace: &str, name: &str) -> Vec<Value> {
        let list = self.get_json(&[
            "configmaps",
            "-n",
            namespace,
            "-l",
            &format!("app.kubernetes.io/instance={name},app.kubernetes.io/component=agent-config"),
        ]);
        let mut items: Vec<Value> = list["items"].as_array().cloned().unwrap_or_default();
        items.sort_by_key(|cm| {
            cm["metadata"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_string()
        });
        items
    }

    /// The name of the configuration revision the agent DaemonSet of the pipeline
    /// `namespace/name` mounts (its pod template's `config` volume).
    pub fn agent_revision(&self, namespace: &str, name: &str) -> String {
        let ds = self.get_json(&["daemonset", &format!("{name}-agent"), "-n", namespace]);
        ds["spec"]["template"]["spec"]["volumes"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|v| v["name"] == "config")
            .and_then(|v| v["configMap"]["name"].as_str())
            .unwrap_or_else(|| {
                panic!("the DaemonSet {namespace}/{name}-agent mounts no configuration: {ds}")
            })
            .to_string()
    }

    /// The configuration revision (ConfigMap) the agent DaemonSet of the pipeline
    /// `namespace/name` mounts.
    pub fn agent_config_map(&self, namespace: &str, name: &str) -> Value {
        let revision = self.agent_revision(namespace, name);
        self.get_json(&["configmap", &revision, "-n", namespace])
    }

    /// Creates a namespace (if missing).
    pub fn namespace(&self, name: &str) {
        self.apply(&format!(
            "apiVersion: v1\nkind: Namespace\nmetadata: {{name: {name}}}\n"
        ));
    }

    /// Adds a simulated node and waits until it is Ready.
    pub fn add_node(&self, node: &Node) {
        self.apply(&node.manifest().to_string());
        self.wait_node_ready(&node.name, true);
    }

    /// Takes a node offline (`ready = false`: kwok stops heartbeating for it and its Ready
    /// condition turns Unknown, as for a node without power) or brings it back.
    pub fn set_node_ready(&self, name: &str, ready: bool) {
        if ready {
            self.kubectl_ok(&[
                "annotate",
                "node",
                name,
                &format!("{KWOK_ANNOTATION}=fake"),
                "--overwrite",
            ]);
        } else {
            self.kubectl_ok(&["annotate", "node", name, &format!("{KWOK_ANNOTATION}-")]);
            let patch = json!({"status": {"conditions": [{
                "type": "Ready", "status": "Unknown", "reason": "NodeStatusUnknown",
                "message": "Kubelet stopped posting node status.",
                "lastHeartbeatTime": now_rfc3339(), "lastTransitionTime": now_rfc3339(),
            }]}});
            self.kubectl_ok(&[
                "patch",
                "node",
                name,
                "--subresource=status",
                "--type=strategic",
                "-p",
                &patch.to_string(),
            ]);
        }
        self.wait_node_ready(name, ready);
    }

    fn wait_node_ready(&self, name: &str, ready: bool) {
        poll(START_TIMEOUT, &format!("node {name} Ready={ready}"), || {
            let node = self.get_json(&["node", name]);
            let status = node["status"]["conditions"]
                .as_array()?
                .iter()
                .find(|c| c["type"] == "Ready")?["status"]
                .as_str()?
                .to_string();
            ((status == "True") == ready).then_some(())
        });
    }

    /// A kubeconfig that authenticates as the ServiceAccount `namespace/name` with a
    /// token from the TokenRequest API (valid for `hours`), as a pod of that
    /// ServiceAccount would.
    pub fn service_account_kubeconfig(&self, namespace: &str, name: &str, hours: u32) -> PathBuf {
        let token = self.service_account_token(namespace, name, &[&format!("--duration={hours}h")]);
        let path = self.dir.join(format!("sa-{namespace}-{name}.kubeconfig"));
        self.write_token_kubeconfig(&path, &token);
        path
    }

    /// A token of ServiceAccount `namespace/name` from the TokenRequest API
    /// (`kubectl create token` with `options`); panics when there is none.
    fn service_account_token(&self, namespace: &str, name: &str, options: &[&str]) -> String {
        let mut args = vec!["create", "token", name, "-n", namespace];
        args.extend_from_slice(options);
        let token = self.kubectl_ok(&args).trim().to_string();
        assert!(
            !token.is_empty(),
            "TokenRequest for {namespace}/{name} ({}) gave no token",
            options.join(" ")
        );
        token
    }

    /// Writes a kubeconfig for this cluster that authenticates with `token`.
    fn write_token_kubeconfig(&self, path: &Path, token: &str) {
        std::fs::write(
            path,
            kubeconfig_text(&self.server, &self.ca_file(), &format!("token: {token}")),
        )
        .expect("write kubeconfig");
    }

    /// A token of ServiceAccount `namespace/name` bound to the pod `pod` (and so to its
    /// node: the API server puts the node's name in the token's user info), as the
    /// kubelet projects one into the pod: `(token file, kubeconfig using it)`.
    pub fn pod_token(&self, namespace: &str, name: &str, pod: &str) -> (PathBuf, PathBuf) {
        let bound_to = format!("--bound-object-name={pod}");
        let token = self.service_account_token(
            namespace,
            name,
            &["--bound-object-kind=Pod", &bound_to, "--duration=1h"],
        );
        let file = self.dir.join(format!("token-{namespace}-{pod}"));
        std::fs::write(&file, &token).expect("write token");
        let kubeconfig = self.dir.join(format!("token-{namespace}-{pod}.kubeconfig"));
        self.write_token_kubeconfig(&kubeconfig, &token);
        (file, kubeconfig)
    }

    /// The Warning Events of the object `name` in `namespace`, as `kubectl get events`
    /// lists them (JSON).
    pub fn warning_events(&self, namespace: &str, name: &str) -> Value {
        self.get_json(&[
            "events",
            "-n",
            namespace,
            "--field-selector",
            &format!("involvedObject.name={name},type=Warning"),
        ])
    }

    /// The audit log so far: one JSON event per request made by a ServiceAccount (the
    /// operator, the controllers), at the ResponseComplete stage.
    pub fn audit_events(&self) -> Vec<Value> {
        std::fs::read_to_string(self.dir.join("logs/audit.log"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// A path for a log of the test's own (an operator, an agent) beside the components'.
    pub fn log_path(&self, name: &str) -> PathBuf {
        self.dir.join("logs").join(format!("{name}.log"))
    }

    /// A guard that, when dropped during a panic, prints where the logs are and the tail
    /// of each component's log. Hold one in every test that uses the cluster.
    pub fn guard(&self) -> Guard<'_> {
        Guard { cluster: self }
    }

    fn spawn(&self, name: &str, command: &Command) {
        let process = Process::spawn(name, command, &self.log_path(name));
        self.components
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(process);
    }

    fn wait_port(&self, port: u16, what: &str) {
        poll(START_TIMEOUT, what, || {
            TcpStream::connect(("127.0.0.1", port)).ok().map(|_| ())
        });
    }

    /// Freezes (`STOP`) or thaws (`CONT`) the API server: to the nodes, the control plane
    /// is unreachable while it is frozen (connections hang, as over a cut link).
    pub fn signal_api_server(&self, signal: &str) {
        let components = self.components.lock().unwrap_or_else(|e| e.into_inner());
        for process in components.iter().filter(|p| p.name() == "kube-apiserver") {
            process.signal(signal);
        }
    }

    /// Prints where the logs are, with the last lines of each component's log.
    pub fn print_logs(&self) {
        eprintln!("cluster logs: {}", self.dir.join("logs").display());
        let components = self.components.lock().unwrap_or_else(|e| e.into_inner());
        for process in components.iter() {
            eprintln!(
                "--- {} ({}), last lines:\n{}",
                process.name(),
                process.log().display(),
                process.log_tail(15)
            );
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.print_logs();
        }
        let mut components = self.components.lock().unwrap_or_else(|e| e.into_inner());
        while let Some(mut process) = components.pop() {
            process.stop();
        }
    }
}

/// See [`Cluster::guard`].
pub struct Guard<'a> {
    cluster: &'a Cluster,
}

impl Drop for Guard<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.cluster.print_logs();
        }
    }
}

/// What a kubelet does and kwok's own Stages do not: when a node comes back after the
/// node lifecycle controller marked its running pods unready, they report ready again.
fn ready_again_stage() -> String {
    pod_stage(
        "pod-ready-again",
        "",
        "Running",
        (
            r#".status.conditions.[] | select( .type == "Ready" ) | .status"#,
            "False",
        ),
        r#"      conditions:
      - lastTransitionTime: {{ Now | Quote }}
        status: "True"
        type: Ready
"#,
    )
}

/// A pod that tolerates this taint key (any operator, value or effect) never becomes
/// ready on a simulated node: it stays Pending, as an agent whose container never passes
/// its readiness probe. Tests use it to make a rollout that cannot progress.
pub const NEVER_READY_TOLERATION: &str = "edgepipe.dev/never-ready";

/// A kwok Stage that holds the Pending pods tolerating `toleration` (any operator, value
/// or effect) in the status `status` (YAML at the indentation of `statusTemplate`'s
/// children, six spaces). Its positive weight wins over kwok's own `pod-ready` (weight 0);
/// the status it writes is constant, so applying it again changes nothing. The phase stays
/// Pending so that kwok's own stages never pick the pod up.
fn pending_pod_stage(name: &str, toleration: &str, status: &str) -> String {
    pod_stage(
        name,
        "  weight: 100\n",
        "Pending",
        (
            &format!(r#".spec.tolerations.[] | select( .key == "{toleration}" ) | .key"#),
            toleration,
        ),
        &format!("      phase: Pending\n{status}"),
    )
}

/// A kwok Stage `name` for the live pods in `phase` whose `key` (a kwok selector
/// expression) is `value`, writing the status `status` (YAML at six spaces); `weight` is
/// its `weight:` line, or empty.
fn pod_stage(
    name: &str,
    weight: &str,
    phase: &str,
    (key, value): (&str, &str),
    status: &str,
) -> String {
    format!(
        r#"apiVersion: kwok.x-k8s.io/v1alpha1
kind: Stage
metadata:
  name: {name}
spec:
  resourceRef:
    apiGroup: v1
    kind: Pod
{weight}  selector:
    matchExpressions:
    - key: '.metadata.deletionTimestamp'
      operator: 'DoesNotExist'
    - key: '.status.phase'
      operator: 'In'
      values: ['{phase}']
    - key: '{key}'
      operator: 'In'
      values: ['{value}']
  next:
    statusTemplate: |
{status}"#
    )
}

/// The status of a pod of [`NEVER_READY_TOLERATION`]: not ready, and nothing more.
const NEVER_READY_STATUS: &str = r#"      conditions:
      - lastTransitionTime: {{ .metadata.creationTimestamp | Quote }}
        status: "False"
        type: Ready
        reason: NeverReady
"#;

/// A pod that tolerates this taint key (any operator, value or effect) crash-loops on a
/// simulated node: its agent container waits in `CrashLoopBackOff` after 4 restarts, as
/// an agent that exits at start (a configuration it refuses, a model it cannot load).
pub const CRASH_LOOP_TOLERATION: &str = "edgepipe.dev/crash-loop";

/// The status of a pod of [`CRASH_LOOP_TOLERATION`]: what the kubelet reports for a
/// crash loop.
const CRASH_LOOP_STATUS: &str = r#"      conditions:
      - lastTransitionTime: {{ .metadata.creationTimestamp | Quote }}
        status: "False"
        type: Ready
        reason: ContainersNotReady
      containerStatuses:
      - name: edge-agent
        image: edge-agent
        imageID: ""
        ready: false
        started: false
        restartCount: 4
        state:
          waiting:
            reason: CrashLoopBackOff
            message: back-off 1m20s restarting failed container
"#;

/// Audit every request of a ServiceAccount (the operator under test runs as one) with
/// its metadata; nothing else, so the log stays small.
const AUDIT_POLICY: &str = "apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: [RequestReceived]
rules:
  - level: Metadata
    userGroups: [\"system:serviceaccounts\"]
  - level: None
";

/// The condition `type_` of an object as JSON: (status, reason, message), or `None` while
/// it has no such condition.
pub fn condition(object: &Value, type_: &str) -> Option<(String, String, String)> {
    let c = object["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == type_)?;
    Some((
        c["status"].as_str()?.to_string(),
        c["reason"].as_str().unwrap_or_default().to_string(),
        c["message"].as_str().unwrap_or_default().to_string(),
    ))
}

/// The certificates and keys of one cluster.
fn cluster_pki(dir: &Path, advertise: Option<&str>) -> Pki {
    let pki = Pki::new(dir);
    let extra = advertise.map(|ip| format!(",IP:{ip}")).unwrap_or_default();
    pki.cert(
        "apiserver",
        "/CN=kube-apiserver",
        &[
            &format!(
                "subjectAltName=IP:127.0.0.1,IP:10.96.0.1{extra},DNS:localhost,DNS:kubernetes,\
                 DNS:kubernetes.default,DNS:kubernetes.default.svc,\
                 DNS:kubernetes.default.svc.cluster.local"
            ),
            "extendedKeyUsage=serverAuth",
        ],
    );
    let client = ["extendedKeyUsage=clientAuth"];
    pki.cert("admin", "/O=system:masters/CN=edgepipe-test-admin", &client);
    pki.cert(
        "kube-controller-manager",
        "/CN=system:kube-controller-manager",
        &client,
    );
    pki.cert("kube-scheduler", "/CN=system:kube-scheduler", &client);
    pki.openssl(&["genrsa", "-out", "sa.key", "2048"]);
    pki.openssl(&["rsa", "-in", "sa.key", "-pubout", "-out", "sa.pub"]);
    pki
}

/// A kubeconfig `<dir>/<name>.kubeconfig` authenticating with the client certificate
/// `pki/<name>.crt`.
fn write_kubeconfig(dir: &Path, name: &str, server: &str, pki: &Pki) -> PathBuf {
    let user = format!(
        "client-certificate: {}\n      client-key: {}",
        pki.path(&format!("{name}.crt")),
        pki.path(&format!("{name}.key"))
    );
    let path = dir.join(format!("{name}.kubeconfig"));
    std::fs::write(
        &path,
        kubeconfig_text(server, Path::new(&pki.path("ca.crt")), &user),
    )
    .expect("write kubeconfig");
    path
}

/// A kubeconfig for `server`, trusting `ca`, with the `user` entry's YAML body.
pub(crate) fn kubeconfig_text(server: &str, ca: &Path, user: &str) -> String {
    format!(
        "apiVersion: v1
kind: Config
clusters:
  - name: test
    cluster:
      server: {server}
      certificate-authority: {ca}
users:
  - name: test
    user:
      {user}
contexts:
  - name: test
    context: {{cluster: test, user: test}}
current-context: test
",
        ca = ca.display()
    )
}

/// Now, as RFC 3339 in UTC (what the API's `Time` fields take).
fn now_rfc3339() -> String {
    let out = Command::new("date")
        .args(["-u", "+%Y-%m-%dT%H:%M:%SZ"])
        .output()
        .expect("date runs");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

//! A real Kubernetes node beside kwok's simulated ones: Debian's containerd (1.6, its CRI
//! plugin on a socket of its own, not Docker's), Debian's CNI bridge plugins, and kubelet
//! and kube-proxy built from the control plane's own release
//! (`tests/scripts/install-deps.d/kubernetes.sh`, module `tests/k8s/node`). Pods on it
//! really run: images are imported from the Docker engine into containerd (no registry),
//! probes probe, hostPath volumes are mounted, and the pods reach the API server through
//! the `kubernetes` Service (kube-proxy's iptables rules).
//!
//! Kubernetes 1.35 refuses cgroup v1 unless told otherwise, and these machines boot with
//! cgroup v1 (hybrid: `/sys/fs/cgroup` is a tmpfs); the kubelet runs with
//! `failCgroupV1: false`, the last releases' documented way, rather than an older release
//! than the control plane.
//!
//! One real node per machine at a time (a file lock, held for the node's life): the
//! kubelet owns the host's `kubepods` cgroups and kube-proxy the host's iptables. Needs
//! root; [`RealNode::join`] says what is missing otherwise. Dropping the node stops its
//! pods' containers, kube-proxy (its rules removed), the kubelet and containerd.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use crate::cluster::{Cluster, kubeconfig_text};
use crate::pki::Pki;
use crate::process::Process;
use crate::{free_port, poll, tool};

/// How long the node may take to register and turn Ready.
const JOIN_TIMEOUT: Duration = Duration::from_secs(180);
/// The pod network of the real node (kwok's simulated pods use 10.244.0.0/16).
const POD_CIDR: &str = "10.89.0.0/16";
/// The CNI bridge of the real node.
const BRIDGE: &str = "edgepipe0";
/// The pod sandbox image (`tests/docker/pause`, built by `install-deps.d/images.sh`).
pub const PAUSE_IMAGE: &str = "edgepipe-local/pause:3.10";
/// Debian's docker client, the engine's own version.
const DOCKER: &str = "/usr/bin/docker";
/// Debian's containerd, runc and CNI plugins (installed with docker.io and
/// containernetworking-plugins by `install-deps.d/images.sh`).
const CONTAINERD: &str = "/usr/bin/containerd";
const CTR: &str = "/usr/bin/ctr";
const CNI_BIN: &str = "/usr/lib/cni";

/// A real node joined to a [`Cluster`]. See the module documentation.
pub struct RealNode {
    name: String,
    ip: String,
    dir: PathBuf,
    /// containerd's state and socket: under `/run`, as sockets have short paths.
    run: PathBuf,
    kubeconfig: PathBuf,
    /// containerd, kubelet, kube-proxy, in start order.
    components: Vec<Process>,
    /// The kubelet's `--node-labels`.
    labels: String,
    _lock: File,
}

/// This host's address on its default route (what a node registers as its InternalIP).
pub fn host_ip() -> String {
    let out = Command::new("ip")
        .args(["-4", "route", "get", "192.0.2.255"])
        .output()
        .expect("ip runs");
    let text = String::from_utf8_lossy(&out.stdout);
    let words: Vec<&str> = text.split_whitespace().collect();
    if let Some(i) = words.iter().position(|w| *w == "src")
        && let Some(ip) = words.get(i + 1)
    {
        return ip.to_string();
    }
    let out = Command::new("ip")
        .args(["-4", "-o", "addr", "show", "scope", "global"])
        .output()
        .expect("ip runs");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().nth(3))
        .filter_map(|cidr| cidr.split('/').next())
        .find(|ip| !ip.starts_with("172.17."))
        .map(str::to_string)
        .expect("this host has a global IPv4 address")
}

impl RealNode {
    /// Starts containerd, imports `images` (tags in the Docker engine) and the pause image,
    /// and joins a kubelet and kube-proxy named `name` with `labels` to `cluster`, which
    /// must have been started with [`crate::cluster::Options::advertise`] set to
    /// [`host_ip`]. Returns once the node is Ready.
    pub fn join(
        cluster: &Cluster,
        name: &str,
        labels: &[(&str, &str)],
        images: &[&str],
    ) -> RealNode {
        preflight();
        let lock = File::create("/run/edgepipe-test-real-node.lock").expect("node lock file");
        lock.lock().expect("lock the real node");
        // What a node of an earlier, killed test process left (one real node at a time).
        clean_host(&[cluster.dir().parent().unwrap_or(cluster.dir())]);
        let ip = host_ip();
        let dir = cluster.dir().join(format!("node-{name}"));
        let run = PathBuf::from(format!("/run/edgepipe-node-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("cni")).expect("node directory");
        std::fs::create_dir_all(&run).expect("node run directory");
        let pki = Pki::open(&cluster.dir().join("pki"));
        pki.cert(
            &format!("node-{name}"),
            &format!("/O=system:nodes/CN=system:node:{name}"),
            &["extendedKeyUsage=clientAuth"],
        );
        pki.cert(
            "kube-proxy",
            "/CN=system:kube-proxy",
            &["extendedKeyUsage=clientAuth"],
        );
        let kubeconfig = dir.join("kubelet.kubeconfig");
        write_kubeconfig(&kubeconfig, cluster, &pki, &format!("node-{name}"));
        let proxy_kubeconfig = dir.join("kube-proxy.kubeconfig");
        write_kubeconfig(&proxy_kubeconfig, cluster, &pki, "kube-proxy");

        let mut node = RealNode {
            name: name.to_string(),
            ip,
            dir,
            run,
            kubeconfig,
            components: Vec::new(),
            labels: labels
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(","),
            _lock: lock,
        };
        node.write_configs(&pki, &proxy_kubeconfig);
        node.start_containerd();
        for image in std::iter::once(PAUSE_IMAGE).chain(images.iter().copied()) {
            node.import_image(image);
        }
        node.start_kubelet();
        node.start_kube_proxy();
        node.wait_ready(cluster);
        eprintln!(
            "real node {name} ({}) Ready; logs in {}",
            node.ip,
            node.dir.display()
        );
        node
    }

    /// The node's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The node's InternalIP (this host's address): where hostNetwork pods listen.
    pub fn ip(&self) -> &str {
        &self.ip
    }

    /// Runs `ctr -n k8s.io ARGS` against the node's containerd.
    pub fn ctr(&self, args: &[&str]) -> Output {
        Command::new(CTR)
            .arg("--address")
            .arg(self.socket())
            .args(["-n", "k8s.io"])
            .args(args)
            .output()
            .expect("ctr runs")
    }

    /// Imports `image` from the Docker engine into the node's containerd.
    pub fn import_image(&self, image: &str) {
        let mut save = Command::new(DOCKER)
            .args(["save", image])
            .stdout(Stdio::piped())
            .spawn()
            .expect("docker save starts");
        let import = Command::new(CTR)
            .arg("--address")
            .arg(self.socket())
            .args(["-n", "k8s.io", "images", "import", "-"])
            .stdin(save.stdout.take().expect("docker save stdout"))
            .output()
            .expect("ctr images import runs");
        let saved = save.wait().expect("docker save runs");
        assert!(
            saved.success() && import.status.success(),
            "importing {image} into the node's containerd failed: {}",
            String::from_utf8_lossy(&import.stderr)
        );
    }

    /// What a power cut does to the node as far as one machine allows: the kubelet, every
    /// container of its pods (and their shims) and containerd are killed. kube-proxy
    /// stays (its rules would come back with it at boot).
    pub fn power_off(&mut self) {
        self.stop("kubelet");
        self.kill_containers();
        let _ = Command::new("pkill")
            .args(["-KILL", "-f"])
            .arg(format!(
                "containerd-shim.*-address {}",
                self.socket().display()
            ))
            .output();
        self.stop("containerd");
    }

    /// Starts containerd and the kubelet again, as a boot does. Pods come back only
    /// when the kubelet reaches the API server.
    pub fn boot(&mut self) {
        self.start_containerd();
        self.start_kubelet();
    }

    fn stop(&mut self, name: &str) {
        if let Some(i) = self.components.iter().position(|p| p.name() == name) {
            let mut process = self.components.remove(i);
            process.signal("KILL");
            process.stop();
        }
    }

    /// Prints where the node's logs are, with the last lines of each component's log and
    /// of every container's log.
    pub fn print_logs(&self) {
        for process in &self.components {
            eprintln!(
                "--- {} ({}), last lines:\n{}",
                process.name(),
                process.log().display(),
                process.log_tail(20)
            );
        }
        let out = Command::new("sh")
            .arg("-c")
            .arg("for f in */*/*.log; do echo \"--- $f, last lines:\"; tail -n 20 \"$f\"; done")
            .current_dir(self.dir.join("pod-logs"))
            .output();
        if let Ok(out) = out {
            eprintln!("{}", String::from_utf8_lossy(&out.stdout));
        }
    }

    fn socket(&self) -> PathBuf {
        self.run.join("containerd.sock")
    }

    fn write_configs(&self, pki: &Pki, proxy_kubeconfig: &Path) {
        let containerd = format!(
            r#"version = 2
root = "{root}"
state = "{state}"
[grpc]
  address = "{socket}"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "docker.io/{PAUSE_IMAGE}"
  # This machine's root lacks CAP_SYS_RESOURCE: no oom_score_adj below containerd's own.
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
        Root = "{runc_root}"{binary}
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{CNI_BIN}"
    conf_dir = "{cni}"
"#,
            root = self.dir.join("containerd").display(),
            state = self.run.join("state").display(),
            socket = self.socket().display(),
            cni = self.dir.join("cni").display(),
            runc_root = self.run.join("runc").display(),
            // A runc wrapper to debug with (`--debug`, its own log), when set.
            binary = std::env::var("EDGEPIPE_NODE_RUNC")
                .map(|path| format!("\n        BinaryName = \"{path}\""))
                .unwrap_or_default(),
        );
        std::fs::write(self.dir.join("containerd.toml"), containerd).expect("containerd config");
        let cni = format!(
            r#"{{
  "cniVersion": "1.0.0",
  "name": "edgepipe-node",
  "plugins": [
    {{
      "type": "bridge",
      "bridge": "{BRIDGE}",
      "isGateway": true,
      "ipMasq": true,
      "hairpinMode": true,
      "ipam": {{
        "type": "host-local",
        "ranges": [[{{"subnet": "{POD_CIDR}"}}]],
        "routes": [{{"dst": "0.0.0.0/0"}}],
        "dataDir": "{ipam}"
      }}
    }},
    {{"type": "portmap", "capabilities": {{"portMappings": true}}}}
  ]
}}
"#,
            ipam = self.run.join("ipam").display()
        );
        std::fs::write(self.dir.join("cni/10-edgepipe.conflist"), cni).expect("CNI config");
        // Eviction thresholds low enough that a test machine's disk never taints the node,
        // and no image garbage collection: an imported image cannot be pulled again.
        let kubelet = format!(
            r#"apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
failCgroupV1: false
cgroupDriver: cgroupfs
containerRuntimeEndpoint: unix://{socket}
authentication:
  anonymous: {{enabled: false}}
  webhook: {{enabled: true}}
  x509: {{clientCAFile: {ca}}}
authorization: {{mode: Webhook}}
port: {port}
readOnlyPort: 0
healthzPort: 0
failSwapOn: false
serializeImagePulls: false
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
evictionHard:
  memory.available: 50Mi
  nodefs.available: 1%
  nodefs.inodesFree: 1%
  imagefs.available: 1%
nodeStatusUpdateFrequency: 10s
syncFrequency: 10s
resolvConf: /etc/resolv.conf
podLogsDir: {logs}
"#,
            logs = self.dir.join("pod-logs").display(),
            socket = self.socket().display(),
            ca = pki.path("ca.crt"),
            port = free_port(),
        );
        std::fs::write(self.dir.join("kubelet.yaml"), kubelet).expect("kubelet config");
        let proxy = format!(
            r#"apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
mode: iptables
clusterCIDR: {POD_CIDR}
hostnameOverride: {name}
clientConnection:
  kubeconfig: {kubeconfig}
bindAddress: 127.0.0.1
healthzBindAddress: 127.0.0.1:{healthz}
metricsBindAddress: 127.0.0.1:{metrics}
conntrack:
  maxPerCore: 0
"#,
            name = self.name,
            kubeconfig = proxy_kubeconfig.display(),
            healthz = free_port(),
            metrics = free_port(),
        );
        std::fs::write(self.dir.join("kube-proxy.yaml"), proxy).expect("kube-proxy config");
    }

    fn spawn(&mut self, name: &str, command: &Command) {
        let log = self.dir.join(format!("{name}.log"));
        self.components.push(Process::spawn(name, command, &log));
    }

    /// Starts containerd and waits for its socket.
    fn start_containerd(&mut self) {
        let mut containerd = Command::new(CONTAINERD);
        containerd
            .arg("--config")
            .arg(self.dir.join("containerd.toml"));
        self.spawn("containerd", &containerd);
        poll(JOIN_TIMEOUT, "containerd's socket", || {
            self.ctr(&["version"]).status.success().then_some(())
        });
    }

    fn start_kubelet(&mut self) {
        let mut kubelet = Command::new(tool("kubelet"));
        kubelet
            .arg(format!(
                "--config={}",
                self.dir.join("kubelet.yaml").display()
            ))
            .arg(format!("--kubeconfig={}", self.kubeconfig.display()))
            .arg(format!("--root-dir={}", self.dir.join("kubelet").display()))
            .arg(format!(
                "--cert-dir={}",
                self.dir.join("kubelet-pki").display()
            ))
            .arg(format!("--hostname-override={}", self.name))
            .arg(format!("--node-ip={}", self.ip))
            .arg(format!("--node-labels={}", self.labels))
            .arg("--v=1");
        self.spawn("kubelet", &kubelet);
    }

    fn start_kube_proxy(&mut self) {
        let mut proxy = Command::new(tool("kube-proxy"));
        proxy
            .arg(format!(
                "--config={}",
                self.dir.join("kube-proxy.yaml").display()
            ))
            .arg("--v=1");
        self.spawn("kube-proxy", &proxy);
    }

    fn wait_ready(&self, cluster: &Cluster) {
        poll(JOIN_TIMEOUT, "the real node to register", || {
            cluster
                .kubectl(&["get", "node", &self.name])
                .status
                .success()
                .then_some(())
        });
        let out = cluster.kubectl(&[
            "wait",
            "--for=condition=Ready",
            &format!("node/{}", self.name),
            &format!("--timeout={}s", JOIN_TIMEOUT.as_secs()),
        ]);
        if !out.status.success() {
            self.print_logs();
            panic!(
                "node {} not Ready: {}",
                self.name,
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }

    /// Kills every container of the node's pods (what a power cut does to them).
    fn kill_containers(&self) {
        let tasks = self.ctr(&["tasks", "ls", "-q"]);
        for id in String::from_utf8_lossy(&tasks.stdout).lines() {
            let _ = self.ctr(&["tasks", "kill", "-s", "SIGKILL", "--all", id]);
        }
        poll(
            Duration::from_secs(30),
            "the node's containers to stop",
            || {
                let listed = self.ctr(&["tasks", "ls"]);
                let text = String::from_utf8_lossy(&listed.stdout);
                text.lines()
                    .skip(1)
                    .all(|l| l.contains("STOPPED"))
                    .then_some(())
            },
        );
    }
}

impl Drop for RealNode {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.print_logs();
        }
        // kubelet first, so it restarts nothing; then the pods' containers; then the rest.
        if let Some(kubelet) = self.components.iter_mut().find(|p| p.name() == "kubelet") {
            kubelet.stop();
        }
        self.kill_containers();
        while let Some(mut process) = self.components.pop() {
            process.stop();
        }
        clean_host(&[&self.dir, &self.run]);
        let _ = std::fs::remove_dir_all(&self.run);
        // The unpacked images and the pods' volumes (hundreds of MB); the logs stay.
        for dir in ["containerd", "kubelet"] {
            let _ = std::fs::remove_dir_all(self.dir.join(dir));
        }
    }
}

/// Removes what a real node leaves on the host: kube-proxy's rules, the CNI bridge, the
/// sandboxes' network namespaces, and the mounts under `dirs`. Also run before a node
/// starts, in case an earlier test process was killed before it could clean up.
fn clean_host(dirs: &[&Path]) {
    let _ = Command::new(tool("kube-proxy")).arg("--cleanup").output();
    let _ = Command::new("ip").args(["link", "del", BRIDGE]).output();
    let mut script = String::from(
        "for ns in /run/netns/cni-*; do [ -e \"$ns\" ] && ip netns delete \"$(basename \"$ns\")\"; done; ",
    );
    for dir in dirs {
        script.push_str(&format!(
            "grep -o ' {}[^ ]*' /proc/self/mounts | sort -r | xargs -r -n1 umount -l; ",
            dir.display()
        ));
    }
    let _ = Command::new("sh").arg("-c").arg(script).output();
}

/// Panics with what is missing when this machine cannot run a real node.
fn preflight() {
    let mut missing = Vec::new();
    // The effective uid of this process.
    let uid = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2).map(str::to_string))
        })
        .unwrap_or_default();
    if uid != "0" {
        missing.push("root (the kubelet, containerd and kube-proxy run as root)".to_string());
    }
    for path in [
        CONTAINERD.to_string(),
        CTR.to_string(),
        DOCKER.to_string(),
        format!("{CNI_BIN}/bridge"),
        format!("{CNI_BIN}/host-local"),
        format!("{CNI_BIN}/portmap"),
    ] {
        if !Path::new(&path).exists() {
            missing.push(path);
        }
    }
    if !["/usr/sbin/runc", "/usr/bin/runc"]
        .iter()
        .any(|p| Path::new(p).exists())
    {
        missing.push("runc".to_string());
    }
    assert!(
        missing.is_empty(),
        "the real node needs {} (tests/scripts/install-deps.sh installs them as root)",
        missing.join(", ")
    );
}

fn write_kubeconfig(path: &Path, cluster: &Cluster, pki: &Pki, cert: &str) {
    let user = format!(
        "client-certificate: {}\n      client-key: {}",
        pki.path(&format!("{cert}.crt")),
        pki.path(&format!("{cert}.key"))
    );
    let text = kubeconfig_text(cluster.server(), Path::new(&pki.path("ca.crt")), &user);
    std::fs::write(path, text).expect("write kubeconfig");
}

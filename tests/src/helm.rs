//! The Helm CLI and `kubernetes-validate` as the chart tests drive them: render
//! `charts/edge-operator` with `helm template` (the default and the all-features renders
//! are cached per test binary), split the output into objects, check objects against the
//! Kubernetes OpenAPI schemas of a given Kubernetes version, and compare them as JSON.

use std::collections::BTreeSet;
use std::io::Write;
use std::process::{Command, Stdio};
use std::sync::OnceLock;

use serde_json::Value;

use edge_testkit::cluster::Cluster;
use edge_testkit::operator::Operator;

use crate::{tool, workspace_root};

/// The chart, relative to the workspace root.
pub const CHART: &str = "charts/edge-operator";
/// Release name used for every render (as in the README's `helm install edgepipe ...`).
pub const RELEASE: &str = "edgepipe";
/// Release namespace used for every render.
pub const NAMESPACE: &str = "edgepipe-system";

/// Exit status and output of one `helm` run.
pub struct HelmRun {
    pub success: bool,
    pub stdout: String,
    pub stderr: String,
}

/// Runs `helm ARGS` in the workspace root with Helm's cache, config and data
/// directories pointed away from the user's own.
pub fn helm(args: &[&str]) -> HelmRun {
    let home = std::env::temp_dir().join(format!("edgepipe-helm-{}", std::process::id()));
    let out = Command::new(tool("helm"))
        .args(args)
        .current_dir(workspace_root())
        .env("HELM_CACHE_HOME", home.join("cache"))
        .env("HELM_CONFIG_HOME", home.join("config"))
        .env("HELM_DATA_HOME", home.join("data"))
        .output()
        .expect("helm starts");
    HelmRun {
        success: out.status.success(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Runs `helm ARGS --kubeconfig KUBECONFIG`: Helm against a real API server.
pub fn helm_on(kubeconfig: &std::path::Path, args: &[&str]) -> HelmRun {
    let kubeconfig = kubeconfig.display().to_string();
    let mut all = args.to_vec();
    all.extend_from_slice(&["--kubeconfig", &kubeconfig]);
    helm(&all)
}

/// `helm install` of the chart as release `RELEASE` in `NAMESPACE` (created) against a
/// real API server, with `--set` values and `extra` arguments.
pub fn install_on(kubeconfig: &std::path::Path, sets: &[&str], extra: &[&str]) -> HelmRun {
    let mut args = vec![
        "install",
        RELEASE,
        CHART,
        "--namespace",
        NAMESPACE,
        "--create-namespace",
    ];
    for set in sets {
        args.extend(["--set", set]);
    }
    args.extend_from_slice(extra);
    helm_on(kubeconfig, &args)
}

/// One object of a rendered chart.
pub struct Object {
    /// The template it came from (`edge-operator/templates/...`).
    pub source: String,
    /// The YAML text Helm produced for it.
    pub text: String,
    /// The parsed object.
    pub value: Value,
}

impl Object {
    pub fn kind(&self) -> &str {
        self.value["kind"].as_str().unwrap_or_default()
    }

    pub fn name(&self) -> &str {
        self.value["metadata"]["name"].as_str().unwrap_or_default()
    }
}

/// The objects `helm template` rendered.
pub struct Rendered {
    pub objects: Vec<Object>,
}

impl Rendered {
    /// Splits `helm template` output into objects; empty documents are dropped.
    pub fn parse(output: &str) -> Result<Rendered, String> {
        let mut objects = Vec::new();
        for doc in format!("\n{output}").split("\n---\n") {
            let empty = doc
                .lines()
                .all(|l| l.trim().is_empty() || l.trim_start().starts_with('#'));
            if empty {
                continue;
            }
            let value: Value = serde_saphyr::from_str(doc)
                .map_err(|e| format!("rendered YAML does not parse: {e}\n{doc}"))?;
            if value.is_null() {
                continue;
            }
            let source = doc
                .lines()
                .find_map(|l| l.strip_prefix("# Source: "))
                .unwrap_or_default()
                .to_string();
            objects.push(Object {
                source,
                text: doc.to_string(),
                value,
            });
        }
        Ok(Rendered { objects })
    }

    /// The kinds present, sorted.
    pub fn kinds(&self) -> BTreeSet<&str> {
        self.objects.iter().map(Object::kind).collect()
    }

    /// Every object of `kind`.
    pub fn all(&self, kind: &str) -> Vec<&Object> {
        self.objects.iter().filter(|o| o.kind() == kind).collect()
    }

    /// The single object of `kind`; panics when there is none or more than one.
    pub fn one(&self, kind: &str) -> &Value {
        match self.all(kind).as_slice() {
            [one] => &one.value,
            other => panic!("expected exactly one {kind}, found {}", other.len()),
        }
    }
}

/// Renders the chart with `helm template` for the release `RELEASE` in `NAMESPACE`.
/// `values` are values files relative to the workspace root, `sets` are `--set`
/// arguments. Returns Helm's stderr when rendering fails.
pub fn render(values: &[&str], sets: &[&str]) -> Result<Rendered, String> {
    let mut args = vec!["template", RELEASE, CHART, "--namespace", NAMESPACE];
    for file in values {
        args.extend(["--values", file]);
    }
    for set in sets {
        args.extend(["--set", set]);
    }
    let run = helm(&args);
    if !run.success {
        return Err(run.stderr);
    }
    Rendered::parse(&run.stdout)
}

/// Validates `objects` with `kubernetes-validate --strict` against the schemas of
/// Kubernetes `version` (e.g. "1.33"). Every object must be reported as passed against
/// exactly that version: an unknown kind (which the tool only warns about) is an error.
pub fn kubernetes_validate(objects: &[&Object], version: &str) -> Result<(), String> {
    let input: String = objects
        .iter()
        .map(|o| format!("---\n{}\n", o.text))
        .collect();
    let mut child = Command::new(tool("kubernetes-validate"))
        .args(["--strict", "--kubernetes-version", version, "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("kubernetes-validate starts");
    let mut stdin = child.stdin.take().expect("stdin is piped");
    let writer = std::thread::spawn(move || stdin.write_all(input.as_bytes()));
    let out = child.wait_with_output().expect("kubernetes-validate runs");
    writer
        .join()
        .expect("writer thread")
        .map_err(|e| format!("writing to kubernetes-validate: {e}"))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);

    let mut problems: Vec<String> = stdout
        .lines()
        .filter(|l| !l.starts_with("INFO "))
        .map(str::to_string)
        .collect();
    for object in objects {
        let passed = format!(
            "passed for resource {}/{} against version {version}",
            object.kind().to_lowercase(),
            object.name()
        );
        if !stdout.lines().any(|l| l.ends_with(&passed)) {
            problems.push(format!(
                "{} {} ({}) was not validated against {version}",
                object.kind(),
                object.name(),
                object.source
            ));
        }
    }
    if !out.status.success() || !problems.is_empty() {
        return Err(format!(
            "kubernetes-validate --strict -k {version}:\n{}\n{stderr}",
            problems.join("\n")
        ));
    }
    Ok(())
}

/// Values file with every optional feature of the chart on.
pub const ALL_VALUES: &str = "tests/chart/values-all.yaml";

/// The chart rendered with its default values (once per test binary).
pub fn default_render() -> &'static Rendered {
    static R: OnceLock<Rendered> = OnceLock::new();
    R.get_or_init(|| render(&[], &[]).unwrap_or_else(|e| panic!("helm template: {e}")))
}

/// The chart rendered with tests/chart/values-all.yaml (once per test binary).
pub fn all_render() -> &'static Rendered {
    static R: OnceLock<Rendered> = OnceLock::new();
    R.get_or_init(|| render(&[ALL_VALUES], &[]).unwrap_or_else(|e| panic!("helm template: {e}")))
}

/// A file of the workspace as text.
pub fn read(path: &str) -> String {
    std::fs::read_to_string(workspace_root().join(path))
        .unwrap_or_else(|e| panic!("reading {path}: {e}"))
}

/// A YAML file of the workspace, parsed.
pub fn yaml(path: &str) -> Value {
    serde_saphyr::from_str(&read(path)).unwrap_or_else(|e| panic!("{path} is not YAML: {e}"))
}

/// The strings of a JSON array (empty for anything else).
pub fn strings(v: &Value) -> Vec<&str> {
    v.as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default()
}

/// Helm's merge of a values file over the chart's defaults: maps merge, the rest replaces.
pub fn merge(base: &mut Value, over: &Value) {
    match (base, over) {
        (Value::Object(base), Value::Object(over)) => {
            for (key, value) in over {
                merge(base.entry(key.clone()).or_insert(Value::Null), value);
            }
        }
        (base, over) => *base = over.clone(),
    }
}

/// JSON pointer of the first place where `a` and `b` differ.
pub fn first_difference(a: &Value, b: &Value, at: String) -> Option<String> {
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            let keys: BTreeSet<&String> = x.keys().chain(y.keys()).collect();
            keys.into_iter().find_map(|k| {
                let path = format!("{at}/{k}");
                match (x.get(k), y.get(k)) {
                    (Some(x), Some(y)) => first_difference(x, y, path),
                    _ => Some(path),
                }
            })
        }
        (Value::Array(x), Value::Array(y)) if x.len() == y.len() => x
            .iter()
            .zip(y)
            .enumerate()
            .find_map(|(i, (x, y))| first_difference(x, y, format!("{at}/{i}"))),
        _ if a == b => None,
        _ => Some(if at.is_empty() { "/".to_string() } else { at }),
    }
}

/// Installs the chart on `cluster` (waiting for its objects), then runs the operator as
/// the chart's Deployment does (its ServiceAccount, its arguments: see
/// [`Operator::from_deployment`]) and waits until it is ready.
pub fn install_and_run_operator(cluster: &Cluster) -> Operator {
    {
        let _guard = cluster.guard();
        let install = install_on(cluster.kubeconfig(), &[], &["--wait", "--timeout", "120s"]);
        assert!(install.success, "helm install: {}", install.stderr);
    }
    let operator = Operator::from_deployment(cluster, NAMESPACE, DEPLOYMENT, "operator-0");
    edge_testkit::poll(
        std::time::Duration::from_secs(180),
        "the operator's /readyz",
        || operator.ready().then_some(()),
    );
    operator
}

/// The operator Deployment the chart creates for release [`RELEASE`].
pub const DEPLOYMENT: &str = "edgepipe-edge-operator";

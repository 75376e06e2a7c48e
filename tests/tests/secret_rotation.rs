//! A Secret rotation rolls the agents, against a real control plane with kwok's simulated
//! nodes, the chart installed by Helm, the operator run as the chart's ServiceAccount, and
//! every object written with the real kubectl as a user writes it:
//!
//! - a pipeline whose MQTT password comes from a Secret gets a DaemonSet that mounts the
//!   Secret as a read-only volume with only the referenced key, and no Secret in any
//!   environment variable; the configuration revision names the file, never the value;
//! - a label on the Secret, or a new value of a key the pipeline does not reference,
//!   leaves the pod template alone, even after the operator reconciled it;
//! - a new password changes the pod template's `edgepipe.dev/secrets-digest` (exactly what
//!   `secrets_digest` computes from the Secret as stored), so the DaemonSet rolls every
//!   agent onto the new template, while the configuration revision stays the same;
//! - removing the key makes the pipeline `Degraded` with reason `SecretMissing` naming the
//!   Secret and key, and leaves the running agents alone; putting it back heals it.

use std::collections::BTreeMap;
use std::time::Duration;

use edge_operator::render::{
    SECRETS_DIGEST_ANNOTATION, pipeline_from_manifest, referenced_secrets, secrets_digest,
};
use edge_testkit::cluster::{Cluster, Node};
use edge_testkit::operator::Operator;
use edge_testkit::poll;
use edge_tests::fleet::pod_ready;
use edge_tests::helm;
use k8s_openapi::api::core::v1::Secret;
use serde_json::Value;

const SITE: &str = "rotate";
const NAME: &str = "line1";
const WAIT: Duration = Duration::from_secs(180);

const SECRET: &str = r#"apiVersion: v1
kind: Secret
metadata:
  name: broker-login
  namespace: rotate
  labels: {edgepipe.dev/allow-pipelines: "true"}
stringData:
  password: first-password
  note: not referenced
"#;

const PIPELINE: &str = r#"apiVersion: edgepipe.dev/v1alpha1
kind: EdgePipeline
metadata: {name: line1, namespace: rotate}
spec:
  source:
    mqtt:
      url: "mqtt://${HOST_IP}:1883"
      topics: ["sensors/#"]
      username: edge
      passwordFrom: {secretKeyRef: {name: broker-login, key: password}}
  sink:
    http: {url: "https://ingest.example.com/batch"}
  nodeSelector: {edgepipe.dev/site: rotate}
  agent: {maxUnavailable: 1}
"#;

fn daemon_set(cluster: &Cluster) -> Value {
    cluster.get_json(&["daemonset", &format!("{NAME}-agent"), "-n", SITE])
}

fn digest_of(template_meta: &Value) -> Option<String> {
    template_meta["annotations"][SECRETS_DIGEST_ANNOTATION]
        .as_str()
        .map(str::to_string)
}

/// The DaemonSet's pod template digest and generation.
fn template_digest(cluster: &Cluster) -> (String, i64) {
    let ds = daemon_set(cluster);
    let digest = digest_of(&ds["spec"]["template"]["metadata"])
        .unwrap_or_else(|| panic!("the pod template carries no secrets digest: {ds}"));
    (digest, ds["metadata"]["generation"].as_i64().unwrap_or(0))
}

/// The digest `secrets_digest` computes from the Secret as the API server stores it.
fn expected_digest(cluster: &Cluster) -> String {
    let stored = cluster.get_json(&["secret", "broker-login", "-n", SITE]);
    let secret: Secret = serde_json::from_value(stored).expect("a Secret");
    let pipeline = pipeline_from_manifest(PIPELINE).expect("the pipeline parses");
    let mounts = referenced_secrets(&pipeline.spec).expect("valid references");
    secrets_digest(
        &mounts,
        &BTreeMap::from([("broker-login".to_string(), secret)]),
    )
    .expect("the Secret has the key")
}

/// (pod name, its secrets digest, ready) of each live agent pod.
fn agents(cluster: &Cluster) -> Vec<(String, Option<String>, bool)> {
    cluster
        .live_agent_pods(SITE, NAME)
        .iter()
        .map(|p| {
            (
                p["metadata"]["name"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
                digest_of(&p["metadata"]),
                pod_ready(p),
            )
        })
        .collect()
}

/// Patches the Secret `broker-login` as a user does: `kubectl patch --type=<kind> -p <patch>`.
fn patch_secret(cluster: &Cluster, kind: &str, patch: &str) {
    let kind = format!("--type={kind}");
    cluster.kubectl_ok(&[
        "patch",
        "secret",
        "broker-login",
        "-n",
        SITE,
        &kind,
        "-p",
        patch,
    ]);
}

fn reconciles(operator: &Operator) -> f64 {
    operator.metric_sum("edge_operator_reconciliations_total")
}

/// Waits for at least one more reconcile than `before`: the operator has looked at the
/// pipeline since a change made before `before` was read.
fn wait_for_a_reconcile(operator: &Operator, before: f64, what: &str) {
    poll(WAIT, what, || (reconciles(operator) > before).then_some(()));
}

#[test]
fn a_secret_rotation_rolls_the_agents() {
    let nodes = [
        Node::new("rotate-1").label("edgepipe.dev/site", SITE),
        Node::new("rotate-2").label("edgepipe.dev/site", SITE),
    ];
    let cluster = Cluster::start("secret-rotation", &nodes);
    let _guard = cluster.guard();
    let operator = helm::install_and_run_operator(&cluster);

    cluster.namespace(SITE);
    cluster.apply(SECRET);
    cluster.apply(PIPELINE);
    cluster.wait_pipeline_ready(SITE, NAME);

    // The Secret is a read-only volume of the referenced key only; no Secret in the
    // environment; the configuration names the file, never the value.
    let ds = daemon_set(&cluster);
    let pod = &ds["spec"]["template"]["spec"];
    let secret_volumes: Vec<&Value> = pod["volumes"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|v| v["secret"].is_object())
        .collect();
    assert_eq!(secret_volumes.len(), 1, "{pod}");
    let volume = secret_volumes[0];
    assert_eq!(volume["secret"]["secretName"], "broker-login", "{volume}");
    assert_eq!(
        volume["secret"]["items"],
        serde_json::json!([{"key": "password", "path": "password"}]),
        "{volume}"
    );
    assert_eq!(volume["secret"]["defaultMode"], 0o440, "{volume}");
    let agent = &pod["containers"][0];
    let mount = agent["volumeMounts"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|m| m["name"] == volume["name"])
        .unwrap_or_else(|| panic!("the agent does not mount the Secret: {agent}"));
    assert_eq!(mount["mountPath"], "/etc/edgepipe-secrets/broker-login");
    assert_eq!(mount["readOnly"], true);
    for container in pod["containers"]
        .as_array()
        .into_iter()
        .chain(pod["initContainers"].as_array())
        .flatten()
    {
        for env in container["env"].as_array().into_iter().flatten() {
            let name = env["name"].as_str().unwrap_or_default();
            assert!(!name.starts_with("EDGEPIPE_SECRET"), "{env}");
            assert!(env["valueFrom"]["secretKeyRef"].is_null(), "{env}");
        }
    }
    let revision = cluster.agent_revision(SITE, NAME);
    let config = cluster.agent_config_map(SITE, NAME)["data"]["pipeline.yaml"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(
        config.contains("file: /etc/edgepipe-secrets/broker-login/password"),
        "{config}"
    );
    assert!(!config.contains("first-password"), "{config}");
    let (first, generation) = template_digest(&cluster);
    assert_eq!(first, expected_digest(&cluster));
    assert!(
        !ds.to_string().contains("first-password"),
        "the value is nowhere in the DaemonSet"
    );

    // A label, and a new value of a key the pipeline does not reference: reconciled, and
    // the pod template stays as it is.
    let before = reconciles(&operator);
    cluster.kubectl_ok(&["label", "secret", "broker-login", "-n", SITE, "team=line-1"]);
    patch_secret(
        &cluster,
        "merge",
        r#"{"stringData":{"note":"still not referenced"}}"#,
    );
    wait_for_a_reconcile(&operator, before, "a reconcile after the label");
    assert_eq!(expected_digest(&cluster), first);
    assert_eq!(
        template_digest(&cluster),
        (first.clone(), generation),
        "a label or an unreferenced key rolled the agents"
    );

    // A new password: a new digest, a new pod template, every agent rolled onto it.
    patch_secret(
        &cluster,
        "merge",
        r#"{"stringData":{"password":"second-password"}}"#,
    );
    let (second, rolled) = poll(WAIT, "a new secrets digest on the pod template", || {
        let (digest, generation) = template_digest(&cluster);
        (digest != first).then_some((digest, generation))
    });
    assert_eq!(second, expected_digest(&cluster));
    assert_eq!(
        rolled,
        generation + 1,
        "exactly one new pod template (the label did not roll)"
    );
    poll(WAIT, "every agent on the new template and ready", || {
        let now = agents(&cluster);
        (now.len() == 2
            && now
                .iter()
                .all(|(_, digest, ready)| digest.as_deref() == Some(second.as_str()) && *ready))
        .then_some(())
    });
    cluster.wait_pipeline_ready(SITE, NAME);
    assert_eq!(
        cluster.agent_revision(SITE, NAME),
        revision,
        "a rotation is a new pod template, not a new configuration revision"
    );

    // The key removed: Degraded, naming it, and the agents keep running as they are.
    patch_secret(
        &cluster,
        "json",
        r#"[{"op":"remove","path":"/data/password"}]"#,
    );
    let message = poll(WAIT, "Degraded/SecretMissing", || {
        match cluster.pipeline_condition(SITE, NAME, "Degraded") {
            Some((status, reason, message)) if status == "True" && reason == "SecretMissing" => {
                Some(message)
            }
            _ => None,
        }
    });
    assert!(
        message.contains("Secret \"broker-login\" has no key \"password\""),
        "{message}"
    );
    assert_eq!(template_digest(&cluster), (second.clone(), rolled));
    assert_eq!(agents(&cluster).len(), 2);

    // Back: Ready again, and the same password is the same template.
    patch_secret(
        &cluster,
        "merge",
        r#"{"stringData":{"password":"second-password"}}"#,
    );
    poll(WAIT, "Degraded cleared", || {
        match cluster.pipeline_condition(SITE, NAME, "Degraded") {
            Some((status, _, _)) if status == "False" => Some(()),
            _ => None,
        }
    });
    cluster.wait_pipeline_ready(SITE, NAME);
    assert_eq!(template_digest(&cluster), (second, rolled));
}

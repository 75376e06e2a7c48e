//! Table tests of the tenant policy: the file format, and each rule of the check on a
//! small pipeline with one field changed.

use std::collections::BTreeSet;

use edge_crds::{EdgePipelineSpec, FieldError};

use super::*;

const SOURCE: &str = "source:\n  mqtt: {url: 'mqtt://${HOST_IP}:1883', topics: ['sensors/#']}\n";
const SINK: &str = "sink:\n  http: {url: 'https://ingest.example.com/batch'}\n";

/// A small valid spec with `extra` added (an extra `source:` replaces the base one).
fn spec(extra: &str) -> EdgePipelineSpec {
    let source = if extra.starts_with("source:") {
        ""
    } else {
        SOURCE
    };
    let text = format!("{source}{SINK}{extra}");
    edge_crds::parse_pipeline(&text)
        .unwrap_or_else(|e| panic!("test spec: {e}\n{text}"))
        .spec
}

fn policy(yaml: &str) -> TenantPolicy {
    TenantPolicy::from_yaml(yaml).unwrap_or_else(|e| panic!("test policy: {e}\n{yaml}"))
}

fn lines(errors: &[FieldError]) -> Vec<String> {
    errors.iter().map(ToString::to_string).collect()
}

/// (what, policy YAML ("" = defaults), spec addition, expected errors: each a
/// substring of one line, in order; empty = allowed)
type Case = (
    &'static str,
    &'static str,
    &'static str,
    &'static [&'static str],
);

const CASES: &[Case] = &[
    ("the base pipeline", "", "", &[]),
    // Tolerations.
    (
        "an edgepipe.dev taint",
        "",
        "tolerations: [{key: edgepipe.dev/edge, operator: Exists, effect: NoSchedule}]\n",
        &[],
    ),
    (
        "a control-plane taint",
        "",
        "tolerations: [{key: node-role.kubernetes.io/control-plane, operator: Exists, effect: NoSchedule}]\n",
        &[
            "spec.tolerations[0]: toleration of node-role.kubernetes.io/control-plane is not allowed by the cluster policy",
        ],
    ),
    (
        "the old master taint, second in the list",
        "",
        "tolerations: [{key: edgepipe.dev/edge, operator: Exists}, {key: node-role.kubernetes.io/master, operator: Exists}]\n",
        &["spec.tolerations[1]: toleration of node-role.kubernetes.io/master"],
    ),
    (
        "k3s' CriticalAddonsOnly taint",
        "",
        "tolerations: [{key: CriticalAddonsOnly, operator: Exists}]\n",
        &["spec.tolerations[0]: toleration of CriticalAddonsOnly"],
    ),
    (
        "a toleration of every taint",
        "",
        "tolerations: [{operator: Exists}]\n",
        &["spec.tolerations[0]: a toleration without a key tolerates every taint"],
    ),
    (
        "every taint, even with '*' allowed, without controlPlane",
        "tolerations: [{key: '*'}]\n",
        "tolerations: [{operator: Exists}]\n",
        &["spec.tolerations[0]: a toleration without a key"],
    ),
    (
        "every taint with '*' and controlPlane",
        "controlPlane: true\ntolerations: [{key: '*'}]\n",
        "tolerations: [{operator: Exists}]\n",
        &[],
    ),
    (
        "'*' never grants the control plane",
        "tolerations: [{key: '*'}]\n",
        "tolerations: [{key: node-role.kubernetes.io/control-plane, operator: Exists}]\n",
        &[
            "spec.tolerations[0]: toleration of node-role.kubernetes.io/control-plane is not allowed",
        ],
    ),
    (
        "controlPlane: true allows the control-plane taint",
        "controlPlane: true\n",
        "tolerations: [{key: node-role.kubernetes.io/control-plane, operator: Exists, effect: NoSchedule}]\n",
        &[],
    ),
    (
        "a taint key outside the rules",
        "",
        "tolerations: [{key: example.com/gpu, operator: Exists}]\n",
        &[
            "spec.tolerations[0]: toleration of example.com/gpu is not allowed by the cluster policy (allowed taint keys: edgepipe.dev/*)",
        ],
    ),
    (
        "no toleration allowed at all",
        "tolerations: []\n",
        "tolerations: [{key: edgepipe.dev/edge, operator: Exists}]\n",
        &["(allowed taint keys: none)"],
    ),
    (
        "a rule with values: the value fits",
        "tolerations: [{key: site, values: [a, b]}]\n",
        "tolerations: [{key: site, operator: Equal, value: b}]\n",
        &[],
    ),
    (
        "a rule with values: Exists would tolerate any value",
        "tolerations: [{key: site, values: [a]}]\n",
        "tolerations: [{key: site, operator: Exists}]\n",
        &[
            "spec.tolerations[0]: toleration of site is not allowed by the cluster policy as written (it needs operator Equal with a value in [a])",
        ],
    ),
    (
        "a rule with effects: an unnamed effect means all",
        "tolerations: [{key: site, effects: [NoSchedule]}]\n",
        "tolerations: [{key: site, operator: Exists}]\n",
        &["it needs an effect in [NoSchedule]"],
    ),
    (
        "a rule with effects: the effect fits",
        "tolerations: [{key: site, effects: [NoSchedule]}]\n",
        "tolerations: [{key: site, operator: Exists, effect: NoSchedule}]\n",
        &[],
    ),
    // Node selectors.
    (
        "any ordinary label by default",
        "",
        "nodeSelector: {edgepipe.dev/edge: 'true', kubernetes.io/arch: arm64}\n",
        &[],
    ),
    (
        "selecting control-plane nodes",
        "",
        "nodeSelector: {node-role.kubernetes.io/control-plane: 'true'}\n",
        &[
            "spec.nodeSelector[node-role.kubernetes.io/control-plane]: selecting nodes by node-role.kubernetes.io/control-plane (control-plane nodes) is not allowed by the cluster policy",
        ],
    ),
    (
        "selecting control-plane nodes, allowed",
        "controlPlane: true\n",
        "nodeSelector: {node-role.kubernetes.io/master: ''}\n",
        &[],
    ),
    (
        "a label key outside the rules",
        "nodeSelector: [{key: edgepipe.dev/*}]\n",
        "nodeSelector: {kubernetes.io/hostname: server-1}\n",
        &[
            "spec.nodeSelector[kubernetes.io/hostname]: selecting nodes by kubernetes.io/hostname is not allowed by the cluster policy (allowed label keys: edgepipe.dev/*)",
        ],
    ),
    (
        "a label value outside the rule",
        "nodeSelector: [{key: site, values: [north]}]\n",
        "nodeSelector: {site: south}\n",
        &[
            "spec.nodeSelector[site]: selecting nodes by site=south is not allowed by the cluster policy (allowed values: north)",
        ],
    ),
    // Embedded broker and host ports.
    (
        "an embedded broker exposed on the node, by default",
        "",
        "source:\n  mqtt: {embedded: {listen: '0.0.0.0:1883'}, topics: ['s/#']}\n",
        &[
            "spec.source.mqtt.embedded.listen: an embedded MQTT broker exposed on the node is not allowed by the cluster policy (listen on 127.0.0.1 to keep it inside the pod)",
        ],
    ),
    (
        "an embedded broker inside the pod, by default",
        "",
        "source:\n  mqtt: {embedded: {listen: '127.0.0.1:1883'}, topics: ['s/#']}\n",
        &[],
    ),
    (
        "an embedded broker without an allowed host port",
        "embeddedBroker: true\n",
        "source:\n  mqtt: {embedded: {listen: '0.0.0.0:1883'}, topics: ['s/#']}\n",
        &[
            "spec.source.mqtt.embedded.listen: host port 1883 is not allowed by the cluster policy (allowed host ports: none)",
        ],
    ),
    (
        "an embedded broker on a port outside the list",
        "embeddedBroker: true\nhostPorts: [8883, '9000-9009']\n",
        "source:\n  mqtt: {embedded: {listen: '0.0.0.0:1883'}, topics: ['s/#']}\n",
        &[
            "host port 1883 is not allowed by the cluster policy (allowed host ports: 8883, 9000-9009)",
        ],
    ),
    (
        "an embedded broker on an allowed port",
        "embeddedBroker: true\nhostPorts: [1883]\n",
        "source:\n  mqtt: {embedded: {listen: '0.0.0.0:1883'}, topics: ['s/#']}\n",
        &[],
    ),
    (
        "an embedded broker in an allowed range",
        "embeddedBroker: true\nhostPorts: ['9000-9009']\n",
        "source:\n  mqtt: {embedded: {listen: '0.0.0.0:9009'}, topics: ['s/#']}\n",
        &[],
    ),
    // Resources.
    ("no resources: the operator's defaults fit", "", "", &[]),
    (
        "64Gi of memory",
        "",
        "agent: {resources: {requests: {memory: 64Gi}, limits: {memory: 64Gi}}}\n",
        &[
            "spec.agent.resources.requests.memory: 64Gi is above the cluster policy's ceiling of 256Mi",
            "spec.agent.resources.limits.memory: 64Gi is above the cluster policy's ceiling of 512Mi",
        ],
    ),
    (
        "within the ceilings",
        "",
        "agent: {resources: {requests: {cpu: 100m, memory: 64Mi}, limits: {cpu: 500m, memory: 512Mi}}}\n",
        &[],
    ),
    (
        "a limit without a request requests the limit",
        "",
        "agent: {resources: {limits: {cpu: '1', memory: 300Mi}}}\n",
        &[
            "spec.agent.resources.requests.cpu: unset, so Kubernetes requests the limit 1 is above the cluster policy's ceiling of 500m",
            "spec.agent.resources.requests.memory: unset, so Kubernetes requests the limit 300Mi is above",
        ],
    ),
    (
        "no memory limit is no limit",
        "",
        "agent: {resources: {requests: {cpu: 50m, memory: 64Mi}}}\n",
        &["spec.agent.resources.limits.memory: required by the cluster policy (at most 512Mi)"],
    ),
    (
        "CPU over the ceiling in another notation",
        "",
        "agent: {resources: {requests: {cpu: '0.6'}, limits: {memory: 128Mi, cpu: 1001m}}}\n",
        &[
            "spec.agent.resources.requests.cpu: 0.6 is above the cluster policy's ceiling of 500m",
            "spec.agent.resources.limits.cpu: 1001m is above the cluster policy's ceiling of 1",
        ],
    ),
    (
        "a GPU",
        "",
        "agent: {resources: {limits: {memory: 128Mi, nvidia.com/gpu: '1'}}}\n",
        &[
            "spec.agent.resources.limits[nvidia.com/gpu]: nvidia.com/gpu is not allowed by the cluster policy",
        ],
    ),
    (
        "a ceiling lower than the operator's default",
        "resources: {limits: {memory: 128Mi}}\n",
        "",
        &[
            "spec.agent.resources.limits.memory: 256Mi is above the cluster policy's ceiling of 128Mi (the operator's default; set spec.agent.resources)",
        ],
    ),
    (
        "an unparseable quantity",
        "",
        "agent: {resources: {requests: {memory: lots}, limits: {memory: 128Mi}}}\n",
        &["spec.agent.resources.requests.memory: \"lots\" is not a Kubernetes quantity"],
    ),
    // Log levels.
    (
        "debug by default",
        "",
        "agent: {logLevel: 'edge_agent=debug,info'}\n",
        &[],
    ),
    (
        "trace",
        "",
        "agent: {logLevel: trace}\n",
        &[
            "spec.agent.logLevel: \"trace\" logs at trace but the cluster policy allows at most debug",
        ],
    ),
    (
        "a target alone enables trace for it",
        "",
        "agent: {logLevel: 'info,hyper'}\n",
        &["\"info,hyper\" logs at trace"],
    ),
    (
        "a numeric level",
        "maxLogLevel: info\n",
        "agent: {logLevel: '4'}\n",
        &["\"4\" logs at debug but the cluster policy allows at most info"],
    ),
    (
        "not a filter",
        "",
        "agent: {logLevel: 'edge_agent=loud'}\n",
        &["spec.agent.logLevel: \"edge_agent=loud\" does not end in a log level"],
    ),
    // Several at once: every one reported.
    (
        "everything at once",
        "",
        "tolerations: [{key: node-role.kubernetes.io/control-plane, operator: Exists}]\nagent: {resources: {limits: {memory: 1Gi}}, logLevel: trace}\n",
        &[
            "spec.tolerations[0]",
            "spec.agent.resources.requests.memory",
            "spec.agent.resources.limits.memory",
            "spec.agent.logLevel",
        ],
    ),
];

#[test]
fn each_rule_allows_and_refuses_as_documented() {
    let mut failures = vec![];
    for (what, policy_yaml, extra, expected) in CASES {
        let policy = policy(policy_yaml);
        let errors = lines(&check_spec(&policy, &spec(extra)));
        let matches = errors.len() == expected.len()
            && errors
                .iter()
                .zip(expected.iter())
                .all(|(e, x)| e.contains(x));
        if !matches {
            failures.push(format!(
                "{what}:\n  expected {expected:#?}\n  got {errors:#?}"
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn every_secret_reference_must_have_opted_in() {
    let text = "source:\n  mqtt:\n    url: 'mqtts://broker:8883'\n    topics: ['s/#']\n    username: edge\n    passwordFrom: {secretKeyRef: {name: broker, key: password}}\n    tls: {ca: {secretKeyRef: {name: broker-ca, key: ca.crt}}}\nsink:\n  http:\n    url: 'https://ingest.example.com/batch'\n    headers:\n      - name: Authorization\n        valueFrom: {secretKeyRef: {name: ingest-token, key: authorization}}\n      - name: X-Env\n        valueFrom: {env: HOME}\n    tls:\n      cert: {secretKeyRef: {name: client, key: tls.crt}}\n      key: {secretKeyRef: {name: client, key: tls.key}}\n";
    let spec = edge_crds::parse_pipeline(text).expect("test spec").spec;
    let found: Vec<(String, String)> = secret_references(&spec)
        .into_iter()
        .map(|r| (r.path, r.name))
        .collect();
    let expected: BTreeSet<(String, String)> = [
        ("spec.source.mqtt.passwordFrom.secretKeyRef", "broker"),
        ("spec.source.mqtt.tls.ca.secretKeyRef", "broker-ca"),
        (
            "spec.sink.http.headers[0].valueFrom.secretKeyRef",
            "ingest-token",
        ),
        ("spec.sink.http.tls.cert.secretKeyRef", "client"),
        ("spec.sink.http.tls.key.secretKeyRef", "client"),
    ]
    .into_iter()
    .map(|(p, n)| (p.to_string(), n.to_string()))
    .collect();
    assert_eq!(found.len(), expected.len(), "{found:#?}");
    assert_eq!(found.into_iter().collect::<BTreeSet<_>>(), expected);

    let opted_in = ["broker", "client"];
    let errors = lines(&check_secrets(&spec, &|name| opted_in.contains(&name)));
    // In the order of the spec's fields as the API stores them (alphabetical).
    assert_eq!(
        errors,
        [
            "spec.sink.http.headers[0].valueFrom.secretKeyRef: Secret \"ingest-token\" is not labelled edgepipe.dev/allow-pipelines: \"true\" (or does not exist); pipelines may only use Secrets that opted in",
            "spec.source.mqtt.tls.ca.secretKeyRef: Secret \"broker-ca\" is not labelled edgepipe.dev/allow-pipelines: \"true\" (or does not exist); pipelines may only use Secrets that opted in",
        ]
    );
    assert!(check_secrets(&spec, &|_| true).is_empty());
    // The whole check reports the Secrets after the rest.
    let all = check(&TenantPolicy::default(), &spec, &|_| false);
    assert_eq!(all.len(), 5);
}

#[test]
fn the_policy_file_keeps_defaults_for_what_it_leaves_out_and_refuses_mistakes() {
    assert_eq!(policy(""), TenantPolicy::default());
    let p = policy(
        "embeddedBroker: true\nhostPorts: [1883, '8000-8099']\nresources: {limits: {memory: 1Gi}}\n",
    );
    assert!(p.embedded_broker);
    assert_eq!(
        p.host_ports,
        [
            PortRange {
                first: 1883,
                last: 1883
            },
            PortRange {
                first: 8000,
                last: 8099
            }
        ]
    );
    assert_eq!(p.resources.limits["memory"], QuantityText("1Gi".into()));
    // Left out: the defaults.
    assert_eq!(p.resources.requests, ResourceCeilings::default().requests);
    assert_eq!(p.tolerations, TenantPolicy::default().tolerations);
    assert_eq!(p.max_log_level, LogLevel::Debug);
    // A number is a quantity too.
    let p = policy("resources: {limits: {cpu: 2, memory: 1Gi}}\n");
    assert_eq!(p.resources.limits["cpu"], QuantityText("2".into()));

    for (bad, names) in [
        ("controlPlan: true\n", "controlPlan"),
        ("hostPorts: [0]\n", "0"),
        ("hostPorts: [70000]\n", "70000"),
        ("hostPorts: ['9000-8000']\n", "9000-8000"),
        (
            "resources: {limits: {memory: lots}}\n",
            "resources.limits.memory",
        ),
        ("tolerations: [{key: ''}]\n", "tolerations[0].key"),
        ("tolerations: [{key: a, effects: [Never]}]\n", "Never"),
        ("nodeSelector: [{key: ''}]\n", "nodeSelector[0].key"),
        ("maxLogLevel: loud\n", "loud"),
    ] {
        match TenantPolicy::from_yaml(bad) {
            Ok(p) => panic!("{bad:?} was accepted: {p:?}"),
            Err(e) => assert!(e.to_string().contains(names), "{bad:?}: {e}"),
        }
    }
}

#[test]
fn the_default_policy_serializes_to_what_it_reads() {
    let text = serde_saphyr::to_string(&TenantPolicy::default()).expect("serializes");
    assert_eq!(policy(&text), TenantPolicy::default());
    let p = policy("hostPorts: [1883, '8000-8099']\n");
    let again = serde_saphyr::to_string(&p).expect("serializes");
    assert_eq!(policy(&again), p);
}

#[test]
fn key_patterns_match_exactly_by_prefix_or_anything() {
    assert!(key_matches("*", "anything/at-all"));
    assert!(key_matches("edgepipe.dev/*", "edgepipe.dev/edge"));
    assert!(!key_matches("edgepipe.dev/*", "edgepipe.devious/edge"));
    assert!(key_matches("site", "site"));
    assert!(!key_matches("site", "site2"));
}

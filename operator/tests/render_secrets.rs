//! Table tests for how referenced Secrets reach the agent: as files of Secret volumes
//! (only the referenced keys, mode 0440, read-only, never an environment variable), with
//! odd names and keys refused before they become paths, and the digest of their values
//! on the pod template only.

use crate::common;

use common::{default_options, pipeline, with_spec};
use edge_crds::{EdgePipeline, parse_pipeline, validate};
use edge_operator::render::{
    AGENT_UID, CONFIG_HASH_ANNOTATION, RenderError, RenderOptions, Rendered,
    SECRETS_DIGEST_ANNOTATION, render,
};
use k8s_openapi::api::core::v1::{Container, PodSpec};
use serde_json::{Value, json};

fn rendered_with(p: &EdgePipeline, options: &RenderOptions) -> Rendered {
    render(p, options).unwrap_or_else(|e| panic!("{e}"))
}

fn rendered(p: &EdgePipeline) -> Rendered {
    rendered_with(p, &default_options())
}

fn pod(r: &Rendered) -> &PodSpec {
    r.daemon_set
        .spec
        .as_ref()
        .and_then(|s| s.template.spec.as_ref())
        .expect("pod spec")
}

fn container<'a>(r: &'a Rendered, name: &str) -> &'a Container {
    pod(r)
        .containers
        .iter()
        .chain(pod(r).init_containers.iter().flatten())
        .find(|c| c.name == name)
        .expect("container")
}

fn annotation(r: &Rendered, key: &str) -> Option<String> {
    r.daemon_set
        .spec
        .as_ref()?
        .template
        .metadata
        .as_ref()?
        .annotations
        .as_ref()?
        .get(key)
        .cloned()
}

fn config_text(r: &Rendered) -> String {
    r.config_map.data.as_ref().expect("data")["pipeline.yaml"].clone()
}

/// The Secret volumes of the pod, as JSON, by volume name.
fn secret_volumes(r: &Rendered) -> Vec<Value> {
    pod(r)
        .volumes
        .iter()
        .flatten()
        .filter(|v| v.secret.is_some())
        .map(|v| serde_json::to_value(v).expect("volume"))
        .collect()
}

/// (volume, mount path, read-only) of each mount of the container `name`.
fn mounts(r: &Rendered, name: &str) -> Vec<(String, String, bool)> {
    container(r, name)
        .volume_mounts
        .iter()
        .flatten()
        .map(|m| {
            (
                m.name.clone(),
                m.mount_path.clone(),
                m.read_only == Some(true),
            )
        })
        .collect()
}

const SECRETS_SPEC: &str = "  source:\n    mqtt:\n      url: mqtts://b:8883\n      topics: [a]\n      username: u\n      \
     passwordFrom: {secretKeyRef: {name: broker, key: password}}\n      \
     tls: {ca: {secretKeyRef: {name: broker, key: ca.crt}}, cert: {file: /certs/c.pem}, key: {file: /certs/k.pem}}\n  \
     sink:\n    http:\n      url: https://x/b\n      headers:\n      \
     - {name: Authorization, valueFrom: {secretKeyRef: {name: token, key: auth}}}\n      \
     - {name: X-Again, valueFrom: {secretKeyRef: {name: broker, key: password}}}\n";

#[test]
fn secret_references_become_files_of_mounted_secrets() {
    let r = rendered(&with_spec(SECRETS_SPEC));

    // The configuration names files, never a value or a variable.
    let text = config_text(&r);
    assert!(!text.contains("secretKeyRef"), "{text}");
    assert!(!text.contains("EDGEPIPE_SECRET"), "{text}");
    let config = parse_pipeline(&text).expect("the agent can read the rendered config");
    assert_eq!(validate(&config.spec), Ok(()));
    let mqtt = &config.spec.source.mqtt;
    let file = |v: Option<&edge_crds::ValueFrom>| v.and_then(|v| v.file.clone());
    let tls = mqtt.tls.as_ref().expect("tls");
    let headers = &config.spec.sink.http.as_ref().expect("http").headers;
    // (field, file it reads)
    let cases = [
        (
            "mqtt password",
            file(mqtt.password_from.as_ref()),
            "/etc/edgepipe-secrets/broker/password",
        ),
        (
            "mqtt CA",
            file(tls.ca.as_ref()),
            "/etc/edgepipe-secrets/broker/ca.crt",
        ),
        (
            "a file source stays",
            file(tls.cert.as_ref()),
            "/certs/c.pem",
        ),
        (
            "header",
            file(Some(&headers[0].value_from)),
            "/etc/edgepipe-secrets/token/auth",
        ),
        (
            "the same key again",
            file(Some(&headers[1].value_from)),
            "/etc/edgepipe-secrets/broker/password",
        ),
    ];
    for (field, found, expected) in cases {
        assert_eq!(found.as_deref(), Some(expected), "{field}");
    }

    // One volume per Secret, only the referenced keys, 0440, never optional.
    assert_eq!(
        secret_volumes(&r),
        [
            json!({"name": "secret-0", "secret": {"secretName": "broker", "defaultMode": 0o440, "optional": false,
                "items": [{"key": "ca.crt", "path": "ca.crt"}, {"key": "password", "path": "password"}]}}),
            json!({"name": "secret-1", "secret": {"secretName": "token", "defaultMode": 0o440, "optional": false,
                "items": [{"key": "auth", "path": "auth"}]}}),
        ]
    );
    // Mounted read-only into the agent, where the configuration points; the init
    // container, which runs as root, gets none of them.
    let agent_mounts = mounts(&r, "edge-agent");
    for (volume, dir) in [
        ("secret-0", "/etc/edgepipe-secrets/broker"),
        ("secret-1", "/etc/edgepipe-secrets/token"),
    ] {
        assert!(
            agent_mounts.contains(&(volume.to_string(), dir.to_string(), true)),
            "{agent_mounts:?}"
        );
    }
    assert!(
        mounts(&r, "prepare-data-dir")
            .iter()
            .all(|(volume, _, _)| !volume.starts_with("secret-")),
        "{:?}",
        mounts(&r, "prepare-data-dir")
    );
    // 0440 is readable by the agent because the files' group is the pod's fsGroup, the
    // agent's own group.
    let security = pod(&r).security_context.as_ref().expect("pod security");
    assert_eq!(security.fs_group, Some(AGENT_UID));
    assert_eq!(security.run_as_group, Some(AGENT_UID));
    assert_eq!(security.run_as_user, Some(AGENT_UID));

    // No Secret reaches the environment.
    for c in pod(&r)
        .containers
        .iter()
        .chain(pod(&r).init_containers.iter().flatten())
    {
        for env in c.env.iter().flatten() {
            assert!(!env.name.starts_with("EDGEPIPE_SECRET"), "{env:?}");
            assert!(
                env.value_from
                    .as_ref()
                    .is_none_or(|v| v.secret_key_ref.is_none()),
                "{env:?}"
            );
        }
        assert!(c.env_from.is_none(), "{:?}", c.env_from);
    }
}

/// A model download authenticates like the HTTP sink: header values come from Secret
/// files, never from the ConfigMap.
#[test]
fn model_download_headers_come_from_secret_files() {
    let p = pipeline(&format!(
        "  inference:\n    model:\n      url: https://models.example/a.tflite\n      sha256: \"{}\"\n      \
         headers: [{{name: Authorization, valueFrom: {{secretKeyRef: {{name: models, key: token}}}}}}]\n",
        "ab".repeat(32)
    ));
    let r = rendered(&p);
    let config = parse_pipeline(&config_text(&r)).expect("parses");
    let headers = &config
        .spec
        .inference
        .as_ref()
        .expect("inference")
        .model
        .headers;
    assert_eq!(
        headers[0].value_from.file.as_deref(),
        Some("/etc/edgepipe-secrets/models/token")
    );
    assert_eq!(
        secret_volumes(&r),
        [
            json!({"name": "secret-0", "secret": {"secretName": "models", "defaultMode": 0o440, "optional": false,
            "items": [{"key": "token", "path": "token"}]}})
        ]
    );
}

#[test]
fn queue_encryption_keys_come_from_secret_files() {
    let p = pipeline(
        "  buffer:\n    encryption:\n      keys:\n        \
         - {id: k2, keyFrom: {secretKeyRef: {name: queue-keys, key: k2}}}\n        \
         - {id: k1, keyFrom: {secretKeyRef: {name: queue-keys, key: k1}}}\n",
    );
    let r = rendered(&p);
    let config = parse_pipeline(&config_text(&r)).expect("parses");
    let keys = &config
        .spec
        .buffer
        .encryption
        .as_ref()
        .expect("encryption")
        .keys;
    let files: Vec<_> = keys.iter().map(|k| k.key_from.file.as_deref()).collect();
    assert_eq!(
        files,
        [
            Some("/etc/edgepipe-secrets/queue-keys/k2"),
            Some("/etc/edgepipe-secrets/queue-keys/k1")
        ]
    );
    assert!(keys.iter().all(|k| k.key_from.secret_key_ref.is_none()));
    assert_eq!(
        secret_volumes(&r),
        [
            json!({"name": "secret-0", "secret": {"secretName": "queue-keys", "defaultMode": 0o440, "optional": false,
            "items": [{"key": "k1", "path": "k1"}, {"key": "k2", "path": "k2"}]}})
        ]
    );
}

#[test]
fn a_pipeline_without_secrets_mounts_none() {
    let r = rendered(&pipeline(""));
    assert!(secret_volumes(&r).is_empty());
    assert_eq!(annotation(&r, SECRETS_DIGEST_ANNOTATION), None);
}

#[test]
fn volume_names_are_unique_dns_labels_whatever_the_secret_names() {
    let long = |c: &str| format!("{}.{}", c.repeat(63), c.repeat(63));
    let headers: String = ["a", "b", "c"]
        .iter()
        .map(|c| {
            format!(
                "      - {{name: X-{c}, valueFrom: {{secretKeyRef: {{name: {}, key: k}}}}}}\n",
                long(c)
            )
        })
        .collect();
    let p = with_spec(&format!(
        "  source:\n    mqtt: {{url: 'mqtt://h:1883', topics: [a]}}\n  sink:\n    http:\n      url: https://x/b\n      headers:\n{headers}"
    ));
    let r = rendered(&p);
    let names: Vec<String> = pod(&r)
        .volumes
        .iter()
        .flatten()
        .map(|v| v.name.clone())
        .collect();
    let mut unique = names.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), names.len(), "{names:?}");
    for name in &names {
        assert!(
            edge_crds::names::check_dns_label(name).is_ok(),
            "{name:?} is not a DNS label"
        );
    }
    assert_eq!(secret_volumes(&r).len(), 3);
}

#[test]
fn names_and_keys_that_would_leave_the_secrets_directory_are_refused() {
    // (secretKeyRef, the field error's path)
    let cases = [
        (
            "{name: broker, key: ../../etc/shadow}",
            "spec.sink.http.headers[0].valueFrom.secretKeyRef.key",
        ),
        (
            "{name: broker, key: ..data}",
            "spec.sink.http.headers[0].valueFrom.secretKeyRef.key",
        ),
        (
            "{name: broker, key: a/b}",
            "spec.sink.http.headers[0].valueFrom.secretKeyRef.key",
        ),
        (
            "{name: '..', key: password}",
            "spec.sink.http.headers[0].valueFrom.secretKeyRef.name",
        ),
        (
            "{name: a/b, key: password}",
            "spec.sink.http.headers[0].valueFrom.secretKeyRef.name",
        ),
        (
            "{name: Broker, key: password}",
            "spec.sink.http.headers[0].valueFrom.secretKeyRef.name",
        ),
    ];
    for (reference, path) in cases {
        let p = with_spec(&format!(
            "  source:\n    mqtt: {{url: 'mqtt://h:1883', topics: [a]}}\n  sink:\n    http:\n      url: https://x/b\n      headers:\n      - {{name: X, valueFrom: {{secretKeyRef: {reference}}}}}\n"
        ));
        match render(&p, &default_options()) {
            Err(RenderError::Invalid(errors)) => {
                let paths: Vec<&str> = errors.iter().map(|e| e.path.as_str()).collect();
                assert_eq!(paths, [path], "{reference}: {errors:?}");
            }
            other => panic!("{reference}: rendered {other:?}"),
        }
    }
}

#[test]
fn the_secrets_digest_is_a_pod_annotation_and_nothing_else() {
    let p = with_spec(SECRETS_SPEC);
    let without = rendered(&p);
    assert_eq!(annotation(&without, SECRETS_DIGEST_ANNOTATION), None);
    let digests = ["a".repeat(64), "b".repeat(64)];
    let with: Vec<Rendered> = digests
        .iter()
        .map(|digest| {
            rendered_with(
                &p,
                &RenderOptions {
                    secrets_digest: Some(digest.clone()),
                    ..default_options()
                },
            )
        })
        .collect();
    for (r, digest) in with.iter().zip(&digests) {
        assert_eq!(
            annotation(r, SECRETS_DIGEST_ANNOTATION).as_ref(),
            Some(digest)
        );
        // The configuration revision and its hash do not depend on the values: a rotation
        // is a new pod template, not a new revision.
        assert_eq!(r.config_map, without.config_map);
        assert_eq!(
            annotation(r, CONFIG_HASH_ANNOTATION),
            annotation(&without, CONFIG_HASH_ANNOTATION)
        );
    }
    assert_ne!(
        with[0].digest().expect("digest"),
        with[1].digest().expect("digest"),
        "another value is another DaemonSet to apply"
    );
}

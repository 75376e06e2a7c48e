//! Reconcile I/O of the tenant policy, pinned with a scripted API server: a pipeline
//! outside the policy gets `Invalid`/`ForbiddenByPolicy` naming the field, a Warning
//! Event, and its own agents deleted (never anyone else's); a Secret reference works
//! only once the Secret opted in; a pipeline that stays forbidden writes nothing more.
//! Every request is checked against `required_permissions()`.

use crate::common;

use std::collections::BTreeMap;

use common::api::{Seen, not_found, respond};
use common::cluster::{
    DS_PATH, LEGACY_CM_PATH, STATUS_PATH, UID, cluster_pipeline, cm_path, condition, daemon_set,
    expect_no_children, expect_no_daemon_set, no_models, pipeline_with_status,
    reconcile_reading_only_the_daemon_set, reconciled, run_with,
};
use common::default_options;
use edge_crds::EdgePipeline;
use edge_operator::controller::{StoredPipeline, pipelines_using_secret};
use edge_operator::policy::{self, SECRET_OPT_IN_LABEL, TenantPolicy};
use edge_operator::render::{
    SECRETS_DIGEST_ANNOTATION, referenced_secrets, render, secrets_digest,
};
use edge_operator::status::{Transition, compute_forbidden, transitions};
use http::{Method, StatusCode};
use k8s_openapi::ByteString;
use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference, Time};
use k8s_openapi::jiff::Timestamp;
use kube::core::PartialObjectMeta;
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::watcher;
use serde_json::{Value, json};

const CONTROL_PLANE_TOLERATION: &str = "  tolerations:\n    - {key: node-role.kubernetes.io/control-plane, operator: Exists, effect: NoSchedule}\n";
const SECRET_HEADER: &str = "  sink:\n    http:\n      url: 'https://ingest.example.com/batch'\n      headers:\n        - name: Authorization\n          valueFrom: {secretKeyRef: {name: ingest-token, key: authorization}}\n";
const CM_UID: &str = "7a1c0de0-0000-4000-8000-0000000000c3";
const TOKEN_PATH: &str = "/api/v1/namespaces/factory/secrets/ingest-token";

/// The Secret `ingest-token` as the API server returns it, with `authorization` and an
/// unreferenced key.
fn token_secret(authorization: &str) -> Value {
    let secret = Secret {
        metadata: ObjectMeta {
            name: Some("ingest-token".to_string()),
            namespace: Some("factory".to_string()),
            uid: Some("5ec12e70-0000-4000-8000-000000000001".to_string()),
            resource_version: Some("7".to_string()),
            labels: Some(BTreeMap::from([(
                SECRET_OPT_IN_LABEL.to_string(),
                "true".to_string(),
            )])),
            ..ObjectMeta::default()
        },
        data: Some(BTreeMap::from([
            (
                "authorization".to_string(),
                ByteString(authorization.as_bytes().to_vec()),
            ),
            ("unused".to_string(), ByteString(b"x".to_vec())),
        ])),
        ..Secret::default()
    };
    let mut value = serde_json::to_value(secret).expect("Secret serializes");
    value["apiVersion"] = json!("v1");
    value["kind"] = json!("Secret");
    value
}

fn pipeline_with(spec: &str) -> EdgePipeline {
    let mut p = common::with_spec(spec);
    p.metadata.uid = Some(UID.to_string());
    p.metadata.generation = Some(1);
    p
}

/// The running DaemonSet of the valid pipeline, controlled by `owner_uid`.
fn running_daemon_set(owner_uid: &str) -> Value {
    let good = cluster_pipeline(1, "", None);
    let rendered = render(&good, &default_options()).expect("renders");
    let mut ds = daemon_set(
        &serde_json::to_value(rendered.daemon_set).expect("json"),
        1,
        1,
        2,
        2,
        2,
    );
    ds["metadata"]["ownerReferences"][0]["uid"] = json!(owner_uid);
    ds
}

/// A cache of managed ConfigMaps holding `line1-agent`, controlled by `owner_uid`.
fn owned_config_maps(owner_uid: &str) -> Store<PartialObjectMeta<ConfigMap>> {
    let (store, mut writer) = reflector::store();
    writer.apply_watcher_event(&watcher::Event::Apply(PartialObjectMeta::<ConfigMap> {
        types: None,
        metadata: ObjectMeta {
            name: Some("line1-agent".to_string()),
            namespace: Some("factory".to_string()),
            uid: Some(CM_UID.to_string()),
            owner_references: Some(vec![OwnerReference {
                api_version: "edgepipe.dev/v1alpha1".to_string(),
                kind: "EdgePipeline".to_string(),
                name: "line1".to_string(),
                uid: owner_uid.to_string(),
                controller: Some(true),
                block_owner_deletion: Some(true),
            }]),
            ..ObjectMeta::default()
        },
        _phantom: Default::default(),
    }));
    store
}

/// A cache of opted-in Secrets: `name` in `factory` with the label set to `value`.
fn secrets(name: &str, value: &str) -> Store<PartialObjectMeta<Secret>> {
    let (store, mut writer) = reflector::store();
    writer.apply_watcher_event(&watcher::Event::Apply(PartialObjectMeta::<Secret> {
        types: None,
        metadata: ObjectMeta {
            name: Some(name.to_string()),
            namespace: Some("factory".to_string()),
            labels: Some(BTreeMap::from([(
                SECRET_OPT_IN_LABEL.to_string(),
                value.to_string(),
            )])),
            ..ObjectMeta::default()
        },
        _phantom: Default::default(),
    }));
    store
}

fn no_secrets() -> Store<PartialObjectMeta<Secret>> {
    reflector::store().0
}

fn deletes(seen: &[Seen]) -> Vec<String> {
    seen.iter()
        .filter(|s| s.method == Method::DELETE)
        .map(|s| s.path.clone())
        .collect()
}

fn applies(seen: &[Seen]) -> Vec<String> {
    seen.iter()
        .filter(|s| s.method == Method::PATCH && s.path != STATUS_PATH)
        .map(|s| s.path.clone())
        .collect()
}

/// Checks the status of a forbidden pipeline; returns the Invalid message.
fn assert_forbidden(status: &Value) -> String {
    let invalid = condition(status, "Invalid");
    assert_eq!(invalid["status"], "True");
    assert_eq!(invalid["reason"], "ForbiddenByPolicy");
    assert_eq!(condition(status, "Ready")["status"], "False");
    assert_eq!(condition(status, "Ready")["reason"], "ForbiddenByPolicy");
    assert_eq!(status["desiredNodes"], 0, "no agents run");
    invalid["message"].as_str().expect("message").to_string()
}

#[tokio::test]
async fn a_pipeline_outside_the_policy_loses_its_agents_and_is_told_why() {
    let p = pipeline_with(&format!("{}{CONTROL_PLANE_TOLERATION}", common::BASE_SPEC));
    let p2 = p.clone();
    let running = running_daemon_set(UID);
    let seen = run_with(
        no_models(),
        |ctx| ctx.with_owned(reflector::store().0, owned_config_maps(UID)),
        move |mut api| async move {
            let (_, send) = api.expect(Method::GET, DS_PATH).await;
            respond(send, StatusCode::OK, running.clone());
            let (ds, send) = api.expect(Method::DELETE, DS_PATH).await;
            assert_eq!(
                ds.body["preconditions"]["uid"],
                running["metadata"]["uid"],
                "only this DaemonSet, not one recreated meanwhile"
            );
            assert_eq!(ds.body["propagationPolicy"], "Background");
            respond(send, StatusCode::OK, running);
            let (cm, send) = api.expect(Method::DELETE, LEGACY_CM_PATH).await;
            assert_eq!(cm.body["preconditions"]["uid"], CM_UID);
            respond(send, StatusCode::NOT_FOUND, not_found("configmaps", "line1-agent"));
            let (seen, send) = api.expect(Method::PATCH, STATUS_PATH).await;
            let status = &seen.body["status"];
            let message = assert_forbidden(status);
            assert_eq!(
                message,
                "spec.tolerations[0]: toleration of node-role.kubernetes.io/control-plane is not allowed by the cluster policy"
            );
            respond(send, StatusCode::OK, pipeline_with_status(&p2, status));
            let event = api.expect_event("factory").await;
            assert_eq!(event.body["type"], "Warning");
            assert_eq!(event.body["reason"], "ForbiddenByPolicy");
            assert!(
                event.body["note"]
                    .as_str()
                    .is_some_and(|n| n.contains("spec.tolerations[0]")),
                "{}",
                event.body["note"]
            );
            api
        },
        |ctx, _metrics| async move {
            reconciled(p, &ctx)
                .await
                .expect("a forbidden pipeline is not an error to retry");
        },
    )
    .await;
    assert!(applies(&seen).is_empty(), "nothing applied: {seen:#?}");
}

#[tokio::test]
async fn agents_this_pipeline_does_not_control_are_never_deleted() {
    let p = pipeline_with(&format!("{}{CONTROL_PLANE_TOLERATION}", common::BASE_SPEC));
    let p2 = p.clone();
    let other = "99999999-0000-4000-8000-000000000000";
    let seen = run_with(
        no_models(),
        |ctx| ctx.with_owned(reflector::store().0, owned_config_maps(other)),
        move |mut api| async move {
            let (_, send) = api.expect(Method::GET, DS_PATH).await;
            respond(send, StatusCode::OK, running_daemon_set(other));
            let (seen, send) = api.expect(Method::PATCH, STATUS_PATH).await;
            assert_forbidden(&seen.body["status"]);
            respond(
                send,
                StatusCode::OK,
                pipeline_with_status(&p2, &seen.body["status"]),
            );
            api.expect_event("factory").await;
            api
        },
        |ctx, _metrics| async move {
            reconciled(p, &ctx).await.expect("reconcile succeeds");
        },
    )
    .await;
    assert!(deletes(&seen).is_empty(), "{seen:#?}");
}

#[tokio::test]
async fn a_secret_is_used_only_once_it_opted_in() {
    let spec = format!(
        "  source:\n    mqtt: {{url: 'mqtt://${{HOST_IP}}:1883', topics: ['sensors/#']}}\n{SECRET_HEADER}"
    );
    // Labelled, but not "true": not opted in.
    for store in [
        no_secrets(),
        secrets("ingest-token", "false"),
        secrets("other", "true"),
    ] {
        let p = pipeline_with(&spec);
        let p2 = p.clone();
        let seen = run_with(
            no_models(),
            |ctx| ctx.with_policy(TenantPolicy::default(), store),
            move |mut api| async move {
                expect_no_daemon_set(&mut api).await;
                let (seen, send) = api.expect(Method::PATCH, STATUS_PATH).await;
                let message = assert_forbidden(&seen.body["status"]);
                assert!(
                    message.starts_with("spec.sink.http.headers[0].valueFrom.secretKeyRef: Secret \"ingest-token\" is not labelled edgepipe.dev/allow-pipelines: \"true\""),
                    "{message}"
                );
                respond(send, StatusCode::OK, pipeline_with_status(&p2, &seen.body["status"]));
                api.expect_event("factory").await;
                api
            },
            |ctx, _metrics| async move {
                reconciled(p, &ctx).await.expect("reconcile succeeds");
            },
        )
        .await;
        assert!(applies(&seen).is_empty(), "{seen:#?}");
    }

    // Opted in: the operator reads the Secret (and only then), hashes the referenced
    // key into the pod template, and the pipeline runs with the Secret mounted.
    let p = pipeline_with(&spec);
    let p2 = p.clone();
    let cm_at = cm_path(&p);
    let expected_digest = secrets_digest(
        &referenced_secrets(&p.spec).expect("references"),
        &BTreeMap::from([(
            "ingest-token".to_string(),
            serde_json::from_value::<Secret>(token_secret("Bearer t0k3n")).expect("Secret"),
        )]),
    )
    .expect("complete");
    run_with(
        no_models(),
        |ctx| ctx.with_policy(TenantPolicy::default(), secrets("ingest-token", "true")),
        move |mut api| async move {
            let (_, send) = api.expect(Method::GET, TOKEN_PATH).await;
            respond(send, StatusCode::OK, token_secret("Bearer t0k3n"));
            expect_no_children(&mut api, &cm_at).await;
            let cm = api.expect_apply(&cm_at, None).await;
            assert!(!cm.body.to_string().contains("t0k3n"), "{}", cm.body);
            let ds = api.expect_apply(DS_PATH, None).await;
            let template = &ds.body["spec"]["template"];
            assert_eq!(
                template["metadata"]["annotations"][SECRETS_DIGEST_ANNOTATION],
                json!(expected_digest)
            );
            assert_eq!(
                template["spec"]["volumes"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .find(|v| v["name"] == "secret-0")
                    .map(|v| v["secret"]["secretName"].clone()),
                Some(json!("ingest-token")),
                "{template}"
            );
            assert!(!ds.body.to_string().contains("t0k3n"), "{}", ds.body);
            let (seen, send) = api.expect(Method::PATCH, STATUS_PATH).await;
            assert_eq!(
                condition(&seen.body["status"], "Invalid")["status"],
                "False"
            );
            respond(
                send,
                StatusCode::OK,
                pipeline_with_status(&p2, &seen.body["status"]),
            );
            api.expect_event("factory").await;
            api
        },
        |ctx, _metrics| async move {
            reconciled(p, &ctx).await.expect("reconcile succeeds");
        },
    )
    .await;
}

#[tokio::test]
async fn a_pipeline_that_stays_forbidden_writes_nothing_more() {
    let first = pipeline_with(&format!("{}{CONTROL_PLANE_TOLERATION}", common::BASE_SPEC));
    let errors = policy::check(&TenantPolicy::default(), &first.spec, &|_| true);
    let status = compute_forbidden(
        &first,
        &errors,
        &Time(Timestamp::from_second(1_800_000_000).expect("time")),
    );
    let mut again = first.clone();
    again.status = Some(status);
    let seen = reconcile_reading_only_the_daemon_set(again).await;
    assert_eq!(seen.len(), 1, "only the read: {seen:#?}");
}

#[test]
fn a_forbidden_event_is_published_once_even_after_an_invalid_spec() {
    let at = Time(Timestamp::from_second(1_800_000_000).expect("time"));
    let p = pipeline_with(&format!("{}{CONTROL_PLANE_TOLERATION}", common::BASE_SPEC));
    let errors = policy::check(&TenantPolicy::default(), &p.spec, &|_| true);
    let forbidden = compute_forbidden(&p, &errors, &at);
    let found = transitions(None, &forbidden);
    assert!(
        matches!(found.as_slice(), [Transition::Forbidden { message }] if message.contains("spec.tolerations[0]")),
        "{found:?}"
    );
    assert!(transitions(Some(&forbidden), &forbidden).is_empty());

    // An invalid spec first (Invalid already True), then the policy: still worth a Warning.
    let bad_spec = [edge_crds::FieldError {
        path: "spec.source.mqtt.topics[0]".to_string(),
        message: "bad".to_string(),
    }];
    let invalid = edge_operator::status::compute(&p, Err(&bad_spec), None::<&DaemonSet>, &at);
    assert!(matches!(
        transitions(Some(&invalid), &forbidden).as_slice(),
        [Transition::Forbidden { .. }]
    ));
}

#[test]
fn an_opt_in_change_maps_to_the_pipelines_using_the_secret() {
    let (pipelines, mut writer) = reflector::store::<StoredPipeline>();
    let spec = format!(
        "  source:\n    mqtt: {{url: 'mqtt://${{HOST_IP}}:1883', topics: ['sensors/#']}}\n{SECRET_HEADER}"
    );
    let mut uses = pipeline_with(&spec);
    uses.metadata.name = Some("uses".to_string());
    let mut other_ns = uses.clone();
    other_ns.metadata.namespace = Some("elsewhere".to_string());
    let mut plain = pipeline_with(common::BASE_SPEC);
    plain.metadata.name = Some("plain".to_string());
    for p in [uses, other_ns, plain] {
        writer.apply_watcher_event(&watcher::Event::Apply(StoredPipeline::from_pipeline(&p)));
    }
    let secret = secrets("ingest-token", "true")
        .state()
        .first()
        .map(|s| (**s).clone())
        .expect("Secret");
    assert_eq!(
        pipelines_using_secret(&pipelines, &secret),
        vec![ObjectRef::<StoredPipeline>::new("uses").within("factory")]
    );
}

#[tokio::test]
async fn a_missing_secret_or_key_blocks_the_apply_and_names_it() {
    let spec = format!(
        "  source:\n    mqtt: {{url: 'mqtt://${{HOST_IP}}:1883', topics: ['sensors/#']}}\n{SECRET_HEADER}"
    );
    let mut without_key = token_secret("unused");
    without_key["data"]
        .as_object_mut()
        .expect("data")
        .remove("authorization");
    // (what the API server answers, what Degraded must say)
    let cases = [
        (
            StatusCode::OK,
            without_key,
            "Secret \"ingest-token\" has no key \"authorization\"",
        ),
        (
            StatusCode::NOT_FOUND,
            not_found("secrets", "ingest-token"),
            "Secret \"ingest-token\" does not exist",
        ),
    ];
    for (code, answer, expected) in cases {
        let p = pipeline_with(&spec);
        let p2 = p.clone();
        let seen = run_with(
            no_models(),
            |ctx| ctx.with_policy(TenantPolicy::default(), secrets("ingest-token", "true")),
            move |mut api| async move {
                let (_, send) = api.expect(Method::GET, TOKEN_PATH).await;
                respond(send, code, answer);
                let (seen, send) = api.expect(Method::PATCH, STATUS_PATH).await;
                let status = &seen.body["status"];
                let degraded = condition(status, "Degraded");
                assert_eq!(degraded["status"], "True", "{status}");
                assert_eq!(degraded["reason"], "SecretMissing", "{status}");
                let message = degraded["message"].as_str().unwrap_or_default();
                assert!(message.contains(expected), "{message}");
                assert_eq!(condition(status, "Ready")["status"], "False");
                assert_eq!(condition(status, "Invalid")["status"], "False");
                respond(send, StatusCode::OK, pipeline_with_status(&p2, status));
                api.expect_event("factory").await;
                api
            },
            |ctx, _metrics| async move {
                reconciled(p, &ctx).await.expect("reconcile succeeds");
            },
        )
        .await;
        assert!(applies(&seen).is_empty(), "nothing applied: {seen:#?}");
        assert!(deletes(&seen).is_empty(), "nothing removed: {seen:#?}");
    }
}

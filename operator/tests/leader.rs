//! Leader election against a stateful fake Lease API: the replica acquires the Lease,
//! runs the controller only while leading, releases the Lease on shutdown, and every
//! request it makes is allowed by `required_permissions()`.

use crate::common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::api::{Seen, assert_permitted, not_found, record, respond};
use edge_operator::leader::{LeaseSettings, run_as_leader};
use http::{Method, Request, Response, StatusCode};
use kube::Client;
use kube::client::Body;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;
use tower_test::mock::Handle;

const LEASES: &str = "/apis/coordination.k8s.io/v1/namespaces/edgepipe-system/leases";

/// Merges a patch into `target`: objects recursively, `null` removes a key.
fn merge(target: &mut Value, patch: &Value) {
    match (target.as_object_mut(), patch.as_object()) {
        (Some(target), Some(patch)) => {
            for (key, value) in patch {
                if value.is_null() {
                    target.remove(key);
                } else {
                    merge(target.entry(key.clone()).or_insert(Value::Null), value);
                }
            }
        }
        _ => *target = patch.clone(),
    }
}

/// Serves the Lease API from memory until the client goes away; returns the requests
/// and the final Lease.
async fn lease_api(
    mut handle: Handle<Request<Body>, Response<Body>>,
) -> (Vec<Seen>, Option<Value>) {
    let item = format!("{LEASES}/edge-operator");
    let mut lease: Option<Value> = None;
    let mut version = 0;
    let mut seen = vec![];
    while let Some((request, send)) = handle.next_request().await {
        let request = record(request).await;
        seen.push(request.clone());
        version += 1;
        match (&request.method, request.path.as_str()) {
            (&Method::GET, path) if path == item => match &lease {
                Some(lease) => respond(send, StatusCode::OK, lease.clone()),
                None => respond(
                    send,
                    StatusCode::NOT_FOUND,
                    not_found("leases.coordination.k8s.io", "edge-operator"),
                ),
            },
            (&Method::POST, LEASES) => {
                let mut created = request.body.clone();
                created["metadata"]["namespace"] = json!("edgepipe-system");
                created["metadata"]["resourceVersion"] = json!(version.to_string());
                lease = Some(created.clone());
                respond(send, StatusCode::CREATED, created);
            }
            (&Method::PATCH, path) if path == item => {
                let current = lease.get_or_insert_with(|| json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": {"name": "edge-operator", "namespace": "edgepipe-system"}}));
                merge(
                    current
                        .as_object_mut()
                        .expect("object")
                        .entry("spec")
                        .or_insert(json!({})),
                    &request.body["spec"],
                );
                current["metadata"]["resourceVersion"] = json!(version.to_string());
                respond(send, StatusCode::OK, current.clone());
            }
            _ => panic!("unexpected request {request:#?}"),
        }
    }
    (seen, lease)
}

#[tokio::test]
async fn the_leader_runs_the_controller_and_releases_the_lease_on_shutdown() {
    let (mock, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let client = Client::new(mock, "default");
    let api = tokio::spawn(lease_api(handle));

    let shutdown = CancellationToken::new();
    let terms = Arc::new(AtomicUsize::new(0));
    let settings = LeaseSettings {
        name: "edge-operator".to_string(),
        namespace: "edgepipe-system".to_string(),
        identity: "edge-operator-0".to_string(),
    };
    let (stop, counted) = (shutdown.clone(), terms.clone());
    let led = tokio::time::timeout(
        Duration::from_secs(15),
        run_as_leader(client, settings, shutdown.clone(), move |term| {
            let (stop, counted) = (stop.clone(), counted.clone());
            async move {
                counted.fetch_add(1, Ordering::SeqCst);
                // Leading: ask for shutdown, then return once the term ends.
                stop.cancel();
                term.cancelled().await;
                Ok(())
            }
        }),
    )
    .await
    .expect("leader election ends after shutdown");
    led.expect("leader election succeeds");
    assert_eq!(
        terms.load(Ordering::SeqCst),
        1,
        "the controller ran once, while leading"
    );

    let (seen, lease) = tokio::time::timeout(Duration::from_secs(5), api)
        .await
        .expect("the client is dropped")
        .expect("fake API");
    assert_permitted(&seen);
    assert!(
        seen.iter().any(|s| s.method == Method::POST),
        "the Lease was created"
    );
    let spec = lease.expect("the Lease exists")["spec"].clone();
    assert_eq!(
        spec.get("holderIdentity"),
        None,
        "the Lease is released: {spec}"
    );
    assert_eq!(spec["leaseTransitions"], 1);
}

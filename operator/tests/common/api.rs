//! A scripted API server for reconcile tests (kube-rs' tower-test pattern): the test
//! says which requests it expects, in order, checks them, and answers; every request is
//! recorded so the test can check it against the operator's RBAC.

use std::time::Duration;

use edge_operator::required_permissions;
use http::{Method, Request, Response, StatusCode};
use kube::client::Body;
use serde_json::{Value, json};
use tower_test::mock::{Handle, SendResponse};

/// Longest wait for a request the reconcile should make.
const DEADLINE: Duration = Duration::from_secs(10);

/// One request the operator made.
#[derive(Clone, Debug)]
pub struct Seen {
    pub method: Method,
    pub path: String,
    pub query: Vec<(String, String)>,
    pub content_type: Option<String>,
    pub body: Value,
}

impl Seen {
    /// Whether the query has `key=value`.
    pub fn has_query(&self, key: &str, value: &str) -> bool {
        self.query.iter().any(|(k, v)| k == key && v == value)
    }
}

/// The scripted server side of a mocked `kube::Client`.
pub struct ApiServer {
    handle: Handle<Request<Body>, Response<Body>>,
    pub seen: Vec<Seen>,
}

impl ApiServer {
    pub fn new(handle: Handle<Request<Body>, Response<Body>>) -> Self {
        Self {
            handle,
            seen: vec![],
        }
    }

    /// Waits for the next request, which must be `method path`; returns it and the
    /// handle to answer it.
    pub async fn expect(
        &mut self,
        method: Method,
        path: &str,
    ) -> (Seen, SendResponse<Response<Body>>) {
        let next = tokio::time::timeout(DEADLINE, self.handle.next_request())
            .await
            .unwrap_or_else(|_| panic!("no request within {DEADLINE:?}; expected {method} {path}"));
        let (request, send) =
            next.unwrap_or_else(|| panic!("the client went away; expected {method} {path}"));
        let seen = record(request).await;
        self.seen.push(seen.clone());
        assert_eq!(
            (&seen.method, seen.path.as_str()),
            (&method, path),
            "unexpected request {seen:#?}"
        );
        (seen, send)
    }

    /// Expects a server-side apply by the operator's field manager; answers with `reply`
    /// (the applied object when `None`).
    pub async fn expect_apply(&mut self, path: &str, reply: Option<Value>) -> Seen {
        let (seen, send) = self.expect(Method::PATCH, path).await;
        assert_eq!(
            seen.content_type.as_deref(),
            Some("application/apply-patch+yaml"),
            "{path}"
        );
        assert!(
            seen.has_query("fieldManager", "edge-operator"),
            "{path}: {:?}",
            seen.query
        );
        assert!(seen.has_query("force", "true"), "{path}: {:?}", seen.query);
        respond(
            send,
            StatusCode::OK,
            reply.unwrap_or_else(|| seen.body.clone()),
        );
        seen
    }

    /// Expects an Event to be created; answers with it.
    pub async fn expect_event(&mut self, namespace: &str) -> Seen {
        let (seen, send) = self
            .expect(
                Method::POST,
                &format!("/apis/events.k8s.io/v1/namespaces/{namespace}/events"),
            )
            .await;
        respond(send, StatusCode::CREATED, seen.body.clone());
        seen
    }

    /// Waits until the client is dropped; any further request fails the test.
    pub async fn finish(mut self) -> Vec<Seen> {
        match tokio::time::timeout(DEADLINE, self.handle.next_request()).await {
            Ok(None) => self.seen,
            Ok(Some((request, _))) => {
                let seen = record(request).await;
                panic!("unexpected request {seen:#?}")
            }
            Err(_) => panic!("the client was not dropped within {DEADLINE:?}"),
        }
    }
}

/// Reads a request into a [`Seen`].
pub async fn record(request: Request<Body>) -> Seen {
    let method = request.method().clone();
    let path = request.uri().path().to_string();
    let query = request
        .uri()
        .query()
        .unwrap_or("")
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| match pair.split_once('=') {
            Some((k, v)) => (k.to_string(), v.to_string()),
            None => (pair.to_string(), String::new()),
        })
        .collect();
    let content_type = request
        .headers()
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let bytes = request
        .into_body()
        .collect_bytes()
        .await
        .expect("request body");
    let body = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes).expect("JSON request body")
    };
    Seen {
        method,
        path,
        query,
        content_type,
        body,
    }
}

/// Answers a request with a JSON body.
pub fn respond(send: SendResponse<Response<Body>>, status: StatusCode, body: Value) {
    let bytes = serde_json::to_vec(&body).expect("response serializes");
    let response = Response::builder()
        .status(status)
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(Body::from(bytes))
        .expect("response builds");
    send.send_response(response);
}

/// A `404 Not Found` Status for `resource/name`.
pub fn not_found(resource: &str, name: &str) -> Value {
    json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": format!("{resource} \"{name}\" not found"), "reason": "NotFound", "code": 404
    })
}

/// A `500` Status.
pub fn internal_error() -> Value {
    json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": "etcd is having a bad day", "reason": "InternalError", "code": 500
    })
}

/// Every request must be allowed by [`required_permissions`]. A server-side apply
/// needs `create` as well as `patch` (it creates a missing object).
pub fn assert_permitted(seen: &[Seen]) {
    assert_permitted_by(seen, &required_permissions());
}

/// [`assert_permitted`] against `permissions` (the operator's with an option's added).
pub fn assert_permitted_by(seen: &[Seen], permissions: &[edge_operator::Permission]) {
    for request in seen {
        let segments: Vec<&str> = request.path.trim_start_matches('/').split('/').collect();
        let (group, rest) = match segments.as_slice() {
            ["api", _version, rest @ ..] => ("", rest),
            ["apis", group, _version, rest @ ..] => (*group, rest),
            _ => panic!("unexpected path {}", request.path),
        };
        let rest = match rest {
            ["namespaces", _ns, rest @ ..] => rest,
            rest => rest,
        };
        let (resource, named) = match rest {
            [resource] => (resource.to_string(), false),
            [resource, _name] => (resource.to_string(), true),
            [resource, _name, sub] => (format!("{resource}/{sub}"), true),
            _ => panic!("unexpected path {}", request.path),
        };
        let verbs: Vec<&str> = match (&request.method, named) {
            (&Method::GET, true) => vec!["get"],
            (&Method::GET, false) if request.has_query("watch", "true") => vec!["watch"],
            (&Method::GET, false) => vec!["list"],
            (&Method::POST, _) => vec!["create"],
            (&Method::PATCH, _)
                if request.content_type.as_deref() == Some("application/apply-patch+yaml")
                    && !resource.contains('/') =>
            {
                vec!["patch", "create"]
            }
            (&Method::PATCH, _) => vec!["patch"],
            (&Method::PUT, _) => vec!["update"],
            (&Method::DELETE, _) => vec!["delete"],
            (method, _) => panic!("unexpected method {method}"),
        };
        for verb in verbs {
            assert!(
                permissions.iter().any(|p| p.allows(group, &resource, verb)),
                "{verb} {group}/{resource} ({} {}) is not in required_permissions()",
                request.method,
                request.path
            );
        }
    }
}

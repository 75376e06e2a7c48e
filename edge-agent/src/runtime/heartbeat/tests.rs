use std::time::Duration;

use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use time::macros::datetime;

use super::write::{WriteError, status_message};
use super::*;

const STARTED: OffsetDateTime = datetime!(2026-12-05 04:00:00 UTC);

fn env<'a>(vars: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
    move |name| {
        vars.iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.to_string())
    }
}

/// The pod's environment as the operator sets it, plus `extra` (which wins).
fn from_env(extra: &[(&str, &str)]) -> Result<Settings, Disabled> {
    let mut vars = extra.to_vec();
    vars.extend([
        (fleet::LEASE_ENV, "line1-agent.edge-7"),
        (NAMESPACE_ENV, "factory"),
        ("KUBERNETES_SERVICE_HOST", "10.96.0.1"),
        ("KUBERNETES_SERVICE_PORT", "443"),
    ]);
    Settings::from_env("line1", "edge-7", &env(&vars))
}

fn settings() -> Settings {
    from_env(&[]).expect("settings")
}

fn metrics() -> Metrics {
    Metrics::new("factory/line1").expect("metrics")
}

fn at(seconds: i64) -> OffsetDateTime {
    STARTED + time::Duration::seconds(seconds)
}

#[test]
fn the_record_carries_the_labels_the_state_and_the_renewal() {
    let m = metrics();
    m.upstream_up.set(1);
    m.queue_records.set(12);
    m.queue_bytes.set(3400);
    m.queue_oldest_age_seconds.set(42.9);
    m.dropped("queue_full", 3);
    m.dropped("max_age", 2);
    m.model_info.with_label_values(&["0ld"]).set(0);
    m.model_info.with_label_values(&["5ha"]).set(1);
    m.fallback_active.set(1);
    let mut observed = Observed::new(Snapshot::of(&m), STARTED);
    m.records_synced.inc_by(5);
    observed.observe(Snapshot::of(&m), at(7));
    let now = datetime!(2026-12-05 04:50:00.123456789 UTC);

    let r = record(&settings(), &observed.annotations(), now);
    assert_eq!(r["apiVersion"], "coordination.k8s.io/v1");
    assert_eq!(r["kind"], "Lease");
    let meta = &r["metadata"];
    assert_eq!(meta["name"], "line1-agent.edge-7");
    assert_eq!(meta["namespace"], "factory");
    assert_eq!(
        meta["labels"],
        json!({
            "app.kubernetes.io/managed-by": "edge-agent",
            "edgepipe.dev/pipeline": "line1",
            "edgepipe.dev/node": "edge-7",
        })
    );
    assert_eq!(
        meta["annotations"],
        json!({
            "agent.edgepipe.dev/upstream": "up",
            "agent.edgepipe.dev/upstream-since": "2026-12-05T04:00:00Z",
            "agent.edgepipe.dev/backlog-records": "12",
            "agent.edgepipe.dev/backlog-bytes": "3400",
            "agent.edgepipe.dev/oldest-seconds": "42",
            "agent.edgepipe.dev/last-sync": "2026-12-05T04:00:07Z",
            "agent.edgepipe.dev/dropped-records": "5",
            "agent.edgepipe.dev/model-sha256": "5ha",
            "agent.edgepipe.dev/version": env!("CARGO_PKG_VERSION"),
            "agent.edgepipe.dev/fallback": "true",
        })
    );
    let spec = &r["spec"];
    assert_eq!(spec["holderIdentity"], "edge-7");
    assert_eq!(spec["leaseDurationSeconds"], 90, "3 intervals of 30 s");
    let renew = spec["renewTime"].as_str().expect("renewTime");
    assert_eq!(renew, "2026-12-05T04:50:00.123456Z");
    let parsed = OffsetDateTime::parse(renew, &Rfc3339).expect("RFC 3339");
    assert_eq!(parsed, datetime!(2026-12-05 04:50:00.123456 UTC));
    for key in ["upstream-since", "last-sync"] {
        let v = meta["annotations"][format!("agent.edgepipe.dev/{key}")]
            .as_str()
            .expect(key);
        OffsetDateTime::parse(v, &Rfc3339).expect(key);
    }
}

#[test]
fn a_fresh_agent_without_model_or_fallback_leaves_those_annotations_out() {
    let a = Observed::new(Snapshot::of(&metrics()), STARTED).annotations();
    assert_eq!(a[annotation::UPSTREAM], "down", "nothing delivered yet");
    assert_eq!(a[annotation::UPSTREAM_SINCE], "2026-12-05T04:00:00Z");
    assert_eq!(a[annotation::DROPPED_RECORDS], "0");
    assert_eq!(a[annotation::OLDEST_SECONDS], "0");
    for absent in [
        annotation::LAST_SYNC,
        annotation::MODEL_SHA256,
        annotation::FALLBACK,
        annotation::FALLBACK_LAST_SECONDS,
        annotation::FALLBACK_LAST_END,
        annotation::FALLBACK_LAST_OUTDATED,
    ] {
        assert!(!a.contains_key(absent), "{absent}: {a:?}");
    }
}

#[test]
fn a_node_that_ran_in_fallback_says_for_how_long_when_and_with_which_revision() {
    let m = metrics();
    m.fallback_last_seconds.set(754);
    m.fallback_last_end.set(1_796_445_000);
    let a = Observed::new(Snapshot::of(&m), STARTED).annotations();
    assert_eq!(a[annotation::FALLBACK_LAST_SECONDS], "754");
    assert_eq!(a[annotation::FALLBACK_LAST_END], "2026-12-05T04:30:00Z");
    assert!(!a.contains_key(annotation::FALLBACK_LAST_OUTDATED), "{a:?}");
    m.fallback_last_outdated.set(1);
    let a = Observed::new(Snapshot::of(&m), STARTED).annotations();
    assert_eq!(a[annotation::FALLBACK_LAST_OUTDATED], "true");
}

#[test]
fn upstream_since_moves_only_when_the_upstream_flips() {
    let m = metrics();
    let mut o = Observed::new(Snapshot::of(&m), STARTED);
    let since = |o: &Observed| o.annotations()[annotation::UPSTREAM_SINCE].clone();
    o.observe(Snapshot::of(&m), at(10));
    assert_eq!(
        since(&o),
        "2026-12-05T04:00:00Z",
        "still down since the start"
    );
    m.upstream_up.set(1);
    o.observe(Snapshot::of(&m), at(20));
    assert_eq!(since(&o), "2026-12-05T04:00:20Z");
    assert_eq!(o.annotations()[annotation::UPSTREAM], "up");
    m.queue_records.set(5);
    o.observe(Snapshot::of(&m), at(30));
    assert_eq!(since(&o), "2026-12-05T04:00:20Z", "other changes leave it");
    m.upstream_up.set(0);
    o.observe(Snapshot::of(&m), at(40));
    assert_eq!(since(&o), "2026-12-05T04:00:40Z");
    assert_eq!(o.annotations()[annotation::UPSTREAM], "down");
}

#[test]
fn last_sync_appears_once_records_are_delivered_and_follows_deliveries() {
    let m = metrics();
    let mut o = Observed::new(Snapshot::of(&m), STARTED);
    o.observe(Snapshot::of(&m), at(10));
    assert!(!o.annotations().contains_key(annotation::LAST_SYNC));
    m.records_synced.inc_by(64);
    o.observe(Snapshot::of(&m), at(11));
    assert_eq!(
        o.annotations()[annotation::LAST_SYNC],
        "2026-12-05T04:00:11Z"
    );
    o.observe(Snapshot::of(&m), at(50));
    assert_eq!(
        o.annotations()[annotation::LAST_SYNC],
        "2026-12-05T04:00:11Z",
        "nothing more delivered"
    );
    m.records_synced.inc();
    o.observe(Snapshot::of(&m), at(51));
    assert_eq!(
        o.annotations()[annotation::LAST_SYNC],
        "2026-12-05T04:00:51Z"
    );
}

#[test]
fn records_delivered_before_the_task_started_are_no_sync_it_saw() {
    let m = metrics();
    m.records_synced.inc_by(10);
    let mut o = Observed::new(Snapshot::of(&m), STARTED);
    o.observe(Snapshot::of(&m), at(1));
    assert!(!o.annotations().contains_key(annotation::LAST_SYNC));
}

#[test]
fn an_unchanged_state_skips_every_other_turn_a_change_never_waits() {
    let m = metrics();
    let o = Observed::new(Snapshot::of(&m), STARTED);
    let idle = comparable(&o.annotations());
    let mut s = Schedule::new(Duration::from_secs(30));
    assert!(s.writes(&idle), "the first turn writes");
    s.succeeded(idle.clone());
    let turns: Vec<bool> = (0..6).map(|_| s.writes(&idle)).collect();
    assert_eq!(turns, [false, true, false, true, false, true]);

    // A skipped turn, then a change: written at once.
    assert!(!s.writes(&idle));
    let mut busy = idle.clone();
    busy.insert(annotation::BACKLOG_RECORDS, "7".into());
    assert!(s.writes(&busy));
    s.succeeded(busy.clone());
    assert!(!s.writes(&busy), "then unchanged again");

    // After a failure every turn writes, until one succeeds.
    assert!(s.writes(&busy));
    s.failed();
    assert!(s.writes(&busy));
    s.failed();
    assert!(s.writes(&busy));
    s.succeeded(busy.clone());
    assert!(!s.writes(&busy));
}

#[test]
fn a_backlog_that_only_ages_is_a_change_at_powers_of_two() {
    let with_age = |seconds: u64| {
        let mut a = Annotations::new();
        a.insert(annotation::OLDEST_SECONDS, seconds.to_string());
        a.insert(annotation::BACKLOG_RECORDS, "3".into());
        comparable(&a)
    };
    assert_eq!(with_age(40), with_age(63));
    assert_ne!(with_age(63), with_age(64));
    assert_eq!(with_age(64), with_age(127));
    assert_ne!(with_age(0), with_age(1));
    assert_eq!(with_age(1000), with_age(1023));
}

#[test]
fn failures_back_off_doubling_from_the_interval_to_five_minutes() {
    let secs = |interval: u64| -> Vec<u64> {
        (0..12)
            .map(|f| backoff(Duration::from_secs(interval), f).as_secs())
            .collect()
    };
    assert_eq!(
        secs(30),
        [30, 30, 60, 120, 240, 300, 300, 300, 300, 300, 300, 300]
    );
    assert_eq!(secs(1), [1, 1, 2, 4, 8, 16, 32, 64, 128, 256, 300, 300]);
    assert_eq!(backoff(Duration::from_secs(30), u32::MAX), MAX_BACKOFF);
    assert_eq!(
        backoff(Duration::from_secs(600), 0),
        Duration::from_secs(600),
        "no failure: the interval, however long"
    );
    assert_eq!(backoff(Duration::from_secs(600), 1), MAX_BACKOFF);

    let mut s = Schedule::new(Duration::from_secs(30));
    let waits: Vec<Duration> = (0..200).map(|_| s.next_wait()).collect();
    assert!(
        waits
            .iter()
            .all(|w| (27.0..=33.0).contains(&w.as_secs_f64())),
        "±10%: {waits:?}"
    );
    assert!(
        waits
            .iter()
            .collect::<std::collections::BTreeSet<_>>()
            .len()
            > 1,
        "jittered"
    );
    for _ in 0..10 {
        s.failed();
    }
    for _ in 0..200 {
        let w = s.next_wait();
        assert!(w <= MAX_BACKOFF && w >= MAX_BACKOFF.mul_f64(0.9), "{w:?}");
    }
}

#[test]
fn settings_default_to_the_in_cluster_api_server_and_the_mounted_credentials() {
    let s = settings();
    assert_eq!(
        s,
        Settings {
            lease: "line1-agent.edge-7".into(),
            namespace: "factory".into(),
            node: "edge-7".into(),
            pipeline: "line1".into(),
            api: "https://10.96.0.1:443".into(),
            token_file: "/var/run/secrets/edgepipe.dev/api/token".into(),
            ca_file: "/var/run/secrets/edgepipe.dev/api/ca.crt".into(),
            interval: Duration::from_secs(fleet::DEFAULT_INTERVAL_SECONDS),
        }
    );
    assert_eq!(
        s.url(),
        "https://10.96.0.1:443/apis/coordination.k8s.io/v1/namespaces/factory/leases/line1-agent.edge-7?fieldManager=edge-agent&force=true"
    );
    let v6 = from_env(&[("KUBERNETES_SERVICE_HOST", "fd00:10:96::1")]).expect("settings");
    assert_eq!(v6.api, "https://[fd00:10:96::1]:443");
    let no_port = Settings::from_env(
        "line1",
        "edge-7",
        &env(&[
            (fleet::LEASE_ENV, "a.b"),
            (NAMESPACE_ENV, "factory"),
            ("KUBERNETES_SERVICE_HOST", "kubernetes.default.svc"),
        ]),
    )
    .expect("settings");
    assert_eq!(no_port.api, "https://kubernetes.default.svc:443");
}

#[test]
fn settings_take_what_the_environment_sets() {
    let s = from_env(&[
        (fleet::API_ENV, "https://api.example:6443/"),
        (fleet::TOKEN_FILE_ENV, "/run/token"),
        (fleet::CA_FILE_ENV, "/run/ca.pem"),
        (fleet::INTERVAL_ENV, " 10 "),
    ])
    .expect("settings");
    assert_eq!(s.api, "https://api.example:6443");
    assert_eq!(s.token_file, PathBuf::from("/run/token"));
    assert_eq!(s.ca_file, PathBuf::from("/run/ca.pem"));
    assert_eq!(s.interval, Duration::from_secs(10));
    assert!(s.url().starts_with("https://api.example:6443/apis/"));

    let interval = |v: &str| {
        from_env(&[(fleet::INTERVAL_ENV, v)])
            .expect("settings")
            .interval
            .as_secs()
    };
    assert_eq!(interval("0"), 1, "at least a second");
    assert_eq!(interval("soon"), fleet::DEFAULT_INTERVAL_SECONDS);
    assert_eq!(interval("-5"), fleet::DEFAULT_INTERVAL_SECONDS);
    assert_eq!(
        interval(""),
        fleet::DEFAULT_INTERVAL_SECONDS,
        "empty is unset"
    );
    assert_eq!(interval("99999999999999"), 86_400);
}

#[test]
fn settings_refuse_plain_http_and_whatever_is_missing() {
    assert_eq!(
        from_env(&[(fleet::API_ENV, "http://10.96.0.1:80")]),
        Err(Disabled::NotHttps("http://10.96.0.1:80".into()))
    );
    for bad in ["10.96.0.1:443", "https://", "https://api?x=1", "ftp://api"] {
        assert!(
            matches!(
                from_env(&[(fleet::API_ENV, bad)]),
                Err(Disabled::NotHttps(_))
            ),
            "{bad}"
        );
    }
    let only = |vars: &[(&str, &str)]| Settings::from_env("line1", "edge-7", &env(vars));
    assert_eq!(only(&[]), Err(Disabled::NoLease));
    assert_eq!(
        only(&[(fleet::LEASE_ENV, " "), (NAMESPACE_ENV, "factory")]),
        Err(Disabled::NoLease)
    );
    assert_eq!(
        only(&[(fleet::LEASE_ENV, "a.b")]),
        Err(Disabled::NoNamespace)
    );
    assert_eq!(
        only(&[(fleet::LEASE_ENV, "a.b"), (NAMESPACE_ENV, "factory")]),
        Err(Disabled::NoApiServer)
    );
    assert!(matches!(
        from_env(&[(fleet::LEASE_ENV, "../secrets/x")]),
        Err(Disabled::BadName { .. })
    ));
}

#[test]
fn the_record_label_is_the_one_the_operator_selects() {
    assert_eq!(
        format!("{}={}", MANAGED_BY.0, MANAGED_BY.1),
        fleet::RECORD_SELECTOR
    );
}

#[test]
fn the_api_servers_message_is_read_from_its_status() {
    let forbidden = r#"{"kind":"Status","apiVersion":"v1","status":"Failure","message":"leases.coordination.k8s.io \"a.b\" is forbidden: ValidatingAdmissionPolicy 'edgepipe-fleet' denied request: an agent writes only its own node's record","reason":"Forbidden","code":403}"#;
    assert_eq!(
        status_message(forbidden).as_deref(),
        Some(
            "leases.coordination.k8s.io \"a.b\" is forbidden: ValidatingAdmissionPolicy 'edgepipe-fleet' denied request: an agent writes only its own node's record"
        )
    );
    assert_eq!(status_message("<html>bad gateway</html>"), None);
    assert_eq!(status_message(r#"{"message":""}"#), None);
    let e = WriteError::Status {
        status: reqwest::StatusCode::FORBIDDEN,
        message: status_message(forbidden),
    };
    assert!(
        e.to_string()
            .starts_with("the API server answered 403 Forbidden: leases."),
        "{e}"
    );
}

mod https {
    //! Against a real HTTPS server of a private CA.

    use edge_testkit::pki::Pki;
    use edge_testkit::{Receiver, Reply, ServerTls, eventually};

    use super::*;

    struct Server {
        receiver: Receiver,
        settings: Settings,
        dir: tempfile::TempDir,
    }

    async fn server() -> Server {
        let dir = tempfile::tempdir().expect("tempdir");
        let pki = Pki::new(&dir.path().join("pki"));
        pki.cert(
            "server",
            "/CN=localhost",
            &["subjectAltName=DNS:localhost,IP:127.0.0.1"],
        );
        let tls = ServerTls::new(
            &dir.path().join("pki/server.crt"),
            &dir.path().join("pki/server.key"),
            None,
        );
        let receiver = Receiver::start_tls(tls).await;
        let token_file = dir.path().join("token");
        std::fs::write(&token_file, "first-token\n").expect("token");
        let mut settings = settings();
        settings.api = format!("https://localhost:{}", receiver.port);
        settings.token_file = token_file;
        settings.ca_file = dir.path().join("pki/ca.crt");
        settings.interval = Duration::from_secs(1);
        Server {
            receiver,
            settings,
            dir,
        }
    }

    #[tokio::test]
    async fn a_write_is_one_apply_with_the_current_token_trusting_only_the_ca_file() {
        let s = server().await;
        let mut writer = Writer::new(s.settings.clone());
        let body = record(&s.settings, &Annotations::new(), STARTED);
        writer.write(&body).await.expect("written");
        let requests = s.receiver.requests();
        assert_eq!(requests.len(), 1);
        let headers = &requests[0].headers;
        assert_eq!(headers["authorization"], "Bearer first-token");
        assert_eq!(headers["content-type"], "application/apply-patch+yaml");

        // The kubelet rotates the token: the next write sends the new one.
        std::fs::write(&s.settings.token_file, "second-token").expect("token");
        s.receiver.script([Reply::Status(403)]);
        let refused = writer.write(&body).await.expect_err("403");
        assert!(
            matches!(&refused, WriteError::Status { status, .. } if status.as_u16() == 403),
            "{refused}"
        );
        writer.write(&body).await.expect("written");
        let requests = s.receiver.requests();
        assert_eq!(requests.len(), 3);
        assert_eq!(requests[2].headers["authorization"], "Bearer second-token");

        // A CA file of another CA: the server is not trusted (no system roots either).
        let other = Pki::new(&s.dir.path().join("other"));
        std::fs::copy(s.dir.path().join("other/ca.crt"), &s.settings.ca_file).expect("CA");
        drop(other);
        let untrusted = writer.write(&body).await.expect_err("untrusted");
        assert!(matches!(untrusted, WriteError::Request(_)), "{untrusted}");
        assert_eq!(s.receiver.requests().len(), 3, "nothing sent");

        std::fs::remove_file(&s.settings.token_file).expect("remove");
        let missing = writer.write(&body).await.expect_err("no token");
        assert!(matches!(missing, WriteError::Token { .. }), "{missing}");
    }

    #[tokio::test]
    async fn the_task_writes_soon_after_start_and_retries_a_refused_write() {
        let s = server().await;
        s.receiver.script([Reply::Status(503)]);
        let m = Arc::new(metrics());
        let stop = CancellationToken::new();
        let task = spawn(s.settings.clone(), m.clone(), stop.clone());
        let outcome = |o: &str| m.heartbeats.with_label_values(&[o]).get();
        eventually(
            Duration::from_secs(10),
            "a write after the refused one",
            async || (outcome("ok") == 1).then_some(()),
        )
        .await;
        assert_eq!(outcome("failed"), 1);
        assert!(m.heartbeat_last_success.get() > 0);
        assert_eq!(s.receiver.requests().len(), 2);
        stop.cancel();
        task.await.expect("the task ends");
    }
}
